"""One local execution environment: a runtime process leading its own process group, and
its private directory.

The runtime (:mod:`dask_lambda.backends.local.runtime`) is a fresh interpreter that imports
the real handler and serves invocations one at a time over its stdin and stdout, each
message a 4-byte length and JSON.  Its session of its own keeps it out of the terminal's
foreground group (a Ctrl-C meant for the user's script does not kill it under the client)
and lets it be killed whole, with whatever its tasks left running.  It sees no AWS settings
of the client's (no credentials, profiles, role or container-credential variables, no
``~/.aws`` files): only the local S3's endpoint and key, as a function sees only its role's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import struct
import tempfile
from typing import Any

from dask_lambda_handler import protocol, transfer
from dask_lambda_handler.client_paths import CLIENT_DIRS_ENV

from ...errors import ConfigurationError, FunctionError, HandlerCrashedError
from ..base import FunctionSettings
from .s3 import START_TIMEOUT

_LEN = struct.Struct(">I")
HANDLER = "dask_lambda_handler.entry.handler"
RUNTIME = "dask_lambda.backends.local.runtime"
_VCPU_MB = 1769  # Lambda gives one vCPU per 1,769 MB (AWS-FACTS.md)
_EXIT_GRACE = 0.2  # what an exiting runtime wrote may still be in the pipe this long
_STOP_GRACE = 2.0
_REAP_TIMEOUT = 5.0


class Died(Exception):
    """The runtime exited (or its pipe broke) before it answered."""


def _client_dirs() -> list[str]:
    """Where the client's own files are: its working and home directories."""
    dirs = [os.path.expanduser("~")]
    with contextlib.suppress(OSError):  # a working directory that was removed
        dirs.insert(0, os.getcwd())
    return dirs


def variables(settings: FunctionSettings, s3: dict[str, str], directory: str) -> dict[str, str]:
    """The environment variables of a runtime in ``directory``: this process's without its
    AWS configuration, plus the local S3's (``s3``) and Lambda's own."""
    # Nothing of the client's AWS configuration: a function gets its role's credentials
    # and no more (no profile, session or container-credential variables, no ~/.aws).
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3)
    threads = str(max(1, min(6, settings.memory // _VCPU_MB)))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    env.update({
        "_HANDLER": HANDLER,
        protocol.SIGNING_KEY_ENV: settings.signing_key.hex(),
        "AWS_LAMBDA_FUNCTION_NAME": "dask-lambda-local",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(settings.memory),
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(settings.timeout),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "TMPDIR": directory,
        CLIENT_DIRS_ENV: os.pathsep.join(_client_dirs()),
        transfer.TRANSFER_CONCURRENCY_ENV: "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    return env


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


class Environment:
    """One execution environment: a runtime process (leading its own process group) and
    its private directory. `launch` makes one."""

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

    async def handshake(self, python: str) -> None:
        """Wait for the runtime's hello: it imported the handler. Raises the typed error of
        a start that failed (the caller discards the environment)."""
        try:
            hello = await asyncio.wait_for(self.read(), START_TIMEOUT)
        except asyncio.TimeoutError:
            raise FunctionError(
                f"the local execution environment did not start within {START_TIMEOUT:.0f} s "
                f"({python} -m {RUNTIME}); is the machine overloaded?",
                "Runtime.InitTimeout") from None
        except Died:
            code = await self.returncode()
            if code is not None and code < 0:  # killed by a signal: a crash, retried
                raise HandlerCrashedError(
                    f"Runtime exited with signal {-code} while the execution environment "
                    "started, before it took the task: it was killed or crashed.") from None
            raise FunctionError(
                f"the local execution environment exited with code {code} while it started, "
                "before it took the task (its error is above). Is dask-lambda installed in "
                f"the interpreter it runs with ({python})?", "Runtime.ExitError") from None
        if "init_error" in hello:
            err = hello["init_error"]
            raise FunctionError(
                f"the local execution environment could not import its handler: "
                f"{err['errorMessage']}. Is dask-lambda installed in the interpreter it runs "
                f"with ({python})?", err["errorType"])

    async def call(self, request: dict) -> dict:
        assert self.proc.stdin is not None
        data = json.dumps(request).encode()
        try:
            self.proc.stdin.write(_LEN.pack(len(data)) + data)
            await self.proc.stdin.drain()
        except (ConnectionError, BrokenPipeError) as exc:
            raise Died(str(exc)) from None
        return await self.read()

    async def read(self) -> dict:
        """The runtime's next message; `Died` if it exits first."""
        reading = asyncio.ensure_future(self._message())
        try:
            done, _ = await asyncio.wait({reading, self.exited},
                                         return_when=asyncio.FIRST_COMPLETED)
            if reading not in done:  # it exited: what it wrote first may still be in the pipe
                done, _ = await asyncio.wait({reading}, timeout=_EXIT_GRACE)
            if reading not in done:
                raise Died("the runtime exited")
            return reading.result()
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            raise Died(str(exc)) from None
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


async def launch(python: str, parent: str, settings: FunctionSettings,
                 s3: dict[str, str]) -> Environment:
    """Start a runtime with ``python`` in a new private directory below ``parent`` (not yet
    waiting for its hello: `Environment.handshake`)."""
    os.makedirs(parent, exist_ok=True)  # something on the machine may have removed it
    directory = tempfile.mkdtemp(prefix="env-", dir=parent)
    loop = asyncio.get_running_loop()
    try:
        transport, runtime = await loop.subprocess_exec(
            lambda: _RuntimeProtocol(limit=2**16, loop=loop),
            python, "-m", RUNTIME, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=None, cwd=directory,
            env=variables(settings, s3, directory), start_new_session=True)
    except OSError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise ConfigurationError(
            f"the local execution environments' interpreter {python!r} cannot be "
            f"started ({exc}): set lambda.local.python to a Python with dask-lambda "
            "installed, e.g. dask.config.set({'lambda.local.python': sys.executable})"
        ) from None
    proc = asyncio.subprocess.Process(transport, runtime, loop)
    return Environment(proc, transport, runtime.exited, directory)
