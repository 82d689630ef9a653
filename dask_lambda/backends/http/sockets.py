"""What a client holding many long-silent sockets needs from the system.

A synchronous invoke's connection is silent for as long as the function runs (up to 900 s),
and NAT gateways, VPC endpoints and load balancers drop TCP flows idle for 350 s (AWS
Knowledge Center, "How do I prevent my Lambda function connected to a VPC from timing
out?": turn on TCP keepalive with a value under 350 s). Every connection of the invoke
path (the direct pool and the sdk client) sends keepalive probes after `KEEPALIVE_IDLE`
seconds of silence (`keepalive`). One such socket is open per invocation in flight, so the
process may need more open files than a shell allows (`raise_open_files_limit`).
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

#: Seconds of silence before the first keepalive probe, then seconds between probes, and
#: unanswered probes before the connection counts as dead: traffic at least every minute, well
#: under the 350 s after which NAT gateways and load balancers forget an idle flow.
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 15
KEEPALIVE_PROBES = 4


def keepalive(sock: Any) -> None:
    """Turn on TCP keepalive on ``sock`` (a socket, or asyncio's view of a transport's one)
    with `KEEPALIVE_IDLE` (Linux, macOS, Windows 10+).

    The idle time is ``TCP_KEEPIDLE`` on Linux and ``TCP_KEEPALIVE`` on macOS (the same
    option under Darwin's name); ``TCP_KEEPINTVL`` and ``TCP_KEEPCNT`` are named alike on
    both. Without the idle time the system's default applies (two hours on Linux and macOS).
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = getattr(socket, "TCP_KEEPIDLE", None)
    if idle is None:
        idle = getattr(socket, "TCP_KEEPALIVE", None)  # macOS
    for option, value in ((idle, KEEPALIVE_IDLE),
                          (getattr(socket, "TCP_KEEPINTVL", None), KEEPALIVE_INTERVAL),
                          (getattr(socket, "TCP_KEEPCNT", None), KEEPALIVE_PROBES)):
        if option is not None:
            with contextlib.suppress(OSError):  # an old kernel without the option
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def raise_open_files_limit(connections: int) -> None:
    """Let this process hold ``connections`` sockets (a synchronous invoke holds one while the
    function runs): raise the soft limit on open files toward the hard one.

    Raises
    ------
    ConfigurationError
        The hard limit is too low (macOS starts shells at 256 open files).
    """
    import resource

    from ...errors import ConfigurationError

    needed = connections + 256  # the rest of the process: S3 pool, pipes, the dashboard
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ConfigurationError(
            f"concurrency={connections} needs about {needed} open files (one connection per "
            f"invocation in flight) and this process may open at most {hard}: raise the limit "
            f"before starting Python (`ulimit -n {needed}`), or lower the concurrency, e.g. "
            f"LambdaClient(..., concurrency={max(1, hard - 256)})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
