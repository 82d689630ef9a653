"""The client process's garbage collector while a `LambdaClient` is open.

The client process runs the scheduler and the gateway worker, which keep several
long-lived objects per task (futures, task states, messages).  With Python's
default threshold (a young-generation collection every 700 net new objects) the
collector then runs so often, and reaches the old generation so often, that on
10,000 simulated Lambda tasks it took about 40 % of the client's CPU time
(benchmarks/README.md, "scale.py").  While a client is open the young-generation
threshold is raised to `GEN0_THRESHOLD`; the previous thresholds come back when
the last open client closes (unless something else changed them meanwhile).
Collections still run, and ``gc.collect()`` works as usual.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

#: Net new objects between young-generation collections while a client is open.
GEN0_THRESHOLD = 50_000


class _Thresholds:
    """Raise the young-generation threshold while at least one client is open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients = 0
        self._saved: tuple[int, ...] = ()
        self._set: tuple[int, ...] = ()

    def enter(self, gen0: int) -> None:
        with self._lock:
            self._clients += 1
            if self._clients > 1:
                return
            self._saved = gc.get_threshold()
            if 0 < self._saved[0] < gen0:  # 0: the user turned automatic collection off
                gc.set_threshold(gen0, *self._saved[1:])
            self._set = gc.get_threshold()

    def exit(self) -> None:
        with self._lock:
            self._clients -= 1
            if self._clients == 0 and gc.get_threshold() == self._set:
                gc.set_threshold(*self._saved)


_THRESHOLDS = _Thresholds()


@contextlib.contextmanager
def collect_less_often(gen0: int = GEN0_THRESHOLD) -> Iterator[None]:
    """Run young-generation collections every ``gen0`` net new objects inside the block.

    Examples
    --------
    >>> import gc
    >>> with collect_less_often(50_000):
    ...     gc.get_threshold()[0] >= 50_000
    True
    """
    _THRESHOLDS.enter(gen0)
    try:
        yield
    finally:
        _THRESHOLDS.exit()
