"""The function's IAM role: only what the handler needs on the bucket's prefixes, its signing
key and its logs.

Deploy changes only a role it made (tagged), and never detaches a managed policy unless
asked to (``--detach-policy``): a redeploy that does not repeat ``--attach-policy`` keeps
the tasks' data access.
"""

from __future__ import annotations

import json
from typing import Any

from ..deployment import names
from ..errors import DeployError

TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
}


def handler_policy(bucket: str, prefix: str, function: str, region: str, account: str,
                   secret_arn: str | None = None, kms_key_arn: str | None = None) -> dict:
    """The role's inline policy.

    The handler reads job objects and other tasks' outputs, writes outputs (and, in trigger
    mode, claim and completion records) under ``results/``, reads its signing key
    (``secret_arn``), and writes its log. Writing under ``jobs/`` is denied outright: there
    a write would be a new job, and with the S3 trigger a loop; the explicit Deny also beats
    any policy attached later for the tasks' own data.

    ``kms_key_arn``: the customer managed KMS key the bucket encrypts with by default. S3
    uses it on the role's behalf, so the role may use it, but only through S3 in this
    region (``kms:ViaService``; AWS KMS condition keys).
    """
    arn = f"arn:aws:s3:::{bucket}"
    jobs, results = names.jobs_prefix(prefix), names.results_prefix(prefix)
    logs = f"arn:aws:logs:{region}:{account}:log-group:{names.log_group(function)}"
    statements: list[dict] = [
        {"Sid": "ReadJobsAndResults", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": [f"{arn}/{jobs}*", f"{arn}/{results}*"]},
        {"Sid": "WriteResults", "Effect": "Allow",
         "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
         "Resource": f"{arn}/{results}*"},
        {"Sid": "ListJobsAndResults", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": arn, "Condition": {"StringLike": {"s3:prefix": [f"{jobs}*", f"{results}*"]}}},
        {"Sid": "NeverWriteJobs", "Effect": "Deny", "Action": "s3:PutObject",
         "Resource": f"{arn}/{jobs}*"},
        {"Sid": "Logs", "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": f"{logs}:*"},
    ]
    if secret_arn:
        statements.append({"Sid": "ReadSigningKey", "Effect": "Allow",
                           "Action": "secretsmanager:GetSecretValue", "Resource": secret_arn})
    if kms_key_arn:
        statements.append({"Sid": "BucketKmsKey", "Effect": "Allow",
                           "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                           "Resource": kms_key_arn,
                           "Condition": {"StringEquals": {
                               "kms:ViaService": f"s3.{region}.amazonaws.com"}}})
    return {"Version": "2012-10-17", "Statement": statements}


def _document(doc: Any) -> Any:
    """A policy document as a dict (IAM sends it URL-encoded JSON; boto3 decodes it)."""
    if isinstance(doc, str):
        from urllib.parse import unquote

        doc = json.loads(unquote(doc))
    return doc


def _role_tags(iam: Any, name: str, role: dict) -> list:
    return role.get("Tags") or iam.list_role_tags(RoleName=name).get("Tags", [])


def _attached(iam: Any, name: str) -> list[str]:
    pages = iam.get_paginator("list_attached_role_policies").paginate(RoleName=name)
    return [p["PolicyArn"] for page in pages for p in page["AttachedPolicies"]]


def check_ours(iam: Any, function: str) -> None:
    """Raise `DeployError` if the function's role exists and deploy did not make it."""
    found = describe(iam, function)
    if found is not None and not found["ours"]:
        raise _foreign(function)


def _foreign(function: str) -> DeployError:
    name = names.role_name(function)
    return DeployError(
        f"an IAM role {name!r} exists that dask-lambda deploy did not make (it has no "
        f"{names.TAG_KEY} tag), and deploy would change who may assume it and what it may "
        f"do. Deploy under another name (`dask-lambda deploy ... --function {function}-dask` "
        f"uses the role {names.role_name(function + '-dask')}), or delete that role if it is "
        "an old one nobody uses")


def ensure_role(iam: Any, function: str, policy: dict, attach: tuple[str, ...] = (),
                detach: tuple[str, ...] = ()) -> tuple[str, bool, list[str]]:
    """Create or update the function's role; returns (ARN, created, what changed).

    Managed policies in ``attach`` are attached and those in ``detach`` detached; every
    other policy attached to the role stays.

    Raises
    ------
    DeployError
        A role of that name exists that deploy did not make.
    """
    name = names.role_name(function)
    changes: list[str] = []
    try:
        role = iam.get_role(RoleName=name)["Role"]
    except iam.exceptions.NoSuchEntityException:
        role = iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
            Description=f"dask-lambda handler {function}",
            Tags=[{"Key": names.TAG_KEY, "Value": names.TAG_VALUE}])["Role"]
        created = True
        changes.append(f"created role {name}")
    else:
        created = False
        if not names.tagged(_role_tags(iam, name, role)):
            raise _foreign(function)
        if _document(role.get("AssumeRolePolicyDocument")) != TRUST_POLICY:
            iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(TRUST_POLICY))
            changes.append(f"role {name}: trust policy reset to lambda.amazonaws.com only")
    try:
        have = _document(iam.get_role_policy(RoleName=name, PolicyName=names.POLICY_NAME)[
            "PolicyDocument"])
    except iam.exceptions.NoSuchEntityException:
        have = None
    if have != policy:
        iam.put_role_policy(RoleName=name, PolicyName=names.POLICY_NAME,
                            PolicyDocument=json.dumps(policy))
        if not created:
            changes.append(f"role {name}: inline policy {names.POLICY_NAME} updated")
    attached = _attached(iam, name)
    for arn in attach:
        if arn not in attached and arn not in detach:
            iam.attach_role_policy(RoleName=name, PolicyArn=arn)
            changes.append(f"role {name}: attached {arn}")
    for arn in detach:
        if arn in attached:
            iam.detach_role_policy(RoleName=name, PolicyArn=arn)
            changes.append(f"role {name}: detached {arn}")
        else:
            changes.append(f"role {name}: {arn} was not attached")
    kept = [a for a in attached if a not in detach]
    if kept:
        changes.append(f"role {name}: keeps {', '.join(kept)} (detach with --detach-policy ARN)")
    return role["Arn"], created, changes


def describe(iam: Any, function: str) -> dict | None:
    """The role and its inline policy, or None if there is no role."""
    name = names.role_name(function)
    try:
        role = iam.get_role(RoleName=name)["Role"]
    except iam.exceptions.NoSuchEntityException:
        return None
    try:
        doc = _document(iam.get_role_policy(RoleName=name, PolicyName=names.POLICY_NAME)[
            "PolicyDocument"])
    except iam.exceptions.NoSuchEntityException:
        doc = None
    return {"arn": role["Arn"], "policy": doc, "ours": names.tagged(_role_tags(iam, name, role))}


def delete_role(iam: Any, function: str) -> bool:
    """Delete the function's role if deploy made it (tagged); returns whether it did."""
    found = describe(iam, function)
    if found is None or not found["ours"]:
        return False
    name = names.role_name(function)
    for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
        iam.delete_role_policy(RoleName=name, PolicyName=policy)
    for arn in _attached(iam, name):
        iam.detach_role_policy(RoleName=name, PolicyArn=arn)
    iam.delete_role(RoleName=name)
    return True
