"""Migrate the panel's database and make the first admin: run by `serve` as the web user."""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = ("Apply database migrations and create the first admin (VZPANEL_ADMIN_USER / VZPANEL_ADMIN_PASSWORD, "
            "or 'admin' with a generated password printed once). Safe to run again.")

    def handle(self, *args, **options):
        call_command("migrate", interactive=False, verbosity=0)
        User = get_user_model()
        name = os.environ.get("VZPANEL_ADMIN_USER", "")
        password = os.environ.get("VZPANEL_ADMIN_PASSWORD", "")
        if not name and User.objects.filter(is_superuser=True).exists():
            self.stdout.write("an admin account exists already (password unchanged)")
            return
        name = name or "admin"
        if User.objects.filter(username=name).exists():
            self.stdout.write(f"admin {name} exists already (password unchanged)")
            return
        generated = not password
        password = password or secrets.token_urlsafe(12)
        User.objects.create_superuser(name, "", password, role=User.Role.ADMIN)
        if generated:
            self.stdout.write(f"created admin {name!r} with password {password!r} (shown once; change it after "
                              "logging in)")
        else:
            self.stdout.write(f"created admin {name!r} with the password from VZPANEL_ADMIN_PASSWORD")
