"""One map of trivial functions on Lithops' localhost executor and on dask-lambda's local backend.

What it measures
----------------
Lithops is the nearest peer of dask-lambda that runs on one machine: a
``FunctionExecutor`` whose ``localhost`` compute backend runs every call in
local processes, with ``localhost`` storage (files under the system's temp
folder).  Setups, started one after the other (never at the same time), each
with the same number of parallel slots (``--concurrency``, default 2):

``lithops``
    (a) ``lithops.FunctionExecutor`` with ``localhost`` compute and storage, as
    Lithops sets it up by default (its localhost executor "v2"), with
    ``localhost.worker_processes = concurrency``: that many consumer threads,
    each running one call at a time in a new Python interpreter.
``lithops-v1``
    (a1) the same with ``localhost.version = 1``, Lithops' older localhost
    executor: one Python interpreter per ``map``, which forks
    ``worker_processes`` worker processes that share the calls.
``lambda-local``
    (b) ``dask_lambda.LambdaClient(backend="local", concurrency=concurrency)``:
    ``concurrency`` long-lived local execution environments and a moto S3
    server.
``threads``
    (c) ``distributed.LocalCluster(processes=False)`` with ``concurrency``
    threads: Dask without any Lambda, the common reference.

The workload is a map of ``n`` trivial functions (``inc(x) = x + 1``), for each
``n`` of ``--tasks`` (default 100 and 1,000):
``fexec.map(inc, range(n))`` + ``fexec.get_result(futures)`` for Lithops,
``client.map(inc, range(n), pure=False)`` + ``client.gather(futures)`` for
Dask; the results are checked (list and sum).  The ``lithops`` setup starts a
Python interpreter per call (0.4 to 1 s of wall time per task with 2 slots on
2 cores), so it runs only the sizes up to ``--lithops-max-tasks`` (default
100).  Lithops' client learns that calls finished by listing its storage every
``lithops.monitoring_interval`` seconds (2 s by default, a fifth of that while
calls keep finishing); ``--lithops-monitoring-interval`` changes it.

Per setup: the time to open it (start-up) and one warm-up map of the smallest
size (not counted: the first map starts execution environments, fetches
Lithops' runtime metadata, warms imports), both reported; then, for each
size, ``--repeat`` maps (default 5).  It prints medians of

* wall time per task (ms),
* CPU time per task of *this* process (ms; ``time.process_time()``: client,
  and for Dask the scheduler and the gateway or in-process worker; for Lithops
  the executor, its invoker and its job-monitor threads),
* CPU time per task of child processes (ms): live descendants (psutil; their
  own time and that of the children they reaped) plus the ones that exited
  and were reaped (``getrusage(RUSAGE_CHILDREN)``), because Lithops' per-call
  processes are gone by the time a map returns,
* their sum (total CPU),

and the ratios of (b) to each other setup for the same ``n``.

How to run
----------
From the repository root, with Lithops installed (``pip install -e '.[bench]'``)::

    python benchmarks/lithops_compare.py                  # full run (6-16 minutes on 2 cores)
    python benchmarks/lithops_compare.py --quick          # smoke test: 10 tasks, 1 repetition
    python benchmarks/lithops_compare.py --json results.json
    python benchmarks/lithops_compare.py --setups lithops-v1,lambda-local --tasks 1000
    python benchmarks/lithops_compare.py --lithops-monitoring-interval 10   # Lithops polls less
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from typing import Any

import _env  # benchmarks/_env.py (scripts run from this folder)
import overhead  # benchmarks/overhead.py: the Dask setups and wait_idle
import psutil

SUBJECT = "lambda-local"
INSTALL_HINT = ("lithops_compare.py needs Lithops, which is not installed. Install it with the "
                "benchmark extra, from the repository root:\n\n    pip install -e '.[bench]'\n")


def inc(x: int) -> int:
    return x + 1


# -- setups ------------------------------------------------------------------------------------


@dataclass
class Session:
    """An open setup: ``run(n)`` maps ``inc`` over ``range(n)`` and returns the results;
    ``settle()`` runs between repetitions, outside the clock."""

    run: Callable[[int], list]
    settle: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class Setup:
    name: str
    label: str
    #: opens it, given (concurrency, Lithops' monitoring interval or None)
    open: Callable[[int, float | None], contextlib.AbstractContextManager[Session]]
    uses_lithops: bool = False
    #: the largest map it runs (None: any); the ``lithops`` setup gets --lithops-max-tasks
    max_tasks_option: str | None = None


def lithops_config(concurrency: int, version: int | None,
                   monitoring_interval: float | None = None) -> dict[str, Any]:
    """A complete Lithops configuration for localhost compute and storage (no ~/.lithops)."""
    config: dict[str, Any] = {
        "lithops": {"backend": "localhost", "storage": "localhost", "log_level": "WARNING"},
        # runtime: this interpreter by path. Lithops' default is its basename ("python"),
        # looked up on PATH, which outside an activated virtualenv is another Python without
        # Lithops: every call then fails in the runner and the map never finishes.
        "localhost": {"worker_processes": concurrency, "runtime": sys.executable}}
    if version is not None:
        config["localhost"]["version"] = version
    if monitoring_interval is not None:
        config["lithops"]["monitoring_interval"] = monitoring_interval
    return config


@contextlib.contextmanager
def _lithops(version: int | None, concurrency: int,
             monitoring_interval: float | None = None) -> Iterator[Session]:
    import lithops

    config = lithops_config(concurrency, version, monitoring_interval)
    with lithops.FunctionExecutor(config=config) as fexec:
        def run(n: int) -> list:
            futures = fexec.map(inc, range(n))
            return fexec.get_result(futures, show_progressbar=False)

        yield Session(run)


@contextlib.contextmanager
def _dask(open_client: Callable[[int], contextlib.AbstractContextManager],
          concurrency: int, _monitoring_interval: float | None = None) -> Iterator[Session]:
    with open_client(concurrency) as client:
        def run(n: int) -> list:
            return client.gather(client.map(inc, range(n), pure=False))

        yield Session(run, functools.partial(overhead.wait_idle, client))


SETUPS = (
    Setup("lithops", "(a)  Lithops localhost (default, v2)", functools.partial(_lithops, None),
          uses_lithops=True, max_tasks_option="lithops_max_tasks"),
    Setup("lithops-v1", "(a1) Lithops localhost, version 1", functools.partial(_lithops, 1),
          uses_lithops=True),
    Setup("lambda-local", '(b)  LambdaClient(backend="local")',
          functools.partial(_dask, overhead._lambda_client)),
    Setup("threads", "(c)  LocalCluster(processes=False)",
          functools.partial(_dask, functools.partial(overhead._local_cluster, False))),
)


# -- measuring ---------------------------------------------------------------------------------


def _descendants_cpu() -> dict[int, float]:
    """CPU seconds of each live descendant: its own and its reaped children's, by pid."""
    out: dict[int, float] = {}
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            t = child.cpu_times()
            out[child.pid] = t.user + t.system + t.children_user + t.children_system
    return out


