"""Client CPU per Lambda invoke: dask-lambda's own invoke client against aiobotocore's.

What it measures
----------------
The same synchronous invokes (``RequestResponse``, log tail, a typical job event of
about 1 KB with the job inline) sent to the simulated Lambda endpoint
(:mod:`dask_lambda.backends.simulated.server`, a process of its own, answering at once)
through :class:`dask_lambda.backends.invoke.FunctionInvoker`, the path both the aws and
the simulated backends take, with two clients:

``direct``
    :mod:`dask_lambda.backends.http.lambda_api`: SigV4 signed here, pooled HTTP/1.1
    connections (the aws backend's default);
``sdk``
    an aiobotocore Lambda client configured as the aws backend configures it
    (``lambda.aws.invoker: sdk``, or where a proxy applies).

Both run in this one process, alternating, ``--repeat`` times; each repetition sends
``--invokes`` invokes with ``--concurrency`` in flight after a warm-up. It prints the
medians of this process's CPU time per invoke (``time.process_time()``, all threads), of
the wall time and of the event loop thread's CPU (``time.thread_time()``: TLS handshakes run
in other threads), and the ratio of CPU, on warm connections; and the first burst of each
client, which opens its connections (``--concurrency`` of them). The endpoint is plain HTTP on
127.0.0.1, or HTTPS with ``--tls`` (a self-signed RSA-2048 certificate, as AWS's
endpoints use RSA-2048): then each new connection pays a TLS handshake, as against AWS.

How to run
----------
From the repository root::

    python benchmarks/invoke_cost.py                  # 5 x 5,000 invokes each (~1 minute)
    python benchmarks/invoke_cost.py --tls            # the same over HTTPS
    python benchmarks/invoke_cost.py --quick          # smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import time

import _env  # benchmarks/_env.py (scripts run from this folder)

from dask_lambda.backends.base import FunctionSettings
from dask_lambda.backends.invoke import FunctionInvoker
from dask_lambda.backends.simulated import LambdaModel, SimulatedBackend

EVENT = {"op": "run", "bucket": "bench", "job_key": "run/jobs/abc/0123456789abcdef-0-a0.job",
         "inline_max": 262144, "job": base64.b64encode(os.urandom(760)).decode(),
         "result_key": "run/results/abc/0123456789abcdef-0-a0.out"}


async def _sdk_invoker(backend: SimulatedBackend, concurrency: int, stack: object
                       ) -> FunctionInvoker:
    from aiobotocore.session import get_session

    from dask_lambda.backends.aws.clients import sdk_invoke_config

    verify = os.path.join(backend._directory, "cert.pem") if backend.tls else None
    direct = backend.invoker
    client = await stack.enter_async_context(get_session().create_client(  # type: ignore
        "lambda", region_name="us-east-1", endpoint_url=backend._url, verify=verify,
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=sdk_invoke_config(direct.read_timeout, concurrency)))
    return FunctionInvoker(backend.FUNCTION, "the simulated Lambda", sdk=client,
                           memory=direct.memory, timeout=direct.timeout,
                           read_timeout=direct.read_timeout, fix=direct.fix,
                           redeploy=direct.redeploy)


async def _burst(invoker: FunctionInvoker, n: int, concurrency: int
                 ) -> tuple[float, float, float]:
    """Send ``n`` invokes, ``concurrency`` at a time; (CPU s, wall s, event loop CPU s)."""
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            response = await invoker.invoke(EVENT)
            assert response["status"] == "ok", response

    cpu, wall, loop = time.process_time(), time.perf_counter(), time.thread_time()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.process_time() - cpu, time.perf_counter() - wall, time.thread_time() - loop


async def run(args: argparse.Namespace) -> dict[str, list[tuple[float, float, float]]]:
    import contextlib

    model = LambdaModel(invoke_latency=0.0, cold_start=0.0)
    backend = SimulatedBackend(model, s3_endpoint="http://unused", tls=args.tls)  # no S3 here
    backend.configure(FunctionSettings(concurrency=args.concurrency, memory=1024, timeout=300,
                                       signing_key=os.urandom(32)))
    await backend.start()
    samples: dict[str, list[tuple[float, float, float]]] = {"direct": [], "sdk": []}
    first: dict[str, tuple[float, float, float]] = {}
    try:
        async with contextlib.AsyncExitStack() as stack:
            invokers = {"direct": backend.invoker,
                        "sdk": await _sdk_invoker(backend, args.concurrency, stack)}
            for name, invoker in invokers.items():  # opens the connections
                first[name] = await _burst(invoker, args.concurrency, args.concurrency)
                await _burst(invoker, min(args.invokes, 500), args.concurrency)  # warm-up
            for _ in range(args.repeat):
                for name, invoker in invokers.items():
                    samples[name].append(await _burst(invoker, args.invokes, args.concurrency))
    finally:
        await backend.close()
    return {name: [first[name], *runs] for name, runs in samples.items()}


def format_table(samples: dict[str, list[tuple[float, float, float]]], n: int,
                 connections: int) -> str:
    """Medians of the warm repetitions, then each client's first burst (sample 0)."""
    first = {name: runs[0] for name, runs in samples.items()}
    warm = {name: runs[1:] for name, runs in samples.items()}
    medians = {name: [1000 * statistics.median(r[i] for r in runs) / n for i in range(3)]
               for name, runs in warm.items()}
    ref_cpu = medians["direct"][0]
    header = (f"{'invoker':<10} {'CPU ms/invoke':>14} {'wall ms/invoke':>15} "
              f"{'loop CPU ms':>12} {'CPU vs direct':>14}")
    lines = [header, "-" * len(header)]
    for name, (cpu, wall, loop) in medians.items():
        lines.append(f"{name:<10} {cpu:>14.3f} {wall:>15.3f} {loop:>12.3f} "
                     f"{cpu / ref_cpu:>13.1f}x")
    lines.append(f"(medians of {len(warm['direct'])} repetitions of {n} invokes on open "
                 "connections; CPU: this process, client only; loop CPU: its event loop's thread)")
    lines.append(f"first burst, {connections} invokes on {connections} new connections, ms per "
                 "invoke: " + ", ".join(f"{name} {1000 * cpu / connections:.3f} CPU, "
                                       f"{1000 * loop / connections:.3f} loop CPU"
                                       for name, (cpu, _, loop) in first.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--invokes", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tls", action="store_true", help="HTTPS, as against AWS")
    parser.add_argument("--quick", action="store_true", help="smoke test: 200 invokes, once")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.invokes, args.repeat, args.concurrency = 200, 1, 20
    env = _env.environment()
    print(_env.banner("invoke cost", env, f"{args.invokes} invokes, concurrency "
                      f"{args.concurrency}, {args.repeat} repetitions, "
                      f"{'HTTPS' if args.tls else 'HTTP'}"), flush=True)
    samples = asyncio.run(run(args))
    print(format_table(samples, args.invokes, args.concurrency))
    if args.json:
        _env.write_json(args.json, {"environment": env, "arguments": vars(args),
                                    "samples": samples})
    return 0


if __name__ == "__main__":
    sys.exit(main())
