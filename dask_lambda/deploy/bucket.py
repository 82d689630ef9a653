"""The bucket: created if missing, public access blocked, encryption on, a lifecycle rule that
expires what dead clients leave, and (``--trigger``) the notification that runs jobs.

Bucket-wide settings that other tools may share (lifecycle rules, notifications,
tags) are merged by id: deploy adds or replaces its own entries and keeps the rest,
and destroy removes only its own.
"""

from __future__ import annotations

from typing import Any

from dask_lambda_handler import s3errors

from ..errors import DeployError
from . import names

_code = s3errors.error_code  # of a botocore ClientError


def exists(s3: Any, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
        return True
    except Exception as exc:
        if _code(exc) in ("404", "NoSuchBucket", "NotFound"):
            return False
        if _code(exc) in ("403", "AccessDenied"):
            raise DeployError(
                f"the bucket {bucket!r} exists and you may not use it (HTTP 403): it belongs to "
                "another account (bucket names are global) or your credentials lack "
                "s3:ListBucket on it. Choose another name: dask-lambda deploy --bucket "
                f"{bucket}-dask") from None
        raise


def ensure(s3: Any, bucket: str, region: str) -> bool:
    """Create the bucket if it does not exist; returns whether it was created."""
    if exists(s3, bucket):
        return False
    options: dict = {}
    if region != "us-east-1":
        options["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(Bucket=bucket, **options)
    tags = _tags(s3, bucket)
    tags[names.CREATED_BUCKET_TAG] = "true"
    _put_tags(s3, bucket, tags)
    return True


def configure(s3: Any, bucket: str, prefix: str, expire_days: int) -> None:
    """Block public access, turn on default encryption, and add the lifecycle rules."""
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True})
    if encryption(s3, bucket) is None:
        s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
             "BucketKeyEnabled": True}]})
    rules = [r for r in lifecycle_rules(s3, bucket) if r.get("ID") not in _rule_ids(prefix)]
    for kind, root in _roots(prefix).items():
        rules.append({"ID": names.lifecycle_id(prefix, kind), "Status": "Enabled",
                      "Filter": {"Prefix": root}, "Expiration": {"Days": expire_days},
                      "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}})
    s3.put_bucket_lifecycle_configuration(Bucket=bucket,
                                          LifecycleConfiguration={"Rules": rules})


def _roots(prefix: str) -> dict[str, str]:
    return {"jobs": names.jobs_prefix(prefix), "results": names.results_prefix(prefix),
            "runs": names.runs_prefix(prefix)}


def _rule_ids(prefix: str) -> set[str]:
    return {names.lifecycle_id(prefix, kind) for kind in _roots(prefix)}


def encryption(s3: Any, bucket: str) -> str | None:
    """The bucket's default encryption algorithm, or None."""
    try:
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    except Exception as exc:
        if _code(exc) == "ServerSideEncryptionConfigurationNotFoundError":
            return None
        raise
    for rule in rules.get("Rules", ()):
        return rule.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm")
    return None


def public_access_blocked(s3: Any, bucket: str) -> bool:
    try:
        conf = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    except Exception as exc:
        if _code(exc) == "NoSuchPublicAccessBlockConfiguration":
            return False
        raise
    return all(conf.get(k) for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
                                     "RestrictPublicBuckets"))


def lifecycle_rules(s3: Any, bucket: str) -> list[dict]:
    try:
        return s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except Exception as exc:
        if _code(exc) == "NoSuchLifecycleConfiguration":
            return []
        raise


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
    rules = lifecycle_rules(s3, bucket)
    kept = [r for r in rules if r.get("ID") not in _rule_ids(prefix)]
    if len(kept) != len(rules):
        if kept:
            s3.put_bucket_lifecycle_configuration(Bucket=bucket,
                                                  LifecycleConfiguration={"Rules": kept})
        else:
            s3.delete_bucket_lifecycle(Bucket=bucket)
        done.append("removed the lifecycle rules")
    n = sum(_delete_under(s3, bucket, root) for root in _roots(prefix).values())
    try:
        s3.head_object(Bucket=bucket, Key=names.code_key(prefix, function))
        s3.delete_object(Bucket=bucket, Key=names.code_key(prefix, function))
        n += 1
    except Exception as exc:
        if _code(exc) not in ("404", "NoSuchKey", "NotFound"):
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
