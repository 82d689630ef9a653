"""S3 bucket URLs and names: ``"s3://bucket/prefix"`` split, the name checked against S3's
rules, and a valid name close to one that is not."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from .setting_kinds import Refused, wrong_kind

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# S3's naming rules beyond the characters
# (https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html).
_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def split_bucket(url: Any) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``"s3://bucket/prefix"`` or ``"bucket"``; `Refused` (with a
    valid name close to it) for anything else."""
    if not isinstance(url, str):
        raise wrong_kind(url, 'a bucket such as "s3://my-bucket/dask"')
    text = url.strip()
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme != "s3":
            raise Refused(f"{url!r} is not an S3 URL: use an s3:// URL or a bare bucket name",
                          "s3://my-bucket/dask")
    bucket, _, prefix = text.partition("/")
    prefix = prefix.strip("/")
    if not _valid_bucket(bucket):
        fixed = _bucket_like(bucket)
        where = f"s3://{fixed}/{prefix}" if prefix else f"s3://{fixed}"
        raise Refused(f"{bucket!r} is not a valid S3 bucket name (3-63 characters: lowercase "
                      "letters, digits, '-' and '.', starting and ending with a letter or "
                      "digit, not an IP address)", where, did_you_mean=True)
    return bucket, prefix


def _valid_bucket(name: str) -> bool:
    if not _BUCKET.match(name) or ".." in name or name.startswith(_BUCKET_PREFIXES):
        return False
    if name.endswith(_BUCKET_SUFFIXES):
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False


def _bucket_like(name: str) -> str:
    """A valid bucket name close to ``name`` (never ``name`` itself, which is not valid)."""
    fixed = re.sub(r"[^a-z0-9.-]+", "-", name.lower())
    fixed = re.sub(r"\.{2,}", ".", fixed)
    for start in _BUCKET_PREFIXES:
        fixed = fixed.removeprefix(start)
    for end in _BUCKET_SUFFIXES:
        fixed = fixed.removesuffix(end)
    fixed = fixed[:63].strip("-.")
    if 0 < len(fixed) < 3:
        fixed = f"{fixed}-bucket"
    if re.fullmatch(r"[0-9.]+", fixed):  # an IP address is not a bucket name
        fixed = "bucket-" + fixed.replace(".", "-")
    return fixed if _valid_bucket(fixed) else "my-bucket"
