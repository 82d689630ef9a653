"""The ping event: the deployed handler answers its versions and its signing key's
fingerprint, so a client or deploy can tell whether it matches this machine (the records
are `dask_lambda_handler.records`' `PingEvent` and `PingAnswer`)."""

from __future__ import annotations

import json

from dask_lambda_handler import records

#: The ping event (``key``: also say whether the function can read its signing key).
PING = json.dumps(records.PingEvent(key=True).to_wire()).encode()


def answer(body: bytes | None, function_error: str | None = None) -> dict | None:
    """The handler's ping answer (``versions``, ``key``) from an invoke's response ``body``, or
    None if it does not answer like a dask-lambda handler."""
    parsed = records.PingAnswer.parse(body, function_error)
    return None if parsed is None else parsed.to_wire()


def key_problem(answer: dict | None, key_id: str | None) -> str | None:
    """Why the function cannot use its signing key (from its ping ``answer``), or None.

    ``key_id``: the fingerprint the function's configuration names.
    """
    parsed = records.PingAnswer.from_wire(answer)
    return None if parsed is None else parsed.key_problem(key_id)
