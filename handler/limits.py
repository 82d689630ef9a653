"""Lambda's and S3's limits that the handler itself must respect (standard library only).

The client's :mod:`dask_lambda.limits` holds the rest and re-exports these, so each number
has one owner.
"""

from __future__ import annotations

#: Request and response payload of a synchronous invoke, JSON and all ("For synchronous
#: invocations, the maximum payload size is 6 MB";
#: https://docs.aws.amazon.com/lambda/latest/dg/API_Invoke.html). Read as decimal
#: megabytes, the smaller of the two readings; beyond it Invoke answers 413
#: RequestTooLargeException, or the function's answer fails.
SYNC_PAYLOAD_BYTES = 6_000_000
#: A multipart upload has at most 10,000 parts of at least 5 MiB each, the last excepted
#: (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html).
S3_MAX_PARTS = 10_000
S3_MIN_PART_BYTES = 5 * 2**20
