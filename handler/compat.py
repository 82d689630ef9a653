"""Stand-ins for library code that assumes a Dask worker, inside a Lambda function.

Worker APIs of ``distributed`` (``get_client``, ``get_worker``, ``worker_client``,
``secede``, ``rejoin``) and its coordination primitives (``Lock``, ``Variable``, ``Queue``,
``Event``, ``Semaphore``, ``MultiLock``) need a worker or a scheduler that a Lambda
function cannot reach. `install` makes every spelling of them raise `NotAvailableInLambda`
with what to do instead: pickled references (``from distributed import get_client`` at
module level) through `STAND_INS`, and attribute uses and imports inside a task's body
(``distributed.get_client()``, ``from distributed import Lock``) by patching ``distributed``
when it is imported in this process, which runs tasks only.

joblib's dask backend wraps each batch of calls in ``joblib._dask.Batch``, whose
``__call__`` opens a nested ``parallel_config(backend="dask")``, which looks for a Dask
client; inside Lambda there is none. The stand-in runs the batch sequentially, which is
what a single Lambda invocation should do anyway (the parallelism is across invocations).
"""

from __future__ import annotations

import functools
import importlib.abc
import sys
from collections.abc import Callable
from typing import Any

from .errors import NotAvailableInLambda


@functools.cache
def joblib_batch() -> type:
    from joblib import parallel_config
    from joblib._dask import Batch

    class LambdaBatch(Batch):
        def __call__(self, tasks: Any = None) -> list:
            with parallel_config(backend="sequential"):
                return [func(*args, **kwargs) for func, args, kwargs in tasks]

    LambdaBatch.__module__ = Batch.__module__
    LambdaBatch.__qualname__ = Batch.__qualname__
    return LambdaBatch


def unavailable(name: str) -> Callable[..., Any]:
    """A stand-in for the worker API ``distributed.<name>``."""

    def stub(*args: Any, **kwargs: Any) -> Any:
        raise NotAvailableInLambda(
            f"distributed.{name}() is not available inside a dask-lambda task: the task runs "
            "in an AWS Lambda function, not on a Dask worker. Pass what the task needs as "
            "arguments instead (e.g. client.submit(func, data) rather than calling "
            f"{name}() inside func), and run nested work from the client."
        )

    stub.__name__ = stub.__qualname__ = name
    return stub


def unavailable_class(name: str) -> type:
    """A stand-in for the coordination primitive ``distributed.<name>``."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        raise NotAvailableInLambda(
            f"distributed.{name} is not available inside a dask-lambda task: it is kept by "
            "the Dask scheduler, which a Lambda function cannot reach. Coordinate from the "
            "client instead (e.g. gather partial results and combine them there), or use a "
            f"store both sides reach (an S3 object, a database) in place of the {name}.")

    return type(name, (), {"__init__": __init__, "__module__": "distributed"})


#: ``distributed``'s worker APIs and where each is defined or re-exported.
WORKER_APIS = ("get_worker", "get_client", "worker_client", "secede", "rejoin")
PRIMITIVES = ("Lock", "Variable", "Queue", "Event", "Semaphore", "MultiLock")
_HOMES = ("distributed", "distributed.worker", "distributed.client", "distributed.worker_client",
          "distributed.secede", "distributed.threadpoolexecutor", "distributed.lock",
          "distributed.variable", "distributed.queues", "distributed.event",
          "distributed.semaphore", "distributed.multi_lock")


@functools.cache
def _stand_in(name: str) -> Any:
    return unavailable(name) if name in WORKER_APIS else unavailable_class(name)


def find_class(module: str, name: str) -> Any:
    """The stand-in for global ``module.name`` in a pickle, or None (the real one)."""
    if module in _HOMES and (name in WORKER_APIS or name in PRIMITIVES):
        return _stand_in(name)
    stand_in = STAND_INS.get((module, name))
    return stand_in() if stand_in is not None else None


def _patch(module: Any) -> None:
    for name in (*WORKER_APIS, *PRIMITIVES):
        if hasattr(module, name):
            setattr(module, name, _stand_in(name))


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches each of ``distributed``'s homes of the worker APIs right after it is
    imported (whenever a task or a library imports it)."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _HOMES:
            return None
        spec = None
        for finder in sys.meta_path:  # the finder that would have found it
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        real_exec = loader.exec_module  # type: ignore[union-attr]

        def exec_module(module: Any) -> None:
            real_exec(module)
            _patch(module)

        loader.exec_module = exec_module  # type: ignore[method-assign,union-attr]
        return spec


def install() -> None:
    """Make every spelling of distributed's worker APIs raise `NotAvailableInLambda` in
    this process (call once, in an execution environment only)."""
    if any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        return
    for name in _HOMES:
        if name in sys.modules:
            _patch(sys.modules[name])
    sys.meta_path.insert(0, _PatchOnImport())


#: (module, name) of a pickled class -> a function returning its stand-in.
STAND_INS = {("joblib._dask", "Batch"): joblib_batch}
