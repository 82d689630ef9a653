"""The signing key shared by the client and the deployed function.

``deploy`` stores it in the function's environment (``DASK_LAMBDA_SIGNING_KEY``)
and in ``~/.config/dask-lambda/<function>.key`` (mode 0600), never in the bucket
or a log. The client reads it from ``lambda.aws.signing-key`` (e.g.
``DASK_LAMBDA__AWS__SIGNING_KEY``, read and checked by :mod:`dask_lambda.settings`) or
from that file (`load`).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ..errors import ConfigurationError
from . import names


def new_key() -> bytes:
    return secrets.token_bytes(32)


def save(function: str, key: bytes) -> Path:
    """Write ``key`` (hex) to the function's key file, readable by this user only."""
    path = names.key_file(function)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    os.chmod(path, 0o600)
    return path


def read_file(function: str) -> bytes | None:
    path = names.key_file(function)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:  # unreadable, a directory, a symlink loop...
        raise ConfigurationError(
            f"cannot read the signing key file {path} ({type(exc).__name__}: "
            f"{getattr(exc, 'strerror', None) or exc}): make it a readable file "
            f"(`chmod 600 {path}`), or run `dask-lambda deploy` again to write it, or set "
            "DASK_LAMBDA__AWS__SIGNING_KEY to the function's DASK_LAMBDA_SIGNING_KEY.") from None
    return _parse(text, str(path))


def load(function: str, deploy_command: str) -> bytes:
    """The key in ``function``'s key file (used when ``lambda.aws.signing-key`` is not set).

    Raises `ConfigurationError` naming ``deploy_command`` when there is none.
    """
    key = read_file(function)
    if key is None:
        raise ConfigurationError(
            f"no signing key for the Lambda function {function!r}: neither "
            f"{names.key_file(function)} nor the setting lambda.aws.signing-key exists. "
            f"Deploy the function from this machine (`{deploy_command}` writes the key file), "
            "or copy the key file from the machine that deployed it, or set "
            "DASK_LAMBDA__AWS__SIGNING_KEY to the function's DASK_LAMBDA_SIGNING_KEY.")
    return key


def _parse(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ConfigurationError(
            f"the signing key in {where} is not a hex string of at least 32 characters; "
            "run `dask-lambda deploy` again to write a new one.")
    return key
