"""A small OpenID Connect provider for the SSO tests: django-oauth-toolkit on its own SQLite database.

    python oidc_provider.py STATE_DIR migrate                             (database and signing key)
    python oidc_provider.py STATE_DIR client CLIENT_ID SECRET REDIRECT_URI
    python oidc_provider.py STATE_DIR user NAME PASSWORD [GROUP ...]      (creates or updates; sets the groups)
    python oidc_provider.py STATE_DIR serve PORT                          (on 127.0.0.1 until killed)

Its ID tokens and userinfo carry preferred_username, email, given_name and "groups" (the user's Django groups).
"""

from __future__ import annotations

import sys
from pathlib import Path

import django
from django.conf import settings

LOGIN_PAGE = """<!doctype html><title>Provider login</title>
<form method="post">{% csrf_token %}
<input name="username"><input name="password" type="password">
<input type="hidden" name="next" value="{{ next }}"><button>Sign in</button></form>"""


def configure(state: Path) -> None:
    key_file = state / "key.pem"
    settings.configure(
        DEBUG=False,
        SECRET_KEY="oidc-test-provider-only-" + "x" * 40,
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "oauth2_provider",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(state / "db.sqlite3")}},
        TEMPLATES=[{
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "OPTIONS": {
                "loaders": [("django.template.loaders.locmem.Loader", {"registration/login.html": LOGIN_PAGE})],
                "context_processors": ["django.template.context_processors.request"],
            },
        }],
        LOGIN_URL="/accounts/login/",
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        OAUTH2_PROVIDER={
            "OIDC_ENABLED": True,
            "OIDC_RSA_PRIVATE_KEY": key_file.read_text() if key_file.exists() else "",
            "OAUTH2_VALIDATOR_CLASS": f"{__name__}.Validator",
            "SCOPES": {"openid": "OpenID Connect", "email": "e-mail", "profile": "profile"},
            "PKCE_REQUIRED": True,
        },
    )
    django.setup()


def define_app() -> None:
    """Define the validator and URLs, which need the settings first."""
    from django.contrib.auth.views import LoginView
    from django.urls import include, path
    from oauth2_provider.oauth2_validators import OAuth2Validator

    class Validator(OAuth2Validator):
        oidc_claim_scope = None  # every claim, whatever the scopes

        def get_additional_claims(self, request):
            user = request.user
            return {
                "preferred_username": user.username,
                "email": user.email,
                "given_name": user.first_name,
                "groups": sorted(user.groups.values_list("name", flat=True)),
            }

    module = sys.modules[__name__]
    module.Validator = Validator
    module.urlpatterns = [
        path("accounts/login/", LoginView.as_view()),
        path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    ]


def main(argv: list[str]) -> None:
    state, command, args = Path(argv[1]), argv[2], argv[3:]
    if command == "migrate":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (state / "key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ))
    configure(state)
    define_app()
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from oauth2_provider.models import Application

    if command == "migrate":
        call_command("migrate", verbosity=0)
    elif command == "client":
        client_id, secret, redirect_uri = args
        Application.objects.filter(client_id=client_id).delete()
        Application.objects.create(
            name="vzpanel", client_id=client_id, client_secret=secret, redirect_uris=redirect_uri,
            client_type=Application.CLIENT_CONFIDENTIAL, authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
            algorithm=Application.RS256_ALGORITHM, skip_authorization=True,
        )
    elif command == "user":
        name, password, *groups = args
        user, _ = User.objects.get_or_create(username=name, defaults={"email": f"{name}@example.org"})
        user.first_name = name.capitalize()
        user.set_password(password)
        user.save()
        user.groups.set([Group.objects.get_or_create(name=g)[0] for g in groups])
    elif command == "serve":
        call_command("runserver", f"127.0.0.1:{args[0]}", use_reloader=False, use_threading=True, skip_checks=True)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv)
