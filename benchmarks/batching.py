"""Task batching: invocations and makespan with and without it, side by side.

What it runs
------------
Two fine-grained graphs, each computed with batching off, on "cold" (the first
computation of a client: task durations unknown, so only chains are fused) and on
"warm" (the same graph again: durations measured by the previous run, so subtrees
of short tasks are fused too):

``tree``
    A binary tree reduction of 4,096 leaves (``dask.delayed``: ``leaf(i)`` then
    ``add(a, b)`` pairwise): 8,191 tasks.
``mapreduce``
    ``dask.bag.range(100_000, npartitions=1000).map(inc, rep).sum()``: 1,000 map
    tasks (dask fuses each partition's ``range``/``map``/partial sum into one) and
    dask's tree of partial sums (``split_every=8``): 1,144 tasks plus 1,000 aliases.

on two backends:

``sim``
    The simulated Lambda (:mod:`dask_lambda.backends.simulated`) at concurrency 1,000:
    invoke round trip 30-50 ms, cold start 250-350 ms, and every graph task takes
    ``--task-ms`` (default 5 ms; a fused invocation of *n* tasks takes *n* times that).
    No task code runs; the client's work is all real.
``local``
    The local backend (real handler processes, concurrency 2, moto S3) on this
    machine: the results are checked against dask's synchronous scheduler.

Each row is the median of ``--repeat`` repetitions (default 3; the three modes
alternate within a repetition) of: makespan (``compute`` until the result is back),
invocations (as the backend counted them), and the client process's CPU time.

How to run
----------
From the repository root::

    python benchmarks/batching.py                      # both graphs, both backends (~3 min)
    python benchmarks/batching.py --task-ms 1000 --backends sim   # long tasks: not fused
    python benchmarks/batching.py --quick              # smoke test (~30 s)
    python benchmarks/batching.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import dask
import dask.bag as db
from dask import delayed

MODES = ("off", "cold", "warm")


def leaf(i: int) -> int:
    return i


def add(a: int, b: int) -> int:
    return a + b


def inc(x: int, rep: int) -> int:
    return x + 1


def tree(leaves: int, rep: int) -> Any:
    level = [delayed(leaf, pure=False)(i) for i in range(leaves)]
    while len(level) > 1:
        level = [delayed(add)(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def mapreduce(partitions: int, rep: int) -> Any:
    return db.range(100 * partitions, npartitions=partitions).map(inc, rep).sum()


def sizes(quick: bool) -> dict[str, tuple[Any, int]]:
    return {"tree": (tree, 256 if quick else 4096),
            "mapreduce": (mapreduce, 64 if quick else 1000)}


def make_client(backend: str, args: argparse.Namespace) -> Any:
    from dask_lambda import LambdaClient

    if backend == "local":
        return LambdaClient("s3://dask-lambda-bench/batching", backend="local",
                            concurrency=2, dashboard_address=None)
    from dask_lambda.backends.simulated import LambdaModel, SimulatedBackend

    task_s = args.task_ms / 1000

    def duration(event: dict) -> float:
        return event.get("tasks", 1) * task_s

    model = LambdaModel(invoke_latency=(0.030, 0.050), cold_start=(0.250, 0.350),
                        duration=duration)
    return LambdaClient("s3://dask-lambda-bench/batching", backend=SimulatedBackend(model),
                        concurrency=args.concurrency, dashboard_address=None)


def run_once(client: Any, graph: Any, mode: str, expected: Any) -> dict[str, float]:
    executor = client.cluster.executor.dispatch
    client.batching = mode != "off"
    if mode == "cold":
        executor.durations.clear()
    invocations = client.cluster.backend.invocations
    batches = executor.stats.batches
    cpu, wall = time.process_time(), time.perf_counter()
    result = client.compute(graph).result()
    makespan, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if expected is not None and result != expected:
        raise SystemExit(f"wrong result with batching {mode}: {result!r} != {expected!r}")
    return {"makespan_s": makespan, "cpu_s": cpu,
            "invocations": client.cluster.backend.invocations - invocations,
            "batches": executor.stats.batches - batches}


def measure(backend: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with make_client(backend, args) as client:
        for name, (build, n) in sizes(args.quick).items():
            warm_up = build(n, -1)
            client.batching = False
            client.compute(warm_up).result()  # environments started, imports warm
            runs: dict[str, list] = {m: [] for m in MODES}
            tasks = None
            for rep in range(args.repeat):
                for number, mode in enumerate(MODES):
                    # new keys for every run: resubmitting the keys of a run the scheduler has
                    # not forgotten yet, with another plan, keeps the old plan (distributed
                    # warns "Detected different `run_spec`"), which would blur the modes
                    graph = build(n, rep * len(MODES) + number)
                    if tasks is None:
                        tasks = len(dask.optimize(graph)[0].__dask_graph__())
                    expected = (dask.compute(graph, scheduler="sync")[0]
                                if backend == "local" else None)
                    runs[mode].append(run_once(client, graph, mode, expected))
            for mode in MODES:
                row = {k: statistics.median(r[k] for r in runs[mode]) for k in runs[mode][0]}
                rows.append({"backend": backend, "graph": name, "size": n, "tasks": tasks,
                             "mode": mode, **row, "runs": runs[mode]})
            print(f"  {backend} {name} done", flush=True)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (f"{'backend':<8} {'graph':<22} {'batching':<9} {'invocations':>11} "
              f"{'makespan s':>10} {'client CPU s':>12} {'invocations':>11} {'makespan':>9}")
    sub = f"{'':<8} {'':<22} {'':<9} {'':>11} {'':>10} {'':>12} {'vs off':>11} {'vs off':>9}"
    lines = [header, sub, "-" * len(header)]
    off = {(r["backend"], r["graph"]): r for r in rows if r["mode"] == "off"}
    for r in rows:
        base = off[(r["backend"], r["graph"])]
        label = (f"tree of {r['size']:,} leaves" if r["graph"] == "tree"
                 else f"map-reduce, {r['size']:,} maps")
        lines.append(f"{r['backend']:<8} {label:<22} {r['mode']:<9} {r['invocations']:>11,.0f} "
                     f"{r['makespan_s']:>10.2f} {r['cpu_s']:>12.2f} "
                     f"{r['invocations'] / base['invocations']:>10.2f}x "
                     f"{r['makespan_s'] / base['makespan_s']:>8.2f}x")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="sim,local", help="comma-separated: sim, local")
    parser.add_argument("--task-ms", type=float, default=5.0,
                        help="simulated duration of one graph task, ms (default 5)")
    parser.add_argument("--concurrency", type=int, default=1000,
                        help="simulated backend's concurrency (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 256 leaves, 64 maps, 1 repetition")
    parser.add_argument("--json", metavar="PATH", help="also write all figures to this file")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - {"sim", "local"}
    if unknown:
        parser.error(f"unknown backend(s) {sorted(unknown)}: e.g. --backends sim,local")
    if args.quick:
        args.repeat = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from _env import banner, environment

    env = environment()
    print(banner("batching", env, f"simulated task {args.task_ms:g} ms, concurrency "
                                  f"{args.concurrency}; median of {args.repeat}"), flush=True)
    rows = []
    for backend in args.backends:
        rows += measure(backend, args)
    print()
    print(format_table(rows))
    print("\noff: batching=False; cold: batching on, task durations unknown (a client's first "
          "computation); warm: batching on, durations measured by the previous computation.")
    print("tasks in the graph (after dask's own optimization): " + ", ".join(
        sorted({f"{r['graph']} {r['tasks']:,}" for r in rows})))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "arguments": vars(args), "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
