"""Where a deployment lives (:class:`Target`), the AWS clients that reach it, and AWS's
refusals turned into the permission that is missing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import DeployError

#: Where progress lines go.
Out = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """Where a deployment lives.

    Attributes
    ----------
    bucket, prefix
        The bucket and the prefix inside it (as in ``LambdaClient("s3://bucket/prefix")``).
    function
        The Lambda function's name.
    region
        AWS region.
    """

    bucket: str
    prefix: str
    function: str
    region: str

    @classmethod
    def parse(cls, bucket: str, function: str | None = None, region: str | None = None
              ) -> Target:
        from ..deployment import names
        from ..deployment.region import default_region
        from ..settings import parse_bucket

        name, prefix = parse_bucket(bucket)
        region = region or default_region()
        if not region:
            raise DeployError(f"no AWS region: add --region, e.g. `dask-lambda deploy --bucket "
                              f"{bucket} --region us-east-1`, or set AWS_REGION")
        return cls(name, prefix, function or names.DEFAULT_FUNCTION, region)

    def command(self, verb: str = "deploy", *extra: str) -> str:
        from ..deployment import names

        words = names.deploy_command(self.bucket, self.prefix, self.function, self.region, *extra)
        return words.replace("dask-lambda deploy", f"dask-lambda {verb}", 1)


#: Error codes of a refused request (credentials fine, permission missing).
DENIED = {"AccessDenied", "AccessDeniedException", "403", "Forbidden",
          "UnauthorizedOperation", "AuthorizationError"}
#: Error codes of credentials AWS does not accept.
BAD_CREDENTIALS = {"UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken",
                   "ExpiredTokenException", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                   "InvalidSignatureException"}


def clients(target: Target) -> dict[str, Any]:
    """The botocore clients deploy, status and destroy use, by service name."""
    import botocore.session

    session = botocore.session.get_session()
    return {name: session.create_client(name, region_name=target.region) for name in
            ("s3", "iam", "lambda", "logs", "sts", "secretsmanager", "kms")}


@contextlib.contextmanager
def refusals(clients: dict[str, Any], target: Target, verb: str) -> Iterator[None]:
    """Report AWS's refusals as the permission that is missing (any call of ``verb``)."""
    from dask_lambda_handler import s3errors

    from . import permissions

    try:
        yield
    except Exception as exc:
        code = s3errors.error_code(exc)
        operation = getattr(exc, "operation_name", "")
        if not code or not operation or code not in DENIED | BAD_CREDENTIALS:
            raise
        service = next((name for name, client in clients.items()
                        if operation in client.meta.service_model.operation_names), "")
        said = str(getattr(exc, "response", {}).get("Error", {}).get("Message") or "")
        if code in BAD_CREDENTIALS:
            raise DeployError(
                f"AWS rejected the credentials ({operation}: {code}): they are wrong or "
                "expired. Check `aws sts get-caller-identity`, refresh them (`aws sso login`), "
                "or select another profile with AWS_PROFILE=name") from None
        action = permissions.action_of(operation, service)
        raise DeployError(
            f"AWS refused {action} ({operation}: {code}{': ' + said if said else ''}). "
            f"`dask-lambda {verb}` needs the permissions listed in the README (Run on AWS: "
            f"Permissions); `{target.command('permissions')}` prints them for this "
            "deployment") from None
