"""The wire records between the client and the handler: what an invocation asks, what it answers.

An invocation's event and response travel as JSON (the Invoke API's payload, the local
environments' pipe, trigger mode's completion record). These frozen dataclasses are the only
place their fields are named: the client builds an `InvokeEvent` and reads an
`InvokeResponse`; the handler does the reverse. ``to_wire``/``from_wire`` convert at the
transport's edge, and unknown fields are ignored there, so a handler and a client one minor
release apart still understand each other (the payload format itself is versioned by
`protocol.PROTOCOL_VERSION`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

RUN = "run"
PING = "ping"
OK = "ok"
ERROR = "error"


@dataclass(frozen=True)
class InvokeEvent:
    """Run one job (``op == "run"``).

    Attributes
    ----------
    bucket
        The run's bucket.
    job_key
        Where the job lives (or, when it travels inline, the key it is bound to).
    result_key
        Where this attempt writes its output (each attempt has its own).
    inline_max
        The output travels back in the response when its encoded size is at most this.
    job
        The signed job, base64, when it travels in the event; None: read it from ``job_key``.
    max_output
        Largest encoded output the task may return (None: no limit).
    tasks
        Graph tasks the job runs (a fused group runs several): for logs and models.
    """

    bucket: str
    job_key: str
    result_key: str = ""
    inline_max: int = 0
    job: str | None = None
    max_output: int | None = None
    tasks: int = 1

    def attempt(self, result_key: str) -> InvokeEvent:
        """The same job, for the attempt that writes to ``result_key``."""
        # (built directly: dataclasses.replace costs a few microseconds, once per task)
        return InvokeEvent(self.bucket, self.job_key, result_key, self.inline_max, self.job,
                           self.max_output, self.tasks)

    def carrying(self, job: str) -> InvokeEvent:
        """The same job, travelling in the event (``job``: the signed job, base64)."""
        return InvokeEvent(self.bucket, self.job_key, self.result_key, self.inline_max, job,
                           self.max_output, self.tasks)

    @property
    def attempt_number(self) -> str:
        """The attempt, as its result key spells it (``...-a<attempt>.out``)."""
        return self.result_key.rsplit("-a", 1)[-1].split(".")[0]

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"op": RUN, "bucket": self.bucket, "job_key": self.job_key,
                                "result_key": self.result_key, "inline_max": self.inline_max}
        if self.job is not None:
            wire["job"] = self.job
        if self.max_output is not None:
            wire["max_output"] = self.max_output
        if self.tasks != 1:
            wire["tasks"] = self.tasks
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> InvokeEvent:
        max_output = wire.get("max_output")
        return cls(bucket=wire.get("bucket") or "", job_key=wire.get("job_key") or "",
                   result_key=wire.get("result_key") or "",
                   inline_max=int(wire.get("inline_max") or 0), job=wire.get("job"),
                   max_output=None if max_output is None else int(max_output),
                   tasks=int(wire.get("tasks") or 1))


@dataclass(frozen=True)
class RunStats:
    """What one invocation measured, for billing, models, logs and the dashboard.

    Attributes
    ----------
    cold
        The first invocation in its execution environment.
    read_s, run_s, write_s, duration_s
        Seconds reading the job and its inputs, running the task, writing the output, in all.
    peak_rss_mb
        The environment's peak resident memory, MB.
    s3_gets, s3_puts
        S3 requests the invocation made (billed per request).
    request_id, pid
        Lambda's request id; the process that ran it.
    billed_ms, max_memory_mb, init_ms
        What Lambda's ``REPORT`` line said (where a backend read it): billed duration,
        the INIT phase of a cold start included; memory used; INIT duration.
    """

    cold: bool = False
    read_s: float = 0.0
    run_s: float = 0.0
    write_s: float = 0.0
    duration_s: float | None = None
    peak_rss_mb: float | None = None
    s3_gets: int = 0
    s3_puts: int = 0
    request_id: str | None = None
    pid: int | None = None
    billed_ms: int | None = None
    max_memory_mb: int | None = None
    init_ms: float | None = None

    def requests(self, gets: int, puts: int) -> RunStats:
        """These stats with ``gets``/``puts`` more S3 requests (made around the handler)."""
        return dataclasses.replace(self, s3_gets=self.s3_gets + gets, s3_puts=self.s3_puts + puts)

    def to_wire(self) -> dict[str, Any]:
        return {f.name: value for f in _STATS_FIELDS
                if (value := getattr(self, f.name)) is not None}

    @classmethod
    def from_wire(cls, wire: dict[str, Any] | None) -> RunStats:
        if not wire:
            return _NO_STATS
        return cls(**{name: wire[name] for name in _STATS_NAMES if name in wire})


_STATS_FIELDS = dataclasses.fields(RunStats)
_STATS_NAMES = frozenset(f.name for f in _STATS_FIELDS)
_NO_STATS = RunStats()


@dataclass(frozen=True)
class InvokeResponse:
    """What the handler answers to an `InvokeEvent`.

    Attributes
    ----------
    status
        ``"ok"``: the task returned; ``"error"``: the task raised, and the payload holds the
        exception and its traceback.
    nbytes
        Encoded size of the payload.
    size
        The output's in-memory size (``sizeof``), which the scheduler is told.
    type
        The output's type name.
    stats
        What the invocation measured.
    result
        The signed payload, base64, when it travels in the response; None: it is at
        ``result_key``.
    result_key
        Where the payload was written (None when it travels inline).
    log
        What the task printed or logged (None: nothing).
    """

    status: str
    nbytes: int
    size: int = 0
    type: str = ""
    stats: RunStats = field(default_factory=RunStats)
    result: str | None = None
    result_key: str | None = None
    log: str | None = None

    def with_stats(self, stats: RunStats) -> InvokeResponse:
        return dataclasses.replace(self, stats=stats)

    def to_wire(self) -> dict[str, Any]:
        return {"status": self.status, "nbytes": self.nbytes, "size": self.size,
                "type": self.type, "stats": self.stats.to_wire(), "result": self.result,
                "result_key": self.result_key, "log": self.log}

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> InvokeResponse:
        return cls(status=wire["status"], nbytes=int(wire["nbytes"]),
                   size=int(wire.get("size") or 0), type=wire.get("type") or "",
                   stats=RunStats.from_wire(wire.get("stats")), result=wire.get("result"),
                   result_key=wire.get("result_key"), log=wire.get("log"))


@dataclass(frozen=True)
class PingEvent:
    """Ask a function for its versions (``op == "ping"``).

    Attributes
    ----------
    key
        Also report whether the environment can read its signing key (and which key it is).
    """

    key: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"op": PING, "key": True} if self.key else {"op": PING}

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> PingEvent:
        return cls(key=bool(wire.get("key")))


@dataclass(frozen=True)
class PingAnswer:
    """What the handler answers to a `PingEvent`.

    Attributes
    ----------
    versions
        What the environment runs (`env.versions`): Python, protocol and packages.
    key
        ``{"id": fingerprint}`` of the signing key the environment reads, or
        ``{"error": why}``; None when not asked (or a handler too old to say).
    """

    versions: dict[str, Any]
    key: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"status": OK, "versions": self.versions}
        if self.key is not None:
            wire["key"] = self.key
        return wire

    @classmethod
    def parse(cls, body: bytes | None, function_error: Any = None) -> PingAnswer | None:
        """The answer in an invoke's response ``body``, or None if it is not a dask-lambda
        handler's (a function error, not JSON, no versions)."""
        try:
            wire = json.loads(body or b"null")
        except ValueError:
            return None
        return None if function_error else cls.from_wire(wire)

    @classmethod
    def from_wire(cls, wire: Any) -> PingAnswer | None:
        """The answer in a decoded ping response, or None if it is not one."""
        if not isinstance(wire, dict) or not isinstance(wire.get("versions"), dict):
            return None
        key = wire.get("key")
        return cls(versions=wire["versions"], key=key if isinstance(key, dict) else None)

    def key_problem(self, key_id: str | None) -> str | None:
        """Why the function cannot use its signing key, or None.

        ``key_id``: the fingerprint the function's configuration names. A handler too old
        to say is not judged here (its versions differ).
        """
        if self.key is None:
            return None
        if self.key.get("error"):
            return str(self.key["error"])
        if key_id and self.key.get("id") != key_id:
            return ("the function read another signing key than its configuration names: run "
                    "`dask-lambda deploy` again")
        return None


# -- on the wire form, where a transport carries it as it is ---------------------------------


def add_stats(wire: dict[str, Any], **figures: Any) -> dict[str, Any]:
    """Add ``figures`` (`RunStats` fields: what Lambda's REPORT line said) to the stats of a
    response in its wire form; returns ``wire``."""
    wire.setdefault("stats", {}).update(figures)
    return wire


def add_requests(wire: dict[str, Any], gets: int, puts: int) -> dict[str, Any]:
    """Count ``gets``/``puts`` more S3 requests (made around the handler) in a wire response."""
    stats = wire.setdefault("stats", {})
    stats["s3_gets"] = stats.get("s3_gets", 0) + gets
    stats["s3_puts"] = stats.get("s3_puts", 0) + puts
    return wire


def ran_cold(wire: dict[str, Any]) -> bool:
    """Whether a wire response says it ran in a new execution environment."""
    return bool((wire.get("stats") or {}).get("cold"))


def op(wire: dict[str, Any]) -> Any:
    """The operation an event asks for (``"run"``, ``"ping"``; anything else is refused)."""
    return wire.get("op")
