"""Data locality: what the client process moves and holds, with and without locality.

What it runs
------------
A three-stage Dask DataFrame pipeline over generated data (``--size-gb``, default
1 GiB), on ``LambdaClient(backend="local")``:

1. **generate + map_partitions** (persisted): ``dd.from_map(generate, ...)`` makes
   ``--partitions`` (default 16) partitions of random events *inside* the tasks
   (columns ``id``, ``x``, ``y``: nothing is uploaded from the client), and
   ``map_partitions(enrich)`` adds two derived columns (``z``, ``w``). The result
   is persisted: about ``--size-gb`` of task outputs that the next stage reads.
2. **groupby** (persisted): per ``id`` (``--groups`` distinct ids, default 100,000),
   ``agg({"z": "sum", "w": "mean", "x": "max", "y": "count"}, split_out=4,
   shuffle_method="tasks")``: a groupby-chunk task per partition, then a task-based
   shuffle of the partial aggregates by ``id`` into 4 partitions, then the final
   aggregation. Intermediate outputs cross tasks in every step.
3. **reduction**: the 100 ids with the largest ``z`` sum (``nlargest``) and the
   total number of events (``y`` count summed), computed together and gathered.

The stages are persisted one after the other so that each is a real boundary
between tasks (otherwise dask fuses generate, map_partitions and the groupby
chunk into one task and no intermediate output crosses tasks). Each collection
is ``.optimize()``-d before ``client.persist``/``client.compute``: in this dask
version those optimize a *list* of collections without blockwise fusion, which
would run from_map, its string-conversion step and map_partitions as three tasks
(three S3 objects) per partition. A graph built on a persisted DataFrame starts
with one dask ``Alias`` task per persisted partition (it renames the key); the
gateway runs those in Lambda like any task, so they show up as copies (stages 2
and 3 print how many).

It runs the pipeline twice, each time in a fresh Python subprocess (so that
peak memory is that one run's):

``locality on``
    ``LambdaClient(..., locality=True)`` (the default): outputs above
    ``inline_max`` (256 KB) stay in S3; the next task's handler reads them from
    S3; the client downloads only what it gathers.
``locality off``
    ``LambdaClient(..., locality=False)``: every output is downloaded to the
    client and uploaded again inside each job that needs it (as PyWren/Lithops do).

For each run it reports, for the client process only (the one that runs the
client, the scheduler and the Lambda gateway; the local S3 server and the
execution environments are child processes and are not counted):

* bytes uploaded (``bytes_sent``) and downloaded (``bytes_received``) by the client
  process, from ``client.lambda_stats()``: every job and output byte it moved,
  inline in invoke requests/responses or through S3;
* the final result's size (pickled, protocol 5) and the ratio
  (bytes moved) / (final result);
* outputs kept in S3 (``outputs_in_s3``, ``output_bytes_in_s3``);
* the client process's peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``)
  after imports, after start-up, after each stage and at the end, and wall times;
* the largest peak RSS reported by a handler invocation, and the largest peak RSS of
  any child process (``RUSAGE_CHILDREN``, after they exited: S3 server or handler);
* per stage, the outputs of its tasks by task name (count, encoded bytes).

It checks that both runs return the same result, and prints whether the targets
are met in the locality-on run: bytes moved by the client <= 1.01 x the final
result, and client peak RSS < 300 MB. It also prints, labelled as such, an
alternative reading of the first target: (bytes moved - final result) <= 1 % of the
data.

How to run
----------
From the repository root::

    python benchmarks/locality.py                       # 1 GiB, 16 partitions (2-3 minutes)
    python benchmarks/locality.py --quick               # smoke test: 32 MiB, 4 partitions
    python benchmarks/locality.py --json results.json   # also write all raw figures
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from typing import Any

import _env  # benchmarks/_env.py (scripts run from this folder)
import numpy as np
import pandas as pd

MIB = 2**20
GIB = 2**30
ROW_BYTES = 5 * 8  # id, x, y, z, w: int64 / float64
SPLIT_OUT = 4
TOP = 100
TARGET_RATIO = 1.01
TARGET_PEAK_MB = 300.0
MODES = {"on": True, "off": False}


# -- the pipeline (these functions run in the execution environments) ---------------------------


def generate(part: int, rows: int, groups: int, seed: int) -> pd.DataFrame:
    """One partition of random events, made inside the task."""
    rng = np.random.default_rng([seed, part])
    return pd.DataFrame({
        "id": rng.integers(0, groups, rows, dtype=np.int64),
        "x": rng.standard_normal(rows),
        "y": rng.random(rows),
    })


def enrich(df: pd.DataFrame) -> pd.DataFrame:
    """Stage 1's map_partitions: two derived columns."""
    return df.assign(z=df["x"] * df["y"], w=np.hypot(df["x"], df["y"]))


