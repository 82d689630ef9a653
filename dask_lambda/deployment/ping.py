"""The ping event: the deployed handler answers its versions and its signing key's
fingerprint, so a client or deploy can tell whether it matches this machine."""

from __future__ import annotations

import json

#: The ping event (``key``: also say whether the function can read its signing key).
PING = b'{"op": "ping", "key": true}'


def answer(body: bytes | None, function_error: str | None = None) -> dict | None:
    """The handler's ping answer from an invoke's response ``body``, or None if it does not
    answer like a dask-lambda handler (a function error, or not a JSON object)."""
    try:
        said = json.loads(body or b"null")
    except ValueError:
        return None
    if function_error or not isinstance(said, dict):
        return None
    return said


def key_problem(answer: dict | None, key_id: str | None) -> str | None:
    """Why the function cannot use its signing key (from its ping ``answer``), or None.

    ``key_id``: the fingerprint the function's configuration names. A handler too old to
    say is not judged here (its versions differ).
    """
    said = (answer or {}).get("key")
    if not isinstance(said, dict):
        return None
    if said.get("error"):
        return str(said["error"])
    if key_id and said.get("id") != key_id:
        return ("the function read another signing key than its configuration names: run "
                "`dask-lambda deploy` again")
    return None
