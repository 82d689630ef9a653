"""The one place that owns the S3 key layout and the job/result wire format.

Imported by both the client library (``dask_lambda``) and the Lambda handler,
so it depends on the standard library only (``cloudpickle`` is imported when
a payload is built or opened).

Key layout, under the user's prefix ``P`` (may be empty)::

    P/jobs/<run>/<hh>/<task>-a<attempt>.job       job objects (the S3-trigger filter is P/jobs/)
    P/results/<run>/<hh>/<task>-a<attempt>.out    outputs and errors
    P/results/<run>/_claims/<hh>/<task>-a<n>.out  S3-trigger mode: a job's claim
    P/results/<run>/_done/<hh>/<task>-a<n>.out.json   S3-trigger mode: its completion record
    P/jobs/<run>/_files/<hh>/<sha>-<name>         modules and files that travel with the jobs
    P/runs/<run>.json                             a live client's marker, rewritten as heartbeat

A *run* is one client's lifetime; everything it wrote lives below its run id,
so clean-up is "delete two prefixes".  Keys include the attempt number, so a
retried or duplicated attempt can never overwrite another attempt's output.
``<hh>`` is two hex digits of the task key's hash: S3 sustains about 3,500 writes a
second per partitioned prefix and answers 503 SlowDown beyond it
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/optimizing-performance.html),
so a burst of short tasks spreads its writes over 256 prefixes that S3 can split.

Payload format (job and result alike)::

    b"DLJ1" | HMAC-SHA256 (32 bytes) | header length (4 bytes, big endian) | header JSON
            | frame 0 | frame 1 ...

Frame 0 is a pickle (protocol 5, cloudpickle) whose large buffers (numpy and
pandas memory, bytes) are carried out-of-band as frames 1..n, so they are
never copied into the pickle stream, which is how ``distributed`` serializes
the same types.  The HMAC covers everything after it and is keyed with the
run's key (`run_key`: derived from a secret the client and the function share
and that is never written to the bucket, and the run id): a payload whose
signature does not verify is rejected before anything is unpickled.

Every payload is also bound to where it belongs: its header's ``id`` is the
`identity` of the S3 object it is written to (or, travelling inline in an invoke
request or response, the object it stands for), and every reader says which
object it expects.  A signed payload copied over another object, or replayed
from another attempt or run, is refused before it is unpickled
(`MisplacedPayloadError`), so write access to the bucket is not enough to change
what a computation returns.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import limits

PROTOCOL_VERSION = 2
#: Distributions whose versions a ping answer reports (beside Python's and the protocol's):
#: those whose objects travel pickled, so the client can refuse a handler that differs.
VERSIONED = ("cloudpickle", "dask", "numpy", "pandas", "pyarrow", "dask-lambda")
MAGIC = b"DLJ1"
_DIGEST = hashlib.sha256
_MAC_LEN = 32
_LEN = struct.Struct(">I")

JOBS = "jobs"
RESULTS = "results"
RUNS = "runs"

#: Name of the environment variable holding the shared signing key (hex).
SIGNING_KEY_ENV = "DASK_LAMBDA_SIGNING_KEY"


class PayloadError(Exception):
    """A payload is malformed, of another protocol version, or fails its signature."""


class MisplacedPayloadError(PayloadError):
    """A correctly signed payload was found where another one belongs (copied over it, or
    replayed from another attempt or run); it was refused before anything was unpickled."""


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def task_token(key: Any) -> str:
    """A short, S3-safe, unique token for a Dask task key: ``<hh>/<readable>-<hash>``.

    The readable part helps a person browsing the bucket; the hash makes it unique, and
    its first two hex digits lead as a folder of their own, which spreads a run's keys over
    256 prefixes (see the module docstring).
    """
    text = str(key)
    head = _UNSAFE.sub("_", text)[:48].strip("_") or "task"
    digest = hashlib.sha1(text.encode()).hexdigest()
    return f"{digest[:2]}/{head}-{digest[2:16]}"


def identity(bucket: str, key: str) -> str:
    """What a signed payload is bound to: the S3 object it is written to, or stands for.

    >>> identity("b", "dask/results/0123/ab/x-a0.out")
    's3://b/dask/results/0123/ab/x-a0.out'
    """
    return f"s3://{bucket}/{key}"


def run_key(deployment_key: bytes, run: str) -> bytes:
    """The key a run's payloads are signed with: derived from the key the client and the
    function share and the run id, so a payload of one run never verifies in another."""
    return hmac.new(deployment_key, b"dask-lambda run " + run.encode(), _DIGEST).digest()


_RUN_OF = re.compile(rf"(?:^|/)(?:{JOBS}|{RESULTS})/([0-9a-f]+)/[^/]")


def run_of(key: str) -> str:
    """The run id of a job or result key (the last ``jobs/<run>/`` or ``results/<run>/``).

    >>> run_of("dask/jobs/0123abcd/ab/x-a0.job")
    '0123abcd'
    """
    found = _RUN_OF.findall(key)
    if not found:
        raise PayloadError(f"not a dask-lambda job or result key: {key!r}")
    return str(found[-1])


@dataclass(frozen=True)
class Layout:
    """S3 key layout of one run.

    Attributes
    ----------
    bucket
        Bucket name.
    prefix
        The user's prefix inside the bucket, without leading or trailing ``/``.
    run
        The run id (one per client).
    """

    bucket: str
    prefix: str
    run: str

    def _root(self, kind: str) -> str:
        return f"{self.prefix}/{kind}" if self.prefix else kind

    @property
    def jobs_root(self) -> str:
        """Prefix of every job object of every run (the S3-trigger filter)."""
        return self._root(JOBS) + "/"

    @property
    def results_root(self) -> str:
        """Prefix of every result object of every run."""
        return self._root(RESULTS) + "/"

    @property
    def runs_root(self) -> str:
        """Prefix of the run markers (one small object per live client, its heartbeat)."""
        return self._root(RUNS) + "/"

    @property
    def run_marker(self) -> str:
        return f"{self.runs_root}{self.run}.json"

    @property
    def run_prefixes(self) -> tuple[str, str]:
        """The two prefixes holding everything this run wrote."""
        return (f"{self.jobs_root}{self.run}/", f"{self.results_root}{self.run}/")

    def job_key(self, token: str, attempt: int) -> str:
        """Key of a job object (``token`` from `task_token`, plus any suffix)."""
        return f"{self.jobs_root}{self.run}/{token}-a{attempt}.job"

    def result_key(self, token: str, attempt: int) -> str:
        """Key of an attempt's output object."""
        return f"{self.results_root}{self.run}/{token}-a{attempt}.out"

    def file_key(self, sha: str, name: str) -> str:
        """Key of a file that travels with the run's jobs (a module, ``upload_file``)."""
        return f"{self.jobs_root}{self.run}/{FILES}/{sha[:2]}/{sha[2:18]}-{name}"

    @property
    def done_prefix(self) -> str:
        """Prefix of the run's S3-trigger completion records (what the client lists)."""
        return f"{self.results_root}{self.run}/{DONE}/"


