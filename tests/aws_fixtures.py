"""A local AWS for the aws backend and deploy tests: ministack in a process of its own.

ministack (PyPI) serves the real Lambda, S3, IAM, CloudWatch Logs and STS APIs on
one port, runs Python functions from their zip packages in subprocesses
(``LAMBDA_EXECUTOR=local``) and delivers S3 ObjectCreated notifications to Lambda.
It pins an exact botocore that conflicts with aiobotocore's, so it cannot share the
test environment: it lives in its own virtualenv, made once and cached in pytest's
cache directory. That interpreter has only ministack and boto3 (as Lambda's Python
runtime has boto3), so the functions run on the libraries their package brings.

Built deployment packages are cached there too (``XDG_CACHE_HOME``), so the two test
modules and later runs build each package once.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

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
           "BIND_HOST": "127.0.0.1", "LAMBDA_EXECUTOR": "local", "LOG_LEVEL": "WARNING"}
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


def boto(service: str):
    """A boto3 client on the current environment's endpoint (inside `environment`)."""
    import boto3

    return boto3.client(service, region_name=REGION)
