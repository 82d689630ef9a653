"""The local backend: the real handler in processes on this machine, with a private S3.

:mod:`.backend`
    `LocalBackend`: one runtime process per execution environment, Lambda's limits enforced.
:mod:`.runtime`
    the runtime process (Lambda's runtime loop), which imports the real handler.
:mod:`.files`
    the client's files a job may read, copied in as Lambda would need them shipped.
:mod:`.s3`
    `LocalS3`: the moto S3 server both local backends (local, simulated) share.
:mod:`.s3server`
    that server, a process of its own (``python -m dask_lambda.backends.local.s3server``).
:mod:`.faults`
    `FaultPlan`: deterministic fault injection for tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import LocalBackend
    from .faults import FaultPlan

__all__ = ["FaultPlan", "LocalBackend"]
_HOME = {"LocalBackend": "backend", "FaultPlan": "faults"}


def __getattr__(name: str) -> Any:
    """The classes, imported on first use: the runtime and S3 server processes (``python -m``
    of this package's modules) import only what they run."""
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