#: S3-trigger mode: job objects whose name ends so start the function (the notification's
#: suffix filter); each attempt writes its own.
TRIGGER_SUFFIX = ".trigger.job"
_TRIGGER_ATTEMPT = re.compile(r"-a\d+" + re.escape(TRIGGER_SUFFIX) + "$")


def job_identity(job_key: str) -> str:
    """The key a job payload is signed for, given the key it is read from.

    A job is signed once, for its plain key (``...-a0.job``); in S3-trigger mode each
    attempt's copy (``...-a<n>.trigger.job``) carries that same payload.

    >>> job_identity("p/jobs/0123/ab/x-1-a2.trigger.job")
    'p/jobs/0123/ab/x-1-a0.job'
    """
    return _TRIGGER_ATTEMPT.sub("-a0.job", job_key)


#: Folder of the files that travel with a run's jobs (modules, ``client.upload_file``).
FILES = "_files"

#: Folders beside a run's outputs (S3-trigger mode): a job's claim, its completion record.
CLAIMS = "_claims"
DONE = "_done"


def state_keys(result_key: str) -> tuple[str, str]:
    """The claim and completion-record keys of an S3-trigger attempt's result key.

    Both go below the run, under ``_claims/`` and ``_done/``, keeping the rest of the key,
    so the client finds every record of its run with one listing of `Layout.done_prefix`.

    >>> state_keys("p/results/0123/ab/x-a0.trigger.out")
    ('p/results/0123/_claims/ab/x-a0.trigger.out', 'p/results/0123/_done/ab/x-a0.trigger.out.json')
    """
    run = run_of(result_key)
    head, sep, rest = result_key.rpartition(f"{RESULTS}/{run}/")
    if not sep:
        raise PayloadError(f"not a dask-lambda result key: {result_key!r}")
    base = f"{head}{sep}"
    return f"{base}{CLAIMS}/{rest}", f"{base}{DONE}/{rest}.json"


