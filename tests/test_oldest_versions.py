"""The oldest releases ``pyproject.toml`` allows pass a smoke subset of the suite.

Every lower bound in ``[project] dependencies`` (and boto3's in the test extra, which the
tests' own S3 client needs beside that botocore) is installed exactly, as pip constraints
``name==bound``, in a virtualenv of its own on the oldest Python ``requires-python`` allows
where this machine has one (pyenv's 3.10 here; else the suite's Python), made once per set of
bounds and cached in pytest's cache directory; everything else resolves to what pip picks
beside them, as it would for a user. The smoke subset then runs there: the local backend's array,
dataframe, bag, delayed and futures workloads (``tests/test_workloads.py``), batching
(``tests/test_batching.py``), and the trigger mode's claim below, whose ``IfNoneMatch``
sets botocore's bound.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from dask_lambda.deploy import package as pkg

try:
    import tomllib
except ImportError:  # Python 3.10: pytest brings tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["tests/test_workloads.py", "tests/test_batching.py",
         "tests/test_oldest_versions.py::test_a_trigger_job_is_claimed_once",
         # the workloads on the local backend only: the aws shapes start ministack and deploy
         # into it, which this smoke run in the oldest versions' environment does not cover
         "-k", "not aws"]
#: Test-extra packages pinned too: boto3 must match the oldest botocore.
PINNED_TEST_EXTRAS = ("boto3",)
_INSTALL_TIMEOUT = 900


def lower_bounds() -> dict[str, str]:
    """``{name: oldest version}`` of every runtime dependency (and `PINNED_TEST_EXTRAS`)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for r in project["optional-dependencies"]["test"]
             if Requirement(r).name in PINNED_TEST_EXTRAS]
    bounds = {}
    for req in reqs:
        lows = [s.version for s in req.specifier if s.operator == ">="]
        assert len(lows) == 1, f"{req} needs one lower bound (>=), tested here"
        bounds[req.name] = lows[0]
    return bounds


def oldest_python() -> str:
    """The oldest Python ``requires-python`` allows, if this machine has it, else this one."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    oldest = project["requires-python"].removeprefix(">=")
    return pkg.find_python(oldest) or sys.executable


def _oldest_venv(config: pytest.Config, bounds: dict[str, str], base: str) -> Path:
    key = hashlib.sha256(json.dumps([base, sorted(bounds.items())]).encode())
    venv = Path(config.cache.mkdir("dask-lambda-oldest")) / key.hexdigest()[:12]
    python = venv / "bin" / "python"
    if (venv / "ready").exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=120)
    constraints = venv / "constraints.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in bounds.items()))
    out = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-compile", "--timeout", "60", "-c", str(constraints), "-e", str(ROOT),
         "pytest", "pytest-timeout", *PINNED_TEST_EXTRAS],
        capture_output=True, text=True, timeout=_INSTALL_TIMEOUT)
    assert out.returncode == 0, "pip could not install the oldest versions:\n" + \
        "\n".join(ln for ln in out.stderr.splitlines() if not ln.startswith("WARNING: Loc"))
    (venv / "ready").write_text("ok\n")
    return python


@pytest.mark.slow
@pytest.mark.timeout(_INSTALL_TIMEOUT + 600)
def test_the_oldest_versions_allowed_pass_the_smoke_tests(request):
    bounds = lower_bounds()
    python = _oldest_venv(request.config, bounds, oldest_python())
    probe = ("import json, sys; from importlib.metadata import version; "
             "print(json.dumps({n: version(n) for n in sys.argv[1:]}))")
    installed = json.loads(subprocess.run([str(python), "-c", probe, *bounds], check=True,
                                          capture_output=True, text=True).stdout)
    assert {n: Version(v) for n, v in installed.items()} == \
        {n: Version(v) for n, v in bounds.items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    out = subprocess.run([str(python), "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          *SMOKE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in out.stdout.splitlines()[-1] and "skipped" not in out.stdout


def test_a_trigger_job_is_claimed_once(s3_endpoint, s3):
    """The handler claims a job object with PutObject(IfNoneMatch="*"): the first delivery
    runs it (this one is not a signed job, so its completion record holds the error), a
    second delivery of the same notification finds the claim and does nothing."""
    bucket, key = "t-oldest-claim", "p/jobs/0123456789ab/00/tok-a0.trigger.job"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=key, Body=b"not a job")
    event = {"Records": [{"s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]}
    script = ("import json, sys\nfrom dask_lambda_handler import trigger\n"
              "event = json.loads(sys.argv[1])\n"
              "print(json.dumps([trigger.handle_records(event, None)['jobs'][0] "
              "for _ in range(2)]))\n")
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_REGION": "us-east-1", "DASK_LAMBDA_SIGNING_KEY": "ab" * 32}
    out = subprocess.run([sys.executable, "-c", script, json.dumps(event)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    first, second = json.loads(out.stdout.splitlines()[-1])
    assert first["done"] == "p/results/0123456789ab/_done/00/tok-a0.trigger.out.json"
    assert "already claimed" in second["skipped"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="p/results/")["Contents"]]
    assert sorted(keys) == ["p/results/0123456789ab/_claims/00/tok-a0.trigger.out", first["done"]]
