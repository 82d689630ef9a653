"""Per-task overhead of dask-lambda's ``LambdaClient`` next to Dask's ``LocalCluster``.

What it measures
----------------
Three setups, started one after the other (never at the same time), each with
the same number of parallel slots (``--concurrency``, default 2):

``threads``
    ``distributed.LocalCluster(processes=False)``: one in-process worker with
    ``concurrency`` threads (the reference for the ratios).
``processes``
    ``distributed.LocalCluster(processes=True)``: ``concurrency`` worker
    processes with one thread each.
``lambda-local``
    ``dask_lambda.LambdaClient(backend="local")`` with ``concurrency``
    execution environments (local processes standing in for Lambda, plus a
    moto S3 server).
``lambda-sim``
    ``dask_lambda.LambdaClient(backend=SimulatedBackend(..., tls=True))`` with zero
    invoke latency and cold start: the simulated Lambda (a process serving the Invoke
    API over HTTPS, reached through the aws backend's invoke path) runs no task code and
    answers every invocation at once, so what is left is the client process's own work
    against AWS (scheduler, gateway, job pickling and signing, the signed HTTPS invoke,
    result decoding).

Two workloads of trivial tasks (``inc``), so that what is timed is overhead:

``map``
    ``--tasks`` (default 1,000) independent tasks: ``client.map(inc, range(n),
    pure=False)`` then ``client.gather``.
``chain``
    ``--chain`` (default 100) tasks, each depending on the one before:
    ``x = inc(x)`` with ``dask.delayed``, then ``client.compute(x).result()``
    (the graph is built before the clock starts).

``--setups`` picks and orders the setups (default: all four).  ``LambdaClient``
raises the garbage collector's young-generation threshold while it is open
(:mod:`dask_lambda.gc_tuning`); ``--gc-threshold N`` gives every setup the same
threshold, for a like-for-like comparison of the rest.

Every repetition uses new keys, so nothing is cached.  Per setup, each
workload runs once as a warm-up (not counted: it starts Lambda execution
environments and warms imports), then ``--repeat`` times (default 5).  For each
setup and workload it reports medians of

* wall time per task (ms),
* CPU time per task of *this* process (ms; ``time.process_time()``, all its
  threads: client, scheduler and any in-process worker, not child processes),
* CPU time per task of this process's child processes (ms; worker processes,
  or Lambda execution environments and the S3 server; from ``psutil``),

the ratios of wall and of this process's CPU to ``threads``, and for
``lambda-local`` the invocations and cold starts.

How to run
----------
From the repository root::

    python benchmarks/overhead.py                    # full run (about 75 s on 2 cores)
    python benchmarks/overhead.py --quick            # smoke test: tiny sizes, 1 repetition
    python benchmarks/overhead.py --repeat 9 --json results.json
    python benchmarks/overhead.py --tasks 5000 --chain 500 --setups threads,lambda-sim,lambda-local
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import _env  # benchmarks/_env.py (scripts run from this folder)
import dask
import psutil
from distributed import Client, LocalCluster

from dask_lambda import LambdaClient, gc_tuning
from dask_lambda.backends.simulated import LambdaModel, SimulatedBackend

REFERENCE = "threads"
WORKLOADS = ("map", "chain")
_IDLE_TIMEOUT = 30.0


def inc(x: int) -> int:
    return x + 1


# -- setups ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """A way of running tasks: a name, a description and a factory of open clients."""

    name: str
    label: str
    open: Callable[[int], contextlib.AbstractContextManager[Client]]
    #: False for the simulated Lambda, which runs no task code: every task returns None.
    runs_tasks: bool = True


@contextlib.contextmanager
def _local_cluster(processes: bool, concurrency: int) -> Iterator[Client]:
    workers, threads = (concurrency, 1) if processes else (1, concurrency)
    with LocalCluster(processes=processes, n_workers=workers, threads_per_worker=threads,
                      dashboard_address=None, silence_logs=logging.WARNING) as cluster:
        with Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(workers)
            yield client


@contextlib.contextmanager
def _lambda_client(concurrency: int) -> Iterator[Client]:
    # batching=False: every task is its own invocation, which is what is measured here (a
    # chain would otherwise run as a few invocations; benchmarks/batching.py measures that).
    with LambdaClient("s3://dask-lambda-bench/overhead", backend="local",
                      concurrency=concurrency, dashboard_address=None,
                      set_as_default=False, batching=False) as client:
        yield client


@contextlib.contextmanager
def _simulated_client(concurrency: int) -> Iterator[Client]:
    backend = SimulatedBackend(LambdaModel(invoke_latency=0.0, cold_start=0.0), tls=True)
    with LambdaClient("s3://dask-lambda-bench/overhead", backend=backend,
                      concurrency=concurrency, dashboard_address=None,
                      set_as_default=False, batching=False) as client:
        yield client


SETUPS = (
    Setup("threads", "(a) LocalCluster(processes=False)",
          functools.partial(_local_cluster, False)),
    Setup("processes", "(b) LocalCluster(processes=True)",
          functools.partial(_local_cluster, True)),
    Setup("lambda-local", '(c) LambdaClient(backend="local")', _lambda_client),
    Setup("lambda-sim", "(d) LambdaClient(simulated, 0 ms)", _simulated_client,
          runs_tasks=False),
)


# -- workloads ---------------------------------------------------------------------------------


def run_map(client: Client, n: int, runs_tasks: bool = True) -> None:
    futures = client.map(inc, range(n), pure=False)
    results = client.gather(futures)
    if results != (list(range(1, n + 1)) if runs_tasks else [None] * n):
        raise AssertionError("map workload returned wrong results")


def build_chain(n: int) -> Any:
    task = dask.delayed(inc, pure=False)  # a new key per call, hence per repetition
    x: Any = 0
    for _ in range(n):
        x = task(x)
    return x


def run_chain(client: Client, graph: Any, n: int, runs_tasks: bool = True) -> None:
    result = client.compute(graph).result()
    if result != (n if runs_tasks else None):
        raise AssertionError(f"chain workload returned {result!r}, not {n}")


def _scheduler_tasks(dask_scheduler: Any) -> int:
    return len(dask_scheduler.tasks)


def wait_idle(client: Client) -> None:
    """Wait until the scheduler has forgotten the previous repetition's tasks."""
    deadline = time.monotonic() + _IDLE_TIMEOUT
    while client.run_on_scheduler(_scheduler_tasks) and time.monotonic() < deadline:
        time.sleep(0.01)


