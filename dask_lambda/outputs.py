"""Outputs kept in S3 and values uploaded once: the life of every `ObjectRef` on the client.

* `LambdaData` is the gateway worker's data: small values, or references to objects in S3,
  counted by the keys that hold them; an object is deleted when the last key holding it is
  forgotten.
* `Outputs` fetches and verifies objects (a gather, an error, ``locality=False``), uploads
  the values held here that tasks read (``share-min``: a graph literal, scattered data, a
  small output), so that every job after the first carries a reference, and deletes what
  is no longer needed in batches, off the per-task path.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

from dask.sizeof import sizeof
from dask_lambda_handler import protocol, s3keys

from . import serialize
from .counters import ExecutorStats
from .errors import ResultLostError
from .store import S3Store

#: Seconds between batched deletions of objects nobody needs any more.
_GC_INTERVAL = 1.0


#: Values of outputs kept in S3, downloaded for the gather being answered in this context
#: (`dask_lambda.gateway.GatewayWorker.get_data`): other readers of the worker's data, the
#: tasks it ships to Lambda, keep seeing references.
RESOLVED: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "dask_lambda_resolved", default=None)


class LambdaData(MutableMapping):
    """The gateway worker's data: small values, or `ObjectRef`s to outputs kept in S3.

    The scheduler counts references between tasks: it tells the worker to forget a key only
    when no task or client future needs it any more. Several keys may hold the same
    reference (an alias of a persisted output), so references are counted here too: an S3
    object is deleted when the last key holding it is forgotten or replaced.
    """

    def __init__(self, release: Any):
        self._data: dict = {}
        self._holders: Counter = Counter()
        self._release = release

    @property
    def holders(self) -> Counter:
        """How many keys hold each `ObjectRef`."""
        return self._holders

    def __getitem__(self, key: Any) -> Any:
        resolved = RESOLVED.get()
        if resolved is not None and key in resolved:  # a gather: the value, not the reference
            return resolved[key]
        return self._data[key]

    def peek(self, key: Any) -> Any:
        """What the worker holds for ``key`` (a value or an `ObjectRef`), or None."""
        return self._data.get(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, protocol.ObjectRef):
            self._holders[value] += 1
        old = self._data.get(key, None)
        self._data[key] = value
        self._drop(old)

    def __delitem__(self, key: Any) -> None:
        self._drop(self._data.pop(key))

    def replace_value(self, value: Any, ref: protocol.ObjectRef) -> None:
        """Every key that holds ``value`` itself (an alias holds the object of the key it
        renames) holds ``ref`` from now on, so the object lives while any of them does."""
        for key in [k for k, held in self._data.items() if held is value]:
            self[key] = ref

    def _drop(self, value: Any) -> None:
        if isinstance(value, protocol.ObjectRef):
            self._holders[value] -= 1
            if self._holders[value] <= 0:
                del self._holders[value]
                self._release(value)

    def __iter__(self) -> Iterator:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class Outputs:
    """The objects of one run that the client reads, uploads and deletes.

    Parameters
    ----------
    store
        S3 access.
    layout
        Key layout of this run.
    signing_key
        The run's HMAC key.
    stats
        The counters to add to.
    share_min
        Values held here of at least this many bytes that tasks read are uploaded once and
        referenced (``None``: never).
    retries
        How often an output a gather could not read is computed again before it fails.
    """

    def __init__(self, store: S3Store, layout: s3keys.Layout, *, signing_key: bytes,
                 stats: ExecutorStats, share_min: int | None, retries: int):
        self.store = store
        self.layout = layout
        self.signing_key = signing_key
        self.stats = stats
        self.share_min = share_min
        self.retries = retries
        self.data = LambdaData(self.release)
        self._garbage: list[str] = []
        self._gc: asyncio.Task | None = None
        self._seq = itertools.count()
        #: Uploads of values held here, by key, under way (`share`); the S3 keys of those done.
        self._sharing: dict[Any, asyncio.Future] = {}
        self._shared_keys: set[str] = set()
        #: The upload of each value object, by id, while the object lives: a value held under
        #: two keys (an alias of a chunk, ``x.blocks[i]``) is uploaded once.
        self._by_object: dict[int, tuple[weakref.ref, asyncio.Future]] = {}
        #: Keys whose output could not be read by a gather: (times, last error).
        self._unreadable: dict[Any, tuple[int, BaseException]] = {}

    # -- reading ----------------------------------------------------------------------------

    def decode(self, blob: bytearray, key: str) -> protocol.Payload:
        """Verify ``blob`` as the payload of object ``key`` (or, inline, standing for it)."""
        return protocol.decode(blob, self.signing_key, s3keys.identity(self.layout.bucket, key))

    async def fetch(self, ref: protocol.ObjectRef, *, release: bool) -> protocol.Payload:
        """Download and verify an output object; ``release`` deletes it afterwards."""
        try:
            blob = await self.store.get(ref.key, ref.bucket)
        except FileNotFoundError:
            raise ResultLostError(
                f"the output object s3://{ref.bucket}/{ref.key} was deleted before it was read "
                "(by hand, or by a lifecycle rule shorter than the computation).") from None
        self.stats.bytes_received += len(blob)
        if release:
            self.discard(ref.key)
        return protocol.decode(blob, self.signing_key, s3keys.identity(ref.bucket, ref.key))

    async def load(self, refs: Iterable[protocol.ObjectRef]) -> dict:
        """Values of outputs kept in S3 (for a gather or a local task); the objects stay."""
        refs = list(dict.fromkeys(refs))
        payloads = await asyncio.gather(*(self.fetch(r, release=False) for r in refs))
        return {r: p.load() for r, p in zip(refs, payloads, strict=True)}

    async def load_values(self, refs: dict) -> tuple[dict, dict]:
        """``({key: value}, {key: error})`` of the outputs ``{key: ObjectRef}`` kept in S3 (a
        gather); the objects stay."""

        async def one(ref: protocol.ObjectRef) -> Any:
            return (await self.fetch(ref, release=False)).load()

        unique = list(dict.fromkeys(refs.values()))
        loaded = dict(zip(unique, await asyncio.gather(*map(one, unique),
                                                       return_exceptions=True), strict=True))
        values, failed = {}, {}
        for key, ref in refs.items():
            value = loaded[ref]
            if isinstance(value, Exception):
                failed[key] = value
            else:
                values[key] = value
        return values, failed

    def unreadable(self, key: Any, exc: BaseException) -> int:
        """Count that ``key``'s output could not be read (it is computed again); returns how
        many times. Past ``retries``, `lost` gives the error the next run fails with."""
        count = self._unreadable.get(key, (0, exc))[0] + 1
        if isinstance(exc, PermissionError):  # computing it again cannot help
            count = self.retries + 1
        self._unreadable[key] = (count, exc)
        self.stats.retries += 1
        return count

    def lost(self, key: Any) -> BaseException | None:
        """The error ``key`` fails with, once its output could not be read too often."""
        lost = self._unreadable.get(key)
        if lost is None or lost[0] <= self.retries:
            return None
        exc = lost[1]
        if isinstance(exc, PermissionError):  # (that one was not computed again)
            return exc
        note = (f" (the output of task {key!r} could not be read {lost[0]} times; it was "
                f"computed again each time, retries={self.retries})")
        try:
            return type(exc)(f"{exc}{note}")
        except Exception:  # an exception type that takes other arguments: keep it as it is
            return exc

    # -- values held here, uploaded once ------------------------------------------------------

    async def share_inputs(self, data: dict, shared: list, worker_tasks: Any) -> dict:
        """``data`` with each value held here of at least ``share_min`` bytes replaced by a
        reference to an S3 object uploaded once (the handler reads it as it reads outputs);
        the references go into ``shared``. ``worker_tasks`` knows the values' sizes."""
        out = data
        for dep, value in data.items():
            if isinstance(value, protocol.ObjectRef):
                if value.key in self._shared_keys:  # shared before: this job reads it too
                    self.stats.shared_bytes_saved += value.nbytes
                continue
            if value is None:
                continue
            ts = worker_tasks.get(dep)
            size = ts.nbytes if ts is not None and ts.nbytes is not None else sizeof(value)
            if size < self.share_min:  # type: ignore[operator]
                continue
            ref = await self.share(dep, value)
            if out is data:
                out = dict(data)
            out[dep] = ref
            shared.append(ref)
            self.stats.shared_bytes_saved += ref.nbytes
        return out

    def share_soon(self, key: Any, value: Any) -> None:
        """Start uploading ``value`` (held here under ``key``, e.g. scattered) so that it
        lives in S3 rather than in this process."""
        if self.share_min is not None and sizeof(value) >= self.share_min:
            task = asyncio.ensure_future(self.share(key, value))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def share(self, key: Any, value: Any) -> protocol.ObjectRef:
        """The reference to ``value`` (held here under ``key``) in S3, uploaded once: the
        worker's data then holds the reference, released as outputs are."""
        held = self.data.peek(key)
        if isinstance(held, protocol.ObjectRef):
            return held
        future = self._sharing.get(key)
        if future is None:
            future = self._sharing[key] = self._upload_once(key, value)
            future.add_done_callback(lambda _: self._sharing.pop(key, None))
        ref: protocol.ObjectRef = await asyncio.shield(future)
        # later jobs (and gathers) use the object; released with the last key that holds it
        self.data.replace_value(value, ref)
        return ref

    def _upload_once(self, key: Any, value: Any) -> asyncio.Future:
        """The upload of ``value``: the one under way or done for this same object, if its
        reference is still held (its object not deleted), else a new one."""
        same = self._by_object.get(id(value))
        if same is not None and same[0]() is value:
            future = same[1]
            if not future.done() or (not future.cancelled() and future.exception() is None
                                     and future.result() in self.data.holders):
                return future
        future = asyncio.ensure_future(self._upload_value(key, value))
        at = id(value)
        try:
            alive = weakref.ref(value, lambda _: self._by_object.pop(at, None))
        except TypeError:  # not weakly referable (a tuple, a number): no identity to go by
            return future
        self._by_object[at] = (alive, future)
        return future

    def release_unheld(self, refs: Iterable[protocol.ObjectRef]) -> None:
        """Delete those of ``refs`` that no key of the worker's data holds (their key was
        released while a job that read them was being made; that job has ended)."""
        for ref in refs:
            if ref not in self.data.holders:
                self.discard(ref.key)

    async def _upload_value(self, key: Any, value: Any) -> protocol.ObjectRef:
        token = s3keys.task_token(key) + f"-{next(self._seq)}-value"
        object_key = self.layout.result_key(token, 0)
        frames = serialize.dumps(value)
        parts = protocol.encode_parts({"kind": "result", "type": protocol.type_name(value)},
                                      frames, self.signing_key,
                                      s3keys.identity(self.layout.bucket, object_key))
        nbytes = protocol.parts_size(parts)
        await self.store.put(object_key, parts)
        self.stats.bytes_sent += nbytes
        self.stats.shared_values += 1
        self.stats.shared_bytes += nbytes
        self.stats.shared_bytes_saved -= nbytes  # the first reader's copy was sent after all
        self._shared_keys.add(object_key)
        return protocol.ObjectRef(self.layout.bucket, object_key, nbytes, sizeof(value),
                                  protocol.type_name(value))

    # -- deleting -----------------------------------------------------------------------------

    def release(self, ref: protocol.ObjectRef) -> None:
        """The scheduler released the key holding ``ref``: its object can go."""
        self._shared_keys.discard(ref.key)
        self.discard(ref.key)

    def discard(self, key: str) -> None:
        """Delete object ``key`` with the next batch."""
        self._garbage.append(key)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the batched deletions on ``loop`` (the worker's), if they are not running."""
        if self._gc is None:
            self._gc = loop.create_task(self._collect_garbage())

    def stop(self) -> None:
        """Stop the batched deletions (from any thread); `start` starts them again."""
        if self._gc is not None:
            gc, self._gc = self._gc, None
            gc.get_loop().call_soon_threadsafe(gc.cancel)

    def reset(self) -> None:
        """Forget every key (``client.restart()``): their objects are deleted."""
        for key in list(self.data):
            del self.data[key]  # releases what each held
        self._unreadable.clear()

    async def _collect_garbage(self) -> None:
        while True:
            await asyncio.sleep(_GC_INTERVAL)
            await self.flush()

    async def flush(self) -> None:
        """Delete what waits for deletion now."""
        batch, self._garbage = self._garbage, []
        if batch:
            try:
                await self.store.delete(batch)
            except Exception:  # they are under the run prefix, which close() removes
                pass

    async def close(self) -> int:
        """Delete everything this run wrote; returns how many objects were left to delete.

        Raises the first S3 error (the caller reports what is left behind).
        """
        if self._gc is not None:
            self._gc.cancel()
            self._gc = None
        batch, self._garbage = self._garbage, []
        await self.store.delete(batch, quick=True)
        return await self.store.delete_prefixes(self.layout.run_prefixes, quick=True)
