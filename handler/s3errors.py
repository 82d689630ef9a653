"""What S3's error answers mean to dask-lambda, the same on both sides (standard library only).

The client's store (`dask_lambda.store`) and the handler's transfers
(`dask_lambda_handler.s3io`) map S3 error codes to errors through `s3_error_kind`,
and name the IAM resource to grant through `grant_scope`, so an object that is
missing or refused reads the same whichever side met it.
"""

from __future__ import annotations

from . import s3keys

#: The object does not exist (``FileNotFoundError`` on both sides).
MISSING = "missing"
#: AWS refused the action (`PermissionDeniedError` in the client, `S3PermissionError` in
#: the handler).
DENIED = "denied"

#: The bucket does not exist.
NO_BUCKET = "no-bucket"
#: A conditional write found the object there (``If-None-Match: *``): someone has it.
EXISTS = "exists"
#: A conditional write met another write of the same key in progress: S3's API reference
#: says to retry it.
CONFLICT = "conflict"

#: S3 error codes by kind. A bare status ("404", "403") is what botocore reports for an
#: answer without an XML body (a HEAD, or a proxy in the way); "NotFound" and "Forbidden"
#: are how some of its versions name those.
KINDS = {
    "NoSuchKey": MISSING,
    "NotFound": MISSING,
    "404": MISSING,
    "NoSuchBucket": NO_BUCKET,
    "AccessDenied": DENIED,
    "Forbidden": DENIED,
    "403": DENIED,
    "PreconditionFailed": EXISTS,
    "412": EXISTS,
    "ConditionalRequestConflict": CONFLICT,
    "409": CONFLICT,
}


def error_code(exc: BaseException) -> str:
    """The error code of a botocore ``ClientError`` (``""`` for any other exception)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", "") or "")


def s3_error_kind(code: str) -> str | None:
    """`MISSING`, `DENIED`, ... (`KINDS`), or ``None`` (not an error dask-lambda maps: raise
    it as it is)."""
    return KINDS.get(code)


def kind(exc: BaseException) -> str | None:
    """The kind (`KINDS`) of a botocore ``ClientError``; ``None`` for any other error."""
    return KINDS.get(error_code(exc))


def layout_prefixes(key: str) -> tuple[str, str]:
    """``(user prefix, layout prefix)`` of a key: ``("dask/", "dask/jobs/")`` for
    ``dask/jobs/<run>/<hh>/<task>.job``; a key outside the layout gets its folder for both.

    Examples
    --------
    >>> layout_prefixes("dask/jobs/0123/ab/t-a0.job")
    ('dask/', 'dask/jobs/')
    >>> layout_prefixes("runs/0123.json")
    ('', 'runs/')
    """
    parts = key.split("/")
    if len(parts) >= 2 and parts[-2] == s3keys.RUNS:  # a run's marker: P/runs/<run>.json
        user = "".join(p + "/" for p in parts[:-2])
        return user, f"{user}{s3keys.RUNS}/"
    for depth in range(len(parts) - 3, -1, -1):  # the last kind with a run and a name after it
        if parts[depth] in (s3keys.JOBS, s3keys.RESULTS):
            user = "".join(p + "/" for p in parts[:depth])
            return user, f"{user}{parts[depth]}/"
    folder = "".join(p + "/" for p in parts[:-1])
    return folder, folder


def grant_scope(bucket: str, key: str) -> tuple[str, str]:
    """IAM resources for an action refused on ``s3://bucket/key``: ``(narrow, wide)``.

    ``narrow`` is the layout prefix the key is under, ``wide`` the user's prefix that holds
    every prefix of the layout.

    Examples
    --------
    >>> grant_scope("b", "dask/jobs/0123/ab/t-a0.job")
    ('arn:aws:s3:::b/dask/jobs/*', 'arn:aws:s3:::b/dask/*')
    """
    user, layout = layout_prefixes(key)
    return f"arn:aws:s3:::{bucket}/{layout}*", f"arn:aws:s3:::{bucket}/{user}*"
