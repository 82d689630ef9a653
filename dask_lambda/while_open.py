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
    newest open layer wins for each variable it names, closing a layer brings back, for the
    variables it named, the value of the newest layer still open that names them (or, with
    none left, the value from before the first), and a layer never touches a variable it
    does not name, so what the program set meanwhile stays. ``None`` in a layer means
    "unset while this layer is on top".
    """

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self._lock = threading.Lock()
        #: For each variable a layer names: its value before any layer, and the layers'
        #: values, oldest first, as (token, value).
        self._original: dict[str, str | None] = {}
        self._stacks: dict[str, list[tuple[int, str | None]]] = {}
        self._layers: dict[int, tuple[str, ...]] = {}
        self._next = 0
        self._on_change = on_change

    def push(self, values: dict[str, str | None]) -> int:
        """Apply ``values`` on top; returns the token that `pop` takes."""
        import os

        with self._lock:
            token = self._next
            self._next += 1
            self._layers[token] = tuple(values)
            for name, value in values.items():
                if name not in self._stacks:
                    self._original[name] = os.environ.get(name)
                    self._stacks[name] = []
                self._stacks[name].append((token, value))
                _set(name, value)
            self._on_change()
        return token

    def pop(self, token: int) -> None:
        """Remove a layer (in any order); a token already popped is ignored."""
        with self._lock:
            names = self._layers.pop(token, None)
            if names is None:
                return
            for name in names:
                stack = self._stacks[name]
                on_top = stack[-1][0] == token
                stack[:] = [entry for entry in stack if entry[0] != token]
                if stack:
                    if on_top:
                        _set(name, stack[-1][1])
                else:
                    del self._stacks[name]
                    _set(name, self._original.pop(name))
            self._on_change()


def _set(name: str, value: str | None) -> None:
    import os

    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
