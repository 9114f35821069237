"""Settings for vzpanel, read from the environment.

VZPANEL_STATE   state directory: SQLite database and the secret key (default /var/lib/vzpanel)
DATABASE_URL    postgres://user:pass@host/db or sqlite:////path (default: SQLite in the state dir)
REDIS_URL       Redis for RQ and the Channels layer (default: the private one `serve` starts)
VZPANEL_NODE    name of this node and its queue `node:<name>` (default "local")
VZ_ROOT         passed through to the engine (the node agent only)
VZPANEL_CONSOLE_LINGER        seconds a console session survives with nobody watching (default 600)
VZPANEL_CONSOLE_IDLE_TIMEOUT  seconds without input after which a console session ends (default 3600)
VZPANEL_AGENT_WORKERS         node agent processes serve starts, tasks of different VEs run at once (default 3)
VZPANEL_CONSOLE_RECHECK       seconds between checks that an open console's user may still see its VE (default 20)
"""

import os
import secrets
from pathlib import Path

from vzpanel.lib import dburl

BASE_DIR = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("VZPANEL_STATE", "/var/lib/vzpanel"))
SECRET_KEY_FILE = STATE_DIR / "secret_key"


def _secret_key() -> str:
    if os.environ.get("VZPANEL_SECRET_KEY"):
        return os.environ["VZPANEL_SECRET_KEY"]
    try:
        return SECRET_KEY_FILE.read_text().strip()
    except OSError:
        # `serve` writes the file before any server starts; settings never write to the host.
        return "ephemeral-" + secrets.token_urlsafe(40)


SECRET_KEY = _secret_key()
DEBUG = os.environ.get("VZPANEL_DEBUG", "") == "1"
ALLOWED_HOSTS = [h for h in os.environ.get("VZPANEL_ALLOWED_HOSTS", "*").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("VZPANEL_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

VZPANEL_NODE = os.environ.get("VZPANEL_NODE", "local")
REDIS_URL = os.environ.get("REDIS_URL", f"unix://{STATE_DIR / 'run' / 'redis.sock'}")
VZ_ROOT = os.environ.get("VZ_ROOT", "")
# Where the node agent writes VE backups; empty: the engine's own <VZ_ROOT>/backups (/var/lib/vz/backups).
BACKUP_DIR = os.environ.get("VZPANEL_BACKUP_DIR", "")
VZPANEL_WEB_USER = os.environ.get("VZPANEL_WEB_USER", "vzpanel")
RECONCILE_INTERVAL = int(os.environ.get("VZPANEL_RECONCILE_INTERVAL", "30"))
# Node agent processes (RQ workers) `serve` starts: a long task (a backup, a class reset) on one VE must not
# hold up another customer's start. The engine locks each VE; the panel runs one task per VE at a time.
AGENT_WORKERS = max(1, int(os.environ.get("VZPANEL_AGENT_WORKERS", "3")))
# Web console (vzpanel.console): sessions live in the node agent's console daemon.
CONSOLE_LINGER = float(os.environ.get("VZPANEL_CONSOLE_LINGER", "600"))
CONSOLE_IDLE_TIMEOUT = float(os.environ.get("VZPANEL_CONSOLE_IDLE_TIMEOUT", "3600"))
CONSOLE_SCROLLBACK = 256 * 1024
CONSOLE_RECHECK = float(os.environ.get("VZPANEL_CONSOLE_RECHECK", "20"))
# Failed logins (per address, per user name) allowed within LOGIN_WINDOW seconds.
LOGIN_FAILURES_PER_IP = 10
LOGIN_FAILURES_PER_USER = 5
LOGIN_WINDOW = 15 * 60

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "django_rq",
    "channels",
    "vzpanel.core",
    "vzpanel.accounts",
    "vzpanel.plans",
    "vzpanel.nodes",
    "vzpanel.ves",
    "vzpanel.tasks",
    "vzpanel.audit",
    "vzpanel.api",
    "vzpanel.console",
    "vzpanel.classroom",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "vzpanel.urls"
ASGI_APPLICATION = "vzpanel.asgi.application"
WSGI_APPLICATION = "vzpanel.wsgi.application"
AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "ves:list"
LOGOUT_REDIRECT_URL = "login"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": dburl.parse(os.environ["DATABASE_URL"])}
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(STATE_DIR / "db.sqlite3")}}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # WAL lets the web server read while the node agent writes; IMMEDIATE makes every
    # transaction take the write lock up front, so quota checks and ctid picks serialise.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


def channel_layers(redis_url: str) -> dict:
    # redis-py 8 reads with a 5 s socket timeout by default, the same 5 s that channels-redis blocks in
    # BZPOPMIN: the read then times out and the websocket drops. Give reads room.
    # Capacity counts messages waiting per channel, and all the websockets of one web process share one
    # ("specific.<process>!"): console output to many terminals, and their keys to the console daemon, need
    # more room than the default 100.
    return {
        "default": {
            "BACKEND": "vzpanel.lib.channels.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": redis_url, "socket_timeout": 30}],
                "channel_capacity": {"console.*": 5000, "specific.*": 5000},
            },
        }
    }


CHANNEL_LAYERS = channel_layers(REDIS_URL)
RQ_QUEUES = {f"node:{VZPANEL_NODE}": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 3600}}
RQ = {"COMMIT_MODE": "auto"}  # we enqueue from transaction.on_commit ourselves

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TZ", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "static_collected"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "vzpanel.api.auth.APITokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "vzpanel.api.views.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "vzpanel API",
    "DESCRIPTION": "Manage VEs, tasks and the audit log. Authenticate with `Authorization: Token <key>`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("VZPANEL_LOG_LEVEL", "WARNING")},
}
