"""Parse a DATABASE_URL into a Django DATABASES entry."""

from urllib.parse import parse_qsl, unquote, urlsplit

ENGINES = {
    "postgres": "django.db.backends.postgresql",
    "postgresql": "django.db.backends.postgresql",
    "pgsql": "django.db.backends.postgresql",
    "sqlite": "django.db.backends.sqlite3",
}


def parse(url: str) -> dict:
    """Return the Django database settings that DATABASE_URL describes."""
    parts = urlsplit(url)
    if parts.scheme not in ENGINES:
        raise ValueError(f"DATABASE_URL: unsupported scheme {parts.scheme!r} (use postgres:// or sqlite:///)")
    if parts.scheme == "sqlite":
        # sqlite:////abs/path.db -> /abs/path.db ; sqlite:///rel.db -> rel.db
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if not path:
            raise ValueError("DATABASE_URL: sqlite:/// needs a file path")
        return {"ENGINE": ENGINES["sqlite"], "NAME": path}
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise ValueError("DATABASE_URL: no database name")
    return {
        "ENGINE": ENGINES[parts.scheme],
        "NAME": name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": unquote(parts.hostname or ""),
        "PORT": str(parts.port or ""),
        "OPTIONS": dict(parse_qsl(parts.query)),
    }
