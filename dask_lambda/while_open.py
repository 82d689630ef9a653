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


class EnvironmentLayers:
    """Process-wide environment variables that each open client needs, one layer per client.

    Two clients may need different values (each local backend has its own S3 server): the
    newest open layer wins for each variable, closing a layer brings back the values of the
    layers still open beneath it, and when none is left every variable is as it was before
    the first one. A value of ``None`` in a layer means "unset while this layer is on top".
    """

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self._lock = threading.Lock()
        self._layers: dict[int, dict[str, str | None]] = {}
        self._original: dict[str, str | None] = {}
        self._next = 0
        self._on_change = on_change

    def push(self, values: dict[str, str | None]) -> int:
        """Apply ``values`` on top; returns the token that `pop` takes."""
        import os

        with self._lock:
            for name in values:
                self._original.setdefault(name, os.environ.get(name))
            token = self._next
            self._next += 1
            self._layers[token] = dict(values)
            self._apply()
        return token

    def pop(self, token: int) -> None:
        """Remove a layer (in any order); a token already popped is ignored."""
        with self._lock:
            if self._layers.pop(token, None) is None:
                return
            self._apply()
            if not self._layers:
                self._original = {}

    def _apply(self) -> None:
        import os

        effective = dict(self._original)
        for token in sorted(self._layers):
            effective.update(self._layers[token])
        for name, value in effective.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._on_change()
