"""End every session once: roles that must use two factors sign in again through the new sign-in."""

from django.db import migrations


def end_sessions(apps, schema_editor):
    apps.get_model("sessions", "Session").objects.all().delete()


class Migration(migrations.Migration):

    dependencies = [
        ("accounts", "0001_initial"),
        ("sessions", "0001_initial"),
        ("otp_totp", "0003_add_timestamps"),
        ("otp_static", "0003_add_timestamps"),
    ]

    operations = [migrations.RunPython(end_sessions, migrations.RunPython.noop)]
