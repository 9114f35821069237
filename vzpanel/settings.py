"""Settings for vzpanel, read from the environment.

VZPANEL_STATE   state directory: SQLite database and the secret key (default /var/lib/vzpanel)
DATABASE_URL    postgres://user:pass@host/db or sqlite:////path (default: SQLite in the state dir)
REDIS_URL       Redis for RQ and the Channels layer (default: the private one `serve` starts, as user `panel`)
VZPANEL_NODE    name of this node and its queue `node:<name>` (default "local")
VZ_ROOT         passed through to the engine (the node agent only)
VZPANEL_CONSOLE_LINGER        seconds a console session survives with nobody watching (default 600)
VZPANEL_CONSOLE_IDLE_TIMEOUT  seconds without input after which a console session ends (default 3600)
VZPANEL_WORKERS               task workers serve starts, tasks of different VEs run at once (default 3)
VZPANEL_CONSOLE_RECHECK       seconds between checks that an open console's user may still see its VE (default 20)
"""

import os
import secrets
import socket
from datetime import timedelta
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
# HTTPS: VZPANEL_TLS=1 (set by `serve` when it serves TLS) makes cookies HTTPS-only, sends HSTS, redirects HTTP.
VZPANEL_TLS = os.environ.get("VZPANEL_TLS", "") == "1"
# The port `serve` serves HTTPS on: plain HTTP requests are redirected there (vzpanel/core/https.py).
VZPANEL_HTTPS_PORT = int(os.environ.get("VZPANEL_HTTPS_PORT", "0") or 0) if VZPANEL_TLS else 0


def _default_hosts() -> list[str]:
    name = socket.gethostname().lower()
    return list(dict.fromkeys(h for h in (name, name.split(".")[0], "localhost", "127.0.0.1", "[::1]") if h))


# Host names the panel answers to (VZPANEL_ALLOWED_HOSTS, comma-separated, "*" for any), by default this
# machine's name and loopback: any other Host header gets 400 (no poisoned absolute URLs or reset links).
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("VZPANEL_ALLOWED_HOSTS", "").split(",") if h.strip()] or _default_hosts()
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("VZPANEL_CSRF_TRUSTED_ORIGINS", "").split(",") if o] + [
    f"{scheme}://{h}" for h in ALLOWED_HOSTS if "*" not in h and not h.startswith(".")
    for scheme in (("https",) if VZPANEL_TLS else ("http", "https"))
]
# Reverse proxies whose X-Forwarded-For/-Proto count (addresses or networks, comma-separated; default none):
# from anyone else those headers are dropped (vzpanel/core/clientip.py).
VZPANEL_TRUSTED_PROXIES = [p.strip() for p in os.environ.get("VZPANEL_TRUSTED_PROXIES", "").split(",") if p.strip()]
if VZPANEL_TRUSTED_PROXIES:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

VZPANEL_NODE = os.environ.get("VZPANEL_NODE", "local")


def _private_redis_url() -> str:
    """The private Redis `serve` runs, as its `panel` ACL user (password in secrets/, readable by the web user)."""
    try:
        password = (STATE_DIR / "secrets" / "redis-panel").read_text().strip()
    except OSError:
        password = ""
    sock = STATE_DIR / "run" / "redis" / "redis.sock"
    return f"unix://panel:{password}@{sock}" if password else f"unix://{sock}"


