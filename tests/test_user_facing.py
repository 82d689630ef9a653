"""What a user runs for real: the demo command, the quick-start notebook, the benchmark."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def test_demo_command_runs_a_real_workload(tmp_path):
    out = subprocess.run(["dask-lambda", "demo", "--concurrency", "2"], capture_output=True,
                         text=True, timeout=600, cwd=tmp_path,
                         env=dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
                                  + os.environ["PATH"]))
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "groupby('name').y.mean()" in text
    assert re.search(r"std = 0\.99\d+", text)
    tasks = int(re.search(r"tasks run in Lambda\s+(\d+)", text).group(1))
    invocations = int(re.search(r"invocations\s+(\d+)", text).group(1))
    assert tasks > 50 and invocations == tasks
    assert re.search(r"wall time\s+[\d.]+ s", text)
    assert "100% Completed" in text  # distributed's progress bar
    assert re.search(r"billed\s+[\d.]+ GB-s, \d+ S3 PUTs, \d+ S3 GETs: "
                     r"\$0\.\d{6} at us-east-1", text)
    # no traceback from distributed when a progress bar's feed ends (it logged one at ERROR)
    assert "Traceback" not in out.stderr and "CancelledError" not in out.stderr, out.stderr


NOTEBOOK_OUTPUTS = {
    "quickstart.ipynb": ["raised in Lambda, caught here: negative input: -1", "future: 6",
                         "'invocations':"],
    "dataframe.ipynb": ["backend=local, bucket=s3://dataframe-example/dask",  # the cluster card
                        "concurrency=2 tasks at once", "partitions written: 14", "100% Completed",
                        "'dollars':"],
}


@pytest.mark.parametrize("name", sorted(NOTEBOOK_OUTPUTS))
def test_notebooks_execute(name, tmp_path):
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    for cell in nb.cells:  # notebooks are committed with outputs stripped
        assert cell.get("outputs", []) == [] and cell.get("execution_count") is None
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    for expected in NOTEBOOK_OUTPUTS[name]:
        assert expected in text


def test_overhead_benchmark_quick_mode_runs(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--quick",
                          "--json", str(tmp_path / "out.json")], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "out.json").stat().st_size > 0


def _cli(*args, env=None):
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ["PATH"], **(env or {}))
    return subprocess.run(["dask-lambda", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_config_command_prints_every_setting_with_its_source():
    import yaml

    out = _cli("config", env={"DASK_LAMBDA__MEMORY": "4096"})
    assert out.returncode == 0, out.stderr
    assert "lambda.memory = 4096  [environment; env DASK_LAMBDA__MEMORY]" in out.stdout
    assert "lambda.timeout = 300  [dask config/default; env DASK_LAMBDA__TIMEOUT]" in out.stdout

    def keys(tree, path=""):
        for k, v in tree.items():
            key = f"{path}.{k}" if path else k
            yield from keys(v, key) if isinstance(v, dict) else [key]

    defaults = yaml.safe_load((ROOT / "dask_lambda" / "lambda.yaml").read_text())
    for key in keys(defaults):  # every default is documented in the schema and printed
        assert f"\n{key} = " in out.stdout, key
    assert out.stdout.count("\n    ") == len(list(keys(defaults)))  # one description each


def test_cleanup_command_removes_only_stale_runs(s3_endpoint, s3):
    bucket = "t-cleanup-cli"
    s3.create_bucket(Bucket=bucket)
    for key in ("p/jobs/dead/a-a0.job", "p/results/dead/a-a0.out", "p/runs/dead.json",
                "p/data/keep.csv"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_DEFAULT_REGION": "us-east-1"}
    fresh = _cli("cleanup", "--bucket", f"s3://{bucket}/p", "--endpoint-url", s3_endpoint,
                 env=creds)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.strip().endswith(
        f"0 stale runs removed from s3://{bucket}/p (idle for 3600 s or more)")
    too_soon = _cli("cleanup", "--bucket", f"s3://{bucket}/p", "--endpoint-url", s3_endpoint,
                    "--older-than", "0", env=creds)
    assert too_soon.returncode == 2
    assert too_soon.stderr.strip() == (
        "dask-lambda cleanup: --older-than 0 would delete the objects of clients that are still "
        "running (they rewrite their marker every 60 s): use at least 3 heartbeats, e.g. "
        f"`dask-lambda cleanup --bucket s3://{bucket}/p --older-than 3600`")
    time.sleep(4.5)  # three heartbeats of a second, on S3's clock
    stale = _cli("cleanup", "--bucket", f"s3://{bucket}/p", "--endpoint-url", s3_endpoint,
                 "--older-than", "3", env=dict(creds, DASK_LAMBDA__HEARTBEAT="1"))
    assert stale.returncode == 0, stale.stderr
    assert "run dead: removed 3 objects" in stale.stdout
    from .conftest import list_keys

    assert list_keys(s3, bucket) == ["p/data/keep.csv"]  # the user's own data stays


def test_scale_benchmark_quick_mode_runs(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--quick",
                          "--json", str(tmp_path / "out.json")], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"1,000 x 0\.2 s\s+100\s+[\d.]+s", out.stdout)  # a row of the table
    assert "invocations, 0 retries, 0 errors" in out.stdout
    assert (tmp_path / "out.json").stat().st_size > 0


def test_scale_benchmark_floor_mode_runs(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--quick",
                          "--floor", "--scenarios", "10k"], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "scale (floor: distributed alone, no dask-lambda) benchmark" in out.stdout
    assert re.search(r"1,000 x 0\.2 s\s+100\s+[\d.]+s", out.stdout)
    assert "1000 invocations, 0 retries, 0 errors" in out.stdout


def test_invoke_cost_benchmark_quick_mode_runs(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "invoke_cost.py"), "--quick",
                          "--tls", "--json", str(tmp_path / "out.json")], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("direct", "sdk"):  # CPU, wall, the event loop's CPU, the ratio
        assert re.search(rf"\n{name}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+x", out.stdout), name
    assert re.search(r"first burst, 20 invokes on 20 new connections, ms per invoke: "
                     r"direct [\d.]+ CPU, [\d.]+ loop CPU, sdk", out.stdout)
    samples = json.loads((tmp_path / "out.json").read_text())["samples"]
    assert len(samples["direct"]) == len(samples["sdk"]) == 2  # the first burst and one run


def test_batching_benchmark_quick_mode_runs(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "batching.py"), "--quick",
                          "--json", str(tmp_path / "out.json")], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for backend in ("sim", "local"):
        for graph in ("tree of 256 leaves", "map-reduce, 64 maps"):
            for mode in ("off", "cold", "warm"):
                assert re.search(rf"\n{backend}\s+{re.escape(graph)}\s+{mode}\s+[\d,]+\s+[\d.]+",
                                 out.stdout), (backend, graph, mode)
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    invocations = {(r["backend"], r["graph"], r["mode"]): r["invocations"] for r in rows}
    # The local backend checked every result against dask's synchronous scheduler; a warm
    # tree reduction of trivial tasks takes far fewer invocations than one per task.
    assert invocations[("local", "tree", "off")] == 511
    assert invocations[("local", "tree", "warm")] < 511 / 10


def test_lithops_compare_benchmark_quick_mode_runs(tmp_path):
    script = ROOT / "benchmarks" / "lithops_compare.py"
    out = subprocess.run([sys.executable, str(script), "--quick", "--json",
                          str(tmp_path / "out.json")], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for label in ("(a)  Lithops localhost (default, v2)", "(a1) Lithops localhost, version 1",
                  '(b)  LambdaClient(backend="local")', "(c)  LocalCluster(processes=False)"):
        assert re.search(rf"\n\s+10  {re.escape(label)}\s+[\d.]+\s+[\d.]+", out.stdout), label
    assert "Ratios of (b) to each setup" in out.stdout
    assert (tmp_path / "out.json").stat().st_size > 0
    # Without Lithops it says how to install it and exits 2 instead of failing on the import.
    hide_lithops = ("import runpy, sys; sys.modules['lithops'] = None; "
                    f"sys.path.insert(0, {str(script.parent)!r}); "
                    f"sys.argv = [{str(script)!r}, '--quick']; "
                    f"runpy.run_path({str(script)!r}, run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", hide_lithops], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "pip install -e '.[bench]'" in out.stderr


def test_client_bytes_benchmark_quick_mode_runs(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "client_bytes.py"), "--quick",
                          "--json", str(tmp_path / "out.json")], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["workload"]: r for r in json.loads((tmp_path / "out.json").read_text())["rows"]}
    assert set(rows) == {"xarray anomaly", "image labels", "scattered array"}
    assert rows["scattered array"]["sent_per_data"] < 1.1  # the scattered array went up once
    assert rows["xarray anomaly"]["shared_bytes_saved"] > 0  # chunks read by several tasks
