"""The local backend behaves like Lambda where a user could otherwise be fooled, and leaves
nothing behind: Ctrl-C, tasks that fork, environments killed while they start or whose
directory vanished, tasks that call sys.exit, the client's AWS settings and files, and a
private S3 server that only its client can use.

Afterwards no process of the backend (found by its working directory or ``TMPDIR``, so
grandchildren re-parented to pid 1 too), no temp directory and no object remains.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

import boto3
import dask.dataframe as dd
import numpy as np
import psutil
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from dask_lambda_handler import protocol, s3keys

from dask_lambda import LambdaClient
from dask_lambda.backends.local.faults import FaultPlan
from dask_lambda.errors import ClientFileError, HandlerCrashedError, TaskExitError
from dask_lambda.serialize import dumps

from .conftest import bucket_for, list_keys

#: One environment: what a task leaves in it is seen by the next task.
CLIENT_OPTIONS = {"concurrency": 1, "function_timeout": 60, "retries": 2}


def processes_below(directory: str) -> list[psutil.Process]:
    """Live processes working in ``directory`` or with a ``TMPDIR`` below it (whoever their
    parent is now)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            tmp = proc.environ().get("TMPDIR", "")
            if proc.cwd().startswith(directory) or tmp.startswith(directory):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def assert_nothing_left(directory: str) -> None:
    deadline = time.monotonic() + 15
    while processes_below(directory) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_below(directory) == []
    assert not os.path.exists(directory)


@pytest.fixture(scope="module")
def client(request, s3_endpoint, s3):
    """This module's client (one environment); afterwards nothing of it remains."""
    bucket = bucket_for(request)
    with LambdaClient(f"s3://{bucket}/run", local_s3_endpoint=s3_endpoint,
                      dashboard_address=None, **CLIENT_OPTIONS) as c:
        directory = c.cluster.backend.directory
        yield c
    assert_nothing_left(directory)
    assert list_keys(s3, bucket) == []


def retries(client) -> int:
    return client.lambda_stats()["retries"]


def pipe_holders(pipe: Any, wait: float = 15) -> list[str]:
    """The processes (other than this one) that still hold the other end of ``pipe``, after
    waiting up to ``wait`` s for them to end."""
    inode = f"pipe:[{os.fstat(pipe.fileno()).st_ino}]"
    deadline = time.monotonic() + wait
    while True:
        holders = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if proc.pid == os.getpid():
                continue
            try:
                fds = os.listdir(f"/proc/{proc.pid}/fd")
                if any(os.readlink(f"/proc/{proc.pid}/fd/{fd}") == inode for fd in fds):
                    holders.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])[:200]}")
            except OSError:
                continue
        if not holders or time.monotonic() > deadline:
            return holders
        time.sleep(0.2)


def gone(pid: int, timeout: float = 10) -> bool:
    """Whether process ``pid`` ends within ``timeout`` s (or has ended)."""
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        return False
    return True


# -- Ctrl-C ------------------------------------------------------------------------------------

CTRL_C_SCRIPT = """
import faulthandler, signal
faulthandler.register(signal.SIGUSR1, all_threads=True)  # where it hangs, if it does
import time, dask.array as da
from dask_lambda import LambdaClient

def slow(block):
    time.sleep(30)
    return block

client = LambdaClient("s3://t-ctrl-c/f", concurrency=2, inline_max=0, dashboard_address=None,
                      **{options})
print(client.cluster.backend.directory, flush=True)
da.ones(100, chunks=10).map_blocks(slow, meta=da.ones(0).compute()).sum().compute()
"""


