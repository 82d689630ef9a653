"""The gateway worker: the one ``distributed.Worker`` of a Lambda cluster.

It is a normal worker whose default executor, `~dask_lambda.executor.LambdaExecutor`, runs
each task in Lambda, with two additions that make it answer as any cluster's workers do,
for every client that reaches it (``Client(cluster)`` as well as `LambdaClient`):

* a gather gets values: outputs kept in S3 are held as `ObjectRef` s, and `get_data`
  downloads (and verifies) the ones asked for, so ``future.result()`` is the value;
  an output that cannot be read is computed again, a bounded number of times, then fails
  with its typed error;
* a task the scheduler no longer wants while it runs (cancelled, or its last future
  released) is stopped: its invocation is abandoned, its concurrency slot freed, and an
  output that arrives for it anyway is deleted at once, not at ``close()``.
"""

from __future__ import annotations

import logging
from time import time
from typing import Any

from dask_lambda_handler import protocol
from distributed import Worker
from distributed.worker_state_machine import (
    CancelComputeEvent,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    RemoveReplicasEvent,
)

from .executor import RESOLVED, LambdaExecutor

logger = logging.getLogger("dask_lambda")


class GatewayWorker(Worker):
    """A worker whose tasks run in Lambda (see the module docstring).

    Parameters
    ----------
    lambda_executor
        The executor that runs its tasks in Lambda (also given as its default executor).
    **kwargs
        As for ``distributed.Worker``.
    """

    def __init__(self, *args: Any, lambda_executor: LambdaExecutor, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lambda_executor = lambda_executor
        lambda_executor.worker = self

    async def get_data(self, comm: Any, keys: Any, who: str | None = None,
                       serializers: list[str] | None = None) -> Any:
        data = self.lambda_executor.data
        refs = {k: v for k in keys if isinstance(v := data.peek(k), protocol.ObjectRef)}
        if not refs:
            return await super().get_data(comm, keys, who, serializers)
        values, failed = await self.lambda_executor.load_values(refs)
        for key, exc in failed.items():
            self._unreadable(key, refs[key], exc)
        token = RESOLVED.set(values)
        try:
            return await super().get_data(comm, [k for k in keys if k not in failed], who,
                                          serializers)
        finally:
            RESOLVED.reset(token)

    def _unreadable(self, key: Any, ref: protocol.ObjectRef, exc: BaseException) -> None:
        """The output of ``key`` cannot be read: drop it so that the scheduler computes it
        again (the executor fails the recomputation once this happened `retries` times)."""
        ts = self.state.tasks.get(key)
        if ts is None or any(d.state in ("executing", "long-running") for d in ts.dependents):
            return  # a running task reads it too: it reports the loss itself
        attempt = self.lambda_executor.unreadable(key, exc)
        logger.warning("dask-lambda could not read the output of %r at s3://%s/%s (%s: %s); "
                       "computing it again (%d of at most %d)", key, ref.bucket, ref.key,
                       type(exc).__name__, exc, attempt, self.lambda_executor.retries)
        self.handle_stimulus(RemoveReplicasEvent(
            keys=[key], stimulus_id=f"dask-lambda-unreadable-{time()}"))

    def handle_stimulus(self, *stims: Any) -> None:
        super().handle_stimulus(*stims)
        executor = self.lambda_executor
        for ev in stims:
            if isinstance(ev, ExecuteSuccessEvent):
                value = ev.value
                if (isinstance(value, protocol.ObjectRef)
                        and executor.data.peek(ev.key) is not value):
                    executor.release(value)  # the worker discarded it (a cancelled task)
            elif isinstance(ev, FreeKeysEvent):
                for key in ev.keys:
                    self._cancel_if_unwanted(key)
            elif isinstance(ev, CancelComputeEvent):
                self._cancel_if_unwanted(ev.key)

    def _cancel_if_unwanted(self, key: Any) -> None:
        ts = self.state.tasks.get(key)
        if ts is None or ts.state == "cancelled":
            self.lambda_executor.cancel(key)
