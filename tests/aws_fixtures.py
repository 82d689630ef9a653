"""A local AWS for the aws backend and deploy tests: ministack in a process of its own.

ministack (PyPI) serves the real Lambda, S3, IAM, CloudWatch Logs, STS, Secrets Manager
and KMS APIs on one port, runs Python functions from their zip packages in subprocesses
(``LAMBDA_EXECUTOR=local``) and delivers S3 ObjectCreated notifications to Lambda. It
runs with IAM enforced (``AUTH=true``): requests are checked against the caller's
policies, and functions run under their execution role, so the role deploy makes and
the policies the README documents (`iam_user`) are exercised, not compared. The root
credentials (``test``) may do anything; `boto` uses them to set up and inspect.

`LambdaFake` stands in front of ministack's Lambda API to play the function states it
does not model (Inactive, an update in progress).
It pins an exact botocore that conflicts with aiobotocore's, so it cannot share the
test environment: it lives in its own virtualenv, made once and cached in pytest's
cache directory. That interpreter has only ministack and boto3 (as Lambda's Python
runtime has boto3), so the functions run on the libraries their package brings.

Built deployment packages are cached there too (``XDG_CACHE_HOME``), so the two test
modules and later runs build each package once.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

MINISTACK = "ministack>=1.5.33"
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
#: Functions run on this machine under ministack: build wheels for its glibc.
LOCAL_GLIBC = platform.libc_ver()[1] or "2.28"
_VENV_TIMEOUT = 600
_START_TIMEOUT = 60


def cache_root(config: pytest.Config) -> Path:
    """pytest's cache directory (a temporary one when the cache plugin is off)."""
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("dask-lambda-aws"))
    root = Path(tempfile.gettempdir()) / "dask-lambda-aws-tests"
    root.mkdir(exist_ok=True)
    return root


