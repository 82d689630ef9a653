"""Lambda's limits, and the bounds dask-lambda derives from them: the one owner of these numbers.

Settings (:mod:`dask_lambda.settings`), ``dask-lambda deploy`` and error advice read them
from here. Standard library only, and nothing runs at import.
"""

from __future__ import annotations

# the handler's own (it respects them too, and imports nothing of dask_lambda)
from dask_lambda_handler.limits import S3_MAX_PARTS, S3_MIN_PART_BYTES, SYNC_PAYLOAD_BYTES

__all__ = ["S3_MAX_PARTS", "S3_MIN_PART_BYTES", "SYNC_PAYLOAD_BYTES"]

#: Memory of a function, MB (Lambda: "between 128 MB and 10,240 MB in 1-MB increments";
#: https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html).
MEMORY_MB = (128, 10_240)
#: Longest function timeout, seconds ("The maximum allowed value is 900 seconds";
#: https://docs.aws.amazon.com/lambda/latest/dg/configuration-timeout.html).
MAX_TIMEOUT_S = 900
#: Unzipped size of a zip function's code plus layers: 250 MB, i.e. 262,144,000 bytes
#: (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html).
UNZIPPED_BYTES = 262_144_000
#: Room kept in a payload for what travels beside an inline job or output: the event's and
#: response's JSON fields, and the task's printed output, which the handler caps at 64 KiB
#: (``dask_lambda_handler.capture.LOG_LIMIT``) and JSON may escape to six bytes per byte.
PAYLOAD_ENVELOPE_BYTES = 512 * 1024
#: Largest ``inline-max``: base64 makes 4 bytes of every 3, inside the payload's envelope.
MAX_INLINE_BYTES = (SYNC_PAYLOAD_BYTES - PAYLOAD_ENVELOPE_BYTES) // 4 * 3
#: Concurrent executions per Region by default ("1,000";
#: https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html): the aws
#: backend's default concurrency.
DEFAULT_ACCOUNT_CONCURRENCY = 1_000
#: New execution environments per function per `SCALING_PERIOD_S` seconds ("each function
#: can scale up by 1,000 execution environments every 10 seconds";
#: https://docs.aws.amazon.com/lambda/latest/dg/scaling-behavior.html).
SCALING_RATE = 1_000
SCALING_PERIOD_S = 10.0
#: Most concurrency one client asks for on aws (ten times the default quota). Not a Lambda
#: limit: the client holds one connection per invocation in flight and spends 0.5-1 ms of CPU
#: per task (benchmarks/README.md, scale.py), so it dispatches at most 1,000-2,000 tasks a
#: second: beyond this many slots the client, not Lambda, is the bottleneck.
MAX_AWS_CONCURRENCY = 10_000
#: Largest S3 object ("from a minimum of 0 bytes to a maximum of 5 TB";
#: https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingObjects.html): the ceiling
#: of ``max-output``.
MAX_OBJECT_BYTES = 5 * 2**40
#: The local backend starts one interpreter per concurrency slot: at most this many per core,
LOCAL_SLOTS_PER_CORE = 16
#: and each needs at least this much memory (MB; an idle environment with the handler, boto3
#: and NumPy loaded uses about 100 MB).
LOCAL_SLOT_MB = 128
#: Most further attempts of a crashed task.
MAX_RETRIES = 10
#: Shortest heartbeat, seconds: each beat rewrites the run marker in S3.
MIN_HEARTBEAT_S = 1.0
#: ``stale-after`` is at least this many heartbeats, so that a live client's run, whose
#: marker is rewritten every heartbeat, is never taken for a dead one.
STALE_HEARTBEATS = 3
