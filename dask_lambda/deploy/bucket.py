"""The bucket: created if missing (then with public access blocked and default encryption),
a lifecycle rule that expires what dead clients leave, and (``--trigger``) the notification
that runs jobs.

A bucket deploy did not create keeps its public access block and encryption as they are.
Bucket-wide settings that other tools may share (lifecycle rules, notifications, tags) are
merged by id: deploy adds or replaces its own entries and keeps the rest, and destroy
removes only its own.
"""

from __future__ import annotations

from typing import Any

from dask_lambda_handler import s3errors

from ..deployment import names
from ..errors import DeployError

_code = s3errors.error_code  # of a botocore ClientError


def region(s3: Any, bucket: str) -> str | None:
    """The bucket's region (HeadBucket's ``BucketRegion``), ``""`` if S3 does not say, or
    None if there is no such bucket.

    botocore's S3 region redirector answers HeadBucket for a bucket in any region, so a
    successful call says nothing about the region: the header does.
    """
    try:
        answer = s3.head_bucket(Bucket=bucket)
    except Exception as exc:
        if s3errors.kind(exc) in (s3errors.MISSING, s3errors.NO_BUCKET):
            return None
        if s3errors.kind(exc) == s3errors.DENIED:
            raise DeployError(
                f"the bucket {bucket!r} exists and you may not use it (HTTP 403): it belongs to "
                "another account (bucket names are global) or your credentials lack "
                f"s3:ListBucket on arn:aws:s3:::{bucket} (HeadBucket needs it without a "
                "prefix condition). Choose another name: dask-lambda deploy --bucket "
                f"{bucket}-dask") from None
        raise
    return answer.get("BucketRegion") or answer.get("ResponseMetadata", {}).get(
        "HTTPHeaders", {}).get("x-amz-bucket-region", "")


def exists(s3: Any, bucket: str) -> bool:
    return region(s3, bucket) is not None


def ensure(s3: Any, bucket: str, where: str, prefix: str = "",
           function: str = names.DEFAULT_FUNCTION) -> bool:
    """Create the bucket in region ``where`` if it does not exist; returns whether it was
    created. (``prefix`` and ``function`` name the deployment in the error message.)

    Raises
    ------
    DeployError
        The bucket is in another region: Lambda reads a function's code from a bucket in
        the function's own region (CreateFunction's ``S3Bucket``), and tasks would pay for
        every byte across regions.
    """
    found = region(s3, bucket)
    if found is not None:
        if found and found != where:
            raise DeployError(
                f"the bucket {bucket!r} is in region {found}, not {where}: the function must "
                f"be in the bucket's region. Deploy there "
                f"(`{names.deploy_command(bucket, prefix, function, found)}`), or use a bucket "
                f"in {where}")
        return False
    options: dict = {}
    if where != "us-east-1":
        options["CreateBucketConfiguration"] = {"LocationConstraint": where}
    s3.create_bucket(Bucket=bucket, **options)
    tags = _tags(s3, bucket)
    tags[names.CREATED_BUCKET_TAG] = "true"
    _put_tags(s3, bucket, tags)
    return True


def configure(s3: Any, bucket: str, prefix: str, expire_days: int, *, secure: bool) -> None:
    """Add the lifecycle rules; with ``secure`` (a bucket deploy created) also block public
    access and turn on default encryption."""
    if secure:
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True})
        if encryption(s3, bucket) is None:
            s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
                           "BucketKeyEnabled": True}]})
    rules, options = _lifecycle(s3, bucket)
    rules = [r for r in rules if r.get("ID") not in _rule_ids(prefix)]
    for kind, root in _roots(prefix).items():
        rules.append({"ID": names.lifecycle_id(prefix, kind), "Status": "Enabled",
                      "Filter": {"Prefix": root}, "Expiration": {"Days": expire_days},
                      "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}})
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules},
                                          **options)


def _roots(prefix: str) -> dict[str, str]:
    return {"jobs": names.jobs_prefix(prefix), "results": names.results_prefix(prefix),
            "runs": names.runs_prefix(prefix)}


def _rule_ids(prefix: str) -> set[str]:
    return {names.lifecycle_id(prefix, kind) for kind in _roots(prefix)}


def _default_encryption(s3: Any, bucket: str) -> dict | None:
    try:
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    except Exception as exc:
        if _code(exc) == "ServerSideEncryptionConfigurationNotFoundError":
            return None
        raise
    for rule in rules.get("Rules", ()):
        return rule.get("ApplyServerSideEncryptionByDefault") or None
    return None


def encryption(s3: Any, bucket: str) -> str | None:
    """The bucket's default encryption algorithm, or None."""
    return (_default_encryption(s3, bucket) or {}).get("SSEAlgorithm")


def kms_key(s3: Any, bucket: str) -> str | None:
    """The KMS key (id, ARN or alias, as configured) the bucket encrypts new objects with by
    default, or None (SSE-S3, no default, or the AWS managed key ``aws/s3``, which every
    principal of the account may use through S3)."""
    rule = _default_encryption(s3, bucket) or {}
    if not str(rule.get("SSEAlgorithm", "")).startswith("aws:kms"):
        return None
    key = rule.get("KMSMasterKeyID") or None
    return None if key in (None, "alias/aws/s3") or str(key).endswith(":alias/aws/s3") else key


def public_access_blocked(s3: Any, bucket: str) -> bool:
    try:
        conf = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    except Exception as exc:
        if _code(exc) == "NoSuchPublicAccessBlockConfiguration":
            return False
        raise
    return all(conf.get(k) for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
                                     "RestrictPublicBuckets"))


