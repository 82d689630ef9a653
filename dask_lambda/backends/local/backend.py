"""The local backend: Lambda on this machine, no AWS account, no Docker.

* S3 is moto's S3 server in a process of its own on 127.0.0.1 (or an
  endpoint you give), spoken to over HTTP like the real one, with a key pair of
  its own per client (`dask_lambda.backends.local.s3server`).
* Each execution environment is a fresh interpreter running
  :mod:`dask_lambda.backends.local.runtime`, which imports the real handler
  and serves invocations one at a time.  Environments are reused warm, at most
  ``concurrency`` exist, each runs in a private working and temp directory, an
  invocation past the timeout kills its environment, and one whose memory
  (RSS) passes the memory setting is killed, as Lambda does.
* Each environment is a session (process group) of its own: out of the
  terminal's foreground group, so a Ctrl-C meant for the user's script does not
  kill it under the client, and killed whole, with whatever its tasks left
  running, when it is discarded.
* Environments see no AWS settings of the client's (no credentials, profiles,
  role or container-credential variables, no ``~/.aws`` files): only the local
  S3's endpoint and key, as a function sees only its role's.  They refuse opens
  of the client's files (`dask_lambda.backends.local.files`), which a Lambda
  function cannot see either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import struct
import sys
import tempfile
import time
import uuid
from typing import Any

from dask_lambda_handler import protocol, records, transfer
from dask_lambda_handler.client_paths import CLIENT_DIRS_ENV

from ... import failures
from ...errors import (
    ConfigurationError,
    FunctionError,
    HandlerCrashedError,
    LambdaThrottledError,
)
from ..base import Backend, FunctionSettings
from .faults import FaultPlan
from .s3 import START_TIMEOUT, LocalS3

_LEN = struct.Struct(">I")
HANDLER = "dask_lambda_handler.entry.handler"
RUNTIME = "dask_lambda.backends.local.runtime"
_MEMORY_POLL = 0.05
_VCPU_MB = 1769  # Lambda gives one vCPU per 1,769 MB (AWS-FACTS.md)
_EXIT_GRACE = 0.2  # what an exiting runtime wrote may still be in the pipe this long
_STOP_GRACE = 2.0
_REAP_TIMEOUT = 5.0


class _Died(Exception):
    pass


def machine_concurrency_limit() -> int:
    """The most execution environments this machine runs at once: each is an interpreter
    with dask, numpy and pandas loaded (about 150 MB), and more than a few per core only
    queue for the cores."""
    import psutil

    cores = os.cpu_count() or 1
    return max(4, min(16 * cores, psutil.virtual_memory().total // (150 * 2**20)))


def _client_dirs() -> list[str]:
    """Where the client's own files are: its working and home directories."""
    dirs = [os.path.expanduser("~")]
    with contextlib.suppress(OSError):  # a working directory that was removed
        dirs.insert(0, os.getcwd())
    return dirs


class _RuntimeProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's subprocess protocol, plus `exited`, done as soon as the process exits
    (``Process.wait`` also waits for its pipes to close)."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop):
        super().__init__(limit=limit, loop=loop)
        self.exited: asyncio.Future = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


