"""Where the local backend's invocations run: a pool of execution environments
(:mod:`.environment`) on this machine, behaving as Lambda's do.

Environments are reused warm, at most ``concurrency`` exist, an invocation past the
timeout kills its environment, and one whose memory (RSS) passes the memory setting is
killed, as Lambda does.  Failures answer in Lambda's own shapes (``Sandbox.Timedout``,
``Runtime.OutOfMemory`` with a REPORT line, ``Runtime.ExitError``, the handler's
exception), which `dask_lambda.failures` classifies as it does every backend's.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from dask_lambda_handler import records

from ... import failures
from ...errors import HandlerCrashedError, LambdaThrottledError
from ..base import FunctionSettings, Invoker
from .environment import Died, Environment, launch
from .faults import FaultPlan

_MEMORY_POLL = 0.05


def _local_fix(option: str, value: int) -> str:
    """How a local user gives the function another ``option`` (``timeout``, ``memory``)."""
    argument = "function_timeout" if option == "timeout" else option
    return f"LambdaClient(..., {argument}={value}) or DASK_LAMBDA__{option.upper()}"


class LocalInvoker(Invoker):
    """Run invocations in local execution environments.

    Parameters
    ----------
    settings
        The function's settings, read at each invocation (``cluster.scale`` changes them).
    python
        Interpreter for the execution environments.
    directory
        Where the environments' private directories go.
    s3
        The local S3's environment variables (endpoint, key).
    faults
        The faults to inject into a share of invocations now, if any (for testing fault
        handling), read at each invocation.
    """

    def __init__(self, settings: Callable[[], FunctionSettings], *, python: str,
                 directory: str, s3: dict[str, str],
                 faults: Callable[[], FaultPlan | None] = lambda: None):
        super().__init__()
        self._settings = settings
        self.python = python
        self.directory = directory
        self.s3 = s3
        self._faults = faults
        self._throttled: dict[str, int] = {}
        self._background: set[asyncio.Task] = set()
        self._idle: list[Environment] = []
        #: Every environment, busy or idle (a view for tests and tools; do not change it).
        self.environments: set[Environment] = set()
        self._slots = asyncio.Semaphore(settings().concurrency)
        self._generation = 0  # environments of an older generation are not reused
        self._monitor = asyncio.create_task(self._watch_memory())

    def set_concurrency(self, concurrency: int) -> None:
        # Invocations under way release the semaphore they took; the client's governor caps
        # the total meanwhile.
        self._slots = asyncio.Semaphore(concurrency)

    async def stop(self) -> None:
        await super().stop()
        self._monitor.cancel()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*(env.stop() for env in list(self.environments)),
                             return_exceptions=True)
        self.environments.clear()
        self._idle.clear()

    async def recycle(self) -> None:
        """Replace every execution environment by a fresh one: idle ones go now, busy ones
        as their invocation ends."""
        for env in list(self._idle):
            await self._discard(env)
        self._idle.clear()
        self._generation += 1

    # -- environments --------------------------------------------------------------------

    async def _environment(self, *, kill_start: bool = False) -> Environment:
        """A warm environment whose state is whole, else a new one."""
        while self._idle:
            env = self._idle.pop()
            if env.intact():
                return env
            await self._discard(env)  # its directory was removed (a /tmp cleaner?), or it died
        return await self._spawn(kill_start=kill_start)

    async def _spawn(self, *, kill_start: bool = False) -> Environment:
        env = await launch(self.python, self.directory, self._settings(), self.s3)
        env.generation = self._generation
        self.environments.add(env)  # (from now on `stop` ends it, even while it starts)
        if kill_start:
            env.kill()
        try:
            await env.handshake(self.python)
        except BaseException:
            await self._discard(env)
            raise
        self.cold_starts += 1
        return env

    async def _discard(self, env: Environment) -> None:
        self.environments.discard(env)
        env.kill()  # at once, even if this coroutine is cancelled while it reaps
        await env.stop(grace=0)

    async def _watch_memory(self) -> None:
        while True:
            await asyncio.sleep(_MEMORY_POLL)
            for env in list(self.environments):
                if not env.busy:
                    continue
                try:
                    rss = env.rss()
                except Exception:  # the process is gone; the invocation reports it
                    continue
                if rss > env.memory_limit:
                    env.oom_rss = rss
                    env.kill()

    # -- invoke ---------------------------------------------------------------------------

    async def invoke(self, event: dict, *, memory: int | None = None) -> dict:
        """Run one invocation in a warm or new execution environment (with ``memory`` MB,
        default the function's).

        Cancelling the call (the task awaiting it) kills the environment running it, with
        whatever the task started: the invocation stops at once and its slot is free.
        """
        faults = self._faults()
        if faults is not None:
            job = records.InvokeEvent.from_wire(event).result_key
            if faults.hits("throttle", event, self._throttled.get(job, 0)):
                self._throttled[job] = self._throttled.get(job, 0) + 1
                raise LambdaThrottledError("Rate Exceeded. (TooManyRequestsException, injected)")
            if faults.hits("duplicate", event):  # the same event, delivered a second time
                task = asyncio.ensure_future(self._invoke(dict(event), memory, kill=False))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await self._invoke(
            event, memory, kill=faults is not None and faults.hits("kill", event),
            kill_start=faults is not None and faults.hits("kill_start", event))

    async def _invoke(self, event: dict, memory: int | None, *, kill: bool,
                      kill_start: bool = False) -> dict:
        async with self._slots:
            env = await self._environment(kill_start=kill_start)
            self.invocations += 1
            request_id = str(uuid.uuid4())
            timeout = self._settings().timeout
            memory = memory or self._settings().memory
            request = {"event": event, "context": {
                "aws_request_id": request_id, "deadline": time.time() + timeout,
                "memory_limit_in_mb": memory}}
            env.busy = True
            env.memory_limit = memory * 2**20
            if kill:
                asyncio.get_running_loop().call_soon(env.kill)
            try:
                reply = await asyncio.wait_for(env.call(request), timeout)
            except asyncio.TimeoutError:
                await self._discard(env)
                raise self._failed(request_id, memory, "Sandbox.Timedout",
                                   f"{request_id} Task timed out after {timeout:.2f} seconds"
                                   ) from None
            except Died:
                code = await env.returncode()
                await self._discard(env)
                if env.oom_rss:  # as Lambda reports it: the REPORT line says what it used
                    raise self._failed(request_id, memory, "Runtime.OutOfMemory",
                                       "Runtime exited with error: signal: killed",
                                       used_mb=env.oom_rss / 2**20) from None
                raise self._failed(request_id, memory, "Runtime.ExitError",
                                   f"Runtime exited with code {code}") from None
            except BaseException:
                await self._discard(env)
                raise
            env.busy = False
            await self._release(env, failed="error" in reply
                                or reply["response"].get("status") == "error",
                                request_id=request_id)
        if "error" in reply:  # the handler raised (not the task)
            raise self._failed(request_id, memory, reply["error"]["errorType"],
                               reply["error"]["errorMessage"])
        return reply["response"]

    async def _release(self, env: Environment, *, failed: bool, request_id: str) -> None:
        """Return ``env`` to the warm pool after an invocation, unless it is no longer whole
        (then a failed task is the environment's crash, not its own) or older than the last
        `recycle`."""
        if not env.intact():
            await self._discard(env)
            if failed:  # the environment broke under the task: not the task's error
                raise HandlerCrashedError(
                    f"the execution environment's own directory {env.directory} "
                    f"disappeared while it ran the task (request {request_id}; something "
                    "on this machine removed it, e.g. a /tmp cleaner), so the task's "
                    "failure is not its own: the environment was discarded.")
        elif env.generation != self._generation:  # started before client.restart()
            await self._discard(env)
        else:
            self._idle.append(env)

    def _failed(self, request_id: str, memory: int, error_type: str, message: str, *,
                used_mb: float | None = None) -> Exception:
        """The typed error of a failed invocation, classified by `dask_lambda.failures`."""
        log = "" if used_mb is None else (
            f"REPORT RequestId: {request_id}\tMemory Size: {memory} MB\t"
            f"Max Memory Used: {used_mb:.0f} MB\t")
        return failures.function_error(
            {"errorType": error_type, "errorMessage": message}, log, request_id=request_id,
            memory=memory, timeout=self._settings().timeout, fix=_local_fix)
