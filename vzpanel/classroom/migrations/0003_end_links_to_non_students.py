"""End the teacher's hold on accounts that were never students.

Before rosters refused them, a roster line naming an existing customer, admin or teacher (by user name
or e-mail) enrolled that account and set its `teacher`: the teacher then saw its VEs and could print a
sign-in link or a new password for it. Those memberships go (the account and its VEs stay its own) and
the `teacher` of every non-student account is cleared, with its unused course sign-in links.
"""

from django.db import migrations


def end_links(apps, schema_editor):
    Membership = apps.get_model("classroom", "Membership")
    LoginLink = apps.get_model("classroom", "LoginLink")
    User = apps.get_model("accounts", "User")
    outsiders = User.objects.exclude(role="student") | User.objects.filter(is_superuser=True)
    ids = list(outsiders.values_list("pk", flat=True))
    Membership.objects.filter(role="student", user_id__in=ids).delete()
    LoginLink.objects.filter(user_id__in=ids, used_at__isnull=True, course__isnull=False).delete()
    User.objects.filter(pk__in=ids, teacher__isnull=False).update(teacher=None)


class Migration(migrations.Migration):

    dependencies = [
        ("classroom", "0002_course_closed_at"),
        ("accounts", "0001_initial"),
    ]

    operations = [migrations.RunPython(end_links, migrations.RunPython.noop)]
