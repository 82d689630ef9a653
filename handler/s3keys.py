"""The one place that builds and reads the S3 keys of a run (standard library only).

Key layout, under the user's prefix ``P`` (may be empty)::

    P/jobs/<run>/<hh>/<task>-a<attempt>.job       job objects (the S3-trigger filter is P/jobs/)
    P/results/<run>/<hh>/<task>-a<attempt>.out    outputs and errors
    P/results/<run>/_claims/<hh>/<task>-a<n>.out  S3-trigger mode: a job's claim
    P/results/<run>/_done/<hh>/<task>-a<n>.out.json   S3-trigger mode: its completion record
    P/jobs/<run>/_files/<hh>/<sha>-<name>         modules and files that travel with the jobs
    P/runs/<run>.json                             a live client's marker, rewritten as heartbeat

A *run* is one client's lifetime; everything it wrote lives below its run id,
so clean-up is "delete two prefixes".  Keys include the attempt number, so a
retried or duplicated attempt can never overwrite another attempt's output.
``<hh>`` is two hex digits of the task key's hash: S3 sustains about 3,500 writes a
second per partitioned prefix and answers 503 SlowDown beyond it
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/optimizing-performance.html),
so a burst of short tasks spreads its writes over 256 prefixes that S3 can split.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from .protocol import PayloadError

#: The layout's folders below the user's prefix.
JOBS = "jobs"
RESULTS = "results"
RUNS = "runs"


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def task_token(key: Any) -> str:
    """A short, S3-safe, unique token for a Dask task key: ``<hh>/<readable>-<hash>``.

    The readable part helps a person browsing the bucket; the hash makes it unique, and
    its first two hex digits lead as a folder of their own, which spreads a run's keys over
    256 prefixes (see the module docstring).
    """
    text = str(key)
    head = _UNSAFE.sub("_", text)[:48].strip("_") or "task"
    digest = hashlib.sha1(text.encode()).hexdigest()
    return f"{digest[:2]}/{head}-{digest[2:16]}"


def identity(bucket: str, key: str) -> str:
    """What a signed payload is bound to: the S3 object it is written to, or stands for.

    >>> identity("b", "dask/results/0123/ab/x-a0.out")
    's3://b/dask/results/0123/ab/x-a0.out'
    """
    return f"s3://{bucket}/{key}"


_RUN_OF = re.compile(rf"(?:^|/)(?:{JOBS}|{RESULTS})/([0-9a-f]+)/[^/]")


def run_of(key: str) -> str:
    """The run id of a job or result key (the last ``jobs/<run>/`` or ``results/<run>/``).

    >>> run_of("dask/jobs/0123abcd/ab/x-a0.job")
    '0123abcd'
    """
    found = _RUN_OF.findall(key)
    if not found:
        raise PayloadError(f"not a dask-lambda job or result key: {key!r}")
    return str(found[-1])


@dataclass(frozen=True)
class Layout:
    """S3 key layout of one run.

    Attributes
    ----------
    bucket
        Bucket name.
    prefix
        The user's prefix inside the bucket, without leading or trailing ``/``.
    run
        The run id (one per client).
    """

    bucket: str
    prefix: str
    run: str

    def _root(self, kind: str) -> str:
        return f"{self.prefix}/{kind}" if self.prefix else kind

    @property
    def jobs_root(self) -> str:
        """Prefix of every job object of every run (the S3-trigger filter)."""
        return self._root(JOBS) + "/"

    @property
    def results_root(self) -> str:
        """Prefix of every result object of every run."""
        return self._root(RESULTS) + "/"

    @property
    def runs_root(self) -> str:
        """Prefix of the run markers (one small object per live client, its heartbeat)."""
        return self._root(RUNS) + "/"

    @property
    def run_marker(self) -> str:
        return f"{self.runs_root}{self.run}.json"

    @property
    def run_prefixes(self) -> tuple[str, str]:
        """The two prefixes holding everything this run wrote."""
        return (f"{self.jobs_root}{self.run}/", f"{self.results_root}{self.run}/")

    def job_key(self, token: str, attempt: int) -> str:
        """Key of a job object (``token`` from `task_token`, plus any suffix)."""
        return f"{self.jobs_root}{self.run}/{token}-a{attempt}.job"

    def result_key(self, token: str, attempt: int) -> str:
        """Key of an attempt's output object."""
        return f"{self.results_root}{self.run}/{token}-a{attempt}.out"

    def file_key(self, sha: str, name: str) -> str:
        """Key of a file that travels with the run's jobs (a module, ``upload_file``)."""
        return f"{self.jobs_root}{self.run}/{FILES}/{sha[:2]}/{sha[2:18]}-{name}"

    @property
    def done_prefix(self) -> str:
        """Prefix of the run's S3-trigger completion records (what the client lists)."""
        return f"{self.results_root}{self.run}/{DONE}/"