@pytest.mark.parametrize("own_s3", [True, False], ids=["own-s3", "given-s3"])
def test_ctrl_c_ends_the_script_at_once_and_leaves_nothing(own_s3, s3_endpoint, s3, tmp_path):
    options = "{}" if own_s3 else f"{{'local_s3_endpoint': {s3_endpoint!r}}}"
    # A terminal runs the script as a process group of its own, with SIGINT's default action,
    # and Ctrl-C sends SIGINT to the whole group. (A test run started in the background by a
    # non-interactive shell, as a CI job may be, ignores SIGINT, which a child would inherit:
    # Python then raises no KeyboardInterrupt.)
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT.format(options=options)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        directory = proc.stdout.readline().strip()
        assert directory, proc.communicate()[1]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len([
                p for p in processes_below(directory)
                if "backends.local.runtime" in " ".join(p.cmdline())]) < 2:
            time.sleep(0.2)  # both environments are running a 30 s task
        assert time.monotonic() < deadline
        if not own_s3:
            assert list_keys(s3, "t-ctrl-c")  # the run has objects
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGUSR1)  # its threads' stacks, to stderr
            time.sleep(3)
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("the script did not end within 60 s of Ctrl-C; its threads:\n"
                                 + proc.communicate(timeout=30)[1][-8000:]) from None
        took = time.monotonic() - t0
        # ... and nothing it started outlives it, holding its output open
        holders = pipe_holders(proc.stderr, wait=max(0.0, t0 + 8 - time.monotonic()))
        assert not holders, f"processes outlived the script, holding its stderr: {holders}"
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert took < 8, err  # it was 10-41 s: S3 had died under the client
    # The script ends as Python ends on Ctrl-C; its S3 server and environments were not
    # interrupted under it (they printed tracebacks of their own).
    assert proc.returncode == -signal.SIGINT
    assert "KeyboardInterrupt" in err
    for child in ("s3server", "local/runtime", "dask_lambda_handler", "runner.py"):
        assert child not in err, err
    assert_nothing_left(directory)
    if not own_s3:
        assert list_keys(s3, "t-ctrl-c") == []


# -- tasks that fork ---------------------------------------------------------------------------


def start_helper():
    """A task that forks a helper which outlives it (multiprocessing forks on Linux)."""
    helper = multiprocessing.get_context("fork").Process(target=time.sleep, args=(300,))
    helper.start()
    return helper.pid


def crash_once(marker):
    if not os.path.exists(marker):  # the first attempt's environment crashes
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "ok"


def test_a_task_that_forks_does_not_hide_its_environments_crash(client, tmp_path):
    helper = client.submit(start_helper, pure=False).result()
    assert psutil.pid_exists(helper)
    before = retries(client)
    t0 = time.monotonic()
    # Its crash is seen at once and retried (it was a LambdaTimeoutError after the full
    # timeout, the helper holding the protocol pipe open) ...
    assert client.submit(crash_once, str(tmp_path / "crashed")).result() == "ok"
    assert time.monotonic() - t0 < 30
    assert retries(client) == before + 1
    assert gone(helper)  # ... and the helper went with the environment that started it


def test_what_a_task_left_running_goes_with_its_environment_at_close(s3_endpoint, s3):
    with LambdaClient("s3://t-forks-close/f", local_s3_endpoint=s3_endpoint, concurrency=1,
                      dashboard_address=None) as c:
        directory = c.cluster.backend.directory
        helper = c.submit(start_helper, pure=False).result()
        assert psutil.pid_exists(helper)
    assert gone(helper)
    assert_nothing_left(directory)
    assert list_keys(s3, "t-forks-close") == []


# -- cancelling an invocation -----------------------------------------------------------------


async def _cancel_running(backend, event, after):
    """Invoke ``event``, cancel the call ``after`` s later; return the runtime's pid."""
    invocation = asyncio.ensure_future(backend.invoke(event))
    await asyncio.sleep(after)
    [env] = [p.pid for p in processes_below(backend.directory)
             if "backends.local.runtime" in " ".join(p.cmdline()) and p.ppid() == os.getpid()]
    invocation.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await invocation
    return env


