"""How long operations report how far they are: ``progress(percent, message)``; the one definition."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, str], None]


def quiet(_pct: int, _msg: str) -> None:
    """A progress that says nothing (the default of every operation)."""
