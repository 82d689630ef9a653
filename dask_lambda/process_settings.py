"""Process-wide settings a LambdaCluster needs while it is open, undone when the last cluster
that needs them closes (in whatever order clusters close):

* task-based shuffles and rechunks: P2P needs worker plugins that do not exist in Lambda;
* a calmer garbage collector (`gc_tuning`);
* the backend's S3 in the environment, so s3:// paths work in graphs built or read here
  (e.g. ``dd.read_parquet("s3://...")`` metadata). The newest open cluster's S3 wins;
  closing it brings back the one beneath (`EnvironmentLayers`).
"""

from __future__ import annotations

import contextlib
from typing import Any

from . import gc_tuning
from .while_open import EnvironmentLayers, WhileAnyOpen

#: P2P shuffle and rechunk need worker plugins that do not exist in Lambda.
TASK_BASED_METHODS = {"dataframe.shuffle.method": "tasks", "array.rechunk.method": "tasks"}


def _clear_fs_caches() -> None:
    """Forget cached s3fs filesystems (they keep the endpoint and credentials they were made
    with)."""
    import sys

    if "s3fs" in sys.modules:
        sys.modules["s3fs"].S3FileSystem.clear_instance_cache()


_ENVIRONMENT = EnvironmentLayers(on_change=_clear_fs_caches)


def _task_based_on() -> dict[str, Any]:
    import dask

    saved = {k: dask.config.get(k, None) for k in TASK_BASED_METHODS}
    dask.config.set(TASK_BASED_METHODS)
    return saved


def _task_based_off(saved: dict[str, Any]) -> None:
    import dask

    dask.config.set(saved)


TASK_BASED = WhileAnyOpen(_task_based_on, _task_based_off)


class WhileOpen:
    """One cluster's hold on the process-wide settings (each part taken once, released once)."""

    def __init__(self) -> None:
        self._env_layer: int | None = None
        self._stack: contextlib.ExitStack | None = None

    def set_environment(self, env: dict[str, str]) -> None:
        """Put the backend's S3 environment on top (no profile or session token beneath it)."""
        layer: dict[str, str | None] = {"AWS_PROFILE": None, "AWS_SESSION_TOKEN": None}
        layer.update(env)
        self._env_layer = _ENVIRONMENT.push(layer)

    def hold_settings(self) -> None:
        """Task-based shuffles and rechunks, and a calmer garbage collector."""
        if self._stack is None:
            stack = contextlib.ExitStack()
            stack.enter_context(TASK_BASED.held())
            stack.enter_context(gc_tuning.collect_less_often())
            self._stack = stack

    def release(self) -> None:
        """Undo what this cluster set (idempotent): its environment layer, then its settings."""
        if self._env_layer is not None:
            token, self._env_layer = self._env_layer, None
            _ENVIRONMENT.pop(token)
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()