# -- measuring ---------------------------------------------------------------------------------


def _children_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of each live descendant process, by pid."""
    out: dict[int, float] = {}
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            out[child.pid] = times.user + times.system
    return out


@dataclass
class Sample:
    wall: float
    cpu: float
    child_cpu: float


def measure(fn: Callable[[], None]) -> Sample:
    children = _children_cpu()
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = _children_cpu()
    child = sum(t - children.get(pid, 0.0) for pid, t in after.items())
    return Sample(wall, cpu, child)


@dataclass(kw_only=True)
class PerTask:
    """`Sample`s of one setup and workload and their medians per task (a subclass has
    ``tasks``)."""

    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    child_cpu_s: list[float] = field(default_factory=list)
    wall_ms_per_task: float = 0.0
    cpu_ms_per_task: float = 0.0
    child_cpu_ms_per_task: float = 0.0

    def add(self, sample: Sample) -> None:
        self.wall_s.append(sample.wall)
        self.cpu_s.append(sample.cpu)
        self.child_cpu_s.append(sample.child_cpu)

    def summarize(self) -> None:
        per_task = 1000.0 / self.tasks  # type: ignore[attr-defined]
        self.wall_ms_per_task = statistics.median(self.wall_s) * per_task
        self.cpu_ms_per_task = statistics.median(self.cpu_s) * per_task
        self.child_cpu_ms_per_task = statistics.median(self.child_cpu_s) * per_task


@dataclass
class Result(PerTask):
    """One setup x workload: raw seconds per repetition and medians per task."""

    setup: str
    label: str
    workload: str
    tasks: int
    wall_ratio: float | None = None
    cpu_ratio: float | None = None
    lambda_stats: dict[str, int] | None = None


def _stats(client: Client) -> dict[str, int] | None:
    return client.lambda_stats() if isinstance(client, LambdaClient) else None


def _delta(after: dict[str, int] | None, before: dict[str, int] | None) -> dict[str, int] | None:
    if after is None or before is None:
        return None
    return {k: v - before.get(k, 0) for k, v in after.items()}


def bench_setup(setup: Setup, args: argparse.Namespace) -> tuple[float, list[Result], dict | None]:
    """Start one setup, run both workloads (warm-up + repetitions), close it."""
    start = time.perf_counter()
    with setup.open(args.concurrency) as client:
        startup = time.perf_counter() - start
        results: list[Result] = []
        sizes = {"map": args.tasks, "chain": args.chain}
        for workload in WORKLOADS:
            n = sizes[workload]
            result = Result(setup.name, setup.label, workload, n)
            before: dict[str, int] | None = None
            for rep in range(args.repeat + 1):  # repetition 0 is the warm-up
                if workload == "map":
                    sample = measure(functools.partial(run_map, client, n, setup.runs_tasks))
                else:
                    graph = build_chain(n)
                    sample = measure(functools.partial(run_chain, client, graph, n,
                                                       setup.runs_tasks))
                    del graph
                wait_idle(client)
                if rep == 0:
                    before = _stats(client)
                else:
                    result.add(sample)
            result.lambda_stats = _delta(_stats(client), before)
            result.summarize()
            results.append(result)
            print(f"  {setup.name:<13} {workload:<6} {n:>6} tasks: "
                  f"{result.wall_ms_per_task:8.3f} ms/task wall, "
                  f"{result.cpu_ms_per_task:8.3f} ms/task CPU", flush=True)
        totals = _stats(client)
    return startup, results, totals


# -- reporting ---------------------------------------------------------------------------------


def add_ratios(results: list[Result]) -> None:
    ref = {r.workload: r for r in results if r.setup == REFERENCE}
    for r in results:
        base = ref.get(r.workload)
        if base is None:
            continue
        r.wall_ratio = r.wall_ms_per_task / base.wall_ms_per_task if base.wall_ms_per_task else None
        r.cpu_ratio = r.cpu_ms_per_task / base.cpu_ms_per_task if base.cpu_ms_per_task else None


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def format_table(results: list[Result], startups: dict[str, float],
                 totals: dict[str, dict | None], repeat: int) -> str:
    header = (f"{'workload':<16} {'setup':<37} {'wall ms/task':>12} {'CPU ms/task':>12} "
              f"{'child CPU':>10} {'wall vs (a)':>11} {'CPU vs (a)':>10}")
    lines = [f"Medians of {repeat} repetition(s) after one warm-up; CPU = this process "
             "(client + scheduler + in-process worker); child CPU = child processes, ms/task.",
             "", header, "-" * len(header)]
    for workload in WORKLOADS:
        for r in (r for r in results if r.workload == workload):
            name = f"{r.workload} ({r.tasks})"
            lines.append(f"{name:<16} {r.label:<37} {r.wall_ms_per_task:>12.3f} "
                         f"{r.cpu_ms_per_task:>12.3f} {r.child_cpu_ms_per_task:>10.3f} "
                         f"{_ratio(r.wall_ratio):>11} {_ratio(r.cpu_ratio):>10}")
        lines.append("")
    lines.append("Start-up time: " + ", ".join(f"{k} {v:.2f} s" for k, v in startups.items()))
    for r in results:
        s = r.lambda_stats
        if s is None:
            continue
        lines.append(
            f"{r.setup} {r.workload}: {s['invocations']} invocations and {s['cold_starts']} "
            f"cold starts in {repeat} x {r.tasks} measured tasks; "
            f"{s['bytes_sent'] / max(s['tasks'], 1):.0f} B sent and "
            f"{s['bytes_received'] / max(s['tasks'], 1):.0f} B received per task")
    for name, s in totals.items():
        if s is not None:
            lines.append(f"{name} in all (warm-ups included): {s['invocations']} invocations, "
                         f"{s['cold_starts']} cold starts, {s['retries']} retries, "
                         f"{s['errors']} errors")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    return _env.environment()


# -- main ----------------------------------------------------------------------------------------


def add_setups_option(parser: argparse.ArgumentParser, setups: tuple) -> None:
    """``--setups``: which of ``setups`` (objects with a ``name``) to run, in order."""
    names = ",".join(s.name for s in setups)
    parser.add_argument("--setups", default=names, help="comma-separated setups to run, in "
                        f"order (default: all: {names})")


def check_setups(parser: argparse.ArgumentParser, args: argparse.Namespace, setups: tuple,
                 example: str) -> None:
    """Turn ``args.setups`` into a list of names, or stop with the ones to choose from."""
    names = [s.name for s in setups]
    args.setups = [x.strip() for x in args.setups.split(",") if x.strip()]
    unknown = [x for x in args.setups if x not in names]
    if unknown or not args.setups:
        parser.error(f"unknown setup(s) {unknown}: choose from {', '.join(names)}, "
                     f"e.g. --setups {example}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Per-task overhead: LocalCluster (threads, processes) vs LambdaClient "
                    "(local, simulated).")
    parser.add_argument("--repeat", type=int, default=None,
                        help="measured repetitions per workload (default 5; --quick: 1)")
    parser.add_argument("--tasks", type=int, default=None,
                        help="independent tasks in the map workload (default 1000; --quick: 20)")
    parser.add_argument("--chain", type=int, default=None,
                        help="length of the dependent chain (default 100; --quick: 5)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="parallel slots in every setup: threads (a), worker processes (b), "
                             "Lambda concurrency (c) (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tiny sizes and one repetition unless given")
    add_setups_option(parser, SETUPS)
    parser.add_argument("--gc-threshold", type=int, default=None, metavar="N",
                        help="run every setup with the garbage collector's young-generation "
                             "threshold at least N (LambdaClient uses "
                             f"{gc_tuning.GEN0_THRESHOLD} on its own)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    check_setups(parser, args, SETUPS, "threads,lambda-sim")
    quick = {"repeat": 1, "tasks": 20, "chain": 5}
    full = {"repeat": 5, "tasks": 1000, "chain": 100}
    for name, default in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    for name in ("repeat", "tasks", "chain", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = environment()
    print(_env.banner("overhead", env), flush=True)
    print(f"map: {args.tasks} tasks, chain: {args.chain} tasks, repeat: {args.repeat}, "
          f"concurrency: {args.concurrency}, gc threshold for all setups: "
          f"{args.gc_threshold or 'default'}", flush=True)
    results: list[Result] = []
    startups: dict[str, float] = {}
    totals: dict[str, dict | None] = {}
    for setup in (s for name in args.setups for s in SETUPS if s.name == name):
        with (gc_tuning.collect_less_often(args.gc_threshold) if args.gc_threshold
              else contextlib.nullcontext()):
            startups[setup.name], setup_results, totals[setup.name] = bench_setup(setup, args)
        results.extend(setup_results)
    add_ratios(results)
    print()
    print(format_table(results, startups, totals, args.repeat))
    if args.json:
        report = {"environment": env,
                  "arguments": {k: getattr(args, k) for k in
                                ("repeat", "tasks", "chain", "concurrency", "quick", "setups",
                                 "gc_threshold")},
                  "startup_s": startups,
                  "lambda_stats_total": {k: v for k, v in totals.items() if v is not None},
                  "results": [asdict(r) for r in results]}
        _env.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
