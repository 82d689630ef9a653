"""What ``dask-lambda deploy`` packages, opened and run as Lambda would run it.

The package for this machine's Python (wheels for this machine's glibc, as the aws tests
use) is built once (cached with theirs) and run from a read-only copy; the real python3.12
package (manylinux, glibc 2.34) is built by ``benchmarks/cold_start.py``; the Amazon Linux
2023 image context for Python 3.10/3.11 is written by ``deploy`` and its package run here.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import stat
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from dask_lambda.deploy import Target, deploy, slimming
from dask_lambda.deploy import package as pkg
from dask_lambda.deployment import compat, names
from dask_lambda.errors import ImageNeededError

from .aws_fixtures import LOCAL_GLIBC, cache_root, environment

ROOT = Path(__file__).resolve().parents[1]
PYTHON = compat.local_python()

#: Imports a task may need, then a groupby and a parquet round trip, reporting which modules
#: were compiled from source at import time (none should be: the package ships .pyc files).
PROBE = """\
import importlib.machinery, json, sys
task = sys.argv[1]
sys.path.insert(0, task)
compiled = []
original = importlib.machinery.SourceFileLoader.source_to_code
def source_to_code(self, data, path, *args, **kwargs):
    compiled.append(path)
    return original(self, data, path, *args, **kwargs)
importlib.machinery.SourceFileLoader.source_to_code = source_to_code
import io
import dask.dataframe, dask.array, numpy, pandas, pyarrow.parquet, s3fs
from dask_lambda_handler import entry, env
env.s3()
df = pandas.DataFrame({"k": [1, 2, 1], "v": [1.0, 2.0, 3.0]})
sums = df.groupby("k").v.sum().to_dict()
buf = io.BytesIO()
df.to_parquet(buf)
back = pandas.read_parquet(io.BytesIO(buf.getvalue()))
print(json.dumps({"sums": sums, "parquet": back.equals(df),
                  "ping": entry.handler({"op": "ping"}, None),
                  "compiled": [p for p in compiled if p.startswith(task)],
                  "numpy": numpy.__file__}))
