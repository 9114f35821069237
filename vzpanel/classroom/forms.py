from django import forms
from django.contrib.auth import get_user_model
from django.utils import timezone

from vzpanel.plans.models import Plan
from vzpanel.ves.forms import template_choices
from vzpanel.ves.models import VE

from .models import Course


class DateInput(forms.DateInput):
    input_type = "date"


class DateTimeInput(forms.DateTimeInput):
    input_type = "datetime-local"


def own_ve_choices(user):
    ves = VE.objects.live().filter(owner=user).exclude(memberships__isnull=False).order_by("ctid")
    return [(ve.pk, f"VE {ve.ctid} — {ve.hostname} ({ve.ostemplate}, {ve.status})") for ve in ves]


class CourseForm(forms.ModelForm):
    """A course's settings; the quota only for admins, the image only when the course is created."""

    image = forms.ChoiceField(label="Golden image", help_text="An OS template, or one of your own VEs that you "
                              "prepared for the class (it is frozen as a template; the VE stays yours).")
    teacher = forms.ModelChoiceField(queryset=get_user_model().objects.none(), required=False,
                                     help_text="Admins only; default: you.")

    class Meta:
        model = Course
        fields = ["name", "plan", "ends_on", "ssh_access", "idle_minutes", "idle_action", "max_ves", "max_ram_mb",
                  "max_disk_gb"]
        widgets = {"ends_on": DateInput}

    def __init__(self, *args, user, creating: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        # the admins' plans only: a reseller's plan is its own (it changes it, its quota counts it)
        self.fields["plan"].queryset = Plan.objects.filter(owner__isnull=True)
        self.fields["plan"].help_text = "The resources of each student's VE."
        self.fields["ends_on"].help_text = ("The day after it, the students' VEs are stopped and they cannot start "
                                            "them; nothing is removed until you archive the class, and extending "
                                            "re-opens it.")
        if creating:
            self.fields["image"].choices = (
                [(f"template:{v}", f"Template {label}") for v, label in template_choices(None, user)]  # any node's
                + [(f"ve:{pk}", label) for pk, label in own_ve_choices(user)])
            if user.is_panel_admin:
                self.fields["teacher"].queryset = get_user_model().objects.filter(role="teacher", is_active=True)
            else:
                del self.fields["teacher"]
        else:
            del self.fields["image"], self.fields["teacher"]
        if not user.is_panel_admin:
            for name in ("max_ves", "max_ram_mb", "max_disk_gb"):
                del self.fields[name]

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError("Give the course a name.")
        return name

    def image_choice(self):
        """(template name, VE) the user picked for the golden image."""
        kind, _, value = self.cleaned_data["image"].partition(":")
        if kind == "ve":
            ve = VE.objects.live().filter(pk=int(value)).first()
            if ve is None:
                raise forms.ValidationError("That VE is gone.")
            return "", ve
        return value, None


class RosterForm(forms.Form):
    roster = forms.FileField(label="Roster (CSV)", help_text="One student per line: <code>name, e-mail or user name, "
                             "group</code> (the group is optional; a header line is allowed).")


class ClassActionForm(forms.Form):
    action = forms.ChoiceField(choices=[(a, a) for a in ("start", "stop", "suspend", "reset")])
    target = forms.CharField(max_length=100, initial="all")
    keep_work = forms.BooleanField(required=False)


class ImageForm(forms.Form):
    image = forms.ChoiceField(label="New golden image")
    reset_after = forms.BooleanField(required=False, label="Then reset every student's VE to it")
    keep_work = forms.BooleanField(required=False, initial=True, label="Keep each student's files as a snapshot first")

    def __init__(self, *args, course, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["image"].choices = (
            [(f"template:{v}", f"Template {label}") for v, label in template_choices(course.node, user)]
            + [(f"ve:{pk}", f"Freeze {label}") for pk, label in own_ve_choices(course.teacher)])


class SheetForm(forms.Form):
    kind = forms.ChoiceField(choices=[("links", "one-time sign-in links"), ("passwords", "initial passwords")],
                             label="Print")
    who = forms.ChoiceField(choices=[("new", "students who never signed in"), ("all", "every student")],
                            label="For")


class SessionForm(forms.Form):
    starts_at = forms.DateTimeField(widget=DateTimeInput, label="Starts")
    ends_at = forms.DateTimeField(widget=DateTimeInput, label="Ends")
    lead_minutes = forms.IntegerField(min_value=0, max_value=240, initial=5, label="Start VEs this many minutes before")
    after = forms.ChoiceField(choices=Course.Sleep.choices, initial="stop", label="Afterwards")

    def clean(self):
        data = super().clean()
        if data.get("starts_at") and data.get("ends_at"):
            if data["ends_at"] <= data["starts_at"]:
                self.add_error("ends_at", "A session ends after it starts.")
            elif data["ends_at"] <= timezone.now():
                self.add_error("ends_at", "That session is over already.")
        return data


class AssistantForm(forms.Form):
    username = forms.CharField(max_length=150, label="User name")


class ExtendForm(forms.Form):
    ends_on = forms.DateField(widget=DateInput, label="New end date")


class EndForm(forms.Form):
    archive = forms.BooleanField(required=False, initial=True, label="Back up every student's VE first")
    confirm = forms.CharField(label="Type the course's name to confirm")

    def __init__(self, *args, course, **kwargs):
        super().__init__(*args, **kwargs)
        self.course = course

    def clean_confirm(self):
        if self.cleaned_data["confirm"].strip() != self.course.name:
            raise forms.ValidationError("That is not the course's name.")
        return self.cleaned_data["confirm"]


class ResetOwnForm(forms.Form):
    keep_work = forms.BooleanField(required=False, initial=True, label="Keep my current files as a snapshot")
    confirm = forms.BooleanField(label="I understand my VE gets a fresh copy of the course image")


class ResetStudentForm(forms.Form):
    """A teacher's reset of one student's VE: the same choice as the class reset, asked before anything goes."""

    keep_work = forms.BooleanField(required=False, initial=True,
                                   label="Keep the student's current files as a snapshot of their VE first")
    confirm = forms.BooleanField(label="Give this student's VE a fresh copy of the course image")


class RemoveStudentForm(forms.Form):
    archive = forms.BooleanField(required=False, initial=True, label="Back up their VE first")
    confirm = forms.BooleanField(label="Remove this student from the course and destroy their VE")


class AddStudentForm(forms.Form):
    name = forms.CharField(max_length=150, required=False, label="Name")
    login = forms.CharField(max_length=254, label="E-mail or user name")
    group = forms.CharField(max_length=64, required=False, label="Group")
    provision = forms.BooleanField(required=False, initial=True, label="Build their VE now")
