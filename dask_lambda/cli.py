"""The ``dask-lambda`` command."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    import dask
    import dask.array as da

    from .client import LambdaClient

    t0 = time.perf_counter()
    print(f"Starting LambdaClient({args.bucket!r}, backend={args.backend!r}, "
          f"concurrency={args.concurrency}) ...", flush=True)
    with LambdaClient(args.bucket, backend=args.backend, concurrency=args.concurrency,
                      dashboard_address=None) as client:
        t1 = time.perf_counter()
        print(f"  ready in {t1 - t0:.1f} s", flush=True)

        df = dask.datasets.timeseries(start="2000-01-01", end="2000-01-31", freq="10s",
                                      partition_freq="2D", seed=42)

        def positive_x(part):
            return part[part.x > 0]

        print("\n1. DataFrame: timeseries -> map_partitions(filter) -> groupby('name').y.mean()",
              flush=True)
        means = df.map_partitions(positive_x).groupby("name").y.agg(["mean", "count"]).compute()
        means = means.sort_values("count", ascending=False)
        print(means.head(5).to_string())
        t2 = time.perf_counter()

        print("\n2. Array: std of a 4000 x 4000 random array in 16 chunks, and (x @ x.T).trace()",
              flush=True)
        from distributed import progress

        x = da.random.default_rng(0).standard_normal((4000, 4000), chunks=(1000, 1000))
        futures = client.compute([x.std(), (x @ x.T).trace()])
        progress(futures, notebook=False)
        print()
        std, trace = client.gather(futures)
        print(f"   std = {std:.6f}   trace(x @ x.T) = {trace:,.1f}")
        t3 = time.perf_counter()

        stats = client.lambda_stats()
        cost = client.cost_report()
    t4 = time.perf_counter()
    print("\nSummary")
    print(f"  tasks run in Lambda   {stats['tasks']}")
    print(f"  invocations           {stats['invocations']} ({stats['cold_starts']} cold starts, "
          f"{stats['retries']} retries)")
    print(f"  bytes sent / received {stats['bytes_sent'] / 1e6:.1f} MB / "
          f"{stats['bytes_received'] / 1e6:.1f} MB")
    print(f"  billed                {cost['gb_seconds']:.1f} GB-s, {cost['s3_puts']} S3 PUTs, "
          f"{cost['s3_gets']} S3 GETs: ${cost['dollars']:.6f} at us-east-1 prices")
    print(f"  wall time             {t4 - t0:.1f} s (start {t1 - t0:.1f} s, dataframe "
          f"{t2 - t1:.1f} s, array {t3 - t2:.1f} s, close {t4 - t3:.1f} s)")
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    import asyncio

    from dask_lambda_handler import s3keys

    from . import runs, settings
    from .store import S3Store

    bucket, prefix = settings.parse_bucket(args.bucket)
    older_than = settings.read("stale_after") if args.older_than is None else args.older_than
    heartbeat = settings.read("heartbeat")
    if not older_than >= runs.MIN_STALE_BEATS * heartbeat:
        print(f"dask-lambda cleanup: --older-than {older_than:g} would delete the objects of "
              f"clients that are still running (they rewrite their marker every {heartbeat:g} "
              f"s): use at least {runs.MIN_STALE_BEATS} heartbeats, e.g. "
              f"`dask-lambda cleanup --bucket {args.bucket} --older-than "
              f"{max(3600.0, runs.MIN_STALE_BEATS * heartbeat):g}`", file=sys.stderr)
        return 2

    async def go() -> dict[str, int]:
        store = S3Store(bucket, endpoint_url=args.endpoint_url, region=args.region)
        await store.start()
        try:
            await store.check_bucket()
            return await runs.cleanup_stale_runs(
                store, s3keys.Layout(bucket, prefix, "cleanup"), older_than, heartbeat)
        finally:
            await store.close()

    removed = asyncio.run(go())
    for run, count in sorted(removed.items()):
        print(f"run {run}: removed {count} objects")
    print(f"{len(removed)} stale runs removed from s3://{bucket}/{prefix} "
          f"(idle for {older_than:g} s or more)")
    return 0


def _config() -> int:
    import os

    import dask

    from . import config

    def walk(schema: dict, path: str) -> None:
        for name, spec in schema.get("properties", {}).items():
            key = f"{path}.{name}" if path else name
            if spec.get("type") == "object":
                walk(spec, key)
                continue
            env = "DASK_" + key.upper().replace(".", "__").replace("-", "_")
            value = dask.config.get(key, None)
            source = "environment" if env in os.environ else "dask config/default"
            print(f"{key} = {value!r}  [{source}; env {env}]")
            print(f"    {' '.join(spec.get('description', '').split())}")

    print("Effective dask-lambda settings (argument > dask.config/environment > default):")
    walk(config.schema(), "")
    return 0


def _seconds(text: str) -> float:
    """A duration argument: seconds or a string such as "2 hours", not negative."""
    from dask.utils import parse_timedelta

    try:
        seconds = float(parse_timedelta(text))
    except (ValueError, KeyError, TypeError):
        seconds = -1.0
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give seconds or e.g. '2 hours'")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dask-lambda`` console script."""
    parser = argparse.ArgumentParser(prog="dask-lambda",
                                     description="Run Dask on AWS Lambda.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a demo workload (local backend by default)")
    demo.add_argument("--bucket", default="s3://dask-lambda-demo/demo",
                      help="bucket or s3:// URL (default: %(default)s)")
    demo.add_argument("--backend", default="local", help="local or aws (default: %(default)s)")
    demo.add_argument("--concurrency", type=int, default=None,
                      help="tasks running at once (default: lambda.concurrency)")
    cleanup = sub.add_parser(
        "cleanup", help="remove the objects that dead clients left in a bucket")
    cleanup.add_argument("--bucket", required=True, help="bucket or s3://bucket/prefix")
    cleanup.add_argument("--older-than", default=None, type=_seconds,
                         help="how long a run must have been idle, seconds or e.g. '2 hours' "
                              "(default: lambda.stale-after)")
    cleanup.add_argument("--endpoint-url", default=None,
                         help="S3 endpoint (default: boto's, e.g. AWS_ENDPOINT_URL)")
    cleanup.add_argument("--region", default=None, help="AWS region (default: boto's)")
    sub.add_parser("config", help="print the effective settings and where each comes from")
    from .deploy import cli as deploy_cli

    deploy_cli.add_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "cleanup":
        return _cleanup(args)
    if args.command == "config":
        return _config()
    if args.command in deploy_cli.COMMANDS:
        return deploy_cli.run(args)
    return 2  # pragma: no cover (argparse rejects unknown commands)


if __name__ == "__main__":
    sys.exit(main())
