"""Lambda scale on the simulator: can this machine keep a thousand functions busy?

What it runs
------------
``client.map(noop, range(N), pure=False)`` then `distributed.wait`, on
``LambdaClient(..., backend=SimulatedBackend(model), concurrency=C)``.  The
simulated backend (:mod:`dask_lambda.backends.simulated`) runs no task code: each
invocation pays an invoke round trip (``--latency``, uniform, default 30-50 ms),
a cold start in each new execution environment (``--cold-start``, uniform,
default 250-350 ms), then sleeps for the task's duration, and answers with a
real signed result.  Lambda's account concurrency (C) and scaling rate (1,000 new
environments per 10 s) apply, with 429 answers that the client backs off from.
The simulated Lambda is a process of its own serving the Invoke API over HTTPS
(``--no-tls``: HTTP), and the client reaches it through the aws backend's invoke
path.  So everything the *client process* does per task (scheduler, gateway worker,
job pickling and signing, the signed HTTPS invoke with a TLS handshake per new
connection, result decoding) is real, at Lambda's scale.

Scenarios (each in a fresh Python subprocess, so peak memory is that run's):

``10k x 1 s``
    10,000 tasks of 1 s at concurrency 1,000.
``100k x 0.1 s``
    100,000 tasks of 0.1 s at concurrency 1,000.

``--floor`` runs the same maps on distributed alone: the gateway's scheduler settings
and one worker with C slots whose executor only waits as long as the simulated Lambda
would (round trip, a cold start per new slot, the duration), with no job, invoke or
result: what is left of the gap to the ideal is distributed's own cost on this machine.

For each it reports the makespan (from ``client.map`` until every task is done),
the ideal makespan ``N / C x duration + one cold start`` (the mean of the
cold-start range) and their ratio (target: within 1.1x for 10k x 1 s); the
client process's CPU time (``time.process_time()``, all its threads) and its peak
RSS (``ru_maxrss``); what the simulated Lambda saw (invocations, cold starts,
throttles, the most invocations in flight) and its utilisation, the share of
``C x makespan`` that environments spent busy.  ``--profile PATH`` also writes a
cProfile of the client's event loop thread (the scheduler and the gateway).

How to run
----------
From the repository root::

    python benchmarks/scale.py                  # both scenarios (a few minutes)
    python benchmarks/scale.py --scenarios 10k  # only 10,000 x 1 s
    python benchmarks/scale.py --quick          # smoke test: small sizes (~20 s)
    python benchmarks/scale.py --saturation 1.1 # distributed's default instead of the gateway's 2
    python benchmarks/scale.py --no-tls         # plain HTTP to the simulated Lambda
    python benchmarks/scale.py --floor          # distributed alone, the same timing
    python benchmarks/scale.py --json results.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

#: name: (tasks, task seconds, concurrency); --quick uses the second table.
SCENARIOS = {"10k": (10_000, 1.0, 1000), "100k": (100_000, 0.1, 1000)}
QUICK = {"10k": (1_000, 0.2, 100), "100k": (2_000, 0.02, 100)}
TARGET = 1.1


def noop(x: int) -> int:
    """The task (never executed: the simulator only sleeps)."""
    return x


@dataclass
class Figures:
    """What one scenario measured."""

    scenario: str
    tasks: int
    duration_s: float
    concurrency: int
    makespan_s: float
    ideal_s: float
    submit_s: float
    cpu_s: float
    startup_s: float
    peak_rss_mb: float
    rss_before_mb: float
    gc_s: float
    gc_full: int
    lambda_stats: dict[str, Any]
    simulator: dict[str, Any]

    @property
    def ratio(self) -> float:
        return self.makespan_s / self.ideal_s

    @property
    def utilisation(self) -> float:
        return self.simulator["busy_s"] / (self.concurrency * self.makespan_s)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB


class GCTimer:
    """Time spent in the garbage collector (all generations) and full collections."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        self.seconds += time.perf_counter() - self._start
        self.full += info["generation"] == 2


