"""AWS Lambda entry point: ``dask_lambda_handler.entry.handler``.

Deliberately tiny (as lithops' ``entry_point.py``): everything else is plain,
cloud-neutral Python in :mod:`dask_lambda_handler.runner`, which the local
backend's execution environments call through this same function.
"""

from __future__ import annotations

from typing import Any

from .runner import handle


def handler(event: dict, context: Any) -> dict:
    """Lambda handler: run one dask-lambda job, or answer a ping."""
    return handle(event, context)
