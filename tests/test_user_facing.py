"""What a user runs for real: the demo command, the quick-start notebook, the benchmark."""

from __future__ import annotations

import os
import re
import subprocess
import sys
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


NOTEBOOK_OUTPUTS = {
    "quickstart.ipynb": ["raised in Lambda, caught here: negative input: -1", "future: 6",
                         "'invocations':"],
    "dataframe.ipynb": ["partitions written: 14", "100% Completed", "'dollars':"],
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
