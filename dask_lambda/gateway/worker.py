"""The gateway worker: the one ``distributed.Worker`` of a Lambda cluster.

It is a normal worker whose default executor, `~dask_lambda.gateway.executor.LambdaExecutor`,
runs each task in Lambda, with what makes it answer as any cluster's workers do, for every
client that reaches it (``Client(cluster)`` as well as `LambdaClient`):

* a gather gets values: outputs kept in S3 are held as `ObjectRef` s, and `get_data`
  downloads (and verifies) the ones asked for, so ``future.result()`` is the value;
  an output that cannot be read is computed again, a bounded number of times, then fails
  with its typed error;
* a task the scheduler no longer wants while it runs (cancelled, or its last future
  released) is stopped: its invocation is abandoned, its concurrency slot freed, and an
  output that arrives for it anyway is deleted at once, not at ``close()``;
* scattered data goes to S3, ``upload_file`` ships the file with later jobs, and what would
  only prepare this process (``client.run``, worker and nanny plugins) says what to do
  instead.
"""

from __future__ import annotations

import logging
from time import time
from typing import Any

from dask_lambda_handler import protocol
from distributed import Worker

from .._compat import (
    CancelComputeEvent,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    RemoveReplicasEvent,
)
from ..errors import NotAvailableInLambda
from ..outputs import RESOLVED
from .executor import LambdaExecutor

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
        values, failed = await self.lambda_executor.outputs.load_values(refs)
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
        attempt = self.lambda_executor.outputs.unreadable(key, exc)
        logger.warning("dask-lambda could not read the output of %r at s3://%s/%s (%s: %s); "
                       "computing it again (%d of at most %d)", key, ref.bucket, ref.key,
                       type(exc).__name__, exc, attempt, self.lambda_executor.outputs.retries)
        self.handle_stimulus(RemoveReplicasEvent(
            keys=[key], stimulus_id=f"dask-lambda-unreadable-{time()}"))

    def update_data(self, data: dict, stimulus_id: str | None = None) -> dict[str, Any]:
        """``client.scatter(...)``: held here as on any worker, and each value of at least
        ``share-min`` bytes goes to S3 at once, where tasks read it (every reader the same
        object: ``broadcast=True`` needs nothing more); the worker then holds a reference."""
        result = super().update_data(data, stimulus_id)
        for key, value in data.items():
            self.lambda_executor.outputs.share_soon(key, value)
        return result

    # -- what distributed would run on its workers, here -----------------------------------

    async def upload_file(self, filename: str, data: str | bytes, load: bool = True
                          ) -> dict[str, Any]:
        """``client.upload_file(path)``: importable here (as on any worker) and shipped with
        every later job, so that tasks in Lambda import it too."""
        result = await super().upload_file(filename, data, load)
        self.lambda_executor.shipping.upload_file(
            filename, data.encode() if isinstance(data, str) else data)
        return result

    async def run(self, comm: Any, function: Any, args: Any = (), wait: bool = True,
                  kwargs: Any = None) -> Any:
        from distributed.core import error_message

        return error_message(NotAvailableInLambda(
            "client.run(f) runs f on each worker, and this cluster's one worker is the gateway "
            "in your own process: its tasks run in Lambda functions, which client.run cannot "
            "reach. To run f in Lambda, submit it (client.submit(f, pure=False), or "
            "client.map over the inputs); to run it here, call f() directly."))

    async def run_coroutine(self, comm: Any, function: Any, args: Any = (),
                            kwargs: Any = None, wait: bool = True) -> Any:
        return await self.run(comm, function, args, wait, kwargs)

    async def plugin_add(self, plugin: Any, name: str | None = None,
                         catch_errors: bool = True) -> Any:
        """distributed's own machinery is set up here as on any worker; a plugin meant to
        prepare the workers that run tasks is refused with what to do instead: nothing
        silently runs only in this process."""
        import pickle

        from distributed.core import error_message

        if isinstance(plugin, bytes):
            plugin = pickle.loads(plugin)
        kind = type(plugin).__name__
        advice = PLUGIN_ADVICE.get(kind)
        if kind == "_InstallWorkerPlugin" and self.lambda_executor.backend.name == "local":
            advice = None  # (PipInstall) the local backend's tasks run in this environment
        if advice is None and type(plugin).__module__.partition(".")[0] == "distributed":
            return await super().plugin_add(plugin, name, catch_errors)
        error = NotAvailableInLambda(
            f"worker plugin {type(plugin).__name__} would run only on the gateway worker in "
            "this process, not where tasks run (Lambda functions have no Dask worker): "
            + (advice or "do the setup inside the task function, or once per execution "
               "environment in a module the task imports (modules beside your script travel "
               "with the jobs; client.upload_file(path) sends others)."))
        if not catch_errors:
            raise error
        return error_message(error)

    def handle_stimulus(self, *stims: Any) -> None:
        super().handle_stimulus(*stims)
        executor = self.lambda_executor
        for ev in stims:
            if isinstance(ev, ExecuteSuccessEvent):
                value = ev.value
                if (isinstance(value, protocol.ObjectRef)
                        and executor.data.peek(ev.key) is not value):
                    executor.outputs.release(value)  # the worker discarded it (a cancelled task)
            elif isinstance(ev, FreeKeysEvent):
                for key in ev.keys:
                    self._cancel_if_unwanted(key)
            elif isinstance(ev, CancelComputeEvent):
                self._cancel_if_unwanted(ev.key)

    def _cancel_if_unwanted(self, key: Any) -> None:
        ts = self.state.tasks.get(key)
        if ts is None or ts.state == "cancelled":
            self.lambda_executor.cancel(key)


#: What to do instead of distributed's plugins that prepare workers.
PLUGIN_ADVICE = {
    "_InstallWorkerPlugin": "a Lambda function has the packages it was deployed with: add "
                            "them with `dask-lambda deploy --extra-packages NAME,...`.",
    "PipInstall": "a Lambda function has the packages it was deployed with: add them with "
                  "`dask-lambda deploy --extra-packages NAME,...` (the local backend uses "
                  "this environment: pip install them here).",
    "CondaInstall": "a Lambda function has the packages it was deployed with: add them with "
                    "`dask-lambda deploy --extra-packages NAME,...`.",
    "Environ": "set the variables inside the task function (os.environ[...] = ...), or pass "
               "the values as arguments.",
    "UploadDirectory": "put the files in S3 and read them from there inside the task, or "
                       "client.upload_file(path) for a module or a .zip of modules.",
}
