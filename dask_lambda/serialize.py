"""Client-side pickling of jobs.

A Lambda function has only the packages deployed with it, so code from
modules that are not installed (the user's script, a helper module next to
it, a test file) is pickled *by value*; installed packages and the standard
library are pickled by reference, as usual.  The same rule holds on the local
backend, whose execution environments do not share the client's working
directory.
"""

from __future__ import annotations

import functools
import io
import itertools
import sys
import types
import weakref
from collections import ChainMap
from typing import Any

import cloudpickle
from dask_lambda_handler import protocol

from . import _compat
from .errors import TaskSerializationError


@functools.lru_cache(maxsize=1)
def _installed_top_levels() -> frozenset[str]:
    if sys.version_info >= (3, 11):
        from importlib.metadata import packages_distributions
    else:  # 3.10's reads only top_level.txt, which numpy 2's wheels lack; dask brings this one
        from importlib_metadata import packages_distributions

    return frozenset(packages_distributions()) | frozenset(sys.stdlib_module_names) | {
        "__main__", "builtins"}


_seen_modules: set[str] = set()
_modules_count = [0]


def _register_local_modules() -> None:
    """Mark every loaded module that is not installed to be pickled by value.

    Runs only when new modules were imported since the last call, so the per-task cost is
    one ``len(sys.modules)``; the pickling itself stays in cloudpickle's fast path.
    """
    if len(sys.modules) == _modules_count[0]:
        return
    _modules_count[0] = len(sys.modules)
    installed = _installed_top_levels()
    for name, module in list(sys.modules.items()):
        if name in _seen_modules:
            continue
        _seen_modules.add(name)
        if (name.partition(".")[0] not in installed and module is not None
                and getattr(module, "__file__", None) is not None):
            cloudpickle.register_pickle_by_value(module)


def _code_reduce(obj: types.CodeType) -> Any:
    # cloudpickle replaces the file name with "<dynamic-code>"; keep the real one so that a
    # remote traceback points at the user's file as well as the line.
    func, args = _compat.code_reduce(obj)
    return func, tuple(obj.co_filename if a == "<dynamic-code>" else a for a in args)


#: Functions pickled by value, by function object, as a finished pickle, so that a function
#: that 10,000 tasks use is pickled once, not 10,000 times. The gateway's tasks hold the
#: user's live functions, so `new_submission` empties it whenever the client submits a graph:
#: a task sees the function (and the globals it reads) as they were when its graph was
#: submitted or later, as with any cluster that ships the graph to other processes.
_by_value: weakref.WeakKeyDictionary[types.FunctionType, bytes] = weakref.WeakKeyDictionary()


_BY_REFERENCE = b""  # marks a function cloudpickle pickles by reference (module and name)
#: The local modules each function of `_by_value` imports in its body (see `_body_imports`).
_imports: weakref.WeakKeyDictionary[types.FunctionType, frozenset[str]] = (
    weakref.WeakKeyDictionary())
#: Local modules the functions pickled by the current `dumps` import (None: not collecting).
_collected: set[str] | None = None


_submissions = itertools.count(1)
#: Which submission the caches above belong to (see `submission`).
_submission = 0


def new_submission() -> None:
    """Forget the functions pickled so far (the client is submitting a graph)."""
    global _by_value, _imports, _submission
    _by_value = weakref.WeakKeyDictionary()
    _imports = weakref.WeakKeyDictionary()
    _submission = next(_submissions)


def submission() -> int:
    """A number that changes whenever the client submits a graph (what was read from local
    files before it may have changed since)."""
    return _submission


