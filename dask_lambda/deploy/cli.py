"""The ``deploy``, ``status`` and ``destroy`` subcommands of ``dask-lambda``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import Target

COMMANDS = ("deploy", "status", "destroy", "permissions")


def _target_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bucket", required=True,
                        help="bucket or s3://bucket/prefix, as given to LambdaClient")
    parser.add_argument("--function", default=None,
                        help="Lambda function name (default: dask-lambda)")
    parser.add_argument("--region", default=None,
                        help="AWS region (default: AWS_REGION or the profile's)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the subcommands to ``dask-lambda``'s parser."""
    deploy = sub.add_parser(
        "deploy", help="create or update the bucket, role and function the aws backend uses",
        description="Build the handler package for the Lambda runtime matching this Python, "
                    "with this environment's library versions, and create or update the "
                    "bucket, the IAM role, the function and (--trigger) the S3 trigger.")
    _target_args(deploy)
    deploy.add_argument("--memory", type=int, default=2048, help="MB (default: %(default)s)")
    deploy.add_argument("--timeout", type=int, default=300, help="seconds (default: %(default)s)")
    deploy.add_argument("--arch", default="x86_64", choices=("x86_64", "arm64"))
    deploy.add_argument("--trigger", action="store_true",
                        help="set up the S3 notification for LambdaClient(..., mode='trigger')")
    deploy.add_argument("--extra-packages", default="",
                        help="comma-separated packages the tasks import beyond dask, numpy, "
                             "pandas, pyarrow and s3fs (pinned to the versions installed here)")
    deploy.add_argument("--aws-services", default=None, metavar="S3,STS,...",
                        help="AWS services whose botocore models the package keeps (default: "
                             "s3,sts, what the handler calls; add those the tasks call with "
                             "boto3; 'all' keeps every model, about 16 MB more)")
    deploy.add_argument("--attach-policy", action="append", default=[], metavar="ARN",
                        help="managed policy to attach to the role, e.g. for the tasks' data "
                             "(it stays attached on later deploys)")
    deploy.add_argument("--detach-policy", action="append", default=[], metavar="ARN",
                        help="managed policy to detach from the role")
    deploy.add_argument("--rotate-key", action="store_true",
                        help="replace the signing key (copy the new key file to the other "
                             "machines that use the function)")
    deploy.add_argument("--image", default=None, metavar="URI",
                        help="deploy this container image instead of a zip package")
    deploy.add_argument("--package", default=None, metavar="ZIP",
                        help="deploy this prebuilt zip instead of building one")
    deploy.add_argument("--glibc", default=None, metavar="X.Y",
                        help="build wheels for this glibc instead of the runtime's (only for "
                             "emulators that run functions on this machine)")
    status = sub.add_parser("status", help="show what is deployed and whether it matches here")
    _target_args(status)
    destroy = sub.add_parser("destroy", help="remove what deploy made, and nothing else")
    _target_args(destroy)
    perms = sub.add_parser(
        "permissions", help="print the IAM policies the deployer and the users need",
        description="Print, as IAM policy documents, what `dask-lambda deploy`, `status` and "
                    "`destroy` need, what a user of the deployment needs, and what "
                    "`deploy --image` needs on top.")
    _target_args(perms)


def run(args: argparse.Namespace) -> int:
    """Run a subcommand; errors are printed (with the fix) and give exit code 1."""
    from pathlib import Path

    from ..errors import DaskLambdaError
    from . import Target, deploy, destroy, status

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        target = Target.parse(args.bucket, args.function, args.region)
        if args.command == "deploy":
            extra = tuple(p.strip() for p in args.extra_packages.split(",") if p.strip())
            deploy(target, memory=args.memory, timeout=args.timeout, arch=args.arch,
                   trigger=args.trigger, extra_packages=extra, glibc=args.glibc,
                   package=Path(args.package) if args.package else None, image=args.image,
                   attach_policies=tuple(args.attach_policy),
                   detach_policies=tuple(args.detach_policy), rotate_key=args.rotate_key,
                   aws_services=tuple(s.strip() for s in args.aws_services.split(",")
                                      if s.strip()) if args.aws_services else None,
                   out=out)
            out(f"Deployed. Use it: LambdaClient(\"{args.bucket}\", backend=\"aws\", "
                f"function=\"{target.function}\", region=\"{target.region}\""
                + (", mode=\"trigger\")" if args.trigger else ")"))
            return 0
        if args.command == "status":
            return 0 if status(target, out=out) else 1
        if args.command == "permissions":
            _permissions(target, out)
            return 0
        destroy(target, out=out)
        return 0
    except DaskLambdaError as exc:
        print(f"dask-lambda {args.command}: {exc}", file=sys.stderr, flush=True)
        return 1


def _permissions(target: Target, out: Callable[[str], None]) -> None:
    """Print the three policies for ``target``, with this account's id where known."""
    import botocore.session

    from . import permissions

    try:
        account = botocore.session.get_session().create_client(
            "sts", region_name=target.region).get_caller_identity()["Account"]
    except Exception:  # no credentials here: the policies are still worth printing
        account = "ACCOUNT"
    names = (target.bucket, target.prefix, target.function, target.region, account)
    out("# dask-lambda deploy, status and destroy:")
    out(permissions.render(permissions.deployer_policy(*names)))
    out("# a user of the deployment (LambdaClient(..., backend=\"aws\")):")
    out(permissions.render(permissions.user_policy(*names)))
    out("# deploy --image, on top of the first (an ECR repository named after the function):")
    out(permissions.render(permissions.image_policy(target.function, target.region, account)))
