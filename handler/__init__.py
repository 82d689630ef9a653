"""Lambda-side code of dask-lambda, importable as ``dask_lambda_handler``.

Thin and cloud-neutral: it needs only the standard library at import time.
``botocore`` is imported on the first job, and ``dask`` (or anything else a task
needs) only when a job is unpickled.  The AWS entry point is
``dask_lambda_handler.entry.handler``.
"""

__all__ = ["PROTOCOL_VERSION"]

from .protocol import PROTOCOL_VERSION
