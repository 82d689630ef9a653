"""AWS Lambda entry point: ``dask_lambda_handler.entry.handler``.

Deliberately tiny (as lithops' ``entry_point.py``): it routes the event, and everything else
is plain, cloud-neutral Python in :mod:`.runner` (a job) and :mod:`.trigger` (S3-trigger
mode's notifications), which the local backend's execution environments call through this
same function.
"""

from __future__ import annotations

from typing import Any

from . import compat, env, runner, trigger


def handler(event: dict, context: Any) -> dict:
    """Lambda handler: run one dask-lambda job, run the jobs S3 notified, or answer a ping."""
    compat.install()  # this process runs tasks: distributed's worker APIs explain themselves
    if "Records" in event:  # S3-trigger mode: an ObjectCreated notification
        return trigger.handle_records(event, context)
    op = event.get("op")
    if op == "ping":
        answer: dict = {"status": "ok", "versions": env.versions()}
        if event.get("key"):  # and whether this environment can read its signing key
            answer["key"] = env.key_check()
        return answer
    if op == "run":
        return runner.run(event, context)
    raise ValueError(f"unknown dask-lambda event op {op!r}; expected 'run' or 'ping'")


#: The same, by its older name (``runner.handle``).
handle = handler
