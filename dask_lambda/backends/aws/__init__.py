"""The aws backend: tasks run in a deployed AWS Lambda function.

:mod:`.backend`
    `AwsBackend`: its clients and checks at start, then one synchronous invoke per job.
:mod:`.clients`
    The Lambda control client, the invoke client (direct or aiobotocore), trigger mode's S3.
:mod:`.function`
    The checks of the deployed function: Active, its key, its versions, its trigger.
:mod:`.trigger`
    ``mode="trigger"``: jobs written to S3, whose notification invokes the function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import AwsBackend

__all__ = ["AwsBackend"]
_HOME = {"AwsBackend": "backend"}


def __getattr__(name: str) -> Any:
    """The backend"s class, imported on first use (as the other backends" packages do)."""
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
