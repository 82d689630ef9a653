"""AWS Lambda entry point: ``dask_lambda_handler.entry.handler``.

Deliberately tiny (as lithops' ``entry_point.py``): it routes the event, and everything else
is plain, cloud-neutral Python in :mod:`.runner` (a job) and :mod:`.trigger` (S3-trigger
mode's notifications), which the local backend's execution environments call through this
same function.
"""

from __future__ import annotations

from typing import Any

from . import compat, env, records, runner, trigger


def handler(event: dict, context: Any) -> dict:
    """Lambda handler: run one dask-lambda job, run the jobs S3 notified, or answer a ping."""
    compat.install()  # this process runs tasks: distributed's worker APIs explain themselves
    if "Records" in event:  # S3-trigger mode: an ObjectCreated notification
        return trigger.handle_records(event, context)
    op = records.op(event)
    if op == records.PING:  # and, if asked, whether this environment can read its key
        ping = records.PingEvent.from_wire(event)
        return records.PingAnswer(env.versions(),
                                  env.key_check() if ping.key else None).to_wire()
    if op == records.RUN:
        return runner.run(records.InvokeEvent.from_wire(event), context).to_wire()
    raise ValueError(f"unknown dask-lambda event op {op!r}; expected {records.RUN!r} or "
                     f"{records.PING!r}")


#: The same, by its older name (``runner.handle``).
handle = handler