def test_cancelling_an_invocation_kills_its_environment_at_once(client):
    cluster = client.cluster
    job_key = cluster.layout.job_key("00/sleeper", 0)
    job = protocol.encode({"kind": "job", "key": "sleeper"},
                          dumps((time.sleep, (120,), {})),
                          protocol.run_key(cluster.settings.signing_key, cluster.layout.run),
                          s3keys.identity(cluster.bucket, job_key))
    event = {"op": "run", "bucket": cluster.bucket, "job_key": job_key, "inline_max": 10**6,
             "result_key": cluster.layout.result_key("00/sleeper", 0),
             "job": base64.b64encode(job).decode()}
    t0 = time.monotonic()
    env = client.sync(_cancel_running, cluster.backend, event, 3.0)
    assert gone(env, timeout=5)
    assert client.submit(sum, [1, 2]).result() == 3  # its slot (the only one) is free
    assert time.monotonic() - t0 < 30


# -- environments killed while they start ------------------------------------------------------


def test_an_environment_killed_while_it_starts_is_a_crash_and_retried(s3_endpoint, s3):
    with LambdaClient("s3://t-kill-start/f", local_s3_endpoint=s3_endpoint, concurrency=1,
                      retries=1, dashboard_address=None,
                      local_faults=FaultPlan(kill_start=1.0, every_attempt=True)) as c:
        directory = c.cluster.backend.directory
        with pytest.raises(HandlerCrashedError) as info:
            c.submit(sum, [1, 2]).result()
        assert "Runtime exited with signal 9 while the execution environment started, " \
               "before it took the task: it was killed or crashed. Gave up after 2 " \
               "attempts (retries=1)." in str(info.value)
        assert "is dask-lambda installed" not in str(info.value).lower()

        c.cluster.backend.faults = FaultPlan(kill_start=1.0)  # first attempts only
        before = retries(c)
        assert c.submit(sum, [1, 2, 3]).result() == 6
        assert retries(c) == before + 1
    assert_nothing_left(directory)
    assert list_keys(s3, "t-kill-start") == []


# -- sys.exit and KeyboardInterrupt inside a task ----------------------------------------------


def exits(path, how):
    with open(path, "a") as f:
        f.write("ran\n")  # a side effect, which must happen once
    if how == "exit":
        sys.exit(3)
    raise KeyboardInterrupt


@pytest.mark.parametrize("how, message", [
    ("exit", r"^the task called sys.exit\(3\) \(SystemExit\), which would end the function's "
             r"process: it is reported as the task's error and was not retried\. Return a "
             r"value, or raise an exception to fail the task\.$"),
    ("interrupt", r"^the task raised KeyboardInterrupt, which would end"),
])
def test_sys_exit_in_a_task_is_its_own_error_and_never_retried(client, tmp_path, how, message):
    path = tmp_path / "side-effects"
    before = retries(client)
    future = client.submit(exits, str(path), how)
    with pytest.raises(TaskExitError, match=message):  # not SystemExit: the script goes on
        future.result()
    assert path.read_text() == "ran\n"
    assert retries(client) == before
    assert client.submit(sum, [1, 2]).result() == 3  # the environment is fine


# -- an environment whose own directory vanished -----------------------------------------------


def use_tmp(marker=None):
    if marker is not None and not os.path.exists(marker):  # first attempt: it vanishes now
        open(marker, "w").close()
        import shutil

        shutil.rmtree(os.environ["TMPDIR"])
    with tempfile.NamedTemporaryFile() as f:
        f.write(b"x")
    return "ok"


def test_an_environment_whose_directory_vanished_is_replaced(client, tmp_path):
    assert client.submit(use_tmp, pure=False).result() == "ok"
    before = retries(client)
    for env in os.listdir(client.cluster.backend.directory):  # as a /tmp cleaner would
        if env.startswith("env-"):
            import shutil

            shutil.rmtree(os.path.join(client.cluster.backend.directory, env))
    assert client.submit(use_tmp, pure=False).result() == "ok"  # in a new environment
    assert retries(client) == before
    # Vanished while the task ran: its failure is the environment's, so it runs again.
    assert client.submit(use_tmp, str(tmp_path / "vanished")).result() == "ok"
    assert retries(client) == before + 1


