"""A job's inputs: outputs and shared values kept in S3, and the files that travel with jobs."""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

from . import compat, env, protocol, s3io, s3keys
from .errors import InputLostError


class _InputCache:
    """Inputs read from S3 lately, as verified bytes, so that the tasks a warm execution
    environment runs next (the other chunks that read the same climatology, the same scattered
    array) do not fetch them again. At most a quarter of the function's memory; objects are
    immutable (every output and shared value has a key of its own), so no entry goes stale.
    """

    def __init__(self) -> None:
        from collections import OrderedDict

        self._entries: OrderedDict[str, bytearray] = OrderedDict()
        self._bytes = 0
        memory_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or 1024)
        self.budget = memory_mb * 2**20 // 4

    def get(self, key: str) -> bytearray | None:
        raw = self._entries.get(key)
        if raw is not None:
            self._entries.move_to_end(key)
        return raw

    def put(self, key: str, raw: bytearray) -> None:
        """Keep a copy of ``raw`` (the caller's values may be views of it, and change)."""
        if len(raw) > self.budget // 2:
            return
        self._entries[key] = bytearray(raw)
        self._bytes += len(raw)
        while self._bytes > self.budget:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= len(dropped)


_INPUTS = _InputCache()


def resolve(args: tuple, key: bytes) -> tuple:
    """Replace `ObjectRef` inputs (top-level, or values of a top-level dict) by their values,
    each verified as the object it names (signed with the run's ``key``)."""
    refs: dict = {}
    for a in args:
        for v in (a.values() if isinstance(a, dict) else (a,)):
            if isinstance(v, protocol.ObjectRef):
                refs[v] = None
    if not refs:
        return args
    from concurrent.futures import ThreadPoolExecutor

    def load(ref: protocol.ObjectRef) -> Any:
        expected = s3keys.identity(ref.bucket, ref.key)
        raw = _INPUTS.get(ref.key)
        if raw is None:
            try:
                raw = s3io.get(env.s3(), ref.bucket, ref.key, env.transfer_concurrency())
            except FileNotFoundError:
                raise InputLostError(
                    f"input s3://{ref.bucket}/{ref.key} of this task was deleted before it was "
                    "read (by hand, or by a lifecycle rule shorter than the computation): "
                    "recompute the graph; if it keeps happening, lengthen the bucket's "
                    "lifecycle expiry") from None
            payload = protocol.decode(raw, key, expected)  # verified before it is kept
            _INPUTS.put(ref.key, raw)  # (a copy: this task's values are views of ``raw``)
            return payload.load(compat.find_class)
        # a copy: a task may change its inputs in place, and the next one must not see that
        return protocol.decode(bytearray(raw), key, expected).load(compat.find_class)

    with ThreadPoolExecutor(min(env.LOADERS, len(refs))) as pool:
        values = dict(zip(refs, pool.map(load, refs), strict=True))

    def swap(v: Any) -> Any:
        return values[v] if isinstance(v, protocol.ObjectRef) else v

    return tuple({k: swap(v) for k, v in a.items()} if isinstance(a, dict) else swap(a)
                 for a in args)


#: Files that travel with jobs and are installed here, by content hash: their folder.
_INSTALLED: dict[str, str] = {}


def install_files(bucket: str, files: Any, key: bytes) -> None:
    """Put the job's modules and uploaded files (``[[name, sha256, s3 key], ...]``) on
    ``sys.path``, each fetched and verified once per execution environment; a newer version
    of a module replaces the one imported before."""
    import hashlib
    import importlib

    changed = False
    for name, sha, s3_key in files:
        if sha in _INSTALLED:
            continue
        raw = s3io.get(env.s3(), bucket, s3_key, env.transfer_concurrency())
        payload = protocol.decode(raw, key, s3keys.identity(bucket, s3_key))
        data = bytes(payload.frames[0])
        if hashlib.sha256(data).hexdigest() != sha:
            raise protocol.PayloadError(f"refused s3://{bucket}/{s3_key}: its content is not "
                                        f"the {name} the job names")
        folder = os.path.join(tempfile.gettempdir(), "dask-lambda-files", sha[:16])
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        entry = path if name.endswith((".zip", ".egg")) else folder
        sys.path.insert(0, entry)
        _INSTALLED[sha] = folder
        module = name.rsplit(".", 1)[0]
        for loaded in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
            del sys.modules[loaded]  # the next import gets this version
        changed = True
    if changed:
        importlib.invalidate_caches()


