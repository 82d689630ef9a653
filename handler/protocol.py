"""The job/result wire format: signed payloads bound to where they belong.

Imported by both the client library (``dask_lambda``) and the Lambda handler,
so it depends on the standard library only (``cloudpickle`` is imported when
a payload is built or opened).

The S3 key layout is `dask_lambda_handler.keys`'; transfer sizes are
`dask_lambda_handler.transfer`'s.

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


#: Name of the environment variable holding the shared signing key (hex).
SIGNING_KEY_ENV = "DASK_LAMBDA_SIGNING_KEY"


class PayloadError(Exception):
    """A payload is malformed, of another protocol version, or fails its signature."""


class MisplacedPayloadError(PayloadError):
    """A correctly signed payload was found where another one belongs (copied over it, or
    replayed from another attempt or run); it was refused before anything was unpickled."""


def run_key(deployment_key: bytes, run: str) -> bytes:
    """The key a run's payloads are signed with: derived from the key the client and the
    function share and the run id, so a payload of one run never verifies in another."""
    return hmac.new(deployment_key, b"dask-lambda run " + run.encode(), _DIGEST).digest()



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


def fits_inline(nbytes: int, envelope: int) -> bool:
    """Whether ``nbytes`` of payload, base64-encoded as a JSON string inside a JSON document
    of ``envelope`` other bytes, stays within Lambda's synchronous payload limit
    (`limits.SYNC_PAYLOAD_BYTES`).

    >>> fits_inline(4_000_000, 1_000), fits_inline(4_800_000, 1_000)
    (True, False)
    """
    return envelope + 4 * -(-nbytes // 3) + 2 <= limits.SYNC_PAYLOAD_BYTES


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
