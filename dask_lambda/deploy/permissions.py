"""The IAM permissions dask-lambda needs, as policies: one definition for the README (which
shows them with placeholders), ``dask-lambda permissions`` (which fills them in), the
tests (whose IAM-enforcing emulator runs deploy and the client under exactly these), and
the messages that name a refused action.

* `deployer_policy`: ``dask-lambda deploy``, ``status`` and ``destroy``;
* `user_policy`: a client of a deployment (``LambdaClient(..., backend="aws")``);
* `image_policy`: what ``deploy --image`` needs on top (pushing to ECR, and letting
  Lambda pull from it).
"""

from __future__ import annotations

import json

from ..deployment import names

#: The IAM action of each API operation deploy, status and destroy call, where it is not
#: ``service:Operation`` (S3's names differ most; Service Authorization Reference).
ACTIONS = {
    "HeadBucket": "s3:ListBucket", "ListObjectsV2": "s3:ListBucket",
    "HeadObject": "s3:GetObject", "DeleteObjects": "s3:DeleteObject",
    "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock",
    "GetPublicAccessBlock": "s3:GetBucketPublicAccessBlock",
    "GetBucketEncryption": "s3:GetEncryptionConfiguration",
    "PutBucketEncryption": "s3:PutEncryptionConfiguration",
    "GetBucketLifecycleConfiguration": "s3:GetLifecycleConfiguration",
    "PutBucketLifecycleConfiguration": "s3:PutLifecycleConfiguration",
    "DeleteBucketLifecycle": "s3:PutLifecycleConfiguration",
    "GetBucketNotificationConfiguration": "s3:GetBucketNotification",
    "PutBucketNotificationConfiguration": "s3:PutBucketNotification",
    "DeleteBucketTagging": "s3:PutBucketTagging",
    "Invoke": "lambda:InvokeFunction",
}
#: The service of each operation above that is not S3's.
_SERVICE = {"Invoke": "lambda"}


def action_of(operation: str, service: str) -> str:
    """The IAM action AWS checks for ``operation`` of ``service`` (e.g. HeadBucket, s3)."""
    return ACTIONS.get(operation) or f"{service}:{operation}"


def _root(prefix: str) -> str:
    return f"{prefix}/" if prefix else ""