def _meta() -> pd.DataFrame:
    return generate(0, 0, 1, 0)


def _rows_per_partition(size_bytes: int, partitions: int) -> int:
    return -(-size_bytes // (ROW_BYTES * partitions))


# -- one run, in a subprocess -------------------------------------------------------------------


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MIB


def _outputs_by_name(invocations: list[dict]) -> dict[str, list[int]]:
    """Task outputs by key name (without the token): [tasks, encoded bytes, largest]."""
    import ast
    import re

    out: dict[str, list[int]] = {}
    for inv in invocations:
        key = inv["key"]
        with contextlib.suppress(ValueError, SyntaxError):
            parsed = ast.literal_eval(key)
            key = parsed[0] if isinstance(parsed, tuple) else str(parsed)
        name = re.sub(r"-[0-9a-f]{32}$", "", key)
        entry = out.setdefault(name, [0, 0, 0])
        entry[0] += 1
        entry[1] += inv["nbytes"]
        entry[2] = max(entry[2], inv["nbytes"])
    return out


def _alias_keys(collection: Any) -> set:
    """Keys of the graph's tasks that only rename another key (dask's ``Alias``: what a
    persisted collection's partitions become in a new graph)."""
    from dask._task_spec import Alias

    return {k for k, v in collection.__dask_graph__().items() if isinstance(v, Alias)}


def _delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def run_one(mode: str, args: argparse.Namespace, result_path: str) -> dict:
    """The pipeline with locality on or off; returns the figures, pickles the result."""
    import resource

    import dask.dataframe as dd
    from distributed import wait

    from dask_lambda import LambdaClient

    out: dict[str, Any] = {"mode": mode, "stages": {}}
    rows = _rows_per_partition(int(args.size_gb * GIB), args.partitions)
    out["peak_mb_imports"] = _peak_mb()
    t_start = time.perf_counter()
    with LambdaClient("s3://dask-lambda-bench/locality", backend="local",
                      concurrency=args.concurrency, memory=args.memory,
                      locality=MODES[mode], dashboard_address=None) as client:
        out["startup_s"] = time.perf_counter() - t_start
        out["peak_mb_started"] = _peak_mb()
        stats = client.lambda_stats()

        invocations = client.cluster.executor.dispatch.invocations
        aliases: set = set()

        def stage(name: str, fn: Any) -> Any:
            nonlocal stats
            t0 = time.perf_counter()
            seen = len(invocations)
            aliases.clear()
            value = fn()
            after = client.lambda_stats()
            out["stages"][name] = dict(_delta(after, stats), wall_s=time.perf_counter() - t0,
                                       peak_mb=_peak_mb(), rss_mb=_rss_mb(),
                                       outputs=_outputs_by_name(list(invocations)[seen:]),
                                       alias_tasks=len(aliases))
            stats = after
            return value

        # .optimize() first: client.persist / client.compute optimize a *list* of collections
        # without blockwise fusion in this dask version, which would make from_map, its
        # string-conversion step and map_partitions three tasks (and three S3 objects) per
        # partition instead of one.
        def persist(collection: Any) -> Any:
            collection = collection.optimize()
            aliases.update(_alias_keys(collection))
            collection = client.persist(collection)
            wait(collection)
            return collection

        def compute(*collections: Any) -> Any:
            collections = [c.optimize() for c in collections]
            for c in collections:
                aliases.update(_alias_keys(c))
            return client.gather(client.compute(collections))

        # 1. generated data + map_partitions, persisted
        events = dd.from_map(generate, range(args.partitions), rows=rows, groups=args.groups,
                             seed=args.seed, meta=_meta(), label="generate",
                             enforce_metadata=False)
        enriched = stage("1 generate+map_partitions",
                         lambda: persist(events.map_partitions(enrich, meta=enrich(_meta()))))
        # 2. groupby with a task-based shuffle of the partial aggregates, persisted
        spec = {"z": "sum", "w": "mean", "x": "max", "y": "count"}
        names = {"z": "z_sum", "w": "w_mean", "x": "x_max", "y": "events"}
        per_id = stage("2 groupby", lambda e=enriched: persist(e.groupby("id").agg(
            spec, split_out=SPLIT_OUT, shuffle_method="tasks").rename(columns=names)))
        del enriched
        # 3. reduction, gathered
        top = per_id.nlargest(TOP, "z_sum")
        total = per_id["events"].sum()
        result = stage("3 reduction", lambda: compute(top, total))
        del per_id
        out["lambda_stats"] = client.lambda_stats()
        done = list(invocations)
        inline_max = client.cluster.executor.dispatch.inline_max
        out["inline_outputs"] = sum(i["nbytes"] <= inline_max for i in done)
        out["inline_output_bytes"] = sum(i["nbytes"] for i in done if i["nbytes"] <= inline_max)
        out["handler_peak_rss_mb"] = max((i.get("peak_rss_mb") or 0 for i in done), default=0)
    out["wall_s"] = time.perf_counter() - t_start
    out["peak_mb"] = _peak_mb()
    # the S3 server and execution environments have exited and been waited for by now
    out["children_peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    blob = pickle.dumps(result, protocol=5)
    out["result_bytes"] = len(blob)
    out["rows"] = rows * args.partitions
    out["events_counted"] = int(result[1])
    with open(result_path, "wb") as f:
        f.write(blob)
    return out


# -- driver ----------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    return _env.environment(("dask", "distributed", "dask-lambda", "pandas", "cloudpickle", "moto"))


def spawn(mode: str, args: argparse.Namespace, result_path: str) -> dict:
    """Run one mode in a fresh interpreter; returns its figures."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        figures_path = f.name
    try:
        cmd = [sys.executable, os.path.abspath(__file__), "--_child", mode,
               "--_figures", figures_path, "--_result", result_path,
               "--size-gb", repr(args.size_gb), "--partitions", str(args.partitions),
               "--groups", str(args.groups), "--concurrency", str(args.concurrency),
               "--memory", str(args.memory), "--seed", str(args.seed)]
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            raise SystemExit(f"locality {mode} run failed (exit code {proc.returncode})")
        with open(figures_path) as f:
            return json.load(f)
    finally:
        os.unlink(figures_path)


def _mb(n: float) -> str:
    return f"{n / MIB:,.1f} MiB" if n >= MIB else f"{n / 1024:,.1f} KiB"


def format_stages(runs: dict[str, dict]) -> str:
    header = (f"{'stage':<28}{'mode':<14}{'tasks':>6}{'sent':>13}{'received':>13}"
              f"{'kept in S3':>22}{'wall s':>8}{'peak RSS':>10}")
    lines = [header, "-" * len(header)]
    for name in next(iter(runs.values()))["stages"]:
        for mode, run in runs.items():
            s = run["stages"][name]
            kept = f"{s['outputs_in_s3']} / {_mb(s['output_bytes_in_s3'])}"
            lines.append(f"{name:<28}{'locality ' + mode:<14}{s['tasks']:>6}"
                         f"{_mb(s['bytes_sent']):>13}{_mb(s['bytes_received']):>13}"
                         f"{kept:>22}{s['wall_s']:>8.1f}{s['peak_mb']:>7.0f} MB")
    return "\n".join(lines)


def format_outputs(run: dict) -> str:
    """What each stage's tasks produced (encoded output sizes), from one run."""
    lines = []
    for name, stage in run["stages"].items():
        alias = (f" ({stage['alias_tasks']} of its tasks are dask Alias tasks: a persisted "
                 "partition under a new key)" if stage.get("alias_tasks") else "")
        lines.append(f"{name}:{alias}")
        for task, (n, nbytes, largest) in stage["outputs"].items():
            lines.append(f"    {n:>4} x {task:<44} {_mb(nbytes):>13} in all, "
                         f"largest {_mb(largest)}")
    return "\n".join(lines)


def format_summary(runs: dict[str, dict]) -> str:
    rows: list[tuple[str, Any]] = [
        ("bytes uploaded by the client (sent)", lambda r: _mb(r["lambda_stats"]["bytes_sent"])),
        ("bytes downloaded by the client (received)",
         lambda r: _mb(r["lambda_stats"]["bytes_received"])),
        ("bytes moved by the client (sent + received)", lambda r: _mb(_moved(r))),
        ("  the same, in bytes", lambda r: f"{_moved(r):,} B"),
        ("final result (pickled)", lambda r: f"{r['result_bytes']:,} B"),
        ("moved / final result", lambda r: f"{_moved(r) / r['result_bytes']:,.1f}x"),
        ("moved - final result, % of the data", lambda r:
         f"{100 * (_moved(r) - r['result_bytes']) / r['data_bytes']:.3f} %"),
        ("outputs kept in S3", lambda r: f"{r['lambda_stats']['outputs_in_s3']} / "
                                          f"{_mb(r['lambda_stats']['output_bytes_in_s3'])}"),
        ("tasks", lambda r: str(r["lambda_stats"]["tasks"])),
        ("sent per task (job: task spec + inline inputs)",
         lambda r: _mb(r["lambda_stats"]["bytes_sent"] / max(r["lambda_stats"]["tasks"], 1))),
        ("outputs returned inline (<= inline_max)",
         lambda r: f"{r['inline_outputs']} / {_mb(r['inline_output_bytes'])}"),
        ("client peak RSS after imports", lambda r: f"{r['peak_mb_imports']:.0f} MB"),
        ("client peak RSS after start-up", lambda r: f"{r['peak_mb_started']:.0f} MB"),
        ("client peak RSS (ru_maxrss)", lambda r: f"{r['peak_mb']:.0f} MB"),
        ("largest handler peak RSS", lambda r: f"{r['handler_peak_rss_mb']:.0f} MB"),
        ("largest child process peak RSS (S3 server, handlers)",
         lambda r: f"{r['children_peak_mb']:.0f} MB"),
        ("wall time (start-up included)", lambda r: f"{r['wall_s']:.1f} s"),
    ]
    width = max(len(label) for label, _ in rows) + 2
    header = f"{'':<{width}}" + "".join(f"{'locality ' + m:>20}" for m in runs)
    lines = [header, "-" * len(header)]
    for label, fn in rows:
        lines.append(f"{label:<{width}}" + "".join(f"{fn(r):>20}" for r in runs.values()))
    return "\n".join(lines)


def _moved(run: dict) -> int:
    return run["lambda_stats"]["bytes_sent"] + run["lambda_stats"]["bytes_received"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Bytes moved and peak memory of the client, locality on vs off.")
    parser.add_argument("--size-gb", type=float, default=None,
                        help="generated data in GiB, after map_partitions (default 1.0; "
                             "--quick: 1/32)")
    parser.add_argument("--partitions", type=int, default=None,
                        help="partitions of the generated data (default 16; --quick: 4)")
    parser.add_argument("--groups", type=int, default=None,
                        help="distinct ids for the groupby (default 100000; --quick: 5000)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="Lambda concurrency (default 2)")
    parser.add_argument("--memory", type=int, default=2048,
                        help="MB per execution environment (default 2048)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--modes", default="on,off",
                        help="which runs, in order (default on,off)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: small sizes unless given")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    parser.add_argument("--_child", choices=sorted(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--_figures", help=argparse.SUPPRESS)
    parser.add_argument("--_result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = ({"size_gb": 1 / 32, "partitions": 4, "groups": 5000} if args.quick else
                {"size_gb": 1.0, "partitions": 16, "groups": 100_000})
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.size_gb <= 0:
        parser.error("--size-gb must be positive")
    for name in ("partitions", "groups", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    args.modes = list(dict.fromkeys(m.strip() for m in args.modes.split(",") if m.strip()))
    if not args.modes or set(args.modes) - set(MODES):
        parser.error("--modes: a comma-separated list of 'on' and 'off'")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._child:
        figures = run_one(args._child, args, args._result)
        with open(args._figures, "w") as f:
            json.dump(figures, f)
        return 0

    env = environment()
    rows = _rows_per_partition(int(args.size_gb * GIB), args.partitions)
    data_bytes = rows * args.partitions * ROW_BYTES
    print(f"dask-lambda locality benchmark, {env['date']}: Python {env['python']}, "
          f"{env['cpu_count']} CPUs, dask {env['versions']['dask']}, git {env['git']}",
          flush=True)
    print(f"data: {args.partitions} partitions x {rows:,} rows x {ROW_BYTES} B = "
          f"{_mb(data_bytes)} ({_mb(rows * ROW_BYTES)} per partition), {args.groups:,} ids; "
          f"concurrency {args.concurrency}, memory {args.memory} MB", flush=True)
    runs: dict[str, dict] = {}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dask-lambda-locality-") as tmp:
        for mode in args.modes:
            print(f"\nrunning with locality {mode} (fresh process) ...", flush=True)
            path = os.path.join(tmp, f"{mode}.pickle")
            run = spawn(mode, args, path)
            run["data_bytes"] = data_bytes
            with open(path, "rb") as f:
                results[mode] = pickle.load(f)
            runs[mode] = run
            print(f"  done in {run['wall_s']:.1f} s: {_moved(run):,} B moved by the client, "
                  f"peak RSS {run['peak_mb']:.0f} MB", flush=True)

    # checks
    ok = True
    for mode, (_top, total) in results.items():
        if total != rows * args.partitions:
            print(f"WRONG: locality {mode} counted {total:,} events, not "
                  f"{rows * args.partitions:,}")
            ok = False
    if len(results) == 2:
        (a_top, a_total), (b_top, b_total) = results.values()
        try:
            pd.testing.assert_frame_equal(a_top, b_top, check_exact=True)
            same = bool(a_total == b_total)
        except AssertionError as exc:
            print(f"results differ: {exc}")
            same = False
        ok &= same
        print(f"\nresults equal in both modes (exactly): {'yes' if same else 'NO'}")

    print("\nPer stage (client process; sent/received by the client, outputs kept in S3 "
          "as count / encoded bytes):\n")
    print(format_stages(runs))
    first_mode, first_run = next(iter(runs.items()))
    print(f"\nTask outputs per stage (locality {first_mode} run; encoded sizes):\n")
    print(format_outputs(first_run))
    print("\nWhole run:\n")
    print(format_summary(runs))
    first = next(iter(results.values()))
    print(f"\nfinal result: top {TOP} ids by z sum ({first[0].shape[0]} rows x "
          f"{first[0].shape[1]} columns) and the event count {first[1]:,}")

    targets = {}
    if "on" in runs:
        on = runs["on"]
        ratio = _moved(on) / on["result_bytes"]
        targets["moved <= 1.01 x final result (locality on)"] = (
            ratio <= TARGET_RATIO,
            f"{ratio:,.1f}x ({_mb(_moved(on))} vs {_mb(on['result_bytes'])})")
        targets[f"client peak RSS < {TARGET_PEAK_MB:.0f} MB (locality on)"] = (
            on["peak_mb"] < TARGET_PEAK_MB, f"{on['peak_mb']:.0f} MB")
        excess = (_moved(on) - on["result_bytes"]) / on["data_bytes"]
        alternative = ("(alternative reading of the first target) moved - final result "
                       "<= 1 % of the data (locality on)")
        targets[alternative] = (excess <= TARGET_RATIO - 1, f"{100 * excess:.3f} %")
    print("\nTargets:" + ("" if targets else " (checked on the locality-on run, not run)"))
    for name, (met, value) in targets.items():
        print(f"  {'PASS' if met else 'FAIL'}  {name}: {value}")

    if args.json:
        report = {"environment": env,
                  "arguments": {k: getattr(args, k) for k in
                                ("size_gb", "partitions", "groups", "concurrency", "memory",
                                 "seed", "modes", "quick")},
                  "data_bytes": data_bytes, "rows_per_partition": rows,
                  "results_equal": ok, "runs": runs,
                  "targets": {k: {"met": m, "value": v} for k, (m, v) in targets.items()}}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