def _loop_profile(client: Any, path: str | None) -> Any:
    """Start cProfile on the client's event loop thread; returns a function that stops it."""
    if not path:
        return lambda: None
    import cProfile

    profile = cProfile.Profile()
    flag = threading.Event()

    def on_loop(action: Any) -> None:
        def call() -> None:
            action()
            flag.set()

        client.loop.add_callback(call)
        flag.wait()
        flag.clear()

    on_loop(profile.enable)

    def stop() -> None:
        on_loop(profile.disable)
        profile.dump_stats(path)

    return stop


def _run_map(client: Any, tasks: int, profile: str | None) -> dict[str, Any]:
    """``client.map(noop, range(tasks))`` until all are done: makespan, CPU, GC, submit time."""
    from distributed import wait

    stop_profile = _loop_profile(client, profile)
    collector = GCTimer()
    gc.callbacks.append(collector)
    cpu, wall = time.process_time(), time.perf_counter()
    futures = client.map(noop, range(tasks), pure=False)
    submitted = time.perf_counter() - wall
    wait(futures)
    makespan, cpu = time.perf_counter() - wall, time.process_time() - cpu
    gc.callbacks.remove(collector)
    stop_profile()
    failed = [f for f in futures if f.status != "finished"]
    if failed:
        raise SystemExit(f"{len(failed)} of {tasks} tasks did not finish: "
                         f"{failed[0].exception()!r}")
    return {"makespan_s": makespan, "cpu_s": cpu, "submit_s": submitted,
            "gc_s": collector.seconds, "gc_full": collector.full}


def run_one(name: str, args: argparse.Namespace) -> Figures:
    """One scenario in this process (the child)."""
    from dask_lambda import LambdaClient
    from dask_lambda.backends.simulated import LambdaModel, SimulatedBackend, constant

    if args.floor:
        return run_floor(name, args)
    tasks, duration, concurrency = (QUICK if args.quick else SCENARIOS)[name]
    if args.saturation is not None:
        import dask

        dask.config.set({"lambda.worker-saturation": args.saturation})
    model = LambdaModel(invoke_latency=tuple(args.latency), cold_start=tuple(args.cold_start),
                        duration=constant(duration))
    backend = SimulatedBackend(model, tls=args.tls)
    start = time.perf_counter()
    with LambdaClient("s3://dask-lambda-bench/scale", backend=backend, concurrency=concurrency,
                      dashboard_address=None) as client:
        startup = time.perf_counter() - start
        rss_before = _peak_mb()
        measured = _run_map(client, tasks, args.profile and f"{args.profile}.{name}")
        stats = client.lambda_stats()
    cold = sum(args.cold_start) / 2
    return Figures(name, tasks, duration, concurrency, ideal_s=tasks / concurrency * duration
                   + cold, startup_s=startup, peak_rss_mb=_peak_mb(), rss_before_mb=rss_before,
                   lambda_stats=stats, simulator=backend.counters(), **measured)


def sleeper(latency: tuple[float, float], cold_start: tuple[float, float],
            duration: float) -> Any:
    """A worker executor that runs nothing: each task waits as long as on the simulated
    Lambda (invoke round trip, a cold start per new slot, the duration); for `run_floor`.
    Its ``counters`` are in the simulated Lambda's terms."""
    import random

    from dask_lambda.gateway.async_executor import AsyncExecutor

    class Sleeper(AsyncExecutor):
        def __init__(self) -> None:
            super().__init__()
            self.rng = random.Random(0)
            self.warm = 0  # slots that have run a task and are idle
            self.sleeping = 0
            self.counters = {"invocations": 0, "cold_starts": 0, "throttles": 0,
                             "peak_in_flight": 0, "busy_s": 0.0}

        async def _run_task(self, task: Any, data: dict, delay: float) -> dict:
            start, counters = time.time(), self.counters
            cold = self.warm == 0
            busy = (self.rng.uniform(*cold_start) if cold else 0.0) + duration
            self.warm -= not cold
            self.sleeping += 1
            counters["invocations"] += 1
            counters["cold_starts"] += cold
            counters["busy_s"] += busy
            counters["peak_in_flight"] = max(counters["peak_in_flight"], self.sleeping)
            await asyncio.sleep(self.rng.uniform(*latency) + busy)
            self.sleeping -= 1
            self.warm += 1
            return {"op": "task-finished", "status": "OK", "result": None, "nbytes": 16,
                    "type": None, "start": start + delay, "stop": time.time() + delay,
                    "thread": threading.get_ident()}

    return Sleeper()


