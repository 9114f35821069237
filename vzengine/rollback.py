"""A rollback stack for multi-step host changes: each step registers its undo."""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)


class Rollback:
    """Undo registered steps in reverse order unless ``commit()`` was called.

    Used as a context manager; an exception in an undo step is logged and the
    remaining undo steps still run, so one failed cleanup never hides the others.
    """

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], object]]] = []

    def add(self, what: str, fn: Callable[[], object]) -> None:
        self._undo.append((what, fn))

    def commit(self) -> None:
        self._undo.clear()

    def undo(self) -> None:
        while self._undo:
            what, fn = self._undo.pop()
            try:
                fn()
            except Exception:  # keep undoing the rest
                log.exception("rollback step failed: %s", what)

    def __enter__(self) -> Rollback:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.undo()
        self._undo.clear()
