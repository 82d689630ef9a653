"""The function's IAM role: only what the handler needs on the bucket's prefixes, plus its logs."""

from __future__ import annotations

import json
from typing import Any

from . import names

TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
}


def handler_policy(bucket: str, prefix: str, function: str, region: str, account: str) -> dict:
    """The role's inline policy.

    The handler reads job objects and other tasks' outputs, writes outputs (and, in trigger
    mode, claim and completion records) under ``results/``, and writes its log. Writing under
    ``jobs/`` is denied outright: there a write would be a new job, and with the S3 trigger a
    loop; the explicit Deny also beats any policy attached later for the tasks' own data.
    """
    arn = f"arn:aws:s3:::{bucket}"
    jobs, results = names.jobs_prefix(prefix), names.results_prefix(prefix)
    logs = f"arn:aws:logs:{region}:{account}:log-group:{names.log_group(function)}"
    return {"Version": "2012-10-17", "Statement": [
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
    ]}


def ensure_role(iam: Any, function: str, policy: dict, attach: tuple[str, ...] = ()
                ) -> tuple[str, bool]:
    """Create or update the function's role; returns (ARN, created)."""
    name = names.role_name(function)
    created = False
    try:
        arn = iam.get_role(RoleName=name)["Role"]["Arn"]
        iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(TRUST_POLICY))
    except iam.exceptions.NoSuchEntityException:
        arn = iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
            Description=f"dask-lambda handler {function}",
            Tags=[{"Key": names.TAG_KEY, "Value": names.TAG_VALUE}])["Role"]["Arn"]
        created = True
    iam.put_role_policy(RoleName=name, PolicyName=names.POLICY_NAME,
                        PolicyDocument=json.dumps(policy))
    attached = {p["PolicyArn"] for p in
                iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]}
    for arn_ in set(attach) - attached:
        iam.attach_role_policy(RoleName=name, PolicyArn=arn_)
    for arn_ in attached - set(attach):
        iam.detach_role_policy(RoleName=name, PolicyArn=arn_)
    return arn, created


def describe(iam: Any, function: str) -> dict | None:
    """The role and its inline policy, or None if there is no role."""
    name = names.role_name(function)
    try:
        role = iam.get_role(RoleName=name)["Role"]
    except iam.exceptions.NoSuchEntityException:
        return None
    try:
        doc = iam.get_role_policy(RoleName=name, PolicyName=names.POLICY_NAME)["PolicyDocument"]
    except iam.exceptions.NoSuchEntityException:
        doc = None
    if isinstance(doc, str):
        doc = json.loads(doc)
    tags = {t["Key"]: t["Value"] for t in role.get("Tags") or
            iam.list_role_tags(RoleName=name).get("Tags", [])}
    return {"arn": role["Arn"], "policy": doc, "ours": tags.get(names.TAG_KEY) == names.TAG_VALUE}


def delete_role(iam: Any, function: str) -> bool:
    """Delete the function's role if deploy made it (tagged); returns whether it did."""
    found = describe(iam, function)
    if found is None or not found["ours"]:
        return False
    name = names.role_name(function)
    for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
        iam.delete_role_policy(RoleName=name, PolicyName=policy)
    for policy in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
        iam.detach_role_policy(RoleName=name, PolicyArn=policy["PolicyArn"])
    iam.delete_role(RoleName=name)
    return True
