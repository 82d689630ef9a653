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
from collections.abc import Iterator

from .while_open import WhileAnyOpen

#: Net new objects between young-generation collections while a client is open.
GEN0_THRESHOLD = 50_000


def _raise(gen0: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    saved = gc.get_threshold()
    if 0 < saved[0] < gen0:  # 0: the user turned automatic collection off
        gc.set_threshold(gen0, *saved[1:])
    return saved, gc.get_threshold()


def _restore(thresholds: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    saved, set_here = thresholds
    if gc.get_threshold() == set_here:  # unless something else changed them meanwhile
        gc.set_threshold(*saved)


_THRESHOLDS = WhileAnyOpen(_raise, _restore)


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
    with _THRESHOLDS.held(gen0):
        yield
