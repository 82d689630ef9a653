"""``status``: what of a deployment exists, and whether it matches this environment."""

from __future__ import annotations

from typing import Any

from .target import Out, Target, clients, refusals


def status(target: Target, *, out: Out = print) -> bool:
    """Print what exists and whether it matches this environment; True if all is ready.

    An Inactive function (idle for weeks) is woken, as the client would.
    """
    c = clients(target)
    with refusals(c, target, "status"):
        return _status(c, target, out)


class _Report:
    """The status lines printed, and the problems among them."""

    def __init__(self, out: Out):
        self.out = out
        self.problems: list[str] = []

    def line(self, ok: bool | None, text: str) -> None:
        """ok: True, False (a problem), None (for information)."""
        self.out(f"{'ok ' if ok else '-- ' if ok is None else 'NO '} {text}")
        if ok is False:
            self.problems.append(text)


def _status(c: dict[str, Any], target: Target, out: Out) -> bool:
    from ..deployment import names

    report = _Report(out)
    where, kms = _bucket_status(c, target, report)
    _role_status(c, target, kms, report)
    conf = _function_status(c, target, where, report)
    if report.problems:
        out(f"Not ready. Fix it with `{target.command()}`"
            + (" (add --trigger for mode=\"trigger\")" if conf is None else ""))
    else:
        out(f"Ready: LambdaClient(\"{names.bucket_url(target.bucket, target.prefix)}\", "
            f"backend=\"aws\", function=\"{target.function}\", region=\"{target.region}\")")
    return not report.problems


def _bucket_status(c: dict[str, Any], target: Target, report: _Report
                   ) -> tuple[str | None, str | None]:
    """Report the bucket; returns its region (None if it is missing) and its KMS key."""
    from . import bucket

    line = report.line
    where = bucket.region(c["s3"], target.bucket)
    in_region = not where or where == target.region
    line(where is not None and in_region, f"bucket {target.bucket}" + (
        f" (in {where}: the function must be in its region, deploy with --region {where})"
        if not in_region else ""))
    if where is None:
        return None, None
    if bucket.created_by_deploy(c["s3"], target.bucket):
        line(bucket.public_access_blocked(c["s3"], target.bucket), "  public access blocked")
        enc = bucket.encryption(c["s3"], target.bucket)
        line(enc is not None, f"  default encryption ({enc or 'none'})")
    else:
        enc = bucket.encryption(c["s3"], target.bucket)
        line(None, "  not created by deploy: its public access block and encryption are "
             f"yours to set (default encryption: {enc or 'none'})")
    rules = bucket.our_lifecycle_rules(c["s3"], target.bucket, target.prefix)
    line(len(rules) == 3, f"  lifecycle rules expiring jobs/, results/, runs/ ({len(rules)})")
    return where, bucket.kms_key(c["s3"], target.bucket)


def _role_status(c: dict[str, Any], target: Target, kms: str | None, report: _Report) -> None:
    """Report the role, its policy and its grant of the bucket's KMS key."""
    from ..deployment import names
    from . import iam

    role = iam.describe(c["iam"], target.function)
    report.line(role is not None and role["ours"] and role["policy"] is not None,
                f"role {names.role_name(target.function)} with its policy" + (
                    " (not made by deploy: deploy will not change it)"
                    if role is not None and not role["ours"] else ""))
    if kms is not None and role is not None and role["policy"] is not None:
        grants = [s for s in role["policy"].get("Statement", ()) if s.get("Sid") == "BucketKmsKey"]
        report.line(bool(grants), f"  may use the bucket's KMS key {kms} through S3")


def _function_status(c: dict[str, Any], target: Target, where: str | None, report: _Report
                     ) -> dict | None:
    """Report the function (woken if Inactive), its handler, key and trigger; returns its
    configuration (None if it is missing)."""
    from ..deployment import compat, states
    from . import bucket, function

    conf = function.get(c["lambda"], target.function)
    if conf is not None and conf.get("State") == "Inactive":
        report.out(f"--  function {target.function} was Inactive (no invocations for a long "
                   "time)")
        conf = dict(conf, **states.wake(c["lambda"], target.function, out=report.out))
    report.line(conf is not None, f"function {target.function}" + (
        f" ({conf.get('Runtime') or 'image'}, {conf['MemorySize']} MB, {conf['Timeout']} s, "
        f"{conf.get('State', 'Active')})" if conf else ""))
    if conf is None:
        return None
    answer = function.ping_answer(c["lambda"], target.function)
    versions = (answer or {}).get("versions")
    diffs = compat.differences(versions or {})
    report.line(versions is not None and not diffs,
                "  handler matches this environment" if versions and not diffs else
                f"  handler differs from this environment: {'; '.join(diffs)}")
    _key_status(conf, answer, target, report)
    if where is not None:
        on = bucket.trigger(c["s3"], target.bucket, target.prefix, target.function)
        report.out(f"{'ok ' if on else '-- '} S3 trigger for mode=\"trigger\": "
                   f"{'on' if on else 'off (deploy with --trigger to use it)'}")
    return conf


def _key_status(conf: dict, answer: Any, target: Target, report: _Report) -> None:
    """Report where the function's signing key is, and whether it and the local file agree."""
    from dask_lambda_handler import env as handler_env
    from dask_lambda_handler import protocol

    from ..deployment import names, ping
    from . import keys

    variables = (conf.get("Environment") or {}).get("Variables", {})
    if variables.get(protocol.SIGNING_KEY_ENV):
        report.line(False, "  the signing key is in the function's configuration, which every "
                    "user of the function may read: deploy again to move it to Secrets Manager "
                    "(and replace it)")
        return
    local_key = keys.read_file(target.function)
    report.line(local_key is not None and variables.get(handler_env.KEY_ID_ENV)
                == handler_env.key_id(local_key),
                f"  signing key {names.key_file(target.function)} matches the function's"
                + ("" if local_key is not None else " (no such file)"))
    problem = ping.key_problem(answer, variables.get(handler_env.KEY_ID_ENV))
    report.line(problem is None, "  the function can read its signing key" if problem is None
                else f"  the function cannot use its signing key: {problem}")