def refuse_jobs_prefix(key: str, job_key: str | None) -> None:
    """Raise unless ``key`` is outside the jobs prefix of ``job_key`` (and outside ``jobs/``).

    A write under the jobs prefix would be a new job object: in S3-trigger mode it
    would invoke the function again, a loop.
    """
    roots = [f"{JOBS}/"]
    if job_key:
        head, sep, _ = job_key.rpartition(f"{JOBS}/")
        if sep:
            roots.append(head + sep)
    if any(key.startswith(root) for root in roots):
        raise PayloadError(
            f"refusing to write s3 key {key!r}: it is under the jobs prefix, where a write "
            "would trigger the function again. Results go under results/.")


def result_key_for_job(job_key: str) -> str:
    """The result key that belongs to a job key (used by the S3-trigger mode)."""
    head, sep, tail = job_key.rpartition(f"{JOBS}/")
    if not sep or not tail.endswith(".job"):
        raise PayloadError(f"not a dask-lambda job key: {job_key!r}")
    return f"{head}{RESULTS}/{tail[:-4]}.out"


# ---------------------------------------------------------------------------
# Payloads
# ---------------------------------------------------------------------------


@dataclass
class Payload:
    """A decoded job or result.

    Attributes
    ----------
    header
        Small JSON-able metadata (kind, task key, attempt, sizes, stats).
    frames
        Raw frames; frame 0 is the pickle, the rest its out-of-band buffers.
    """

    header: dict
    frames: list = field(default_factory=list)

    def load(self, find_class: Any = None) -> Any:
        """Unpickle frame 0 with its out-of-band buffers.

        ``find_class(module, name)`` may return a stand-in for a global (None: the real
        one); it applies to pickles nested inside this one (`load_nested`) too.
        """
        global _nested_find_class
        if find_class is None:
            return pickle.loads(self.frames[0], buffers=self.frames[1:])
        outer, _nested_find_class = _nested_find_class, find_class
        try:
            return _unpickler(find_class, self.frames[0], self.frames[1:]).load()
        finally:
            _nested_find_class = outer


_nested_find_class: Any = None


def _unpickler(find_class: Any, data: Any, buffers: Any = ()) -> pickle.Unpickler:
    import io

    class _Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:  # noqa: D102
            return find_class(module, name) or super().find_class(module, name)

    return _Unpickler(io.BytesIO(data), buffers=buffers)


def load_nested(blob: bytes) -> Any:
    """Unpickle a pickle nested in a job (a function the client pickled once for many jobs),
    with the stand-ins of the job being loaded."""
    if _nested_find_class is None:
        return pickle.loads(blob)
    return _unpickler(_nested_find_class, blob).load()


def type_name(obj: Any) -> str:
    """``module.qualname`` of ``obj``'s type: how a result's or an error's type is named.

    >>> type_name(1.5)
    'builtins.float'
    """
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def dumps_object(obj: Any, pickler: Any = None) -> list:
    """Pickle ``obj`` (protocol 5) as frames: the pickle, then its out-of-band buffers.

    Buffers under 2 KB stay inside the pickle, where they are cheaper than frames.
    ``pickler`` is a ``cloudpickle.Pickler`` subclass; the default is cloudpickle's own.
    """
    import io

    import cloudpickle

    buffers: list[pickle.PickleBuffer] = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < 2048:
            return True
        buffers.append(buf)
        return False

    f = io.BytesIO()
    (pickler or cloudpickle.Pickler)(f, protocol=5, buffer_callback=keep).dump(obj)
    return [f.getbuffer()] + [b.raw() for b in buffers]


def encode_parts(header: dict, frames: Iterable, key: bytes, at: str) -> list:
    """A signed payload as a list of buffers, without joining them (no copy of large frames).

    ``at`` is the payload's `identity`: the object it is written to, or stands for.
    """
    frames = [f if isinstance(f, bytes) else memoryview(f).cast("B") for f in frames]
    header = dict(header, v=PROTOCOL_VERSION, id=at, lengths=[len(f) for f in frames])
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    body = [_LEN.pack(len(hbytes)), hbytes, *frames]
    mac = hmac.new(key, digestmod=_DIGEST)
    for part in body:
        mac.update(part)
    return [MAGIC + mac.digest(), *body]


def encode(header: dict, frames: Iterable, key: bytes, at: str) -> bytes:
    """A signed payload as one bytes object (for small payloads); see `encode_parts`."""
    return b"".join(encode_parts(header, frames, key, at))


def parts_size(parts: Iterable) -> int:
    return sum(len(p) for p in parts)


