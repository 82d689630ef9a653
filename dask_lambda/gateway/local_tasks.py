"""Tasks annotated ``executor="local"`` run in the client process, beside the gateway."""

from __future__ import annotations

import asyncio
from typing import Any

from dask_lambda_handler import protocol

from .._compat import run_task_simple
from .async_executor import AsyncExecutor
from .executor import LambdaExecutor


class LocalTaskExecutor(AsyncExecutor):
    """Runs tasks annotated ``dask.annotate(executor="local")`` here, in threads.

    For tiny tasks, or tasks that need this machine; their inputs that are kept in S3 are
    downloaded first, and their outputs stay in this process.

    Parameters
    ----------
    lambda_executor
        The gateway's Lambda executor (for downloading inputs kept in S3).
    threads
        Threads for local tasks.
    """

    def __init__(self, lambda_executor: LambdaExecutor, threads: int):
        super().__init__()
        from concurrent.futures import ThreadPoolExecutor

        self._lambda = lambda_executor
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dask-lambda-local")
        self.tasks = 0

    async def _run_task(self, task: Any, data: dict, delay: float) -> dict:
        refs = [v for v in data.values() if isinstance(v, protocol.ObjectRef)]
        if refs:
            values = await self._lambda.outputs.load(refs)
            data = {k: values[v] if isinstance(v, protocol.ObjectRef) else v
                    for k, v in data.items()}
        self.tasks += 1
        loop = asyncio.get_running_loop()
        run: Any = run_task_simple  # returns the worker's message (a TypedDict)
        return await loop.run_in_executor(self._pool, run, task, data, delay)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait, cancel_futures=cancel_futures)
        self._pool.shutdown(wait=False, cancel_futures=True)
