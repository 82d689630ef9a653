"""Files that travel with the jobs: the local modules a task imports in its body, and what
``client.upload_file`` sends.

A Lambda function has only what was deployed with it. A module beside the user's script
that a task imports when it runs (``import helpers``, ``from . import x`` in a local
package), found by `dask_lambda.serialize` as it pickles the job, and every uploaded file
go to S3 once per run (signed, content-addressed under the run's jobs prefix); each job
lists them, and the handler puts them on ``sys.path`` before it unpickles the task.
"""

from __future__ import annotations

import hashlib

from dask_lambda_handler import protocol, s3keys

from . import serialize
from .counters import ExecutorStats
from .store import S3Store


class Shipping:
    """The files of one run that travel with its jobs.

    Parameters
    ----------
    store, layout, signing_key
        S3 access, the run's key layout and its HMAC key.
    stats
        The counters to add to (bytes sent).
    """

    def __init__(self, store: S3Store, layout: s3keys.Layout, *, signing_key: bytes,
                 stats: ExecutorStats):
        self.store = store
        self.layout = layout
        self.signing_key = signing_key
        self.stats = stats
        #: Files shipped with every job (``client.upload_file``), by name.
        self._uploaded: dict[str, bytes] = {}
        #: Local modules' files, by module: (the submission they were read in, file or None).
        self._module_files: dict[str, tuple[int, tuple[str, bytes] | None]] = {}
        #: Files already in S3 for this run, by content hash.
        self._shipped: dict[str, str] = {}

    def upload_file(self, filename: str, data: bytes) -> None:
        """Ship ``filename`` (a ``.py``, ``.zip`` or ``.egg``, from ``client.upload_file``)
        with every later job: the handler puts it on ``sys.path`` before it runs the task."""
        self._uploaded[filename] = bytes(data)

    def needed(self, modules: frozenset[str]) -> bool:
        """Whether a job importing ``modules`` carries files."""
        return bool(modules or self._uploaded)

    async def files(self, modules: frozenset[str]) -> list:
        """``[[name, sha256, key], ...]``: the uploaded files and the local modules a job
        imports, each uploaded to S3 once per run."""
        submission = serialize.submission()
        wanted: dict[str, bytes] = dict(self._uploaded)
        for module in sorted(modules):
            cached = self._module_files.get(module)
            if cached is None or cached[0] != submission:
                cached = self._module_files[module] = (
                    submission, serialize.local_module_file(module))
            if cached[1] is not None:
                wanted.setdefault(*cached[1])
        entries = []
        for name, data in wanted.items():
            sha = hashlib.sha256(data).hexdigest()
            key = self._shipped.get(sha)
            if key is None:
                key = self.layout.file_key(sha, name)
                parts = protocol.encode_parts({"kind": "file", "name": name, "sha": sha},
                                              [data], self.signing_key,
                                              s3keys.identity(self.layout.bucket, key))
                await self.store.put(key, parts)
                self.stats.bytes_sent += protocol.parts_size(parts)
                self._shipped[sha] = key
            entries.append([name, sha, key])
        return entries