def run_floor(name: str, args: argparse.Namespace) -> Figures:
    """The same map on distributed alone: dask-lambda's scheduler settings and one worker with
    ``concurrency`` slots whose executor only waits (`sleeper`): no job, no invoke, no
    result. What is left of the gap to the ideal is distributed's own cost on this machine."""
    from distributed import Client, Worker
    from distributed.deploy.spec import SpecCluster

    from dask_lambda import gc_tuning
    from dask_lambda.gateway import GatewayScheduler

    tasks, duration, concurrency = (QUICK if args.quick else SCENARIOS)[name]
    executor = sleeper(tuple(args.latency), tuple(args.cold_start), duration)
    saturation = 2.0 if args.saturation is None else args.saturation
    start = time.perf_counter()
    with gc_tuning.collect_less_often(), SpecCluster(
            scheduler={"cls": GatewayScheduler, "options": {
                "protocol": "inproc://", "dashboard": False, "worker_saturation": saturation}},
            workers={"floor": {"cls": Worker, "options": {
                "nthreads": concurrency, "executor": {"default": executor},
                "memory_limit": 0}}}, silence_logs=logging.WARNING) as cluster, \
            Client(cluster) as client:
        startup = time.perf_counter() - start
        rss_before = _peak_mb()
        measured = _run_map(client, tasks, args.profile and f"{args.profile}.{name}")
    cold = sum(args.cold_start) / 2
    return Figures(name, tasks, duration, concurrency, ideal_s=tasks / concurrency * duration
                   + cold, startup_s=startup, peak_rss_mb=_peak_mb(), rss_before_mb=rss_before,
                   lambda_stats={"retries": 0, "errors": 0}, simulator=executor.counters,
                   **measured)