# -- what an environment sees: AWS settings, S3, files -----------------------------------------

PLANTED = ("AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
           "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
           "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME",
           "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE",
           "AWS_ENDPOINT_URL")


def aws_environment():
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


def s3_roundtrip(url):
    import fsspec

    with fsspec.open(url, "wb") as f:
        f.write(b"from a task")
    with fsspec.open(url, "rb") as f:
        return f.read()


def read(path):
    with open(path) as f:
        return f.read()


def write(path):
    with open(path, "w") as f:
        f.write("x")


def read_image(path):
    """A reader that tries its plugins and raises its own error (as image readers do)."""
    errors = []
    for plugin in (read, read):
        try:
            return plugin(path)
        except Exception as exc:
            errors.append(type(exc).__name__)
    raise ValueError(f"Could not read {path!r}: all handlers returned exceptions {errors}")


def legitimate_opens():
    """Opens a task may make: its own directory, the Python installation, the system."""
    import ssl

    import certifi
    import pandas  # noqa: F401  (imports from site-packages)

    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "x"), "w") as f:
            f.write("x")
        listed = os.listdir(d)
    with open("here.txt", "w") as f:  # its working directory
        f.write("x")
    with open("/proc/self/status") as f:
        f.read()
    with open("/dev/urandom", "rb") as f:
        f.read(8)
    read(certifi.where())
    ssl.create_default_context()
    return listed


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A notebook's directory with data beside it, the client's working directory; the
    client has AWS settings of its own."""
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "data" / "x.csv").write_text("a,b\n1,2\n")
    monkeypatch.chdir(root)
    for name in PLANTED:
        monkeypatch.setenv(name, "client-secret-" + name)
    import certifi

    monkeypatch.setenv("AWS_CA_BUNDLE", certifi.where())  # the client's S3 client reads it
    return root, {name: os.environ[name] for name in PLANTED}


def test_environments_see_none_of_the_clients_aws_settings_or_files(project):
    project, planted = project
    with LambdaClient("s3://t-lambda-like/f", concurrency=1, dashboard_address=None) as c:
        backend = c.cluster.backend
        directory = backend.directory

        env = c.submit(aws_environment).result()
        assert not any(env.get(name) == planted for name, planted in planted.items())
        assert env["AWS_ACCESS_KEY_ID"] == backend.s3.credentials["aws_access_key_id"]
        assert env["AWS_CONFIG_FILE"] == env["AWS_SHARED_CREDENTIALS_FILE"] == os.devnull
        assert c.submit(s3_roundtrip, "s3://t-lambda-like/f/scratch").result() == \
            b"from a task"  # the environment's own credentials reach S3

        with pytest.raises(ClientFileError) as info:  # as in Lambda, where it does not exist
            dd.read_csv("data/*.csv").compute()
        path = str(project / "data" / "x.csv")
        assert str(info.value) == (
            f"{path} is on the client's disk, which a Lambda function cannot see, so it "
            "cannot be opened here (the local backend refuses it as Lambda would). Put the "
            "file in S3 and read it from there (e.g. pd.read_csv(\"s3://my-bucket/data/x.csv"
            "\")), or pass its contents to the task as an argument (client.submit(func, "
            "data)); write outputs to S3 (e.g. df.to_parquet(\"s3://my-bucket/out/\")) or "
            "return them.")
        assert isinstance(info.value, FileNotFoundError)
        with pytest.raises(ClientFileError, match="cannot be written here"):
            c.submit(write, str(project / "out.csv")).result()
        assert not (project / "out.csv").exists()
        # A library that replaces the error by its own gets a note naming cause and fix.
        with pytest.raises(ValueError, match="all handlers returned exceptions") as info:
            c.submit(read_image, str(project / "data" / "x.csv")).result()
        assert info.value.__notes__ == [
            f"{path} is on the client's disk, which a Lambda function cannot see. Put the "
            "file in S3 and read it from there (e.g. pd.read_csv(\"s3://my-bucket/data/x.csv"
            "\")), or pass its contents to the task as an argument (client.submit(func, "
            "data)); write outputs to S3 (e.g. df.to_parquet(\"s3://my-bucket/out/\")) or "
            "return them."]
        assert c.submit(legitimate_opens).result() == ["x"]
    assert_nothing_left(directory)


def test_a_missing_absolute_path_gets_a_note_on_every_backend(client):
    """What a task gets in Lambda for a path of the client's: the error, with a note."""
    with pytest.raises(FileNotFoundError) as info:
        client.submit(read, "/nonexistent-home/me/data/x.csv").result()
    assert info.value.__notes__ == [
        "If /nonexistent-home/me/data/x.csv is a file on your machine: a Lambda function "
        "cannot see the client's disk. Put the file in S3 and read it from there (e.g. "
        "pd.read_csv(\"s3://my-bucket/data/x.csv\")), or pass its contents to the task as an "
        "argument (client.submit(func, data)); write outputs to S3 (e.g. df.to_parquet(\"s3:"
        "//my-bucket/out/\")) or return them."]
    with pytest.raises(ZeroDivisionError) as info:  # unrelated errors get no note
        client.submit(lambda: 1 / 0).result()
    assert not hasattr(info.value, "__notes__")


