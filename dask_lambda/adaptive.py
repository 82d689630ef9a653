"""``scale`` and ``adapt`` on Lambda: the concurrency cap a request asks for, and what
``adapt`` returns (Lambda adapts by itself, within the cap)."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from .errors import ConfigurationError

logger = logging.getLogger("dask_lambda")


def concurrency_cap(n: Any, memory: Any, cores: Any, method: str, *, function_memory: int,
                    concurrency: int, limit: int | None, backend_name: str) -> int | None:
    """The concurrency that ``scale(n, memory, cores)`` asks for (None for 0).

    Parameters
    ----------
    n, memory, cores
        As given to ``scale`` (or ``adapt``'s maxima): workers, bytes (or a string such as
        ``"100 GiB"``, divided by each function's memory), cores.
    method
        ``"scale"`` or ``"adapt"``, for the messages.
    function_memory
        Each function's memory (MB).
    concurrency
        The cap now (for the example in the error message).
    limit, backend_name
        The backend's most tasks at once on this machine (None for no limit), and its name.
    """
    from dask.utils import parse_bytes

    wanted = 0
    try:
        if n is not None and n != 0:
            wanted = max(wanted, int(n))
            if wanted != n or wanted < 0:
                raise ValueError
        if cores is not None:
            wanted = max(wanted, int(cores))
        if memory is not None:
            per = function_memory * 2**20
            wanted = max(wanted, -(-parse_bytes(memory) // per))
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"{method}() takes a whole number of workers (Lambda functions running at "
            f"once), cores, or memory, not n={n!r}, cores={cores!r}, memory={memory!r}: "
            f"e.g. cluster.{method}({max(1, concurrency)})") from None
    if wanted <= 0:
        return None
    if limit is not None and wanted > limit:
        logger.warning("%s(%d): the %s backend runs at most %d tasks at once on this "
                       "machine; the cap is %d", method, wanted, backend_name, limit, limit)
        wanted = limit
    return wanted


class _Adapting(Protocol):
    """What `LambdaAdaptive` needs of its cluster (a `LambdaCluster`): which adapt is on."""

    _adaptive: LambdaAdaptive | None


class LambdaAdaptive:
    """What ``LambdaCluster.adapt`` returns: Lambda adapts by itself, within ``maximum``.

    Attributes
    ----------
    minimum, maximum
        As given to ``adapt`` (``maximum``: the concurrency cap it set).
    """

    def __init__(self, cluster: _Adapting, *, minimum: float, maximum: int):
        self.cluster = cluster
        self.minimum = minimum
        self.maximum = maximum

    def stop(self) -> None:
        """Stop "adapting": the cap stays where it is, as distributed's Adaptive leaves the
        workers it has."""
        if self.cluster._adaptive is self:
            self.cluster._adaptive = None

    def __repr__(self) -> str:
        return f"<LambdaAdaptive: minimum={self.minimum} maximum={self.maximum}>"
