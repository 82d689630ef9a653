"""The simulated backend: Lambda's timing and limits at scale, without running any task.

:mod:`.backend`
    `SimulatedBackend`: starts the simulated Lambda and invokes it as the aws backend invokes
    Lambda.
:mod:`.model`
    `LambdaModel` (how Lambda behaves), the counters, the server's configuration.
:mod:`.server`
    the simulated Lambda, a process serving the Invoke API
    (``python -m dask_lambda.backends.simulated.server``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import SimulatedBackend
    from .model import LambdaModel, SimulatedCounters, constant

__all__ = ["LambdaModel", "SimulatedBackend", "SimulatedCounters", "constant"]
_HOME = {"SimulatedBackend": "backend", "LambdaModel": "model", "SimulatedCounters": "model",
         "constant": "model"}


def __getattr__(name: str) -> Any:
    """The classes, imported on first use: the server process (``python -m`` of
    :mod:`.server`) imports only what it runs."""
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
