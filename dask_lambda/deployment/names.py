"""Names and limits shared by ``dask-lambda deploy`` and the aws backend.

Everything ``deploy`` creates is named here from (bucket, prefix, function), so
``status`` and ``destroy`` find exactly those resources again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from dask_lambda_handler import s3keys

from .. import limits

#: Function name used when none is given.
DEFAULT_FUNCTION = "dask-lambda"
#: The handler's entry point inside the deployment package.
HANDLER = "dask_lambda_handler.entry.handler"
#: Lambda's limits, as deploy checks them (owned by :mod:`dask_lambda.limits`).
UNZIPPED_LIMIT = limits.UNZIPPED_BYTES
MEMORY_RANGE = limits.MEMORY_MB
MAX_TIMEOUT = limits.MAX_TIMEOUT_S
#: Job objects written in S3-trigger mode end with this; the bucket notification filters on it,
#: so the job objects of mode="invoke" (plain ``.job``) never trigger the function.
TRIGGER_SUFFIX = s3keys.TRIGGER_SUFFIX
#: Tag put on everything deploy creates; destroy removes only what carries it.
TAG_KEY = "dask-lambda:deployed-by"
TAG_VALUE = "dask-lambda deploy"
#: Bucket tag saying deploy created the bucket (so destroy may delete it when empty).
CREATED_BUCKET_TAG = "dask-lambda:created-bucket"
#: Name of the role's inline policy.
POLICY_NAME = "dask-lambda-handler"
#: Days after which the bucket's lifecycle rule expires job, result and run-marker objects.
EXPIRE_DAYS = 3
#: Days CloudWatch keeps the function's logs.
LOG_RETENTION_DAYS = 14


def role_name(function: str) -> str:
    """The IAM role of ``function`` (64 characters at most)."""
    name = f"{function}-role"
    return name if len(name) <= 64 else f"{function[:47]}-{_digest(function)}-role"


def secret_name(function: str) -> str:
    """The Secrets Manager secret holding ``function``'s signing key."""
    return f"dask-lambda/{function}/signing-key"


def tagged(tags: dict | list | None) -> bool:
    """Whether ``tags`` (a dict, or AWS's list of ``{"Key", "Value"}``) carry deploy's tag."""
    if isinstance(tags, list):
        tags = {t.get("Key"): t.get("Value") for t in tags}
    return (tags or {}).get(TAG_KEY) == TAG_VALUE


def log_group(function: str) -> str:
    return f"/aws/lambda/{function}"


def _root(prefix: str, kind: str) -> str:
    return f"{prefix}/{kind}/" if prefix else f"{kind}/"


def jobs_prefix(prefix: str) -> str:
    return _root(prefix, "jobs")


def results_prefix(prefix: str) -> str:
    return _root(prefix, "results")


def runs_prefix(prefix: str) -> str:
    return _root(prefix, "runs")


def code_key(prefix: str, function: str) -> str:
    """Where deploy uploads the zip package (Lambda reads it from there; over 50 MB it must)."""
    return f"{_root(prefix, 'deploy')}{function}.zip"


def notification_id(function: str, prefix: str) -> str:
    return f"dask-lambda-{function}-{_digest(prefix)}"


def lifecycle_id(prefix: str, kind: str) -> str:
    return f"dask-lambda-{kind}-{_digest(prefix)}"


def permission_id(bucket: str, prefix: str) -> str:
    return f"dask-lambda-s3-{_digest(bucket + '/' + prefix)}"


def bucket_url(bucket: str, prefix: str) -> str:
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


def deploy_command(bucket: str, prefix: str, function: str, region: str | None = None,
                   *extra: str) -> str:
    """The ``dask-lambda deploy`` command for these names (shown in error messages)."""
    words = ["dask-lambda deploy", "--bucket", bucket_url(bucket, prefix)]
    if function != DEFAULT_FUNCTION:
        words += ["--function", function]
    if region:
        words += ["--region", region]
    return " ".join([*words, *extra])


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/dask-lambda`` (default ``~/.config/dask-lambda``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "dask-lambda"


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/dask-lambda`` (default ``~/.cache/dask-lambda``): built packages."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dask-lambda"


def key_file(function: str) -> Path:
    """The local copy of ``function``'s signing key (mode 0600)."""
    return config_dir() / f"{function}.key"


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]