class _Environment:
    """One execution environment: a runtime process (leading its own process group) and
    its private directory."""

    def __init__(self, proc: asyncio.subprocess.Process, transport: asyncio.BaseTransport,
                 exited: asyncio.Future, directory: str):
        self.proc = proc
        self.transport = transport
        self.exited = exited
        self.directory = directory
        self.busy = False
        self.generation = 0
        self.memory_limit = 0
        self.oom_rss = 0
        self._ps: Any = None

    def intact(self) -> bool:
        """Whether the environment's own state is whole: running, its directory there."""
        return not self.exited.done() and os.path.isdir(self.directory)

    async def call(self, request: dict) -> dict:
        assert self.proc.stdin is not None
        data = json.dumps(request).encode()
        try:
            self.proc.stdin.write(_LEN.pack(len(data)) + data)
            await self.proc.stdin.drain()
        except (ConnectionError, BrokenPipeError) as exc:
            raise _Died(str(exc)) from None
        return await self.read()

    async def read(self) -> dict:
        """The runtime's next message; `_Died` if it exits first."""
        reading = asyncio.ensure_future(self._message())
        try:
            done, _ = await asyncio.wait({reading, self.exited},
                                         return_when=asyncio.FIRST_COMPLETED)
            if reading not in done:  # it exited: what it wrote first may still be in the pipe
                done, _ = await asyncio.wait({reading}, timeout=_EXIT_GRACE)
            if reading not in done:
                raise _Died("the runtime exited")
            return reading.result()
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            raise _Died(str(exc)) from None
        finally:
            reading.cancel()

    async def _message(self) -> dict:
        assert self.proc.stdout is not None
        (n,) = _LEN.unpack(await self.proc.stdout.readexactly(_LEN.size))
        return json.loads(await self.proc.stdout.readexactly(n))

    async def returncode(self) -> int | None:
        """The runtime's exit code, once it has exited (waiting a little for that)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.exited), 2.0)
        return self.proc.returncode

    def rss(self) -> int:
        import psutil

        if self._ps is None:
            self._ps = psutil.Process(self.proc.pid)
        return self._ps.memory_info().rss

    def kill(self) -> None:
        """Kill the whole process group: the runtime and whatever its tasks started."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    async def stop(self, grace: float = _STOP_GRACE) -> None:
        """End the environment (asking first, for ``grace`` s, if it is idle) and remove
        its directory."""
        if not self.busy and grace > 0 and self.proc.stdin is not None:
            self.proc.stdin.close()  # an idle runtime ends its group at end of input
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.exited), grace)
        self.kill()  # also what a task of a runtime that died left running
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.exited), _REAP_TIMEOUT)
        finally:
            self.transport.close()
            shutil.rmtree(self.directory, ignore_errors=True)


def _local_fix(option: str, value: int) -> str:
    """How a local user gives the function another ``option`` (``timeout``, ``memory``)."""
    argument = "function_timeout" if option == "timeout" else option
    return f"LambdaClient(..., {argument}={value}) or DASK_LAMBDA__{option.upper()}"


