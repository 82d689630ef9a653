"""What a local execution environment may open: its own files, not the client's.

A Lambda function sees its deployment package, the runtime and its own ``/tmp``; the files
beside the user's notebook are not there.  A local execution environment runs on the
user's machine, so without a check a task that reads ``/home/me/project/data/x.csv`` works
locally and fails in Lambda.  `install` adds an audit hook (PEP 578) to the environment's
interpreter that refuses, with `dask_lambda_handler.errors.ClientFileError` (a
`FileNotFoundError`, as Lambda would raise, whose message names the fix), Python-level
opens, listings and changes of paths under the client's working and home directories,
unless they are

* the environment's own directory (its working and temp directory),
* the Python installation (``sys.prefix`` and friends, a virtualenv inside the project),
  an entry of ``sys.path`` (site-packages, ``PYTHONPATH``, editable installs) or the
  directory of an imported package (its data files), or a module file being imported,
* inside a hidden directory (``~/.cache``, ``~/.config``, ``.venv``: tools' state, not data).

C libraries that open files themselves (pyarrow's local filesystem, HDF5) do not raise
audit events and are not checked; in Lambda they fail on the missing path, and the note
`dask_lambda_handler.client_paths.note_client_paths` adds names the fix.

Only the standard library and the handler are imported (the runtime stays light).
"""

from __future__ import annotations

import os
import site
import sys
from collections.abc import Iterable
from importlib.machinery import all_suffixes

from dask_lambda_handler.client_paths import CLIENT_DIRS_ENV, refusal, under

#: Audit events checked, and the positions of their path arguments.
_EVENTS = {"open": (0,), "os.listdir": (0,), "os.scandir": (0,), "os.mkdir": (0,),
           "os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "shutil.rmtree": (0,)}
_WRITES = {"os.mkdir", "os.remove", "os.rmdir", "os.rename", "shutil.rmtree"}
_MODULE_FILES = tuple(all_suffixes()) + (".pyc",)


def _norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _both(paths: Iterable[str]) -> set[str]:
    """Each path as given and with symbolic links resolved."""
    out = set()
    for p in paths:
        if p:
            out.update({_norm(p), os.path.realpath(p)})
    return out


class OpenPolicy:
    """Which paths an execution environment may not touch (see the module docstring).

    Parameters
    ----------
    client_dirs
        The client's working and home directories.
    own_dirs
        The environment's own directories (its working and temp directory).
    """

    def __init__(self, client_dirs: Iterable[str], own_dirs: Iterable[str]):
        own = _both(own_dirs)
        self.allowed = own | _both([sys.prefix, sys.exec_prefix, sys.base_prefix,
                                    sys.base_exec_prefix, *sys.path,
                                    *site.getsitepackages(), site.getusersitepackages()])
        # A client directory that holds the environment's own (a cwd of / or /tmp) or the
        # filesystem root says nothing about what is the client's: it is not checked.
        self.bases = tuple(sorted(
            d for d in _both(client_dirs)
            if d != os.sep and not any(under(o, d) for o in own)))

    def refuses(self, path: str) -> bool:
        """Whether ``path`` (any form) is the client's and none of the environment's."""
        path = _norm(path)
        base = next((b for b in self.bases if under(path, b)), None)
        if base is None:
            return False
        rest = os.path.relpath(path, base)
        if any(part.startswith(".") for part in rest.split(os.sep) if part != os.curdir):
            return False
        if any(under(path, a) for a in self.allowed):
            return False
        if path.endswith(_MODULE_FILES):  # an import (editable installs map files anywhere)
            return False
        return not self._imported(path)

    @staticmethod
    def _imported(path: str) -> bool:
        """Whether ``path`` is in ``sys.path`` now or in an imported package's directory."""
        for entry in list(sys.path):
            if entry and under(path, _norm(entry)):
                return True
        for module in list(sys.modules.values()):
            for directory in getattr(module, "__path__", None) or ():
                if isinstance(directory, str) and under(path, _norm(directory)):
                    return True
        return False

    def hook(self, event: str, args: tuple) -> None:
        """The audit hook: raise `ClientFileError` for a refused path."""
        positions = _EVENTS.get(event)
        if positions is None:
            return
        for i in positions:
            path = args[i] if i < len(args) else None
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            elif isinstance(path, os.PathLike):
                path = os.fspath(path)
            if not isinstance(path, str) or not path:
                continue  # a file descriptor, or the current directory
            if self.refuses(path):
                writing = event in _WRITES or (event == "open" and _writes(args))
                raise refusal(_norm(path), writing)


def _writes(args: tuple) -> bool:
    mode = args[1] if len(args) > 1 else None
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    flags = args[2] if len(args) > 2 else 0
    return bool(isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))


def install(own_dirs: Iterable[str]) -> OpenPolicy | None:
    """Refuse the client's paths in this interpreter, if the local backend named them."""
    client = [d for d in os.environ.get(CLIENT_DIRS_ENV, "").split(os.pathsep) if d]
    if not client:
        return None
    policy = OpenPolicy(client, own_dirs)
    sys.addaudithook(policy.hook)
    return policy