def test_only_the_client_can_use_its_private_s3_server():
    with LambdaClient("s3://t-private/f", concurrency=1, dashboard_address=None) as c:
        backend = c.cluster.backend
        directory = backend.directory
        assert c.submit(np.arange, 10, pure=False).result().sum() == 45
        url = backend.s3.endpoint

        def s3(key, secret, **config):
            return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                                aws_access_key_id=key, aws_secret_access_key=secret,
                                config=Config(**config))

        own = s3(backend.s3.credentials["aws_access_key_id"],
                 backend.s3.credentials["aws_secret_access_key"])
        assert own.list_objects_v2(Bucket="t-private")["KeyCount"] > 0
        for other, code in [(s3("testing", "testing"), "InvalidAccessKeyId"),  # another user
                            (s3(backend.s3.credentials["aws_access_key_id"], "guess"),
                             "SignatureDoesNotMatch"),
                            (s3("x", "x", signature_version=UNSIGNED), "AccessDenied")]:
            with pytest.raises(ClientError) as info:
                other.list_objects_v2(Bucket="t-private")
            assert info.value.response["Error"]["Code"] == code
            with pytest.raises(ClientError):
                other.put_object(Bucket="t-private", Key="f/planted", Body=b"x")
        presigned = own.generate_presigned_url(
            "list_objects_v2", Params={"Bucket": "t-private"})
        with pytest.raises(urllib.error.HTTPError) as http:
            urllib.request.urlopen(presigned)
        assert http.value.code == 403
    assert_nothing_left(directory)


# -- a backend's own life --------------------------------------------------------------------


def test_a_backend_refuses_invokes_before_it_starts_and_after_it_closes(s3_endpoint):
    from dask_lambda.backends.base import FunctionSettings
    from dask_lambda.backends.local import LocalBackend

    backend = LocalBackend(FunctionSettings(concurrency=1, memory=512, timeout=30,
                                            signing_key=os.urandom(32)), s3_endpoint=s3_endpoint)

    async def life() -> None:
        with pytest.raises(HandlerCrashedError, match="^the local backend is not started$"):
            await backend.invoke({})
        await backend.start()
        await backend.close()
        with pytest.raises(HandlerCrashedError, match="^the local backend is closed$"):
            await backend.invoke({})

    asyncio.run(life())
    assert backend.invocations == 0
    assert not os.path.exists(backend.directory)