class LocalBackend(Backend):
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
        super().__init__(settings)
        self.python = python or sys.executable
        self.region = region  # (S3's; the cluster's card shows it)
        self.s3: LocalS3 = LocalS3(s3_endpoint, python=self.python, region=region)
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

    @property
    def directory(self) -> str:
        """This backend's temporary directory (execution environments live below it)."""
        return self._dir

    async def start(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="dask-lambda-local-")
        await self.s3.start(self._dir)
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
        await self.s3.close()
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
        # Nothing of the client's AWS configuration: a function gets its role's credentials
        # and no more (no profile, session or container-credential variables, no ~/.aws).
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(self.client_environment())
        threads = str(max(1, min(6, self.settings.memory // _VCPU_MB)))
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, threads)
        env.update({
            "_HANDLER": HANDLER,
            protocol.SIGNING_KEY_ENV: self.settings.signing_key.hex(),
            "AWS_LAMBDA_FUNCTION_NAME": "dask-lambda-local",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.settings.memory),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(self.settings.timeout),
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "TMPDIR": directory,
            CLIENT_DIRS_ENV: os.pathsep.join(_client_dirs()),
            transfer.TRANSFER_CONCURRENCY_ENV: "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        return env

    async def _environment(self, *, kill_start: bool = False) -> _Environment:
        """A warm environment whose state is whole, else a new one."""
        while self._idle:
            env = self._idle.pop()
            if env.intact():
                return env
            await self._discard(env)  # its directory was removed (a /tmp cleaner?), or it died
        return await self._spawn(kill_start=kill_start)

    async def _spawn(self, *, kill_start: bool = False) -> _Environment:
        os.makedirs(self._dir, exist_ok=True)  # something on the machine may have removed it
        directory = tempfile.mkdtemp(prefix="env-", dir=self._dir)
        loop = asyncio.get_running_loop()
        try:
            transport, runtime = await loop.subprocess_exec(
                lambda: _RuntimeProtocol(limit=2**16, loop=loop),
                self.python, "-m", RUNTIME, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=None, cwd=directory,
                env=self._environment_variables(directory), start_new_session=True)
        except OSError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            raise ConfigurationError(
                f"the local execution environments' interpreter {self.python!r} cannot be "
                f"started ({exc}): set lambda.local.python to a Python with dask-lambda "
                "installed, e.g. dask.config.set({'lambda.local.python': sys.executable})"
            ) from None
        proc = asyncio.subprocess.Process(transport, runtime, loop)
        env = _Environment(proc, transport, runtime.exited, directory)
        env.generation = self._generation
        self._all.add(env)
        if kill_start:
            env.kill()
        try:
            hello = await asyncio.wait_for(env.read(), START_TIMEOUT)
        except asyncio.TimeoutError:
            await self._discard(env)
            raise FunctionError(
                f"the local execution environment did not start within {START_TIMEOUT:.0f} s "
                f"({self.python} -m {RUNTIME}); is the machine overloaded?",
                "Runtime.InitTimeout") from None
        except _Died:
            code = await env.returncode()
            await self._discard(env)
            if code is not None and code < 0:  # killed by a signal: a crash, retried
                raise HandlerCrashedError(
                    f"Runtime exited with signal {-code} while the execution environment "
                    "started, before it took the task: it was killed or crashed.") from None
            raise FunctionError(
                f"the local execution environment exited with code {code} while it started, "
                "before it took the task (its error is above). Is dask-lambda installed in "
                f"the interpreter it runs with ({self.python})?", "Runtime.ExitError") from None
        except BaseException:
            await self._discard(env)
            raise
        if "init_error" in hello:
            await self._discard(env)
            err = hello["init_error"]
            raise FunctionError(
                f"the local execution environment could not import its handler: "
                f"{err['errorMessage']}. Is dask-lambda installed in the interpreter it runs "
                f"with ({self.python})?", err["errorType"])
        self.cold_starts += 1
        return env

    async def _discard(self, env: _Environment) -> None:
        self._all.discard(env)
        env.kill()  # at once, even if this coroutine is cancelled while it reaps
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
        """Run one invocation in a warm or new execution environment.

        Cancelling the call (the task awaiting it) kills the environment running it, with
        whatever the task started: the invocation stops at once and its slot is free.
        """
        if self._closed:
            raise HandlerCrashedError("the local backend is closed")
        faults = self.faults
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
                raise self._failed(request_id, memory, "Sandbox.Timedout",
                                   f"{request_id} Task timed out after {timeout:.2f} seconds"
                                   ) from None
            except _Died:
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
            failed = "error" in reply or reply["response"].get("status") == "error"
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
        if "error" in reply:  # the handler raised (not the task)
            raise self._failed(request_id, memory, reply["error"]["errorType"],
                               reply["error"]["errorMessage"])
        return reply["response"]

    def _failed(self, request_id: str, memory: int, error_type: str, message: str, *,
                used_mb: float | None = None) -> Exception:
        """The typed error of a failed invocation: the runtime answers in Lambda's own shapes
        (``Sandbox.Timedout``, ``Runtime.OutOfMemory``, ``Runtime.ExitError``, the handler's
        exception), which `dask_lambda.failures` classifies as it does every backend's."""
        log = "" if used_mb is None else (
            f"REPORT RequestId: {request_id}\tMemory Size: {memory} MB\t"
            f"Max Memory Used: {used_mb:.0f} MB\t")
        return failures.function_error(
            {"errorType": error_type, "errorMessage": message}, log, request_id=request_id,
            memory=memory, timeout=self.settings.timeout, fix=_local_fix)
