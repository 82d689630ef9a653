"""S3 for backends that run on this machine: moto's server in a process of its own.

Shared by the local backend (which runs the real handler) and the simulated
backend (which models Lambda without running tasks).  The server is started by
`LocalS3.start` unless an endpoint is given, spoken to over HTTP like
the real S3, and stopped by `LocalS3.close`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from typing import Any

from ...errors import ConfigurationError
from ..base import S3Endpoint
from .s3server import TEST_CREDENTIALS

#: What clients and handlers use with an S3 endpoint given as ``local_s3_endpoint`` (a
#: server started by hand accepts these); a server this backend starts gets its own pair.
CREDENTIALS = TEST_CREDENTIALS
START_TIMEOUT = 120.0


def new_credentials() -> dict[str, str]:
    """A random key pair for one private S3 server (only its client and handlers know it)."""
    return {"aws_access_key_id": "LOCAL" + secrets.token_hex(8).upper(),
            "aws_secret_access_key": secrets.token_urlsafe(30)}


async def stop_process(proc: asyncio.subprocess.Process, grace: float) -> None:
    """Close ``proc``'s stdin (our children exit at end of input); kill it after ``grace`` s."""
    if proc.returncode is None and proc.stdin is not None:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except asyncio.TimeoutError:
            pass
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


async def start_server_process(python: str, module: str, *args: str,
                               config: bytes | None = None, cwd: str | None = None
                               ) -> tuple[asyncio.subprocess.Process, int | None]:
    """Start ``python -m module *args``, a server that prints ``PORT <n>`` once it serves and
    exits when its stdin closes; ``config`` is written to its stdin first.

    The server runs in a session of its own, out of the terminal's foreground process group,
    so a Ctrl-C meant for the user's script does not kill it under the client (which stops
    it as it closes).

    Returns the process and its port, or ``None`` if it did not say within `START_TIMEOUT`
    (the caller raises its own error; `stop_process` ends it either way).
    """
    proc = await asyncio.create_subprocess_exec(
        python, "-m", module, *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, cwd=cwd, start_new_session=True)
    assert proc.stdin is not None and proc.stdout is not None
    if config is not None:
        proc.stdin.write(config)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
    except asyncio.TimeoutError:
        line = b""
    return proc, int(line.split()[1]) if line.startswith(b"PORT ") else None


class LocalS3(S3Endpoint):
    """The S3 of the local and simulated backends: a moto server on 127.0.0.1 (started by
    `start`) or a given endpoint.

    Parameters
    ----------
    endpoint
        Use this S3 endpoint instead of starting a private moto server.
    python
        Interpreter for the server process (default: this one).
    region
        Region name given to S3 clients.
    """

    creates_bucket = True

    def __init__(self, endpoint: str | None = None, *, python: str | None = None,
                 region: str = "us-east-1"):
        self.endpoint = endpoint
        self.python = python or sys.executable
        self.region = region
        #: The key pair this backend's clients and handlers sign S3 requests with.
        self.credentials = dict(CREDENTIALS) if endpoint is not None else new_credentials()
        self._own_s3: asyncio.subprocess.Process | None = None

    @property
    def options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint, "region": self.region,
                "credentials": dict(self.credentials), "transfer_concurrency": 1}

    def environment(self) -> dict[str, str]:
        assert self.endpoint is not None, "the environment of a local S3 before its start"
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.credentials["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": self.credentials["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    async def start(self, directory: str | None = None) -> None:
        """Start moto's S3 server (working directory ``directory``) unless an endpoint was given."""
        if self.endpoint is not None:
            return
        try:
            self._own_s3, port = await start_server_process(
                self.python, "dask_lambda.backends.local.s3server", "--credentials-on-stdin",
                config=json.dumps(self.credentials).encode() + b"\n", cwd=directory)
        except OSError as exc:  # the interpreter is missing or cannot be run
            raise ConfigurationError(
                f"the local backend's interpreter {self.python!r} cannot be started ({exc}): "
                "set lambda.local.python to a Python with dask-lambda installed, e.g. "
                "dask.config.set({'lambda.local.python': sys.executable})") from None
        if port is None:
            raise ConfigurationError(
                "the local S3 server (moto) did not start; are moto's S3 and Flask installed? "
                "`pip install 'moto[s3]' flask flask-cors` (or pass "
                "local_s3_endpoint=\"http://...\" to use one you run)")
        self.endpoint = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        """Stop the S3 server `start` started, if any."""
        if self._own_s3 is not None:
            proc, self._own_s3 = self._own_s3, None
            await stop_process(proc, grace=5.0)
