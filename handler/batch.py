"""Running a fused group of graph tasks (made by ``dask_lambda.batching``) in one invocation."""

from __future__ import annotations

from typing import Any


def run_batch(inner: dict, outkey: Any, inkeys: tuple, *dependencies: Any) -> Any:
    """Run the tasks of ``inner`` in dependency order, with ``dependencies`` as the values of
    ``inkeys``, and return the value of ``outkey``.

    The same as ``dask._task_spec.Task.fuse``'s runner; a function of its own so that the
    client can tell its batches from the tasks dask fuses itself.
    """
    from dask._task_spec import _execute_subgraph  # dask is imported only when a batch runs

    return _execute_subgraph(inner, outkey, inkeys, *dependencies)