def spawn(name: str, args: argparse.Namespace) -> Figures:
    """Run one scenario in a fresh interpreter; returns its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "figures.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--_child", name, "--_out", out,
               "--latency", *map(str, args.latency), "--cold-start", *map(str, args.cold_start)]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--profile", args.profile] if args.profile else []
        cmd += ["--saturation", repr(args.saturation)] if args.saturation is not None else []
        cmd += [] if args.tls else ["--no-tls"]
        cmd += ["--floor"] if args.floor else []
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            raise SystemExit(f"scenario {name} failed (exit code {proc.returncode})")
        with open(out) as f:
            return Figures(**json.load(f))


def _label(r: Figures) -> str:
    return f"{r.tasks:,} x {r.duration_s:g} s"


def format_table(runs: list[Figures], quick: bool = False) -> str:
    header = (f"{'scenario':<16} {'conc':>5} {'makespan':>9} {'ideal':>7} {'ratio':>6} "
              f"{'CPU s':>7} {'CPU ms/task':>11} {'GC s':>5} {'peak RSS':>9} {'cold':>5} "
              f"{'429s':>5} {'peak in flight':>14} {'busy':>5}")
    lines = [header, "-" * len(header)]
    for r in runs:
        sim = r.simulator
        lines.append(
            f"{_label(r):<16} {r.concurrency:>5} {r.makespan_s:>8.2f}s {r.ideal_s:>6.2f}s "
            f"{r.ratio:>5.2f}x {r.cpu_s:>7.1f} {1000 * r.cpu_s / r.tasks:>11.3f} {r.gc_s:>5.1f} "
            f"{r.peak_rss_mb:>6.0f} MB {sim['cold_starts']:>5} {sim['throttles']:>5} "
            f"{sim['peak_in_flight']:>14} {r.utilisation:>5.0%}")
    lines += ["", "makespan: client.map until all done; ideal: tasks / concurrency x duration "
              "+ one cold start;",
              "CPU: the client process (client, scheduler, gateway), GC: of it, in the "
              "garbage collector; busy: environments' busy time / (concurrency x makespan)."]
    for r in runs:
        lines.append(f"{_label(r)}: start-up {r.startup_s:.1f} s, client.map {r.submit_s:.2f} s, "
                     f"RSS before the run {r.rss_before_mb:.0f} MB, {r.gc_full} full "
                     f"collections; {r.simulator['invocations']} invocations, "
                     f"{r.lambda_stats['retries']} retries, {r.lambda_stats['errors']} errors")
    if quick:
        lines.append("smoke test (--quick): sizes too small for the target")
        return "\n".join(lines)
    for r in runs:
        verdict = "PASS" if r.ratio <= TARGET else "FAIL"
        target = " (the target is for 10,000 x 1 s at 1,000)" if r.scenario != "10k" else ""
        lines.append(f"{verdict}  {_label(r)}: makespan within {TARGET}x of ideal: "
                     f"{r.ratio:.2f}x{target}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", default="10k,100k",
                        help="comma-separated: 10k (10,000 x 1 s), 100k (100,000 x 0.1 s)")
    parser.add_argument("--latency", type=float, nargs=2, default=[0.030, 0.050],
                        metavar=("LOW", "HIGH"), help="invoke round trip, s (uniform)")
    parser.add_argument("--cold-start", type=float, nargs=2, default=[0.250, 0.350],
                        metavar=("LOW", "HIGH"), help="cold start, s (uniform)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1,000 x 0.2 s and 2,000 x 0.02 s at concurrency 100")
    parser.add_argument("--saturation", type=float, default=None, metavar="X",
                        help="lambda.worker-saturation: tasks the scheduler gives the gateway per "
                             "slot (default: dask-lambda's, 2.0; distributed's own is 1.1)")
    parser.add_argument("--no-tls", dest="tls", action="store_false",
                        help="plain HTTP to the simulated Lambda (default: HTTPS, as to AWS)")
    parser.add_argument("--floor", action="store_true",
                        help="the same maps on distributed alone: one worker whose executor "
                             "only waits as long as Lambda would (no dask-lambda in the path)")
    parser.add_argument("--profile", metavar="PATH",
                        help="write a cProfile of the event loop to PATH.<scenario>")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this file")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}: choose from {sorted(SCENARIOS)}, "
                     "e.g. --scenarios 10k,100k")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._child:
        figures = run_one(args._child, args)
        with open(args._out, "w") as f:
            json.dump(asdict(figures), f)
        return 0
    from _env import banner, environment

    env = environment()
    what = "floor: distributed alone, no dask-lambda" if args.floor else "simulated Lambda"
    print(banner(f"scale ({what})", env,
                 f"invoke latency {args.latency[0] * 1e3:g}-{args.latency[1] * 1e3:g} ms, cold "
                 f"start {args.cold_start[0] * 1e3:g}-{args.cold_start[1] * 1e3:g} ms, "
                 f"{'' if args.floor else ('HTTPS, ' if args.tls else 'HTTP, ')}worker-saturation "
                 f"{args.saturation if args.saturation is not None else 'default'}"), flush=True)
    runs = []
    for name in args.scenarios:
        print(f"running {name} (fresh process) ...", flush=True)
        runs.append(spawn(name, args))
        print(f"  makespan {runs[-1].makespan_s:.2f} s, CPU {runs[-1].cpu_s:.1f} s", flush=True)
    print()
    print(format_table(runs, args.quick))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "arguments": vars(args),
                       "runs": [dict(asdict(r), ratio=r.ratio, utilisation=r.utilisation)
                                for r in runs]}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
