"""Task batching: run a chain or a small subtree of a graph in one Lambda invocation.

Every invocation costs the same whatever the task does: an invoke round trip, the
S3 round trips of its inputs and output, and the client's dispatch work. For
fine-grained graphs (a loop of small steps, a tree reduction of cheap partial
sums) that overhead is most of the time. This module rewrites a graph before the
scheduler sees it: a group of tasks whose intermediate outputs are needed by
nobody else becomes one task (`dask._task_spec.Task.fuse`), which one invocation
runs from start to end, keeping the intermediate values in that function's memory.

What is fused
-------------
A group is an *in-tree*: a root task plus dependencies, each of which has exactly
one dependent, inside the group. So a group has one output, the root's key, and
the scheduler, futures and progress bars see the root's key as before; the
absorbed keys disappear from the graph. A dependency is absorbed only if

* it is not requested by the computation, has the same annotations as its
  dependent and no ``executor`` annotation, and is not marked ``block_fusion``
  (aliases and literals are absorbed too: the literal then travels inside the job,
  as it would as the dependent's input);
* the group stays within ``lambda.batching.max-tasks`` tasks and, by the estimate
  below, ``lambda.batching.max-duration`` seconds of work (a share of the function
  timeout, so that a group cannot run into it when the estimates hold);
* it is **faster**: a linear chain always is (its steps run one after the other
  anyway). Siblings running in one invocation run one after the other instead
  of in parallel, so a set ``S`` of a task's dependencies is absorbed only if
  ``sum(work(S)) <= max(work(dependencies)) + overhead``: serial work costs no more
  than the slowest sibling plus the invocation overhead the merge saves. If the
  task also waits for dependencies that are not absorbed (shared ones, or siblings
  left out by the limits), the group can only start after those, so then
  ``sum(work(S)) <= overhead``.

Task durations come from what this client measured in Lambda for the task's prefix
(``executor.durations``), else distributed's ``scheduler.default-task-durations``,
else ``lambda.batching.unknown-duration`` (default: distributed's
``scheduler.unknown-task-duration``, 0.5 s). So a first computation of unknown
functions fuses chains only; a later one, with measured durations, also fuses
subtrees of short tasks.

Keys the scheduler still holds
------------------------------
A task the scheduler still has (the same collection computed again before its last
run was forgotten, or data persisted from it) keeps the definition the scheduler has,
fused or not, and is neither absorbed nor given more tasks; what that definition had
absorbed is culled. distributed keeps a known key's first definition anyway, and warns
("Detected different `run_spec`") when a new graph defines it otherwise.

What it costs
-------------
The fused keys are not computed separately: `LambdaClient.get_task_logs` finds
their output under the group's root key, a retry repeats the whole group, and the
dashboard shows one task per group. ``LambdaClient(..., batching=False)`` (or
``lambda.batching.enabled: false``) turns batching off.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import dask
from dask.utils import key_split, parse_timedelta
from dask_lambda_handler.batch import run_batch

from ._compat import GraphNode, Task, TaskRef, convert_legacy_graph, cull

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["BatchSettings", "BatchedExpr", "fuse_graph", "group_prefixes"]


@dataclasses.dataclass(frozen=True)
class BatchSettings:
    """Limits of one batched invocation.

    Attributes
    ----------
    max_tasks
        Most tasks in one invocation.
    max_duration
        Most estimated seconds of work in one invocation.
    overhead
        Seconds one invocation costs beyond its work (invoke round trip, S3 round
        trips of its input and output, dispatch): what running two sibling tasks in
        one invocation saves.
    unknown_duration
        Seconds assumed for a task whose duration is not known.
    durations
        Known durations in seconds by task prefix (``dask.utils.key_split(key)``).
    """

    max_tasks: int = 64
    max_duration: float = 30.0
    overhead: float = 0.1
    unknown_duration: float = 0.5
    durations: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, measured: Mapping[str, float]) -> BatchSettings:
        """The client's checked ``lambda.batching.*`` settings, with the durations known:
        ``measured`` (this client's, by prefix) over distributed's
        ``scheduler.default-task-durations``."""
        max_tasks, max_duration = settings.batching_max_tasks, settings.batching_max_duration
        overhead, unknown = settings.batching_overhead, settings.batching_unknown_duration
        if (not settings.batching or max_tasks is None or max_duration is None
                or overhead is None or unknown is None):
            raise ValueError("batching is off in these settings: there is nothing to fuse")
        durations = {k: parse_timedelta(v) for k, v in
                     (dask.config.get("distributed.scheduler.default-task-durations", None)
                      or {}).items()}
        durations.update(measured)
        return cls(max_tasks=max_tasks, max_duration=max_duration, overhead=overhead,
                   unknown_duration=unknown, durations=durations)

    def duration(self, key: Any) -> float:
        return self.durations.get(key_split(key), self.unknown_duration)


def group_prefixes(task: Any) -> tuple[str, ...] | None:
    """Key prefixes of the tasks a fused group runs (not its aliases and literals); None if
    ``task`` is not a group made here."""
    if type(task) is not Task or task.func is not run_batch:
        return None
    return tuple(key_split(key) for key, inner in task.args[0].items() if type(inner) is Task)


def _fuse(tasks: list[GraphNode], key: Any) -> Task:
    """``Task.fuse`` (tasks in dependency order, the last one is ``key``), run by `run_batch`."""
    inside = {t.key for t in tasks}
    external = tuple(sorted({d for t in tasks for d in t.dependencies} - inside, key=hash))
    return Task(key, run_batch, {t.key: t for t in tasks}, key, external,
                *(TaskRef(k) for k in external),
                _data_producer=any(t.data_producer for t in tasks))


def _signature(key: Any, annotations: Mapping[str, Mapping[Any, Any]]) -> tuple | None:
    """The annotations of a key in comparable form; None if the key must not be fused."""
    found = []
    for kind, by_key in annotations.items():
        if key in by_key:
            if kind == "executor":
                return None
            found.append((kind, repr(by_key[key])))
    return tuple(sorted(found))


def fuse_graph(dsk: Mapping[Any, GraphNode], keys: Iterable[Any],
               annotations: Mapping[str, Mapping[Any, Any]],
               settings: BatchSettings,
               known: Callable[[Any], bool] = lambda key: False) -> tuple[dict, dict[str, dict]]:
    """Fuse chains and subtrees of ``dsk`` into single tasks (see the module doc).

    ``known(key)``: the scheduler still has this task; it is left as it is.
    Returns the new graph, whose keys are those of ``dsk`` less the absorbed ones,
    and ``annotations`` without the absorbed keys.
    """
    keys = set(keys)
    deps = {k: [d for d in node.dependencies if d in dsk] for k, node in dsk.items()}
    n_dependents: dict[Any, int] = defaultdict(int)
    for ds in deps.values():
        for d in ds:
            n_dependents[d] += 1
    fusable: dict[Any, tuple | None] = {}
    for k, node in dsk.items():
        fusable[k] = None if node.block_fusion or known(k) else _signature(k, annotations)

    size = {k: 1 for k in dsk}
    # Aliases (a key naming another) and literals cost nothing to run.
    work = {k: settings.duration(k) if type(node) is Task else 0.0 for k, node in dsk.items()}
    absorbed_by: dict[Any, Any] = {}
    order = _topological(dsk, deps)
    for r in order:
        sig = fusable[r]
        if sig is None or not deps[r]:
            continue
        candidates = [c for c in deps[r] if fusable[c] == sig and n_dependents[c] == 1
                      and c not in keys]
        if not candidates:
            continue
        for c in _absorbed(r, candidates, len(deps[r]), size, work, settings):
            size[r] += size[c]
            work[r] += work[c]
            absorbed_by[c] = r
    if not absorbed_by:
        return dict(dsk), {kind: dict(v) for kind, v in annotations.items()}

    members: dict[Any, list] = defaultdict(list)
    for k in order:
        root = k
        while root in absorbed_by:
            root = absorbed_by[root]
        members[root].append(dsk[k])
    out = {root: (tasks[0] if len(tasks) == 1 else _fuse(tasks, root))
           for root, tasks in members.items()}
    kept = {kind: {k: v for k, v in by_key.items() if k not in absorbed_by}
            for kind, by_key in annotations.items()}
    return out, kept


def _absorbed(root: Any, candidates: list, n_deps: int, size: Mapping[Any, int],
              work: Mapping[Any, float], settings: BatchSettings) -> list:
    """Which of ``candidates`` (fusable dependencies of ``root``, which has ``n_deps``) the
    task ``root`` absorbs, given each task's ``size`` (tasks in it) and ``work`` (seconds).

    The absorbed run one after the other. Absorbing all of root's dependencies pays if their
    serial work takes no longer than the slowest of them plus the invocation overhead saved
    (a chain always pays). Absorbing only some, the group starts after the others are done,
    so those absorbed may only take as long as the overhead.
    """
    candidates = sorted(candidates, key=work.__getitem__)
    group_size = size[root] + sum(size[c] for c in candidates)
    serial = sum(work[c] for c in candidates)
    if (len(candidates) == n_deps and group_size <= settings.max_tasks
            and work[root] + serial <= settings.max_duration
            and (len(candidates) == 1
                 or serial <= work[candidates[-1]] + settings.overhead + 1e-12)):
        return candidates
    chosen: list = []
    serial, group_size = 0.0, size[root]
    for c in candidates:
        if (group_size + size[c] > settings.max_tasks
                or work[root] + serial + work[c] > settings.max_duration
                or serial + work[c] > settings.overhead + 1e-12):
            break
        serial += work[c]
        group_size += size[c]
        chosen.append(c)
    return chosen


def _topological(dsk: Mapping[Any, Any], deps: Mapping[Any, list]) -> list:
    """Keys of ``dsk``, each after its dependencies."""
    order: list = []
    state: dict[Any, int] = {}
    for start in dsk:
        if start in state:
            continue
        stack = [(start, iter(deps[start]))]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            for d in it:
                if d not in state:
                    state[d] = 1
                    stack.append((d, iter(deps[d])))
                    break
            else:
                stack.pop()
                state[node] = 2
                order.append(node)
    return order


class BatchedExpr:
    """Wraps the expression a client submits: its graph, with chains and subtrees fused.

    The gateway's scheduler (`dask_lambda.gateway.GatewayScheduler`) wraps each graph it
    receives in one of these; it materializes graphs in a thread of its own, so the fusing
    happens there, off the client's thread and the event loop. Only the two methods the
    scheduler calls are provided: ``__dask_graph__`` and ``__dask_annotations__``.
    """

    def __init__(self, expr: Any, keys: Iterable[Any], settings: BatchSettings,
                 cull_graph: bool, scheduler: Any = None) -> None:
        self.expr = expr
        self.keys = list(keys)
        self.settings = settings
        self.cull_graph = cull_graph
        self.scheduler = scheduler  # the keys it still has keep their plan
        self._annotations: dict | None = None

    def __dask_graph__(self) -> dict:
        dsk = convert_legacy_graph(self.expr.__dask_graph__())
        if self.cull_graph:
            dsk = cull(dsk, self.keys)
        annotations = dict(self.expr.__dask_annotations__())
        kept = _scheduler_definitions(self.scheduler, dsk)
        if kept:  # known tasks as the scheduler has them; what they absorbed goes
            dsk = cull({**dsk, **kept}, self.keys)
        dsk, self._annotations = fuse_graph(dsk, self.keys, annotations, self.settings,
                                            known=kept.__contains__)
        return dsk

    def __dask_annotations__(self) -> dict:
        if self._annotations is None:
            self.__dask_graph__()
        assert self._annotations is not None
        return self._annotations



def _scheduler_definitions(scheduler: Any, dsk: Mapping[Any, Any]) -> dict:
    """The definitions ``scheduler`` still has for keys of ``dsk`` (read in its offload
    thread, as it materializes the graph: its task table is only read here)."""
    if scheduler is None:
        return {}
    tasks = scheduler.tasks
    return {k: ts.run_spec for k in dsk
            if (ts := tasks.get(k)) is not None and ts.run_spec is not None}
