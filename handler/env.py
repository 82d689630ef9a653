"""The function's environment: what a deployment gives each execution environment.

The signing key is read here, once per execution environment (a Lambda sandbox, or
one of the local backend's interpreters), and `signing_key` is the only way the
handler gets it:

* The local backend passes the key itself, hex, in ``$DASK_LAMBDA_SIGNING_KEY``
  (`protocol.SIGNING_KEY_ENV`) to the interpreters it starts.
* ``dask-lambda deploy`` keeps it in a Secrets Manager secret that the function's role
  may read and a user of the function may not. The function's configuration names the
  secret and the version it uses (``$DASK_LAMBDA_KEY_SECRET``,
  ``$DASK_LAMBDA_KEY_VERSION``) and carries a fingerprint of the key
  (``$DASK_LAMBDA_KEY_ID``, see `key_id`), never the key: every user of the function
  may read its configuration (``lambda:GetFunctionConfiguration``), and the key plus
  write access to ``jobs/`` is code execution as the function's role.

Secrets Manager answers ``GetSecretValue`` at up to 10,000 requests per second per
account and region (Secrets Manager quotas), so a burst of cold starts is not throttled
(Parameter Store's default is 40 per second, shared with every other parameter read).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from typing import Any

from . import protocol, s3keys, transfer
from .errors import SigningKeyError

#: The Secrets Manager secret (ARN) holding the key, hex.
KEY_SECRET_ENV = "DASK_LAMBDA_KEY_SECRET"
#: The secret's version (``VersionId``) this configuration of the function uses.
KEY_VERSION_ENV = "DASK_LAMBDA_KEY_VERSION"
#: `key_id` of the key: lets the client check its key file without reading the key.
KEY_ID_ENV = "DASK_LAMBDA_KEY_ID"
#: Shortest key accepted (bytes).
MIN_KEY_BYTES = 16

_lock = threading.Lock()
_cached: dict[tuple[str, str], bytes] = {}


def key_id(key: bytes) -> str:
    """A fingerprint of ``key`` that reveals nothing usable about it (SHA-256, prefixed)."""
    return hashlib.sha256(b"dask-lambda key id\0" + key).hexdigest()[:16]


def parse_key(text: str, where: str) -> bytes:
    """The key in ``text`` (hex); raises `SigningKeyError` naming ``where`` if it is not one."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) < MIN_KEY_BYTES:
        raise SigningKeyError(
            f"the signing key in {where} is not a hex string of at least "
            f"{2 * MIN_KEY_BYTES} characters: run `dask-lambda deploy` again")
    return key


def signing_key() -> bytes:
    """The deployment's signing key (read once per execution environment).

    Raises
    ------
    SigningKeyError
        The environment names no key, or the function's role may not read it.
    """
    value = os.environ.get(protocol.SIGNING_KEY_ENV)
    if value:
        return parse_key(value, f"${protocol.SIGNING_KEY_ENV}")
    secret, version = os.environ.get(KEY_SECRET_ENV), os.environ.get(KEY_VERSION_ENV)
    if not secret or not version:
        raise SigningKeyError(
            f"the function has no signing key: its configuration names no secret "
            f"(${KEY_SECRET_ENV}, ${KEY_VERSION_ENV}); `dask-lambda deploy` sets them")
    with _lock:  # threads of one environment share one read
        key = _cached.get((secret, version))
        if key is None:
            key = _cached[(secret, version)] = _read_secret(secret, version)
    return key


def _read_secret(secret: str, version: str) -> bytes:
    try:
        answer = _secrets_client().get_secret_value(SecretId=secret, VersionId=version)
    except Exception as exc:
        from .s3errors import error_code

        code = error_code(exc)
        if not code:
            raise
        fix = ("allow secretsmanager:GetSecretValue on it in the role's policy, or run "
               "`dask-lambda deploy` again, which grants it" if "AccessDenied" in code else
               "run `dask-lambda deploy` again, which writes it")
        raise SigningKeyError(
            f"the function could not read its signing key from the secret {secret} "
            f"(version {version}): {code}: {fix}") from None
    key = parse_key(answer.get("SecretString") or "", f"the secret {secret}")
    wanted = os.environ.get(KEY_ID_ENV)
    if wanted and key_id(key) != wanted:
        raise SigningKeyError(
            f"the secret {secret} (version {version}) holds another key than the one the "
            "function's configuration names: run `dask-lambda deploy` again")
    return key


def _secrets_client() -> Any:
    import botocore.session
    from botocore.config import Config

    # Short timeouts and a few attempts: the first job of an environment waits for this.
    return botocore.session.get_session().create_client("secretsmanager", config=Config(
        connect_timeout=5, read_timeout=10, retries={"mode": "standard", "max_attempts": 5}))


# -- the S3 client and transfers ----------------------------------------------------------

#: Inputs of a task read at once; each reads a large object in `transfer_concurrency`
#: parallel ranges, so the S3 client's pool holds both: a request beyond the pool would
#: open (and throw away) a connection of its own.
LOADERS = 16
_S3: Any = None


def s3() -> Any:
    """The environment's S3 client (made once: botocore's ``standard`` retries)."""
    global _S3
    if _S3 is None:
        import botocore.session
        from botocore.config import Config

        _S3 = botocore.session.get_session().create_client(
            "s3",
            config=Config(retries={"mode": "standard", "max_attempts": 5},
                          max_pool_connections=LOADERS * max(1, transfer_concurrency())),
        )
    return _S3


def transfer_concurrency() -> int:
    """Parts or ranges of one large object moved at once."""
    return int(os.environ.get(transfer.TRANSFER_CONCURRENCY_ENV, transfer.TRANSFER_CONCURRENCY))


# -- the run's keys and what this environment runs --------------------------------------------

_RUN_KEYS: dict[str, bytes] = {}


def run_key(key: str) -> bytes:
    """The signing key of the run that job or result ``key`` belongs to (cached: a warm
    environment serves many tasks of few runs)."""
    run = s3keys.run_of(key)
    found = _RUN_KEYS.get(run)
    if found is None:
        if len(_RUN_KEYS) > 64:
            _RUN_KEYS.clear()
        found = _RUN_KEYS[run] = protocol.run_key(signing_key(), run)
    return found


def key_check() -> dict:
    """``{"id": key_id}`` of the signing key this environment reads, or ``{"error": why}``."""
    try:
        return {"id": key_id(signing_key())}
    except SigningKeyError as exc:
        return {"error": str(exc)}


def versions() -> dict:
    """What this execution environment runs, for the client's version check."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": "{}.{}".format(*sys.version_info[:2]), "protocol": protocol.PROTOCOL_VERSION}
    for dist in protocol.VERSIONED:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out