def iter_chunks(parts: Iterable, size: int) -> Iterable:
    """Re-cut buffers into chunks of ``size`` bytes (the last may be shorter).

    A chunk inside one buffer is a zero-copy view; only chunks that straddle buffers are
    copied, so memory stays bounded by one chunk.
    """
    pending: list = []
    have = 0
    for part in parts:
        view = memoryview(part).cast("B")
        while len(view):
            if not pending and len(view) >= size:
                yield view[:size]
                view = view[size:]
                continue
            take = view[: size - have]
            pending.append(take)
            have += len(take)
            view = view[len(take):]
            if have == size:
                yield b"".join(pending)
                pending, have = [], 0
    if pending:
        yield b"".join(pending)


def byte_ranges(total: int, size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` cutting ``total`` bytes into ranges of ``size``."""
    return [(i, min(total, i + size)) for i in range(0, total, size)] or [(0, 0)]


#: Objects above this size are uploaded in parts and downloaded in ranges, in parallel.
MULTIPART_THRESHOLD = 32 * 2**20
#: Part and range size (at least S3's smallest part; `part_size_for` keeps within its
#: most parts).
PART_SIZE = max(16 * 2**20, limits.S3_MIN_PART_BYTES)
#: Parts moved at once per object. A local S3 server gains nothing from parallel parts, and
#: moto reads a whole object for each ranged GET: the local backend sets 1 through this variable.
TRANSFER_CONCURRENCY = 8
TRANSFER_CONCURRENCY_ENV = "DASK_LAMBDA_TRANSFER_CONCURRENCY"


def fits_inline(nbytes: int, envelope: int) -> bool:
    """Whether ``nbytes`` of payload, base64-encoded as a JSON string inside a JSON document
    of ``envelope`` other bytes, stays within Lambda's synchronous payload limit
    (`limits.SYNC_PAYLOAD_BYTES`).

    >>> fits_inline(4_000_000, 1_000), fits_inline(4_800_000, 1_000)
    (True, False)
    """
    return envelope + 4 * -(-nbytes // 3) + 2 <= limits.SYNC_PAYLOAD_BYTES


def part_size_for(total: int) -> int:
    """A part size that keeps ``total`` within S3's most parts."""
    return max(PART_SIZE, -(-total // limits.S3_MAX_PARTS))


@dataclass(frozen=True)
class ObjectRef:
    """A task output that stays in S3: what the gateway holds instead of the value.

    Attributes
    ----------
    bucket, key
        Where the encoded output is.
    nbytes
        Size of the encoded object.
    size
        ``dask.sizeof`` of the value (what the scheduler is told).
    type
        ``module.qualname`` of the value's type.
    """

    bucket: str
    key: str
    nbytes: int
    size: int
    type: str


def decode(data: bytes | bytearray | memoryview, key: bytes, at: str) -> Payload:
    """Verify and split the payload expected at `identity` ``at``.

    Raises `PayloadError` (`MisplacedPayloadError` for a payload that belongs elsewhere)
    before anything is unpickled.
    """
    view = memoryview(data)
    if len(view) < 4 + _MAC_LEN + 4 or bytes(view[:4]) != MAGIC:
        raise PayloadError(
            f"refused {at}: not a dask-lambda payload (bad magic bytes): it was not written "
            "by dask-lambda, or by an incompatible version"
        )
    mac = bytes(view[4 : 4 + _MAC_LEN])
    body = view[4 + _MAC_LEN :]
    expected = hmac.new(key, body, _DIGEST).digest()
    if not hmac.compare_digest(mac, expected):
        raise PayloadError(
            f"refused {at}: its signature does not verify: it was altered, truncated or "
            "signed with another key. Nothing was unpickled. The client and the function must "
            f"share the same ${SIGNING_KEY_ENV}."
        )
    (hlen,) = _LEN.unpack(body[:4])
    header = json.loads(bytes(body[4 : 4 + hlen]))
    if header.get("v") != PROTOCOL_VERSION:
        raise PayloadError(
            f"payload protocol version {header.get('v')} != {PROTOCOL_VERSION}: "
            "the client and the deployed handler are different dask-lambda versions"
        )
    if header.get("id") != at:
        raise MisplacedPayloadError(
            f"refused {at}: it holds a correctly signed payload that belongs to "
            f"{header.get('id')!r} (copied over this object, or replayed from another attempt "
            "or run). Nothing was unpickled. Someone with write access to the bucket is "
            "tampering with it: restrict s3:PutObject on the prefix to this client and the "
            "function's role."
        )
    frames = []
    offset = 4 + hlen
    for n in header["lengths"]:
        frames.append(body[offset : offset + n])
        offset += n
    if offset != len(body):
        raise PayloadError(f"refused {at}: its length does not match its header (truncated?)")
    return Payload(header, frames)