def _reaped_cpu() -> float:
    """CPU seconds of every child process this process has reaped (and of theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


Sample = overhead.Sample


def measure(fn: Callable[[], Any]) -> tuple[Sample, Any]:
    live, reaped = _descendants_cpu(), _reaped_cpu()
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    live_after, reaped_after = _descendants_cpu(), _reaped_cpu()
    # A process that was alive at the start and is gone now shows up whole in its reaper's
    # counter (this process's or a live descendant's): take away what it had used before.
    child = (sum(t - live.get(pid, 0.0) for pid, t in live_after.items())
             + (reaped_after - reaped)
             - sum(t for pid, t in live.items() if pid not in live_after))
    return Sample(wall, cpu, max(child, 0.0)), out


def check(results: list, n: int) -> None:
    if list(results) != list(range(1, n + 1)) or sum(results) != n * (n + 1) // 2:
        raise AssertionError(f"map of {n} tasks returned wrong results (sum {sum(results)})")


@dataclass
class Result(overhead.PerTask):
    """One setup x map size: raw seconds per repetition and medians per task."""

    setup: str
    label: str
    tasks: int
    total_cpu_ms_per_task: float = 0.0

    def summarize(self) -> None:
        super().summarize()
        per_task = 1000.0 / self.tasks
        self.total_cpu_ms_per_task = statistics.median(
            c + k for c, k in zip(self.cpu_s, self.child_cpu_s, strict=True)) * per_task


@dataclass
class Opened:
    """Start-up of one setup: opening it, and its first (warm-up) map."""

    startup_s: float
    warmup_tasks: int
    warmup_wall_s: float
    warmup_cpu_s: float
    warmup_child_cpu_s: float


def sizes_for(setup: Setup, args: argparse.Namespace) -> list[int]:
    limit = getattr(args, setup.max_tasks_option) if setup.max_tasks_option else None
    return [n for n in args.tasks if limit is None or n <= limit]


def bench_setup(setup: Setup, sizes: list[int], args: argparse.Namespace
                ) -> tuple[Opened, list[Result]]:
    """Open one setup, warm it up, run every size ``--repeat`` times, close it."""
    start = time.perf_counter()
    with setup.open(args.concurrency, args.lithops_monitoring_interval) as session:
        startup = time.perf_counter() - start
        warm, out = measure(functools.partial(session.run, sizes[0]))
        check(out, sizes[0])
        session.settle()
        opened = Opened(startup, sizes[0], warm.wall, warm.cpu, warm.child_cpu)
        print(f"  {setup.name:<13} start-up {startup:.2f} s, warm-up map of {sizes[0]}: "
              f"{warm.wall:.2f} s", flush=True)
        results = []
        for n in sizes:
            result = Result(setup.name, setup.label, n)
            for _ in range(args.repeat):
                sample, out = measure(functools.partial(session.run, n))
                check(out, n)
                del out
                session.settle()
                result.add(sample)
            result.summarize()
            results.append(result)
            print(f"  {setup.name:<13} {n:>6} tasks: {result.wall_ms_per_task:9.3f} ms/task wall, "
                  f"{result.cpu_ms_per_task:8.3f} ms/task CPU, "
                  f"{result.child_cpu_ms_per_task:8.3f} ms/task child CPU", flush=True)
    return opened, results


# -- reporting ---------------------------------------------------------------------------------


def ratios(results: list[Result]) -> list[dict[str, Any]]:
    """(b) / every other setup, for each map size both ran."""
    out = []
    subject = {r.tasks: r for r in results if r.setup == SUBJECT}
    for r in results:
        b = subject.get(r.tasks)
        if r.setup == SUBJECT or b is None:
            continue
        row: dict[str, Any] = {"tasks": r.tasks, "versus": r.setup, "label": r.label}
        for key in ("wall", "cpu", "child_cpu", "total_cpu"):
            mine, theirs = getattr(b, f"{key}_ms_per_task"), getattr(r, f"{key}_ms_per_task")
            row[key] = mine / theirs if theirs else None
        out.append(row)
    return out


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2g}x" if value < 0.1 else f"{value:.2f}x"


def format_table(results: list[Result], opened: dict[str, Opened], rows: list[dict[str, Any]],
                 repeat: int, skipped: dict[str, list[int]]) -> str:
    header = (f"{'tasks':>6}  {'setup':<37} {'wall ms/task':>12} {'CPU ms/task':>12} "
              f"{'child CPU':>10} {'total CPU':>10}")
    lines = [f"Medians of {repeat} repetition(s) after one warm-up, ms per task. CPU = this "
             "process; child CPU = child processes (live and exited); total = both.",
             "", header, "-" * len(header)]
    for n in sorted({r.tasks for r in results}):
        for r in (r for r in results if r.tasks == n):
            lines.append(f"{n:>6}  {r.label:<37} {r.wall_ms_per_task:>12.3f} "
                         f"{r.cpu_ms_per_task:>12.3f} {r.child_cpu_ms_per_task:>10.3f} "
                         f"{r.total_cpu_ms_per_task:>10.3f}")
        lines.append("")
    if rows:
        header = (f"{'tasks':>6}  {'(b) LambdaClient(local) / setup':<37} {'wall':>12} "
                  f"{'CPU':>12} {'child CPU':>10} {'total CPU':>10}")
        lines += ["Ratios of (b) to each setup, same map, from the medians above "
                  "(below 1: (b) takes less):", "", header, "-" * len(header)]
        for row in rows:
            lines.append(f"{row['tasks']:>6}  {row['label']:<37} {_ratio(row['wall']):>12} "
                         f"{_ratio(row['cpu']):>12} {_ratio(row['child_cpu']):>10} "
                         f"{_ratio(row['total_cpu']):>10}")
        lines.append("")
    for name, o in opened.items():
        lines.append(f"{name}: start-up {o.startup_s:.2f} s; warm-up map of {o.warmup_tasks} "
                     f"tasks {o.warmup_wall_s:.2f} s wall, {o.warmup_cpu_s:.2f} s CPU, "
                     f"{o.warmup_child_cpu_s:.2f} s child CPU")
    for name, sizes in skipped.items():
        if sizes:
            lines.append(f"{name}: not run for {', '.join(map(str, sizes))} tasks "
                         "(above --lithops-max-tasks)")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    packages = ("dask", "distributed", "dask-lambda", "cloudpickle", "moto")
    return _env.environment(packages + (("lithops",) if find_spec("lithops") else ()))


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The same map of trivial functions on Lithops' localhost executor and on "
                    "LambdaClient(backend='local') (and LocalCluster).")
    parser.add_argument("--repeat", type=int, default=None,
                        help="measured repetitions per setup and size (default 5; --quick: 1)")
    parser.add_argument("--tasks", default=None,
                        help="comma-separated map sizes (default 100,1000; --quick: 10)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="parallel slots in every setup: Lithops worker_processes, Lambda "
                             "concurrency, LocalCluster threads (default 2)")
    parser.add_argument("--lithops-max-tasks", type=int, default=100, metavar="N",
                        help="largest map the 'lithops' setup runs: it starts a Python "
                             "interpreter per call (default 100)")
    parser.add_argument("--lithops-monitoring-interval", type=float, default=None,
                        metavar="S", help="Lithops' lithops.monitoring_interval: how often its "
                        "client lists local storage for finished calls (default: Lithops' own, "
                        "2 s)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tiny sizes and one repetition unless given")
    overhead.add_setups_option(parser, SETUPS)
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    overhead.check_setups(parser, args, SETUPS, "lithops-v1,lambda-local")
    quick = {"repeat": 1, "tasks": "10"}
    full = {"repeat": 5, "tasks": "100,1000"}
    for name, default in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    try:
        args.tasks = sorted({int(x) for x in args.tasks.split(",") if x.strip()})
    except ValueError:
        parser.error(f"--tasks takes comma-separated integers, not {args.tasks!r}")
    if not args.tasks or args.tasks[0] < 1:
        parser.error("--tasks must be at least 1")
    for name in ("repeat", "concurrency", "lithops_max_tasks"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.lithops_monitoring_interval is not None and args.lithops_monitoring_interval <= 0:
        parser.error("--lithops-monitoring-interval must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setups = [s for name in args.setups for s in SETUPS if s.name == name]
    if any(s.uses_lithops for s in setups) and find_spec("lithops") is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    env = environment()
    print(_env.banner("Lithops comparison", env,
                      f"lithops {env['versions'].get('lithops', '-')}"), flush=True)
    print(f"map sizes: {', '.join(map(str, args.tasks))} (lithops: up to "
          f"{args.lithops_max_tasks}), repeat: {args.repeat}, concurrency: {args.concurrency}, "
          "Lithops monitoring interval: "
          f"{args.lithops_monitoring_interval or 'default'}", flush=True)
    results: list[Result] = []
    opened: dict[str, Opened] = {}
    skipped: dict[str, list[int]] = {}
    for setup in setups:
        sizes = sizes_for(setup, args)
        skipped[setup.name] = [n for n in args.tasks if n not in sizes]
        if not sizes:
            continue
        opened[setup.name], setup_results = bench_setup(setup, sizes, args)
        results.extend(setup_results)
    rows = ratios(results)
    print()
    print(format_table(results, opened, rows, args.repeat, skipped))
    if args.json:
        report = {"environment": env,
                  "arguments": {k: getattr(args, k) for k in
                                ("repeat", "tasks", "concurrency", "lithops_max_tasks",
                                 "lithops_monitoring_interval", "quick", "setups")},
                  "lithops_config": {
                      "default": lithops_config(args.concurrency, None,
                                                args.lithops_monitoring_interval),
                      "v1": lithops_config(args.concurrency, 1,
                                           args.lithops_monitoring_interval)},
                  "opened": {k: asdict(v) for k, v in opened.items()},
                  "skipped": skipped,
                  "results": [asdict(r) for r in results],
                  "ratios_b_to": rows}
        _env.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
