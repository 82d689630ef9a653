"""``dask-lambda deploy``, ``status`` and ``destroy``: everything the aws backend needs, made
from this machine's environment, and removed again.

What ``deploy`` makes, for a bucket ``B`` (optionally a prefix ``P``) and a function ``F``:

* the bucket (if missing, in the deployment's region), then with public access blocked and
  default encryption; on any bucket, lifecycle rules expiring ``P/jobs/``, ``P/results/``
  and ``P/runs/`` objects after a few days;
* the signing key, in the Secrets Manager secret ``dask-lambda/F/signing-key`` and in
  ``~/.config/dask-lambda/F.key`` (``--rotate-key`` makes a new one);
* the role ``F-role``, whose inline policy allows only reading ``P/jobs/`` and
  ``P/results/``, writing ``P/results/``, reading the key, using the bucket's KMS key
  through S3 (if it has one), and writing F's log (writing ``P/jobs/`` is denied);
* the log group ``/aws/lambda/F`` with a retention;
* the function ``F`` (the package built by :mod:`.package`, uploaded to ``P/deploy/F.zip``),
  whose configuration names the key's secret version and fingerprint, not the key;
* with ``--trigger``: the permission for S3 to invoke F and the bucket notification on
  ``P/jobs/*.trigger.job``.

Running it again updates all of that in place, and changes only what deploy made (tags).
Submodules: :mod:`.commands` (``deploy`` and ``destroy``, in steps), :mod:`.readiness`
(``status``), :mod:`.target` (:class:`Target`, the AWS clients and their refusals),
:mod:`.artifact` (the zip or image the function runs), :mod:`.keys`, :mod:`.package`,
:mod:`.bucket`, :mod:`.iam`, :mod:`.function`, :mod:`.permissions` (the IAM policies the
deployer and the users need). What the aws backend needs too (naming and limits, runtimes
and versions, the ping, function states) is :mod:`dask_lambda.deployment`'s.
"""

from .commands import deploy, destroy
from .readiness import status
from .target import Out, Target

__all__ = ["Out", "Target", "deploy", "destroy", "status"]