def deployer_policy(bucket: str, prefix: str, function: str, region: str, account: str) -> dict:
    """What ``dask-lambda deploy``, ``status`` and ``destroy`` need for one deployment."""
    b = f"arn:aws:s3:::{bucket}"
    fn = f"arn:aws:lambda:{region}:{account}:function:{function}"
    role = f"arn:aws:iam::{account}:role/{names.role_name(function)}"
    group = f"arn:aws:logs:{region}:{account}:log-group:{names.log_group(function)}"
    secret = f"arn:aws:secretsmanager:{region}:{account}:secret:{names.secret_name(function)}*"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "Bucket", "Effect": "Allow", "Resource": b, "Action": [
            "s3:CreateBucket", "s3:DeleteBucket", "s3:ListBucket",
            "s3:GetBucketTagging", "s3:PutBucketTagging",
            "s3:GetBucketPublicAccessBlock", "s3:PutBucketPublicAccessBlock",
            "s3:GetEncryptionConfiguration", "s3:PutEncryptionConfiguration",
            "s3:GetLifecycleConfiguration", "s3:PutLifecycleConfiguration",
            "s3:GetBucketNotification", "s3:PutBucketNotification"]},
        {"Sid": "Objects", "Effect": "Allow", "Resource": f"{b}/{_root(prefix)}*", "Action": [
            "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]},
        {"Sid": "BucketKmsKey", "Effect": "Allow", "Resource": "*", "Action": "kms:DescribeKey"},
        {"Sid": "Role", "Effect": "Allow", "Resource": role, "Action": [
            "iam:GetRole", "iam:CreateRole", "iam:DeleteRole", "iam:TagRole",
            "iam:ListRoleTags", "iam:UpdateAssumeRolePolicy", "iam:GetRolePolicy",
            "iam:PutRolePolicy", "iam:DeleteRolePolicy", "iam:ListRolePolicies",
            "iam:ListAttachedRolePolicies", "iam:AttachRolePolicy", "iam:DetachRolePolicy"]},
        {"Sid": "PassRole", "Effect": "Allow", "Resource": role, "Action": "iam:PassRole",
         "Condition": {"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}}},
        {"Sid": "SigningKey", "Effect": "Allow", "Resource": secret, "Action": [
            "secretsmanager:CreateSecret", "secretsmanager:DescribeSecret",
            "secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue",
            "secretsmanager:TagResource", "secretsmanager:DeleteSecret"]},
        {"Sid": "Logs", "Effect": "Allow", "Resource": [group, f"{group}:*"], "Action": [
            "logs:CreateLogGroup", "logs:TagResource", "logs:PutRetentionPolicy",
            "logs:DeleteLogGroup"]},
        {"Sid": "Function", "Effect": "Allow", "Resource": fn, "Action": [
            "lambda:GetFunction", "lambda:GetFunctionConfiguration", "lambda:ListTags",
            "lambda:CreateFunction", "lambda:TagResource", "lambda:UpdateFunctionCode",
            "lambda:UpdateFunctionConfiguration", "lambda:DeleteFunction",
            "lambda:InvokeFunction", "lambda:AddPermission", "lambda:RemovePermission",
            "lambda:PutFunctionEventInvokeConfig"]},
    ]}


def user_policy(bucket: str, prefix: str, function: str, region: str, account: str, *,
                trigger: bool = True, kms_key_arn: str | None = None) -> dict:
    """What a client of one deployment needs (``trigger``: also for ``mode="trigger"``).

    HeadBucket, the client's start-up check, is authorized as ``s3:ListBucket`` on the
    bucket without a ``s3:prefix`` (a condition on the prefix refuses it).
    """
    b = f"arn:aws:s3:::{bucket}"
    objects = [f"{b}/{_root(prefix)}{kind}/*" for kind in ("jobs", "results", "runs")]
    statements: list[dict] = [
        {"Sid": "Function", "Effect": "Allow",
         "Resource": f"arn:aws:lambda:{region}:{account}:function:{function}",
         "Action": ["lambda:GetFunctionConfiguration", "lambda:GetFunctionConcurrency",
                    "lambda:InvokeFunction"]},
        {"Sid": "Bucket", "Effect": "Allow", "Resource": b,
         "Action": ["s3:ListBucket", *(["s3:GetBucketNotification"] if trigger else [])]},
        {"Sid": "Objects", "Effect": "Allow", "Resource": objects, "Action": [
            "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]},
    ]
    if trigger:  # trigger mode holds jobs to what the account may run at once
        statements.append({"Sid": "Account", "Effect": "Allow", "Resource": "*",
                           "Action": "lambda:GetAccountSettings"})
    if kms_key_arn:
        statements.append({"Sid": "BucketKmsKey", "Effect": "Allow", "Resource": kms_key_arn,
                           "Action": ["kms:GenerateDataKey", "kms:Decrypt"], "Condition": {
                               "StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}}})
    return {"Version": "2012-10-17", "Statement": statements}


def image_policy(function: str, region: str, account: str) -> dict:
    """What ``deploy --image`` needs beyond `deployer_policy`, for an ECR repository named
    after the function: push the image, and let CreateFunction and UpdateFunctionCode give
    Lambda access to it (Lambda adds a repository policy statement for itself)."""
    repo = f"arn:aws:ecr:{region}:{account}:repository/{function}"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "Login", "Effect": "Allow", "Resource": "*",
         "Action": "ecr:GetAuthorizationToken"},
        {"Sid": "Repository", "Effect": "Allow", "Resource": repo, "Action": [
            "ecr:CreateRepository", "ecr:DescribeRepositories",
            "ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload",
            "ecr:UploadLayerPart", "ecr:CompleteLayerUpload", "ecr:PutImage",
            "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
            "ecr:GetRepositoryPolicy", "ecr:SetRepositoryPolicy"]},
    ]}


#: The placeholders the README shows the policies with.
PLACEHOLDERS = {"bucket": "BUCKET", "prefix": "PREFIX", "function": "FUNCTION",
                "region": "REGION", "account": "ACCOUNT"}


def render(policy: dict) -> str:
    """A policy as compact JSON: one statement per line (as the README shows it)."""
    lines = [json.dumps(s) for s in policy["Statement"]]
    return ('{"Version": "2012-10-17", "Statement": [\n  '
            + ",\n  ".join(lines) + "\n]}")