def _lifecycle(s3: Any, bucket: str) -> tuple[list[dict], dict]:
    """The bucket's lifecycle rules, and the other settings of its lifecycle configuration
    that a rewrite must send back (``TransitionDefaultMinimumObjectSize``: a PUT without it
    resets it to S3's default, PutBucketLifecycleConfiguration API)."""
    try:
        answer = s3.get_bucket_lifecycle_configuration(Bucket=bucket)
    except Exception as exc:
        if _code(exc) == "NoSuchLifecycleConfiguration":
            return [], {}
        raise
    options = {k: answer[k] for k in ("TransitionDefaultMinimumObjectSize",) if answer.get(k)}
    return answer.get("Rules", []), options


def lifecycle_rules(s3: Any, bucket: str) -> list[dict]:
    return _lifecycle(s3, bucket)[0]


def our_lifecycle_rules(s3: Any, bucket: str, prefix: str) -> list[dict]:
    return [r for r in lifecycle_rules(s3, bucket) if r.get("ID") in _rule_ids(prefix)]


def _notification(s3: Any, bucket: str) -> dict:
    conf = s3.get_bucket_notification_configuration(Bucket=bucket)
    conf.pop("ResponseMetadata", None)
    return conf


def trigger(s3: Any, bucket: str, prefix: str, function: str) -> dict | None:
    """Deploy's notification entry for ``function`` on ``prefix``, or None."""
    ident = names.notification_id(function, prefix)
    for item in _notification(s3, bucket).get("LambdaFunctionConfigurations", ()):
        if item.get("Id") == ident:
            return item
    return None


def set_trigger(s3: Any, bucket: str, prefix: str, function: str, function_arn: str | None
                ) -> None:
    """Add (``function_arn``) or remove (None) the notification that runs trigger-mode jobs."""
    ident = names.notification_id(function, prefix)
    conf = _notification(s3, bucket)
    items = [i for i in conf.get("LambdaFunctionConfigurations", ()) if i.get("Id") != ident]
    if function_arn is not None:
        items.append({"Id": ident, "LambdaFunctionArn": function_arn,
                      "Events": ["s3:ObjectCreated:*"], "Filter": {"Key": {"FilterRules": [
                          {"Name": "prefix", "Value": names.jobs_prefix(prefix)},
                          {"Name": "suffix", "Value": names.TRIGGER_SUFFIX}]}}})
    elif len(items) == len(conf.get("LambdaFunctionConfigurations", ())):
        return  # nothing of ours there
    conf["LambdaFunctionConfigurations"] = items
    if not items:
        conf.pop("LambdaFunctionConfigurations")
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=conf)


def _tags(s3: Any, bucket: str) -> dict[str, str]:
    try:
        return {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]}
    except Exception as exc:
        if _code(exc) in ("NoSuchTagSet", "NoSuchTagSetError"):
            return {}
        raise


def _put_tags(s3: Any, bucket: str, tags: dict[str, str]) -> None:
    if tags:
        s3.put_bucket_tagging(Bucket=bucket, Tagging={
            "TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})
    else:
        s3.delete_bucket_tagging(Bucket=bucket)


def created_by_deploy(s3: Any, bucket: str) -> bool:
    return _tags(s3, bucket).get(names.CREATED_BUCKET_TAG) == "true"


def _delete_under(s3: Any, bucket: str, prefix: str) -> int:
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            n += len(keys)
    return n


def remove(s3: Any, bucket: str, prefix: str, function: str) -> list[str]:
    """Undo `ensure`/`configure`/`set_trigger` for (prefix, function); returns what it did.

    Deletes dask-lambda's objects (jobs, results, run markers, the code package), its
    lifecycle rules and notification; deletes the bucket only if deploy created it and
    nothing else is left in it.
    """
    done: list[str] = []
    if not exists(s3, bucket):
        return done
    if trigger(s3, bucket, prefix, function) is not None:
        set_trigger(s3, bucket, prefix, function, None)
        done.append(f"removed the S3 notification to {function}")
    rules, options = _lifecycle(s3, bucket)
    kept = [r for r in rules if r.get("ID") not in _rule_ids(prefix)]
    if len(kept) != len(rules):
        if kept:
            s3.put_bucket_lifecycle_configuration(
                Bucket=bucket, LifecycleConfiguration={"Rules": kept}, **options)
        else:
            s3.delete_bucket_lifecycle(Bucket=bucket)
        done.append("removed the lifecycle rules")
    n = sum(_delete_under(s3, bucket, root) for root in _roots(prefix).values())
    try:
        s3.head_object(Bucket=bucket, Key=names.code_key(prefix, function))
        s3.delete_object(Bucket=bucket, Key=names.code_key(prefix, function))
        n += 1
    except Exception as exc:
        if s3errors.kind(exc) != s3errors.MISSING:
            raise
    if n:
        done.append(f"deleted {n} dask-lambda objects")
    if created_by_deploy(s3, bucket):
        left = s3.list_objects_v2(Bucket=bucket, MaxKeys=1).get("KeyCount", 0)
        if left == 0:
            s3.delete_bucket(Bucket=bucket)
            done.append(f"deleted the bucket {bucket}")
        else:
            done.append(f"kept the bucket {bucket}: it holds objects dask-lambda did not write "
                        f"(delete them, then run destroy again, or `aws s3 rb s3://{bucket} "
                        "--force`)")
    return done
