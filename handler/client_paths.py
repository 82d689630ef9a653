"""Paths on the client's disk, which a Lambda function cannot see.

A notebook that reads ``data/*.csv`` or an image beside it hands its tasks absolute
paths on the user's machine (fsspec and most readers make relative paths absolute on the
client).  In Lambda those paths do not exist, and the error a task gets is whatever the
library makes of that ("No such file", or an image reader's "all handlers returned
exceptions"), naming neither the cause nor the fix.  `note_client_paths` adds a note that
names both to a task's error that mentions such a path, on every backend.

The local backend tells its execution environments which directories are the client's
(`CLIENT_DIRS_ENV`); there a path under them is known to be the client's, elsewhere a path
that does not exist in the function is only probably the client's, and the note says so.
"""

from __future__ import annotations

import os
import re
import tempfile

from .errors import ClientFileError

#: Set by the local backend: the client's working and home directories (os.pathsep-separated).
CLIENT_DIRS_ENV = "DASK_LAMBDA_LOCAL_CLIENT_DIRS"

_FIX = ("Put the file in S3 and read it from there (e.g. pd.read_csv(\"s3://my-bucket/data/"
        "x.csv\")), or pass its contents to the task as an argument (client.submit(func, "
        "data)); write outputs to S3 (e.g. df.to_parquet(\"s3://my-bucket/out/\")) or return "
        "them.")
#: Absolute paths in an error message: quoted (may hold spaces), or bare with >= 2 parts.
_PATHS = re.compile(r"""['"]((?:/|[A-Za-z]:[\\/])[^'"\n]+)['"]"""
                    r"""|(?<![\w/.:~-])(/[\w.~+@%-]+(?:/[\w.~+@%-]+)+/?)""")
_CHAIN_LIMIT = 16


def client_dirs() -> tuple[str, ...]:
    """The client's directories, where the local backend said what they are."""
    return tuple(d for d in os.environ.get(CLIENT_DIRS_ENV, "").split(os.pathsep) if d)


def under(path: str, directory: str) -> bool:
    """Whether ``path`` is ``directory`` or inside it (both absolute, normalized)."""
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def refusal(path: str, writing: bool = False) -> ClientFileError:
    """The error the local backend raises for an open of ``path`` on the client's disk."""
    what = "written" if writing else "opened"
    return ClientFileError(
        2, f"{path} is on the client's disk, which a Lambda function cannot see, so it "
        f"cannot be {what} here (the local backend refuses it as Lambda would). " + _FIX, path)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < _CHAIN_LIMIT:
        e = todo.pop(0)
        if any(e is s for s in seen):
            continue
        seen.append(e)
        todo.extend(c for c in (e.__cause__, e.__context__) if c is not None)
    return seen


def _mentioned(exc: BaseException) -> list[str]:
    paths = [p for p in (getattr(exc, "filename", None), getattr(exc, "filename2", None))
             if isinstance(p, str)]
    for quoted, bare in _PATHS.findall(str(exc)):
        paths.append(quoted or bare)
    return paths


def _client_path(path: str, known: tuple[str, ...]) -> tuple[str, bool] | None:
    """(path, certainly the client's) for a path the function cannot have, else None."""
    path = path.rstrip(".,;")
    if any(under(os.path.abspath(path), d) for d in known):
        return path, True
    if not (path.startswith("/") or re.match(r"[A-Za-z]:[\\/]", path)):
        return None
    if os.path.exists(path) or under(path, tempfile.gettempdir()) or under(path, os.getcwd()):
        return None
    return path, False


def note_client_paths(exc: BaseException) -> BaseException:
    """Add a note naming the cause and the fix to an error caused by a client path.

    Returns ``exc``.  A `ClientFileError` raised by the task itself already says both; one
    that a library caught and replaced by its own error gets the note, as does any error
    that mentions an absolute path the function does not have.
    """
    if isinstance(exc, ClientFileError) or not hasattr(exc, "add_note"):  # add_note: 3.11+
        return exc
    known = client_dirs()
    for e in _chain(exc):
        if isinstance(e, ClientFileError) and isinstance(e.filename, str):
            found: tuple[str, bool] | None = (e.filename, True)
        else:
            found = next((f for f in (_client_path(p, known) for p in _mentioned(e)) if f),
                         None)
        if found is not None:
            path, certain = found
            exc.add_note(
                f"{path} is on the client's disk, which a Lambda function cannot see. " + _FIX
                if certain else
                f"If {path} is a file on your machine: a Lambda function cannot see the "
                "client's disk. " + _FIX)
            return exc
    return exc
