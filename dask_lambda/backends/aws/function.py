"""What the aws backend checks of the deployed function before it sends a task: that it
exists and is Active (waking it if Lambda made it Inactive after weeks without
invocations), that this client's signing key is the function's (by its fingerprint), that
its handler runs the same Python minor version, cloudpickle, dask and dask-lambda as this
machine, and, in trigger mode, that the bucket's notification reaches it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from dask_lambda_handler import s3errors, s3keys

from ...deployment import compat, names, ping
from ...errors import ConfigurationError, PermissionDeniedError, VersionMismatchError
from ..invoke import FunctionInvoker

_code = s3errors.error_code  # of a botocore ClientError
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FunctionChecks:
    """The checks of one deployed function.

    Attributes
    ----------
    function
        Name or ARN of the function.
    region
        Its AWS region (None: boto's default).
    deploy
        The ``dask-lambda deploy`` command that makes it (for messages).
    signing_key
        This client's signing key.
    layout
        The run's S3 key layout (trigger mode's notification).
    """

    function: str
    region: str | None
    deploy: str
    signing_key: bytes
    layout: s3keys.Layout

    async def describe(self, control: Any) -> dict:
        """The function's configuration, once it is known that it exists, is Active (woken
        if it went Inactive), and its key is this client's."""
        from botocore.exceptions import EndpointConnectionError, NoCredentialsError, SSLError

        try:
            conf = await control.get_function_configuration(FunctionName=self.function)
        except NoCredentialsError:
            raise ConfigurationError(
                "no AWS credentials: configure them as for the AWS CLI (`aws configure`, "
                "AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)") from None
        except SSLError as exc:
            raise ConfigurationError(
                f"TLS to AWS Lambda in {self.region} failed ({exc}): if a proxy or firewall "
                "re-signs HTTPS, point AWS_CA_BUNDLE at its CA certificate") from None
        except EndpointConnectionError as exc:
            raise ConfigurationError(
                f"cannot reach AWS Lambda in {self.region} ({exc}): check the network, the "
                "region and AWS_ENDPOINT_URL") from None
        except Exception as exc:
            code = _code(exc)
            if code == "ResourceNotFoundException":
                raise ConfigurationError(
                    f"there is no Lambda function {self.function!r} in {self.region}: deploy it "
                    f"first: `{self.deploy}`") from None
            if code in ("UnrecognizedClientException", "InvalidSignatureException",
                        "ExpiredTokenException", "InvalidClientTokenId"):
                raise ConfigurationError(
                    f"AWS Lambda rejected the credentials ({code}): they are wrong or expired"
                    + (", or this machine's clock is off" if code == "InvalidSignatureException"
                       else "") + ". Check `aws sts get-caller-identity`, refresh them (`aws "
                    "sso login`), or select another profile with AWS_PROFILE=name") from None
            if code == "AccessDeniedException":
                raise PermissionDeniedError(
                    f"AWS refused lambda:GetFunctionConfiguration on {self.function!r} ({code}): "
                    "a user of the function needs lambda:GetFunctionConfiguration and "
                    "lambda:InvokeFunction on it (README, Run on AWS: Permissions; "
                    "`dask-lambda permissions` prints the policy)") from None
            raise
        if (conf.get("State") or "Active") != "Active":
            conf = await asyncio.to_thread(self._wait_active, conf)
        self.check_key(conf)
        return conf

    def _wait_active(self, conf: dict) -> dict:
        """Wake an Inactive function, or wait for a Pending one (as deploy does); its
        configuration. Runs in a thread: this happens once, at start."""
        import botocore.session

        from ...deployment import states
        from ...errors import DeployError

        state = conf.get("State")
        if state not in ("Inactive", "Pending"):
            raise ConfigurationError(
                f"the Lambda function {self.function!r} is {state} "
                f"({conf.get('StateReason') or 'no reason given'}): redeploy it with "
                f"`{self.deploy}`")
        lam = botocore.session.get_session().create_client("lambda", region_name=self.region)
        try:
            return states.wake(lam, self.function, out=logger.warning)
        except DeployError as exc:
            raise ConfigurationError(str(exc)) from None

    def check_key(self, conf: dict) -> None:
        """Refuse to start with a key the function does not have: every job would fail its
        signature check (the configuration carries the key's fingerprint, not the key)."""
        from dask_lambda_handler import env

        wanted = ((conf.get("Environment") or {}).get("Variables") or {}).get(env.KEY_ID_ENV)
        if wanted and wanted != env.key_id(self.signing_key):
            raise ConfigurationError(
                f"the signing key this machine has for the Lambda function {self.function!r} "
                f"({names.key_file(self.function)}, or the setting lambda.aws.signing-key) is "
                "not the function's: it was replaced on another machine (`dask-lambda deploy "
                "--rotate-key`), or the file belongs to another deployment. Copy the key file "
                "from the machine that deployed the function, or run "
                f"`{self.deploy}` here (it writes the function's key to that file)")

    async def check_versions(self, invoker: FunctionInvoker) -> dict:
        """Ping the handler through ``invoker``: the versions it runs (dask-lambda, dask,
        cloudpickle, Python), refused where they differ from this machine's or where it
        cannot use its signing key."""
        # (the describe call has checked the endpoint, TLS and credentials)
        body, function_error, _, _ = await invoker.send(ping.PING, count=False)
        answer = ping.answer(body, function_error)
        if answer is None or "versions" not in answer:
            raise VersionMismatchError(
                f"the Lambda function {self.function!r} did not answer dask-lambda's ping "
                f"({body[:300]!r}): it is not a dask-lambda handler, or a broken one. Redeploy "
                f"it from this environment: `{self.deploy}`")
        versions = answer["versions"]
        diffs = compat.differences(versions)
        if diffs:
            raise VersionMismatchError(
                f"the Lambda function {self.function!r} does not match this environment ("
                + "; ".join(diffs) + "): tasks pickled here may not load there. Redeploy it "
                f"from this environment: `{self.deploy}`")
        from dask_lambda_handler import env

        problem = ping.key_problem(answer, env.key_id(self.signing_key))
        if problem:
            raise ConfigurationError(
                f"the Lambda function {self.function!r} cannot use its signing key, so every "
                f"task would fail: {problem}")
        return versions

    async def check_trigger(self, s3: Any) -> None:
        """Refuse trigger mode where the bucket has no notification from the run's jobs to
        the function (or where this client may not look, let the grace timeout say so)."""
        try:
            conf = await s3.get_bucket_notification_configuration(Bucket=self.layout.bucket)
        except Exception as exc:
            if _code(exc) in ("AccessDenied", "403"):
                return  # not allowed to look: the grace timeout reports a missing trigger
            raise
        want = names.jobs_prefix(self.layout.prefix)
        for item in conf.get("LambdaFunctionConfigurations", ()):
            rules = {r["Name"].lower(): r["Value"] for r in
                     item.get("Filter", {}).get("Key", {}).get("FilterRules", ())}
            if (item["LambdaFunctionArn"].split(":")[-1] == self.function.split(":")[-1]
                    and rules.get("prefix") == want
                    and rules.get("suffix") == names.TRIGGER_SUFFIX):
                return
        raise ConfigurationError(
            f"mode=\"trigger\" needs an S3 notification from s3://{self.layout.bucket}/{want} to "
            f"the function {self.function!r}, and there is none: set it up with "
            f"`{self.deploy} --trigger`, or use mode=\"invoke\"")
