"""The gateway worker's metrics: the Lambda side on the dashboard's worker table."""

from __future__ import annotations

from .executor import LambdaExecutor


def gateway_metrics(executor: LambdaExecutor) -> dict:
    """Worker metrics that put the Lambda side on the dashboard's worker table."""
    stats = executor.stats
    backend = executor.backend
    return {
        "lambda_concurrency": lambda w: executor.dispatch.governor.concurrency,
        "lambda_in_flight": lambda w: executor.in_flight,
        "lambda_invocations": lambda w: backend.invocations,
        "lambda_cold_starts": lambda w: backend.cold_starts,
        "lambda_retries": lambda w: stats.retries,
        "lambda_throttled": lambda w: stats.throttled,
        "lambda_bytes_sent": lambda w: stats.bytes_sent,
        "lambda_bytes_received": lambda w: stats.bytes_received,
        "lambda_s3_bytes_kept": lambda w: stats.output_bytes_in_s3,
        "lambda_shared_bytes": lambda w: stats.shared_bytes,
        "lambda_shared_bytes_saved": lambda w: stats.shared_bytes_saved,
        "lambda_cost_usd": lambda w: executor.cost.dollars(),
    }
