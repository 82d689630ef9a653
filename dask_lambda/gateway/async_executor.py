"""The worker's executor hook: each task a coroutine on the worker's event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from typing import Any

from .._compat import run_task_simple
from ..errors import DaskLambdaError


class AsyncExecutor(concurrent.futures.Executor):
    """An Executor whose work is a coroutine on the worker's event loop (no thread per task).

    The worker calls ``submit(_run_task_simple, task_spec, data, delay)`` from its event
    loop; subclasses implement ``_run_task(task_spec, data, delay)`` returning the message
    ``_run_task_simple`` would have returned.
    """

    def __init__(self) -> None:
        self._running: dict[asyncio.Task, asyncio.AbstractEventLoop] = {}
        #: The running task of each key (a key runs once at a time on the worker).
        self._by_key: dict[Any, asyncio.Task] = {}

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> asyncio.Future:  # type: ignore[override]
        """Start ``fn(*args)`` on the running (worker's) loop; returns its asyncio task.

        The worker awaits what this returns through ``loop.run_in_executor``, which hands
        an asyncio future through as it is (`asyncio.wrap_future`): no concurrent future,
        no thread hand-off and no wake-up of the loop through its self-pipe per task.
        """
        loop = asyncio.get_running_loop()  # the worker's event loop
        if fn is not run_task_simple or kwargs:
            refused = loop.create_future()
            refused.set_exception(DaskLambdaError(
                f"dask-lambda can only run Dask tasks, not {fn!r}: actors and custom "
                "worker executors are not supported in Lambda"))
            return refused
        key = args[0].key
        task = loop.create_task(self._run_task(*args))
        self._running[task] = loop
        self._by_key[key] = task
        task.add_done_callback(functools.partial(self._forget, key))
        self._started(loop)
        return task

    def _forget(self, key: Any, task: asyncio.Task) -> None:
        self._running.pop(task, None)
        if self._by_key.get(key) is task:
            del self._by_key[key]

    def _started(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hook: called on each submit, on the worker's loop."""

    async def _run_task(self, task: Any, data: dict, delay: float) -> dict:
        raise NotImplementedError

    @property
    def in_flight(self) -> int:
        """Tasks running now."""
        return len(self._running)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        # Called from a thread by Worker.close: cancel in-flight tasks on their loop.
        for task, loop in list(self._running.items()):
            loop.call_soon_threadsafe(task.cancel)
