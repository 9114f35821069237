from django import forms
from django.contrib.auth.forms import UserCreationForm

from .models import User


class UserCreateForm(UserCreationForm):
    class Meta:
        model = User
        fields = ["username", "email", "first_name", "last_name", "role", "plan", "teacher"]

    def clean(self):
        data = super().clean()
        check_teacher(self, data)
        return data


class NewPasswordForm(forms.Form):
    """An optional new password on a form that edits a user (a ModelForm of User mixes this in first)."""

    new_password = forms.CharField(
        required=False, widget=forms.PasswordInput, help_text="Leave empty to keep the current password."
    )

    def clean_new_password(self):
        from django.contrib.auth.password_validation import validate_password

        value = self.cleaned_data.get("new_password")
        if value:
            validate_password(value, self.instance)
        return value

    def save(self, commit=True):
        user = super().save(commit=False)
        if self.cleaned_data.get("new_password"):
            user.set_password(self.cleaned_data["new_password"])
        if commit:
            user.save()
        return user


class UserEditForm(NewPasswordForm, forms.ModelForm):
    class Meta:
        model = User
        fields = ["email", "first_name", "last_name", "role", "plan", "teacher", "is_active"]

    def clean(self):
        data = super().clean()
        check_teacher(self, data)
        check_plan_quota(self, data)
        return data


def check_plan_quota(form, data):
    """Refuse another plan for a user when their VEs would then take more than a quota allows (a reseller's)."""
    from vzpanel.ves import services as ve_services

    if "plan" in form.changed_data and form.instance.pk and "plan" not in form.errors:
        try:
            ve_services.check_quotas("owner_plan", owner=form.instance, plan=data.get("plan"))
        except ve_services.QuotaExceeded as exc:
            form.add_error("plan", exc.message)


def check_teacher(form, data):
    teacher = data.get("teacher")
    if teacher is not None and data.get("role") != User.Role.STUDENT:
        form.add_error("teacher", "Only students have a teacher.")
    if teacher is not None and teacher.pk == form.instance.pk:
        form.add_error("teacher", "A user cannot be their own teacher.")


class TokenForm(forms.Form):
    name = forms.CharField(max_length=64, help_text="What the token is for, e.g. 'deploy script'.")
    scope = forms.ChoiceField(choices=[("full", "Full: read and change"), ("read", "Read-only")], initial="full",
                              required=False,
                              help_text="A read-only token can list and read, never start, change or delete.")
    days = forms.IntegerField(min_value=1, max_value=3650, required=False, label="Expires after (days)",
                              help_text="Empty: never expires. A token past its date is refused.")

    def clean_scope(self):
        return self.cleaned_data.get("scope") or "full"


class CodeForm(forms.Form):
    code = forms.CharField(max_length=32, strip=True, label="Code",
                           help_text="The 6-digit code from your authenticator app, or a recovery code.")
