"""The counters of one client's Lambda work (``lambda_stats()``, the dashboard's worker table):
one object, written by the dispatcher, the outputs and the gateway."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ExecutorStats:
    """Counters of one client's Lambda work.

    Attributes
    ----------
    tasks
        Tasks finished or erred.
    errors
        Tasks that ended in an error.
    retries
        Extra attempts after an execution environment crashed, an output was lost, or an
        out-of-memory task was given more memory.
    throttled
        Invocations refused with 429 and retried after a backoff.
    local_tasks
        Trivial tasks (aliases, literals) the gateway ran itself, without an invocation.
    inline_jobs, s3_jobs
        Jobs sent in the invoke request / as S3 objects.
    bytes_sent, bytes_received
        Job and output bytes moved by this process (inline and S3, gathers included).
    outputs_in_s3, output_bytes_in_s3
        Outputs left in S3 for the tasks that use them (never downloaded unless gathered).
    batches, batched_tasks
        Tasks that ran a fused group of graph tasks (`dask_lambda.batching`), and the graph
        tasks those groups held.
    cancelled
        Running tasks stopped because the scheduler no longer wanted them (cancelled, or
        their last future released). On AWS, Lambda bills each until it ends by itself.
    shared_values, shared_bytes
        Values held here (graph literals, scattered data, small outputs) uploaded to S3 once
        for the tasks that read them (``share-min``), and their encoded bytes.
    shared_bytes_saved
        Bytes those references kept out of jobs: what each later job that read a shared
        value would have carried again.
    """

    tasks: int = 0
    errors: int = 0
    retries: int = 0
    throttled: int = 0
    local_tasks: int = 0
    inline_jobs: int = 0
    s3_jobs: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    outputs_in_s3: int = 0
    output_bytes_in_s3: int = 0
    batches: int = 0
    batched_tasks: int = 0
    cancelled: int = 0
    shared_values: int = 0
    shared_bytes: int = 0
    shared_bytes_saved: int = 0
