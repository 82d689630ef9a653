"""The client's temporary directories: made with their owner's name on them, so that what a
client killed outright (SIGKILL, a machine out of memory) left in the temporary directory is
removed by the next client on this machine, as its run's S3 objects are (`dask_lambda.runs`).

A directory is its owner's while the owning process runs: the owner file names its pid and
start time (a pid alone may be reused). Directories of other users, and those without an owner
file, are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile

logger = logging.getLogger("dask_lambda")

#: The prefix of every directory made here.
PREFIX = "dask-lambda-"
OWNER_FILE = ".owner"


def _machine() -> str:
    """This machine and process namespace: a directory another machine or container made in a
    shared temporary directory is not judged by this one's processes."""
    import socket

    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux
        namespace = "-"
    return f"{socket.gethostname()}|{namespace}"


def _identity(pid: int) -> str | None:
    """``pid`` and its start time (a pid reused by another process differs), or None when no
    such process runs."""
    import psutil

    try:
        return f"{pid} {psutil.Process(pid).create_time():.3f}"
    except psutil.Error:
        return None


def make(kind: str) -> str:
    """A new private directory (mode 0700) for ``kind`` (``"gateway"``, ``"local"``...), with this
    process named as its owner."""
    directory = tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-")
    with open(os.path.join(directory, OWNER_FILE), "w") as f:
        f.write(f"{_machine()} {_identity(os.getpid())}")
    return directory


def sweep(parent: str | None = None) -> list[str]:
    """Remove the directories below ``parent`` (default: the temporary directory) that a
    client which no longer runs made; the paths removed."""
    parent = parent or tempfile.gettempdir()
    here = _machine()
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(PREFIX):
            continue
        path = os.path.join(parent, name)
        try:
            if os.lstat(path).st_uid != os.getuid():
                continue
            with open(os.path.join(path, OWNER_FILE)) as f:
                owner = f.read().strip()
        except (OSError, UnicodeDecodeError):
            continue  # another user's, not a directory, or made without an owner file
        machine, _, process = owner.partition(" ")
        if machine != here:
            continue
        with contextlib.suppress(ValueError):
            if _identity(int(process.partition(" ")[0])) != process:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    if removed:
        logger.info("dask-lambda removed %d temporary directories that ended clients left: %s",
                    len(removed), ", ".join(removed))
    return removed