REDIS_URL = os.environ.get("REDIS_URL") or _private_redis_url()
VZ_ROOT = os.environ.get("VZ_ROOT", "")
# Where the node agent writes VE backups; empty: the engine's own <VZ_ROOT>/backups (/var/lib/vz/backups).
BACKUP_DIR = os.environ.get("VZPANEL_BACKUP_DIR", "")
VZPANEL_WEB_USER = os.environ.get("VZPANEL_WEB_USER", "vzpanel")
RECONCILE_INTERVAL = int(os.environ.get("VZPANEL_RECONCILE_INTERVAL", "30"))
# Seconds between two usage samples of every VE for the graphs (vzpanel/metrics/).
METRICS_INTERVAL = max(1, int(os.environ.get("VZPANEL_METRICS_INTERVAL", "10")))
# Task workers (RQ, the web user) `serve` starts: a long task (a backup, a class reset) on one VE must not
# hold up another customer's start. The engine locks each VE; the panel runs one task per VE at a time.
TASK_WORKERS = max(1, int(os.environ.get("VZPANEL_WORKERS") or os.environ.get("VZPANEL_AGENT_WORKERS") or "3"))
# Web console (vzpanel.console): sessions live in the node agent's console daemon.
CONSOLE_LINGER = float(os.environ.get("VZPANEL_CONSOLE_LINGER", "600"))
CONSOLE_IDLE_TIMEOUT = float(os.environ.get("VZPANEL_CONSOLE_IDLE_TIMEOUT", "3600"))
CONSOLE_SCROLLBACK = 256 * 1024
CONSOLE_RECHECK = float(os.environ.get("VZPANEL_CONSOLE_RECHECK", "20"))
# Brute-force protection (django-axes; vzpanel/accounts/lockout.py): failed sign-ins count per (user name,
# address) and per address, never per user name alone, so nobody locks an account out from elsewhere.
AXES_FAILURE_LIMIT = int(os.environ.get("VZPANEL_LOGIN_FAILURES_PER_USER_IP", "5"))
VZPANEL_LOGIN_FAILURES_PER_IP = int(os.environ.get("VZPANEL_LOGIN_FAILURES_PER_IP", "30"))
AXES_COOLOFF_TIME = timedelta(minutes=int(os.environ.get("VZPANEL_LOGIN_LOCKOUT_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"], "ip_address"]
AXES_USERNAME_FORM_FIELD = "username"
AXES_HANDLER = "vzpanel.accounts.lockout.PanelAxesHandler"
AXES_LOCKOUT_CALLABLE = "vzpanel.accounts.lockout.lockout_response"
AXES_CLIENT_IP_CALLABLE = "vzpanel.core.clientip.client_ip"
AXES_RESET_ON_SUCCESS = False  # else anyone with an account of their own could clear their address's count
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False  # refused attempts are not counted: a lock ends on time
AXES_SENSITIVE_PARAMETERS = ["username", "ip_address", "code", "csrfmiddlewaretoken"]
AXES_DISABLE_ACCESS_LOG = True  # the audit log records sign-ins
AXES_VERBOSE = False
# Two-factor sign-in (django-otp; vzpanel/accounts/twofactor.py): roles that must use it (comma-separated).
VZPANEL_2FA_REQUIRED_ROLES = [r.strip() for r in os.environ.get("VZPANEL_2FA_REQUIRED_ROLES", "admin").split(",")
                              if r.strip()]
OTP_TOTP_ISSUER = os.environ.get("VZPANEL_2FA_ISSUER", "vzpanel")

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
    "drf_spectacular_sidecar",  # Swagger UI's files, served as our own static files at /api/docs/
    "django_rq",
    "channels",
    "axes",  # before vzpanel.accounts: its failed-login receiver runs first, the audit's after it
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
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
    "vzpanel.sso",
    "vzpanel.dashboard",
    "vzpanel.resellers",
    "vzpanel.metrics",
    "vzpanel.traffic",
    "vzpanel.billing",
    "vzpanel.alerts",  # after dashboard and billing: it replaces the dashboard's alerts slot, adds webhook events
]

MIDDLEWARE = [
    "vzpanel.core.clientip.ClientIPMiddleware",  # first: the real client address, forged proxy headers gone
    "vzpanel.core.https.HTTPSRedirectMiddleware",  # plain HTTP to the HTTPS port (serve's TLS)
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "vzpanel.accounts.middleware.TwoFactorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes requires: turns a lockout into its answer
]

ROOT_URLCONF = "vzpanel.urls"
ASGI_APPLICATION = "vzpanel.asgi.application"
WSGI_APPLICATION = "vzpanel.wsgi.application"
AUTH_USER_MODEL = "accounts.User"
# The lockout check first (django-axes requires it), then the backends that check passwords.
AUTHENTICATION_BACKENDS = ["vzpanel.accounts.backends.LockoutBackend", "django.contrib.auth.backends.ModelBackend"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
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

if os.environ.get("VZPANEL_NO_DATABASE") == "1":
    # Root's processes (the console daemon): a database call fails loudly instead of opening the web user's files.
    DATABASES = {"default": {"ENGINE": "django.db.backends.dummy"}}
elif os.environ.get("DATABASE_URL"):
    DATABASES = {"default": dburl.parse(os.environ["DATABASE_URL"])}
else:
    # In data/, the one directory of the state the web user may write (SQLite makes its journal files there).
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(STATE_DIR / "data" / "db.sqlite3")}}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # WAL lets the web server read while the node agent writes; IMMEDIATE makes every
    # transaction take the write lock up front, so quota checks and ctid picks serialise.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
