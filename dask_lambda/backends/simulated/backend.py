"""The simulated backend: Lambda's timing and limits at scale, without running any task.

It stands in for Lambda so that what the *client* spends per task (scheduler,
gateway, job encoding, invokes) can be measured at a scale this machine could
never run for real.  Lambda is a process of its own
(:mod:`dask_lambda.backends.simulated.server`) that serves the Lambda Invoke API
on 127.0.0.1, and the client reaches it through the same invoke path as the aws
backend (:mod:`..invoke`, :mod:`..http`: SigV4 signing, pooled HTTP
connections, Lambda's status codes), so the client's cost per invocation is the
real one.  Thousands of concurrent "functions" are timers in that process.  Per
invocation it models

* the invoke round trip (`LambdaModel.invoke_latency`, half on the way in and half
  on the way back);
* execution environments: a warm idle one is reused, otherwise a new one is made
  and pays a cold start (`LambdaModel.cold_start`);
* the account's concurrency limit: an invocation arriving while that many run is
  refused with 429 (`LambdaThrottledError`, which the executor backs off from);
* the scaling rate: at most `LambdaModel.scaling_rate` new environments per
  `LambdaModel.scaling_period` seconds (sliding window), beyond which it is 429 too;
* the task's duration, a function of the invoke event (`LambdaModel.duration`), and
  the function timeout (`LambdaTimeoutError`).

The job is never decoded and nothing is unpickled: every invocation returns the
same signed inline result (the value ``None``), in the shape
:func:`dask_lambda_handler.runner.handle` returns, unless `LambdaModel.result`
asks for a value per event.  The model's functions are pickled by value where
their module is not installed (as tasks are).  S3 (for the client's bucket check,
run marker and clean-up) is moto's server, as for the local backend, or an
endpoint given.

Examples
--------
>>> from dask_lambda import LambdaClient
>>> from dask_lambda.backends.simulated import LambdaModel, SimulatedBackend, constant
>>> backend = SimulatedBackend(LambdaModel(duration=constant(1.0)))
>>> client = LambdaClient("s3://sim/run", backend=backend, concurrency=1000)  # doctest: +SKIP
>>> client.gather(client.map(str, range(10_000), pure=False))  # doctest: +SKIP
>>> client.close(); backend.counters()  # doctest: +SKIP
{'requests': 10000, 'invocations': 10000, 'cold_starts': 1000, 'throttles': 0, ...}
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
import ssl
import sys
from typing import Any

import cloudpickle

from ... import scratch
from ...errors import ConfigurationError
from ..base import Backend, FunctionSettings
from ..http.lambda_api import LambdaInvoker
from ..http.sigv4 import Credentials
from ..invoke import FunctionInvoker
from ..local.s3 import CREDENTIALS, LocalS3, start_server_process, stop_process
from .model import LambdaModel, ServerConfig, SimulatedCounters

logger = logging.getLogger(__name__)


class SimulatedBackend(Backend):
    """Lambda's latencies, cold starts, concurrency limit and scaling rate; tasks only sleep.

    Parameters
    ----------
    model
        How Lambda behaves (default: `LambdaModel()`).
    settings
        The function's settings; ``None`` (usual): the cluster gives them.
    s3_endpoint
        Use this S3 endpoint instead of starting a private moto server.
    tls
        Serve the Invoke API over HTTPS (a self-signed RSA-2048 certificate made at start, as
        AWS's endpoints use RSA-2048), so the client also pays for TLS: a handshake per new
        connection, and encryption.

    Notes
    -----
    What the simulated Lambda saw (`counters`, ``stats``) is read from it when the
    backend stops (when the client closes), or by `refresh_counters`.
    """

    name = "simulated"
    #: The function name the simulated endpoint answers for.
    FUNCTION = "simulated"

    def __init__(self, model: LambdaModel | None = None, settings: FunctionSettings | None = None,
                 *, s3_endpoint: str | None = None, tls: bool = False):
        super().__init__(settings)
        self.python = sys.executable
        self.s3: LocalS3 = LocalS3(s3_endpoint, python=self.python)
        self.region = self.s3.region  # (S3's, and the one invokes are signed for)
        self.model = model = model or LambdaModel()
        self.tls = tls
        self._directory: str | None = None
        self.scaling_rate, self.scaling_period = model.scaling_rate, model.scaling_period
        #: What the simulated Lambda saw, as of the last `refresh_counters`.
        self.stats = SimulatedCounters()
        self._server: asyncio.subprocess.Process | None = None
        self.invoker: FunctionInvoker | None = None
        #: The invoke endpoint's client (also reads the simulated Lambda's counters).
        self._direct: LambdaInvoker | None = None
        self._url = ""

    def counters(self) -> dict[str, Any]:
        """Invocations, cold starts, throttles and peak concurrency, as a flat dict."""
        s = self.stats
        return {"requests": s.requests, "invocations": self.invocations,
                "cold_starts": self.cold_starts, "throttles": sum(s.throttles.values()),
                "throttles_concurrency": s.throttles["concurrency"],
                "throttles_scaling": s.throttles["scaling"],
                "environments": s.environments, "peak_in_flight": s.peak_in_flight,
                "busy_s": s.busy_s}

    async def refresh_counters(self) -> None:
        """Read the simulated Lambda's counters now (`stop` does it too)."""
        if self._direct is None:
            return
        response = await self._direct.get("/_simulator/counters")
        seen = json.loads(response.body)
        seen["timeline"] = [tuple(point) for point in seen["timeline"]]
        self.stats = SimulatedCounters(**seen)

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        from ... import serialize
        from ..http.sockets import raise_open_files_limit

        await self.s3.start()
        settings = self.settings
        connections = max(10, settings.concurrency)
        raise_open_files_limit(connections)
        serialize.prepare()  # the model's functions by value where not installed, as tasks
        context = None
        tls = None
        if self.tls:
            self._directory = scratch.make("simulated")
            tls = _self_signed(self._directory)
            context = ssl.create_default_context(cafile=tls[0])
        config = ServerConfig(self.model, self.FUNCTION, settings.signing_key, settings.timeout,
                              settings.concurrency, tls)
        try:
            pickled = cloudpickle.dumps(config)
        except Exception as exc:
            raise ConfigurationError(
                f"the simulated Lambda runs in another process, and this LambdaModel cannot be "
                f"pickled ({type(exc).__name__}: {exc}): give it functions without locks, "
                "files or sockets, e.g. LambdaModel(duration=constant(1.0))") from None
        self._server, port = await start_server_process(
            self.python, "dask_lambda.backends.simulated.server",
            config=base64.b64encode(pickled) + b"\n")
        if port is None:
            raise ConfigurationError(
                "the simulated Lambda endpoint did not start (see its output above): its model "
                "could not be loaded there, or Python could not start it.")
        scheme = "https" if self.tls else "http"
        self._url = f"{scheme}://127.0.0.1:{port}"
        read_timeout = settings.timeout + 60
        self._direct = LambdaInvoker(self._url, self.region, self.FUNCTION, _local_credentials,
                                     max_connections=connections, read_timeout=read_timeout,
                                     ssl_context=context)
        self.invoker = FunctionInvoker(
            self.FUNCTION, "the simulated Lambda", direct=self._direct, memory=settings.memory,
            timeout=settings.timeout, read_timeout=read_timeout,
            fix=lambda option, value: "LambdaClient(..., {}={})".format(
                "function_timeout" if option == "timeout" else option, value),
            redeploy="start a new client")

    async def stop(self) -> None:
        if self.invoker is not None and not self.invoker.stopped:
            try:
                await self.refresh_counters()
            except Exception as exc:  # counters are a report: say so, but never block closing
                logger.warning("could not read the simulated Lambda's counters (%r): "
                               "backend.counters() keeps the last ones read", exc)
        await super().stop()

    async def close(self) -> None:
        await super().close()  # (the invoker closes the endpoint's client)
        if self._server is not None:
            server, self._server = self._server, None
            await stop_process(server, grace=5.0)
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
        await self.s3.close()


def _self_signed(directory: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its RSA-2048 key, as PEM files in ``directory``."""
    import datetime
    import ipaddress
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "simulated-lambda")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    return cert_path, key_path


async def _local_credentials() -> Credentials:
    return Credentials(CREDENTIALS["aws_access_key_id"], CREDENTIALS["aws_secret_access_key"])