def ministack_python(config: pytest.Config) -> str:
    """The interpreter of a virtualenv holding ministack and boto3 (made once, cached)."""
    venv = cache_root(config) / "ministack-venv"
    python = venv / "bin" / "python"
    if (venv / "ready").exists() and python.exists():
        return str(python)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True,
                   timeout=_VENV_TIMEOUT)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--timeout", "60", MINISTACK, "boto3"], check=True, timeout=_VENV_TIMEOUT)
    (venv / "ready").write_text("ok\n")
    return str(python)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ministack(config: pytest.Config, tmp: Path):
    """Run ministack on a free port of 127.0.0.1; yields its endpoint URL."""
    python = ministack_python(config)
    port = _free_port()
    workdir = tmp / f"ministack-{port}"
    workdir.mkdir(parents=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir),
           "LANG": "C.UTF-8", "TMPDIR": str(workdir), "GATEWAY_PORT": str(port),
           "BIND_HOST": "127.0.0.1", "LAMBDA_EXECUTOR": "local", "LOG_LEVEL": "WARNING",
           "AUTH": "true"}
    log = open(workdir / "ministack.log", "wb")
    proc = subprocess.Popen([python, "-c", "from ministack.app import main; main()"],
                            env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                urllib.request.urlopen(f"{url}/_ministack/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("ministack did not start: "
                                       + (workdir / "ministack.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # ministack and the function processes it ran
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        log.close()


def aws_environment(endpoint: str, config: pytest.Config, home: Path) -> dict[str, str | None]:
    """Environment variables that point boto (and deploy, and the client) at ministack."""
    return {"AWS_ENDPOINT_URL": endpoint, **CREDENTIALS, "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION, "AWS_PROFILE": None, "AWS_SESSION_TOKEN": None,
            "AWS_ENDPOINT_URL_S3": None, "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_CACHE_HOME": str(cache_root(config) / "xdg-cache")}


@contextlib.contextmanager
def environment(values: dict[str, str | None]):
    """Set (None: unset) environment variables for the block."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in values.items():
            if value is None:
                mp.delenv(name, raising=False)
            else:
                mp.setenv(name, value)
        yield


def subprocess_env(values: dict[str, str | None]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in values or values[k] is not None}
    env.update({k: v for k, v in values.items() if v is not None})
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def boto(service: str, credentials: dict[str, str] | None = None):
    """A boto3 client on the current environment's endpoint (inside `environment`), with the
    root credentials unless ``credentials`` (``AWS_ACCESS_KEY_ID``, ...) are given."""
    import boto3

    creds = credentials or CREDENTIALS
    return boto3.client(service, region_name=REGION,
                        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])


#: What ministack authorizes differently from AWS, added to a deployer's documented policy:
#: ministack checks lambda:CreateFunction against "*" (it does not take the function's name
#: from the request body), where AWS checks it against the function's ARN (Service
#: Authorization Reference, AWS Lambda), as the documented policy grants it.
EMULATOR_DEPLOYER_STATEMENTS = [
    {"Sid": "MinistackCreateFunction", "Effect": "Allow", "Action": "lambda:CreateFunction",
     "Resource": "*"}]


#: Likewise for a user: ministack authorizes lambda:GetFunctionConcurrency as
#: lambda:PutFunctionConcurrency (which AWS does not: Service Authorization Reference, AWS
#: Lambda); a user's documented policy allows GetFunctionConcurrency.
EMULATOR_USER_STATEMENTS = [
    {"Sid": "MinistackGetFunctionConcurrency", "Effect": "Allow",
     "Action": "lambda:PutFunctionConcurrency", "Resource": "*"}]


def iam_user(name: str, policies: list[dict], *, deployer: bool = False) -> dict[str, str]:
    """Make an IAM user whose only permissions are ``policies`` (plus
    `EMULATOR_DEPLOYER_STATEMENTS` for a ``deployer``, else `EMULATOR_USER_STATEMENTS`); its
    credentials (as environment variables)."""
    iam = boto("iam")
    iam.create_user(UserName=name)
    policies = [*policies, {"Version": "2012-10-17", "Statement": (
        EMULATOR_DEPLOYER_STATEMENTS if deployer else EMULATOR_USER_STATEMENTS)}]
    for number, policy in enumerate(policies):
        iam.put_user_policy(UserName=name, PolicyName=f"policy-{number}",
                            PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


_FUNCTION_PATH = "/2015-03-31/functions/"


class LambdaFake:
    """A proxy in front of ministack's Lambda API that plays function states AWS has and
    ministack does not model (point ``AWS_ENDPOINT_URL_LAMBDA`` at `url`).

    * `inactive`: the function reads Inactive (as after weeks without invocations) until it
      is invoked; that invoke is answered ResourceNotReadyException (502), then the function
      reads Pending a few times, then it is what ministack says (Lambda function states).
    * `updating`: the function reads ``LastUpdateStatus: InProgress`` a few times, and an
      update sent meanwhile is answered ResourceConflictException (409), as Lambda does.

    `refused` counts the requests it answered with an error, by (operation, function).
    Requests pass through unchanged otherwise (the Host header too, so signatures hold).
    """

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.refused: Counter = Counter()
        self._inactive: dict[str, int] = {}  # function -> Pending reads left (-1: Inactive)
        self._updating: dict[str, int] = {}  # function -> InProgress reads left
        self._lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                fake._serve(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> LambdaFake:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def inactive(self, function: str, pending_reads: int = 2) -> None:
        with self._lock:
            self._inactive[function] = -1 - pending_reads

    def updating(self, function: str, reads: int = 2) -> None:
        with self._lock:
            self._updating[function] = reads

    @staticmethod
    def _operation(method: str, path: str) -> tuple[str, str]:
        if not path.startswith(_FUNCTION_PATH):
            return "", ""
        name, _, rest = path[len(_FUNCTION_PATH):].partition("/")
        name = unquote(name).split(":")[-1]
        operation = {("GET", ""): "GetFunction", ("GET", "configuration"):
                     "GetFunctionConfiguration", ("PUT", "configuration"):
                     "UpdateFunctionConfiguration", ("PUT", "code"): "UpdateFunctionCode",
                     ("POST", "invocations"): "Invoke"}.get((method, rest.split("?")[0]), "")
        return operation, name

    def _script(self, operation: str, name: str) -> tuple[tuple[int, str, str] | None, dict]:
        """(an error to answer instead, or None; fields to set in a configuration read)."""
        with self._lock:
            left = self._inactive.get(name)
            if left is not None:
                if left < -1:  # Inactive, waiting for an invoke
                    if operation == "Invoke":
                        self._inactive[name] = -left - 1
                        return (502, "ResourceNotReadyException",
                                "The function is inactive; Lambda is recreating its "
                                "resources. Wait for it to become Active."), {}
                    if operation.startswith("Get"):
                        return None, {"State": "Inactive", "StateReasonCode": "Idle",
                                      "StateReason": "The function is idle."}
                elif left > 0 and operation.startswith("Get"):
                    self._inactive[name] = left - 1
                    return None, {"State": "Pending", "StateReasonCode": "Restoring",
                                  "StateReason": "The function is being restored."}
                elif left == 0:
                    del self._inactive[name]
            left = self._updating.get(name)
            if left is not None:
                if left == 0:
                    del self._updating[name]
                elif operation.startswith("Update"):
                    return (409, "ResourceConflictException",
                            "The operation cannot be performed at this time. An update is in "
                            f"progress for resource: {name}"), {}
                elif operation.startswith("Get"):
                    self._updating[name] = left - 1
                    return None, {"LastUpdateStatus": "InProgress"}
        return None, {}

    def _serve(self, request: http.server.BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        operation, name = self._operation(request.command, request.path)
        error, fields = self._script(operation, name) if operation else (None, {})
        if error is not None:
            self.refused[(operation, name)] += 1
            status, code, message = error
            self._answer(request, status, {"Content-Type": "application/json",
                                           "x-amzn-ErrorType": code},
                         json.dumps({"Type": "User", "message": message}).encode())
            return
        upstream = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port,
                                              timeout=900)
        try:
            upstream.request(request.command, request.path, body=body,
                             headers=dict(request.headers.items()))
            answer = upstream.getresponse()
            data = answer.read()
            headers = {k: v for k, v in answer.getheaders()
                       if k.lower() not in ("content-length", "transfer-encoding", "connection")}
            status = answer.status
        finally:
            upstream.close()
        if fields and status == 200:
            doc = json.loads(data)
            (doc.get("Configuration") if operation == "GetFunction" else doc).update(fields)
            data = json.dumps(doc).encode()
        self._answer(request, status, headers, data)

    @staticmethod
    def _answer(request: http.server.BaseHTTPRequestHandler, status: int, headers: dict,
                data: bytes) -> None:
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(data)


#: The bucket of the deployments the session shares; (prefix, function) of each (the client
#: also looks at "elsewhere"); ministack's account.
E2E_BUCKET = "dl-e2e"
DEPLOYMENTS = [("run", "dl-e2e"), ("short", "dl-short"), ("old", "dl-old")]
ACCOUNT = "000000000000"


@contextlib.contextmanager
def deployed(config: pytest.Config, home: Path):
    """ministack with the function deployed (trigger on) at s3://dl-e2e/run by ``dask-lambda
    deploy``'s code, as an IAM user with exactly the deployer's documented permissions.

    Yields ``{"endpoint", "home", "env", "deployer"}``: ``env`` points boto at ministack with
    a user's documented permissions, ``deployer`` with the deployer's. The caller enters
    ``environment(env)`` where it uses them: nothing is set outside that.
    """
    from dask_lambda.deploy import Target, deploy, permissions

    with ministack(config, home) as endpoint:
        values = aws_environment(endpoint, config, home)
        with environment(values):
            deployer = iam_user("deployer", [
                permissions.deployer_policy(E2E_BUCKET, prefix, fn, REGION, ACCOUNT)
                for prefix, fn in DEPLOYMENTS], deployer=True)
            user = iam_user("user", [
                permissions.user_policy(E2E_BUCKET, prefix, fn, REGION, ACCOUNT)
                for prefix, fn in [*DEPLOYMENTS, ("elsewhere", "dl-e2e")]]
                + [permissions.user_policy("dl-far-e2e", "run", "dl-e2e", REGION, ACCOUNT)])
            with environment(deployer):
                deploy(Target(E2E_BUCKET, "run", "dl-e2e", REGION), timeout=120, memory=2048,
                       trigger=True, glibc=LOCAL_GLIBC, out=lambda line: None)
        yield {"endpoint": endpoint, "home": home, "env": {**values, **user},
               "deployer": {**values, **deployer}}

