"""Deterministic fault injection for the local backend (for testing fault handling).

Like cubed's ``deterministic_failure``: which invocation fails is decided by a hash
of the seed and the job, so a run is reproducible. Faults hit the *first* attempt of a
selected job only (they are transient, as in Lambda), unless ``every_attempt`` is set.
S3 faults (503, 500, lost objects) are injected by the S3 server instead
(``python -m dask_lambda.backends.local.s3server --faults ...``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from dask_lambda_handler import records


@dataclass(frozen=True)
class FaultPlan:
    """Shares (0..1) of invocations to hit with each fault.

    Attributes
    ----------
    kill
        The execution environment is killed while it runs the job (as a crashed runtime).
    kill_start
        A new execution environment started for the job is killed before it is ready (as
        an environment that crashed or was killed during its init phase).
    duplicate
        The invocation is delivered twice (as Lambda's at-least-once async delivery).
    throttle
        The invocation is refused with 429 TooManyRequests before it starts.
    seed
        Changes which invocations are selected.
    every_attempt
        Hit retries of a selected job too (a persistent fault).
    """

    kill: float = 0.0
    kill_start: float = 0.0
    duplicate: float = 0.0
    throttle: float = 0.0
    seed: int = 0
    every_attempt: bool = False

    def hits(self, fault: str, event: dict, throttled: int = 0) -> bool:
        """Whether ``fault`` hits this invocation of ``event``."""
        share = getattr(self, fault)
        if share <= 0:
            return False
        at = records.InvokeEvent.from_wire(event)
        if not self.every_attempt and not at.result_key.endswith("-a0.out"):
            return False
        if fault == "throttle" and throttled > 0 and not self.every_attempt:
            return False  # throttled once, then let through
        digest = hashlib.sha256(f"{self.seed}/{fault}/{at.job_key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < share
