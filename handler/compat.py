"""Stand-ins for library classes that assume a Dask worker, used when a job is unpickled.

joblib's dask backend wraps each batch of calls in ``joblib._dask.Batch``, whose
``__call__`` opens a nested ``parallel_config(backend="dask")``, which looks for a Dask
client; inside Lambda there is none. The stand-in runs the batch sequentially, which is
what a single Lambda invocation should do anyway (the parallelism is across invocations).
"""

from __future__ import annotations

import functools
from typing import Any


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


#: (module, name) of a pickled class -> a function returning its stand-in.
STAND_INS = {("joblib._dask", "Batch"): joblib_batch}