class _Pickler(cloudpickle.Pickler):
    dispatch_table = ChainMap({types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table)

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.FunctionType and obj is not self._whole:
            by_value = _by_value
            blob = by_value.get(obj)
            if blob is None:
                if _by_reference(obj):
                    by_value[obj] = _BY_REFERENCE
                    return super().reducer_override(obj)
                blob = by_value[obj] = _dump_function(obj)
            elif blob is _BY_REFERENCE:
                return super().reducer_override(obj)
            if _collected is not None:
                _collected.update(_imports.get(obj, ()))
            return protocol.load_nested, (blob,)
        return super().reducer_override(obj)

    _whole: Any = None


def _by_reference(func: types.FunctionType) -> bool:
    return _compat.pickled_by_reference(func)


def _dump_function(func: types.FunctionType) -> bytes:
    global _collected
    outer, _collected = _collected, set(_body_imports(func))
    try:
        buf = io.BytesIO()
        pickler = _Pickler(buf, protocol=5)
        pickler._whole = func  # this one by value, as cloudpickle does; functions it uses cached
        pickler.dump(func)
        _imports[func] = frozenset(_collected)  # its own imports and those of what it uses
    finally:
        _collected = outer
    return buf.getvalue()


def _body_imports(func: types.FunctionType) -> set[str]:
    """The local top-level modules (not installed, not the standard library) that ``func``'s
    code imports when it runs (``import helpers``, ``from . import x`` in a local package):
    a Lambda function has only what is deployed, so these travel with the jobs."""
    import dis
    import importlib.util

    found: set[str] = set()
    package = func.__globals__.get("__package__") or ""
    codes = [func.__code__]
    while codes:
        code = codes.pop()
        consts: list[Any] = []
        for instr in dis.get_instructions(code):
            if instr.opname in ("LOAD_CONST", "LOAD_SMALL_INT"):
                consts = (consts + [instr.argval])[-2:]
            elif instr.opname == "IMPORT_NAME":
                level = consts[0] if len(consts) == 2 and isinstance(consts[0], int) else 0
                name = instr.argval
                try:
                    full = importlib.util.resolve_name("." * level + name, package) \
                        if level else name
                except (ImportError, ValueError):
                    continue
                top = full.partition(".")[0]
                if top and top not in _installed_top_levels():
                    found.add(top)
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return found


def prepare() -> None:
    """Do `dumps`'s one-off work now (finding the installed distributions, ~0.3 s), so
    that the first task does not wait for it."""
    _register_local_modules()


def dumps(obj: Any) -> list:
    """Pickle ``obj`` as job frames, shipping non-installed modules by value."""
    return dumps_shipping(obj)[0]


def dumps_shipping(obj: Any) -> tuple[list, frozenset[str]]:
    """`dumps`, and the local top-level modules that its functions import in their bodies
    (to be shipped with the job, see `local_module_file`)."""
    global _collected
    _register_local_modules()
    outer, _collected = _collected, set()
    try:
        frames = protocol.dumps_object(obj, pickler=_Pickler)
        return frames, frozenset(_collected)
    finally:
        _collected = outer


def local_module_file(name: str) -> tuple[str, bytes] | None:
    """``(file name, bytes)`` that make the local top-level module ``name`` importable
    where it is put on ``sys.path``: its ``.py`` file, or its package as a ``.zip``; None
    where it has no source here (a built-in, a namespace, ``__main__``)."""
    import importlib.util
    import os
    import zipfile

    if name == "__main__":
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return None
    if spec.submodule_search_locations:  # a package: its Python files, zipped
        root = os.path.dirname(spec.origin)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for folder, dirs, files in sorted(os.walk(root)):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for file in sorted(files):
                    if file.endswith(".py"):
                        path = os.path.join(folder, file)
                        arc = os.path.join(name, os.path.relpath(path, root))
                        zf.writestr(zipfile.ZipInfo(arc, (1980, 1, 1, 0, 0, 0)),
                                    open(path, "rb").read())
        return f"{name}.zip", buf.getvalue()
    if spec.origin.endswith(".py"):
        with open(spec.origin, "rb") as f:
            return f"{name}.py", f.read()
    return None


def unpicklable(key: Any, exc: BaseException) -> TaskSerializationError:
    """The error for a task that cannot be pickled, naming the task and the fix."""
    return TaskSerializationError(
        f"task {key!r} cannot be sent to Lambda because it cannot be pickled "
        f"({type(exc).__name__}: {exc}). Nothing was uploaded or run. Everything a task uses "
        "is pickled with cloudpickle: create locks, open files, sockets and clients inside "
        "the function instead of capturing them, e.g. `def read(path): with open(path) as f: "
        "return f.read()` rather than `lambda: fh.read()` over an open `fh`.")


def find_unpicklable(graph: Any) -> TaskSerializationError | None:
    """The error for the first task of ``graph`` (a Dask expression) that cannot be pickled."""
    try:
        tasks = dict(graph.__dask_graph__())
    except Exception:
        return None
    for key, task in tasks.items():
        try:
            cloudpickle.dumps(task)
        except Exception as exc:
            return unpicklable(key, exc)
    return None
