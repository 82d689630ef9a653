"""The local backend: Lambda on this machine, no AWS account, no Docker.

* S3 is moto's S3 server in a process of its own on 127.0.0.1 (or an
  endpoint you give), spoken to over HTTP like the real one.
* Each execution environment is a fresh interpreter running
  :mod:`dask_lambda.backends.local_runtime`, which imports the real handler
  and serves invocations one at a time.  Environments are reused warm, at most
  ``concurrency`` exist, each runs in a private working and temp directory, an
  invocation past the timeout kills its environment, and one whose memory
  (RSS) passes the memory setting is killed, as Lambda does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import struct
import tempfile
import time
import uuid
from typing import Any

from dask_lambda_handler import protocol

from ..errors import (
    FunctionError,
    HandlerCrashedError,
    LambdaOutOfMemoryError,
    LambdaThrottledError,
    LambdaTimeoutError,
)
from .base import FunctionSettings
from .faults import FaultPlan
from .local_s3 import START_TIMEOUT, LocalS3Backend, stop_process

_LEN = struct.Struct(">I")
HANDLER = "dask_lambda_handler.entry.handler"
_MEMORY_POLL = 0.05
_VCPU_MB = 1769  # Lambda gives one vCPU per 1,769 MB (AWS-FACTS.md)


class _Died(Exception):
    pass


def machine_concurrency_limit() -> int:
    """The most execution environments this machine runs at once: each is an interpreter
    with dask, numpy and pandas loaded (about 150 MB), and more than a few per core only
    queue for the cores."""
    import psutil

    cores = os.cpu_count() or 1
    return max(4, min(16 * cores, psutil.virtual_memory().total // (150 * 2**20)))


class _Environment:
    """One execution environment: a runtime process and its private directory."""

    def __init__(self, proc: asyncio.subprocess.Process, directory: str):
        self.proc = proc
        self.directory = directory
        self.busy = False
        self.generation = 0
        self.memory_limit = 0
        self.oom_rss = 0
        self._ps: Any = None

    async def call(self, request: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        data = json.dumps(request).encode()
        try:
            self.proc.stdin.write(_LEN.pack(len(data)) + data)
            await self.proc.stdin.drain()
            return await self.read()
        except (ConnectionError, asyncio.IncompleteReadError, BrokenPipeError) as exc:
            raise _Died(str(exc)) from None

    async def read(self) -> dict:
        assert self.proc.stdout is not None
        (n,) = _LEN.unpack(await self.proc.stdout.readexactly(_LEN.size))
        return json.loads(await self.proc.stdout.readexactly(n))

    def rss(self) -> int:
        import psutil

        if self._ps is None:
            self._ps = psutil.Process(self.proc.pid)
        return self._ps.memory_info().rss

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()

    async def stop(self, grace: float = 2.0) -> None:
        await stop_process(self.proc, grace)  # the runtime exits at end of input
        shutil.rmtree(self.directory, ignore_errors=True)


class LocalBackend(LocalS3Backend):
    """Run the handler in local processes that behave like Lambda execution environments.

    Parameters
    ----------
    settings
        Concurrency, memory, timeout and signing key.
    s3_endpoint
        Use this S3 endpoint instead of starting a private moto server.
    python
        Interpreter for the execution environments (default: this one).
    region
        Region name given to S3 clients.
    faults
        Inject faults into a share of invocations (for testing fault handling).
    """

    name = "local"
    supports_memory_override = True

    def __init__(self, settings: FunctionSettings, *, s3_endpoint: str | None = None,
                 python: str | None = None, region: str = "us-east-1",
                 faults: FaultPlan | None = None):
        super().__init__(settings, s3_endpoint=s3_endpoint, python=python, region=region)
        self.faults = faults
        self._throttled: dict[str, int] = {}
        self._background: set[asyncio.Task] = set()
        self._dir = ""
        self._idle: list[_Environment] = []
        self._all: set[_Environment] = set()
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._generation = 0  # environments of an older generation are not reused
        self._monitor: asyncio.Task | None = None
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="dask-lambda-local-")
        await self.start_s3(self._dir)
        self._monitor = asyncio.create_task(self._watch_memory())

    async def stop(self) -> None:
        self._closed = True
        if self._monitor is not None:
            self._monitor.cancel()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*(env.stop() for env in list(self._all)), return_exceptions=True)
        self._all.clear()
        self._idle.clear()

    async def close(self) -> None:
        await self.stop()
        await self.close_s3()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    async def set_concurrency(self, concurrency: int) -> None:
        await super().set_concurrency(concurrency)
        # Invocations under way release the semaphore they took; the client's governor caps
        # the total meanwhile.
        self._slots = asyncio.Semaphore(concurrency)

    @property
    def max_concurrency(self) -> int:
        return machine_concurrency_limit()

    async def recycle(self) -> None:
        """Replace every execution environment by a fresh one (``client.restart()``), as
        LocalCluster restarts its worker processes: idle ones go now, busy ones as their
        invocation ends."""
        for env in list(self._idle):
            await self._discard(env)
        self._idle.clear()
        self._generation += 1

    # -- execution environments ---------------------------------------------------------

    def _environment_variables(self, directory: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL")}
        env.update(self.client_environment())
        threads = str(max(1, min(6, self.settings.memory // _VCPU_MB)))
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, threads)
        env.update({
            "_HANDLER": HANDLER,
            "DASK_LAMBDA_SIGNING_KEY": self.settings.signing_key.hex(),
            "AWS_LAMBDA_FUNCTION_NAME": "dask-lambda-local",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.settings.memory),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(self.settings.timeout),
            "TMPDIR": directory,
            protocol.TRANSFER_CONCURRENCY_ENV: "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        return env

    async def _spawn(self) -> _Environment:
        directory = tempfile.mkdtemp(prefix="env-", dir=self._dir)
        proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "dask_lambda.backends.local_runtime",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            cwd=directory, env=self._environment_variables(directory))
        env = _Environment(proc, directory)
        env.generation = self._generation
        self._all.add(env)
        try:
            hello = await asyncio.wait_for(env.read(), START_TIMEOUT)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError):
            hello = {"init_error": {"errorType": "Runtime.ExitError",
                                    "errorMessage": "the runtime exited during start-up"}}
        if "init_error" in hello:
            await self._discard(env)
            err = hello["init_error"]
            raise FunctionError(
                f"the local execution environment could not start: {err['errorMessage']}. "
                "Is dask-lambda installed in the interpreter it runs with "
                f"({self.python})?", err["errorType"])
        self.cold_starts += 1
        return env

    async def _discard(self, env: _Environment) -> None:
        self._all.discard(env)
        await env.stop(grace=0)

    async def _watch_memory(self) -> None:
        while True:
            await asyncio.sleep(_MEMORY_POLL)
            for env in list(self._all):
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
        if self._closed:
            raise HandlerCrashedError("the local backend is closed")
        faults = self.faults
        if faults is not None:
            job = str(event.get("result_key"))
            if faults.hits("throttle", event, self._throttled.get(job, 0)):
                self._throttled[job] = self._throttled.get(job, 0) + 1
                raise LambdaThrottledError("Rate Exceeded. (TooManyRequestsException, injected)")
            if faults.hits("duplicate", event):  # the same event, delivered a second time
                task = asyncio.ensure_future(self._invoke(dict(event), memory, kill=False))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await self._invoke(event, memory,
                                  kill=faults is not None and faults.hits("kill", event))

    async def _invoke(self, event: dict, memory: int | None, *, kill: bool) -> dict:
        async with self._slots:
            env = self._idle.pop() if self._idle else await self._spawn()
            self.invocations += 1
            request_id = str(uuid.uuid4())
            timeout = self.settings.timeout
            memory = memory or self.settings.memory
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
                raise LambdaTimeoutError(
                    f"Task timed out after {timeout:.2f} seconds (request {request_id}). Raise "
                    "the function timeout, e.g. LambdaClient(..., "
                    f"timeout={int(min(900, timeout * 2))}) or DASK_LAMBDA__TIMEOUT, or split "
                    "the task into smaller ones.") from None
            except _Died:
                with contextlib.suppress(asyncio.TimeoutError):  # it is exiting: get its code
                    await asyncio.wait_for(env.proc.wait(), 2.0)
                await self._discard(env)
                if env.oom_rss:
                    raise LambdaOutOfMemoryError(
                        "Runtime exited: out of memory. The task used "
                        f"{env.oom_rss / 2**20:.0f} MB, more than the function's {memory} MB "
                        f"(request {request_id}). "
                        f"Give it more, e.g. LambdaClient(..., memory={min(10240, memory * 2)}) "
                        "or DASK_LAMBDA__MEMORY, or use smaller partitions/chunks.") from None
                raise HandlerCrashedError(
                    f"Runtime exited with code {env.proc.returncode} while running the task "
                    f"(request {request_id}): the execution environment crashed or was killed."
                ) from None
            except BaseException:
                await self._discard(env)
                raise
            env.busy = False
            if env.generation == self._generation:
                self._idle.append(env)
            else:  # started before a restart: replaced by a fresh one
                await self._discard(env)
        if "error" in reply:
            err = reply["error"]
            raise FunctionError(f"{err['errorType']}: {err['errorMessage']}", err["errorType"])
        return reply["response"]