"""


@pytest.fixture(scope="module")
def cache(request):
    with environment({"XDG_CACHE_HOME": str(cache_root(request.config) / "xdg-cache")}):
        yield


@pytest.fixture(scope="module")
def built(cache):
    return pkg.build(pkg.PackageSpec(PYTHON, glibc=LOCAL_GLIBC), log=lambda line: None)


def read_only_copy(zip_path: Path, into: Path) -> Path:
    """The zip unpacked as Lambda's /var/task is: no writes (chmod, and ``-B`` for root)."""
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(into)
    for path in [into, *into.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return into


def run_probe(python: str, task: Path) -> dict:
    env = {"PATH": os.environ["PATH"], "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    out = subprocess.run([python, "-I", "-S", "-B", "-c", PROBE, str(task)], env=env,
                         capture_output=True, text=True, timeout=300, cwd=task.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_a_task_imports_everything_from_the_packages_compiled_modules(built, tmp_path):
    task = read_only_copy(built.zip_path, tmp_path / "task")
    files = sum(1 for _ in task.rglob("*"))
    found = run_probe(sys.executable, task)
    assert found["compiled"] == []  # without the .pyc: ~1,000 modules compiled at each start
    assert found["sums"] == {"1": 4.0, "2": 2.0} and found["parquet"]
    assert found["numpy"].startswith(str(task))
    assert found["ping"]["versions"] == compat.local_versions()
    assert sum(1 for _ in task.rglob("*")) == files
    pyc = next(task.glob("dask_lambda_handler/__pycache__/runner.*.pyc")).read_bytes()
    assert int.from_bytes(pyc[4:8], "little") == 0b01  # PEP 552: hash-based, source unchecked


def _record(tree: Path, dist: str) -> dict[str, str]:
    """``{path: sha256}`` of a distribution's files as its wheel shipped them (RECORD)."""
    info = next(tree.glob(f"{dist}-*.dist-info"))
    rows = csv.reader((info / "RECORD").read_text().splitlines())
    return {path: digest.split("=", 1)[1] for path, digest, *_ in rows if digest}


def _sha256(path: Path) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).decode().rstrip("=")


def test_only_pyarrows_own_shared_objects_are_stripped(built):
    tree = built.directory
    for dist in ("numpy", "pandas", "pyarrow"):
        vendored = {p: h for p, h in _record(tree, dist).items() if ".libs/" in p}
        for path, digest in vendored.items():  # auditwheel's copies: byte for byte the wheel's
            assert _sha256(tree / path) == digest, path
    arrow = {p: h for p, h in _record(tree, "pyarrow").items()
             if p.startswith("pyarrow/") and ".so" in p and (tree / p).exists()}
    stripped = [p for p, h in arrow.items() if _sha256(tree / p) != h]
    assert len(stripped) == len(arrow) > 10
    assert any("strip: pyarrow's" in note and "-" in note for note in built.notes)


def test_botocore_keeps_the_models_of_the_services_the_handler_calls(built, tmp_path):
    data = built.directory / "botocore" / "data"
    assert sorted(d.name for d in data.iterdir() if d.is_dir()) == sorted(pkg.AWS_SERVICES)
    assert (data / "endpoints.json").exists() and (data / "partitions.json").exists()
    fake = tmp_path / "botocore" / "data"
    for name in ("s3", "sts", "dynamodb", "ec2"):
        (fake / name).mkdir(parents=True)
    assert slimming.prune_botocore(tmp_path, ("s3", "dynamodb")).startswith(
        "botocore: models of dynamodb, s3 kept, 2 others left out")
    assert sorted(d.name for d in fake.iterdir()) == ["dynamodb", "s3"]


def test_the_version_check_names_a_numpy_pandas_or_pyarrow_that_differs():
    local = compat.local_versions()
    assert {"numpy", "pandas", "pyarrow"} <= set(local)
    deployed = {**local, "numpy": "1.26.4", "pyarrow": "15.0.0"}
    assert compat.differences(deployed) == [f"numpy 1.26.4 there, {version('numpy')} here",
                                            f"pyarrow 15.0.0 there, {version('pyarrow')} here"]


@pytest.mark.slow
@pytest.mark.skipif(PYTHON not in ("3.10", "3.11"), reason="Python 3.10/3.11 run on AL2")
def test_libraries_without_amazon_linux_2_wheels_get_an_amazon_linux_2023_image(cache):
    lines: list[str] = []
    with pytest.raises(ImageNeededError) as info:
        deploy(Target("dl-al2", "", "dl-al2", "us-east-1"), out=lines.append)
    message = str(info.value)
    assert f"numpy {version('numpy')} (the version installed here) has no wheel for Lambda's " \
           f"python{PYTHON} x86_64 runtime (manylinux, glibc <= 2.26)" in message
    context = Path(info.value.dockerfile).parent
    assert f"the same Python and these same versions run on Amazon Linux 2023 (glibc 2.34) " \
           f"in a container image, whose build context is in {context}" in message
    assert f"docker build --platform linux/amd64 -t " \
           f"ACCOUNT.dkr.ecr.us-east-1.amazonaws.com/dl-al2:latest {context}" in message
    assert "dask-lambda deploy --bucket s3://dl-al2 --function dl-al2 --region us-east-1 " \
           "--image ACCOUNT.dkr.ecr.us-east-1.amazonaws.com/dl-al2:latest" in message
    dockerfile = (context / "Dockerfile").read_text()
    assert "FROM public.ecr.aws/lambda/provided:al2023\n" in dockerfile
    assert f"uv python install {PYTHON} " in dockerfile
    assert f'ENTRYPOINT ["/usr/local/bin/python{PYTHON}", "-m", "awslambdaric"]' in dockerfile
    assert f'CMD ["{names.HANDLER}"]' in dockerfile
    pins = (context / "requirements.txt").read_text().splitlines()
    for name in ("dask", "numpy", "pandas", "pyarrow", "cloudpickle", "s3fs", "botocore"):
        assert f"{name}=={version(name)}" in pins
    assert any(p.startswith("awslambdaric==") for p in pins)
    # what the image copies: runs here with this Python (glibc 2.36 >= 2.34), compiled
    task = context / "task"
    found = run_probe(sys.executable, task)
    assert found["compiled"] == [] and found["ping"]["versions"] == compat.local_versions()
    ric = subprocess.run([sys.executable, "-I", "-S", "-c",
                          f"import sys; sys.path.insert(0, {str(task)!r}); "
                          "import awslambdaric.bootstrap"], capture_output=True, text=True)
    assert ric.returncode == 0, ric.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_real_python312_package_is_under_lambdas_limit(cache, tmp_path):
    """benchmarks/cold_start.py --quick builds it (manylinux, glibc 2.34) and times imports."""
    if pkg.find_python("3.12") is None:
        pytest.skip("no Python 3.12 here to compile the package's .pyc files")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cold_start.py"), "--quick",
                          "--json", str(tmp_path / "report.json")], capture_output=True,
                         text=True, timeout=1700, env={**os.environ})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["python"] == "3.12" and report["glibc"] == "2.34" and report["compiled"]
    assert 150 * 2**20 < report["unzipped_bytes"] <= names.UNZIPPED_LIMIT
    assert report["import_s"]["with_pyc"] and report["import_s"]["without_pyc"]
    assert "of Lambda's 250 MiB" in out.stdout
