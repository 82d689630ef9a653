"""The signing key shared by the client and the deployed function.

``deploy`` keeps it in two places, never in the bucket, a log or the function's
configuration:

* a Secrets Manager secret ``dask-lambda/<function>/signing-key`` that the function's
  role reads (:mod:`dask_lambda_handler.env`); the function's configuration names the
  secret's version and carries the key's fingerprint, which the client checks;
* ``~/.config/dask-lambda/<function>.key`` (mode 0600), which the client reads (or the
  setting ``lambda.aws.signing-key``, e.g. ``DASK_LAMBDA__AWS__SIGNING_KEY``).

``deploy --rotate-key`` writes a new key to both.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from dask_lambda_handler import env, s3errors

from ..deployment import names
from ..errors import ConfigurationError, DeployError

_code = s3errors.error_code


def new_key() -> bytes:
    return secrets.token_bytes(32)


def save(function: str, key: bytes) -> Path:
    """Write ``key`` (hex) to the function's key file, readable by this user only."""
    path = names.key_file(function)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.hex() + "\n")
        os.chmod(path, 0o600)
    except OSError as exc:
        raise DeployError(
            f"cannot write the signing key file {path} ({exc.strerror or exc}): make "
            f"{path.parent} a directory you may write, or remove what is in the way "
            f"(`rm -rf {path}` if it is a directory or a broken link), then run deploy "
            "again") from None
    return path


def read_file(function: str) -> bytes | None:
    """The key in the function's key file, or None if there is no file."""
    path = names.key_file(function)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:  # unreadable, a directory, a symbolic-link loop, ...
        raise ConfigurationError(
            f"cannot read the signing key file {path} ({exc.strerror or exc}): it must be a "
            f"file you may read (`ls -l {path}`; `chmod 600 {path}` if it is yours). If it "
            f"is broken, remove it (`rm -rf {path}`) and copy the file again from the "
            "machine that deployed the function, or run `dask-lambda deploy` here, or set "
            "DASK_LAMBDA__AWS__SIGNING_KEY to the key") from None
    return _parse(text, str(path))


def load(function: str, deploy_command: str) -> bytes:
    """The key in ``function``'s key file (used when ``lambda.aws.signing-key`` is not set:
    :mod:`dask_lambda.settings` reads and checks that setting).

    Raises `ConfigurationError` naming ``deploy_command`` when there is none.
    """
    key = read_file(function)
    if key is None:
        raise ConfigurationError(
            f"no signing key for the Lambda function {function!r}: neither "
            f"{names.key_file(function)} nor the setting lambda.aws.signing-key exists. "
            f"Deploy the function from this machine (`{deploy_command}` writes the key file), "
            "or copy the key file from the machine that deployed it, or set "
            "DASK_LAMBDA__AWS__SIGNING_KEY to the key in that file.")
    return key


def _parse(text: str, where: str) -> bytes:
    try:
        return env.parse_key(text, where)
    except env.SigningKeyError as exc:
        raise ConfigurationError(str(exc)) from None


# -- the secret the function reads ------------------------------------------------------------


def find_secret(sm: Any, function: str) -> dict | None:
    """The function's secret (``ARN``, ``Tags``, ``VersionIdsToStages``...), or None."""
    try:
        found = sm.describe_secret(SecretId=names.secret_name(function))
    except Exception as exc:
        if _code(exc) == "ResourceNotFoundException":
            return None
        raise
    if found.get("DeletedDate"):  # scheduled for deletion (not by destroy, which forces it)
        raise DeployError(
            f"the secret {names.secret_name(function)} that holds the function's signing key "
            "is scheduled for deletion: restore it (`aws secretsmanager restore-secret "
            f"--secret-id {names.secret_name(function)}`) or delete it for good (`aws "
            f"secretsmanager delete-secret --secret-id {names.secret_name(function)} "
            "--force-delete-without-recovery`), then run deploy again")
    if not names.tagged(found.get("Tags")):
        raise DeployError(
            f"a secret {names.secret_name(function)} exists that dask-lambda deploy did not "
            "make; deploy under another name: dask-lambda deploy ... --function "
            f"{function}-dask")
    return found


def current_version(secret: dict) -> str | None:
    for version, stages in (secret.get("VersionIdsToStages") or {}).items():
        if "AWSCURRENT" in stages:
            return version
    return None


def read_secret(sm: Any, secret: dict) -> bytes:
    """The key the secret holds now (AWSCURRENT)."""
    value = sm.get_secret_value(SecretId=secret["ARN"])["SecretString"]
    return _parse(value, f"the secret {secret['ARN']}")


def store(sm: Any, function: str, key: bytes, secret: dict | None) -> tuple[str, str]:
    """Put ``key`` in the function's secret (made if missing); returns (ARN, VersionId).

    An unchanged key keeps its version: Secrets Manager advises against writing a secret
    more than once every 10 minutes (Secrets Manager quotas).
    """
    if secret is None:
        made = sm.create_secret(
            Name=names.secret_name(function), SecretString=key.hex(),
            Description=f"signing key of the dask-lambda function {function}",
            Tags=[{"Key": names.TAG_KEY, "Value": names.TAG_VALUE}])
        return made["ARN"], made["VersionId"]
    version = current_version(secret)
    if version is not None and read_secret(sm, secret) == key:
        return secret["ARN"], version
    return secret["ARN"], sm.put_secret_value(SecretId=secret["ARN"],
                                              SecretString=key.hex())["VersionId"]


def delete_secret(sm: Any, function: str) -> bool:
    """Delete the function's secret if deploy made it; returns whether it did."""
    try:
        found = sm.describe_secret(SecretId=names.secret_name(function))
    except Exception as exc:
        if _code(exc) == "ResourceNotFoundException":
            return False
        raise
    if not names.tagged(found.get("Tags")):
        return False
    # At once: the local key file goes too, and a later deploy makes a new key under the
    # same name (a secret waiting out its recovery window would block it).
    sm.delete_secret(SecretId=found["ARN"], ForceDeleteWithoutRecovery=True)
    return True
