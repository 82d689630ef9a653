"""Process-wide settings that hold while at least one `LambdaClient` is open.

Clients can close in any order, so a plain context manager per client would restore a
stale value when an older client closes after a newer one; `WhileAnyOpen` counts the open
clients, applies the setting when the first opens and undoes it when the last closes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any


class WhileAnyOpen:
    """Apply a setting while ``enter`` has been called more often than ``exit``.

    Parameters
    ----------
    apply
        Called by the first ``enter`` (with its arguments); returns what ``restore`` needs.
    restore
        Called by the last ``exit`` with what ``apply`` returned.
    """

    def __init__(self, apply: Callable[..., Any], restore: Callable[[Any], None]) -> None:
        self._apply = apply
        self._restore = restore
        self._lock = threading.Lock()
        self._open = 0
        self._saved: Any = None

    def enter(self, *args: Any) -> None:
        with self._lock:
            self._open += 1
            if self._open == 1:
                self._saved = self._apply(*args)

    def exit(self) -> None:
        with self._lock:
            self._open -= 1
            if self._open == 0:
                saved, self._saved = self._saved, None
                self._restore(saved)

    @contextlib.contextmanager
    def held(self, *args: Any) -> Iterator[None]:
        """``enter(*args)`` for the duration of a ``with`` block."""
        self.enter(*args)
        try:
            yield
        finally:
            self.exit()
