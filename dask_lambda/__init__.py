"""dask-lambda: run Dask graphs on AWS Lambda, with the scheduler on your machine.

>>> from dask_lambda import LambdaClient
>>> client = LambdaClient("s3://my-bucket/dask", backend="local")  # doctest: +SKIP

Importing this package is cheap and has no side effects: the client and
cluster (and ``distributed``) load on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["LambdaClient", "LambdaCluster", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "LambdaClient":
        from .client import LambdaClient

        return LambdaClient
    if name == "LambdaCluster":
        from .cluster import LambdaCluster

        return LambdaCluster
    raise AttributeError(f"module 'dask_lambda' has no attribute {name!r}")
