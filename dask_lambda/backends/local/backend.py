"""The local backend: Lambda on this machine, no AWS account, no Docker.

* S3 is moto's S3 server in a process of its own on 127.0.0.1 (or an
  endpoint you give), spoken to over HTTP like the real one, with a key pair of
  its own per client (`dask_lambda.backends.local.s3server`).
* Each execution environment (:mod:`.environment`) is a fresh interpreter
  running :mod:`dask_lambda.backends.local.runtime`, which imports the real
  handler and serves invocations one at a time; :mod:`.invoker` pools them.
  Environments are reused warm, at most ``concurrency`` exist, each runs in a
  private working and temp directory, an invocation past the timeout kills its
  environment, and one whose memory (RSS) passes the memory setting is killed,
  as Lambda does.
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

import os
import shutil
import sys

from ... import scratch
from ..base import Backend, FunctionSettings
from .faults import FaultPlan
from .invoker import LocalInvoker
from .s3 import LocalS3


def machine_concurrency_limit() -> int:
    """The most execution environments this machine runs at once: each is an interpreter
    with dask, numpy and pandas loaded (about 150 MB), and more than a few per core only
    queue for the cores."""
    import psutil

    cores = os.cpu_count() or 1
    return max(4, min(16 * cores, psutil.virtual_memory().total // (150 * 2**20)))


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
        #: The faults injected into invocations (may be replaced while the client runs).
        self.faults = faults
        self._dir = ""
        self.invoker: LocalInvoker | None = None

    # -- lifecycle ------------------------------------------------------------------

    @property
    def directory(self) -> str:
        """This backend's temporary directory (execution environments live below it)."""
        return self._dir

    async def start(self) -> None:
        self._dir = scratch.make("local")
        await self.s3.start(self._dir)
        self.invoker = LocalInvoker(lambda: self.settings, python=self.python,
                                    directory=self._dir, s3=self.client_environment(),
                                    faults=lambda: self.faults)

    async def close(self) -> None:
        await super().close()
        await self.s3.close()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def max_concurrency(self) -> int:
        return machine_concurrency_limit()

    async def recycle(self) -> None:
        """Replace every execution environment by a fresh one (``client.restart()``), as
        LocalCluster restarts its worker processes: idle ones go now, busy ones as their
        invocation ends."""
        if self.invoker is not None:
            await self.invoker.recycle()