elif DATABASES["default"]["ENGINE"].endswith("postgresql") and os.environ.get("VZPANEL_DB_POOL") == "1":
    # The web server only (serve sets it there): a new PostgreSQL connection costs ~20 ms of CPU, a third of a
    # page (bench/nodes_bench.py). Not in the task workers, whose jobs run in forked children.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {"min_size": 2, "max_size": 8, "timeout": 10}
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # Django's pool requires it
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
# Webhooks (vzpanel/billing/webhooks.py): seconds before each retry of a failed delivery (needs a task worker
# started with --with-scheduler); after the last one the delivery is failed.
WEBHOOK_RETRY_DELAYS = [int(s) for s in os.environ.get("VZPANEL_WEBHOOK_RETRY_DELAYS", "10,60,300,1800,7200").split(",")
                        if s.strip()]

# The test suite (tests/conftest.py) sets this in the panel processes it starts: a password hash costs about a
# second by design, and the suite makes and checks thousands. Never set it on a real panel.
if os.environ.get("VZPANEL_TESTS_FAST_PASSWORD_HASHER") == "1":
    from django.conf import global_settings

    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", *global_settings.PASSWORD_HASHERS]

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
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT = VZPANEL_TLS
SECURE_HSTS_SECONDS = int(os.environ.get("VZPANEL_HSTS_SECONDS", "31536000")) if VZPANEL_TLS else 0
SECURE_SSL_HOST = os.environ.get("VZPANEL_SSL_HOST") or None  # host:port of the HTTPS side, when not 443

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
    "DEFAULT_SCHEMA_CLASS": "vzpanel.api.schema.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "vzpanel.api.views.exception_handler",
    # Generous limits that stop a runaway script, not a person: 429 with Retry-After beyond them.
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": os.environ.get("VZPANEL_API_RATE_ANON", "120/minute"),
        "user": os.environ.get("VZPANEL_API_RATE_USER", "1200/minute"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "vzpanel API",
    "DESCRIPTION": "Manage VEs, tasks and the audit log. Authenticate with `Authorization: Token <key>`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # /api/docs/ loads Swagger UI from the panel's static files (drf-spectacular-sidecar), never a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}
# /metrics (vzpanel/core/prometheus.py): a scraper sends `Authorization: Bearer <this>` (or an admin's API token).
VZPANEL_METRICS_TOKEN = os.environ.get("VZPANEL_METRICS_TOKEN", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("VZPANEL_LOG_LEVEL", "WARNING")},
}

# Single sign-on (the variables are listed in vzpanel/sso/conf.py): LDAP and OpenID Connect, each off while unset.
# Its backends go after the others, so the lockout check stays first and local accounts are tried before LDAP.
from vzpanel.sso import conf as sso_conf  # noqa: E402

_sso = sso_conf.from_env(os.environ)
globals().update(_sso.settings)
AUTHENTICATION_BACKENDS = [
    *globals().get("AUTHENTICATION_BACKENDS", ["django.contrib.auth.backends.ModelBackend"]),
    *_sso.backends,
]

# E-mail (alerts): Django's SMTP backend by default, to VZPANEL_SMTP_HOST:VZPANEL_SMTP_PORT.
EMAIL_BACKEND = os.environ.get("VZPANEL_EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = os.environ.get("VZPANEL_SMTP_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("VZPANEL_SMTP_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("VZPANEL_SMTP_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("VZPANEL_SMTP_PASSWORD", "")
EMAIL_USE_TLS = os.environ.get("VZPANEL_SMTP_STARTTLS", "") == "1"
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = os.environ.get("VZPANEL_MAIL_FROM", "vzpanel@localhost")