#: S3-trigger mode: job objects whose name ends so start the function (the notification's
#: suffix filter); each attempt writes its own.
TRIGGER_SUFFIX = ".trigger.job"
_TRIGGER_ATTEMPT = re.compile(r"-a\d+" + re.escape(TRIGGER_SUFFIX) + "$")


def job_identity(job_key: str) -> str:
    """The key a job payload is signed for, given the key it is read from.

    A job is signed once, for its plain key (``...-a0.job``); in S3-trigger mode each
    attempt's copy (``...-a<n>.trigger.job``) carries that same payload.

    >>> job_identity("p/jobs/0123/ab/x-1-a2.trigger.job")
    'p/jobs/0123/ab/x-1-a0.job'
    """
    return _TRIGGER_ATTEMPT.sub("-a0.job", job_key)


#: Folder of the files that travel with a run's jobs (modules, ``client.upload_file``).
FILES = "_files"

#: Folders beside a run's outputs (S3-trigger mode): a job's claim, its completion record.
CLAIMS = "_claims"
DONE = "_done"


def state_keys(result_key: str) -> tuple[str, str]:
    """The claim and completion-record keys of an S3-trigger attempt's result key.

    Both go below the run, under ``_claims/`` and ``_done/``, keeping the rest of the key,
    so the client finds every record of its run with one listing of `Layout.done_prefix`.

    >>> state_keys("p/results/0123/ab/x-a0.trigger.out")
    ('p/results/0123/_claims/ab/x-a0.trigger.out', 'p/results/0123/_done/ab/x-a0.trigger.out.json')
    """
    run = run_of(result_key)
    head, sep, rest = result_key.rpartition(f"{RESULTS}/{run}/")
    if not sep:
        raise PayloadError(f"not a dask-lambda result key: {result_key!r}")
    base = f"{head}{sep}"
    return f"{base}{CLAIMS}/{rest}", f"{base}{DONE}/{rest}.json"


def refuse_jobs_prefix(key: str, job_key: str | None) -> None:
    """Raise unless ``key`` is outside the jobs prefix of ``job_key`` (and outside ``jobs/``).

    A write under the jobs prefix would be a new job object: in S3-trigger mode it
    would invoke the function again, a loop.
    """
    roots = [f"{JOBS}/"]
    if job_key:
        head, sep, _ = job_key.rpartition(f"{JOBS}/")
        if sep:
            roots.append(head + sep)
    if any(key.startswith(root) for root in roots):
        raise PayloadError(
            f"refusing to write s3 key {key!r}: it is under the jobs prefix, where a write "
            "would trigger the function again. Results go under results/.")


def result_key_for_job(job_key: str) -> str:
    """The result key that belongs to a job key (used by the S3-trigger mode)."""
    head, sep, tail = job_key.rpartition(f"{JOBS}/")
    if not sep or not tail.endswith(".job"):
        raise PayloadError(f"not a dask-lambda job key: {job_key!r}")
    return f"{head}{RESULTS}/{tail[:-4]}.out"
