"""``dask-lambda deploy``, ``status`` and ``destroy`` against a local AWS API (ministack).

The commands run for real (the console script in a subprocess); the test reads back
what they made with boto3: the role's policy, the bucket's settings, the trigger,
the function. The built package is opened and imported on its own.
"""

from __future__ import annotations

import io
import json
import stat
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from dask_lambda.deploy import Target, compat, deploy, iam, names
from dask_lambda.deploy import package as pkg
from dask_lambda.errors import DeployError, PackageTooLargeError

from .aws_fixtures import (
    LOCAL_GLIBC,
    aws_environment,
    boto,
    environment,
    ministack,
    subprocess_env,
)

PYTHON = compat.local_python()


@pytest.fixture(scope="module")
def aws(request, tmp_path_factory):
    home = tmp_path_factory.mktemp("deploy-home")
    with ministack(request.config, home) as endpoint:
        values = aws_environment(endpoint, request.config, home)
        with environment(values):
            yield {"env": values, "home": home}


def cli(aws, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dask-lambda", *args], capture_output=True, text=True, timeout=600,
                          env=subprocess_env(aws["env"]))


def deploy_cli(aws, bucket: str, function: str, *extra: str) -> subprocess.CompletedProcess:
    out = cli(aws, "deploy", "--bucket", bucket, "--function", function, "--glibc",
              LOCAL_GLIBC, *extra)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.fixture(scope="module")
def built(aws):
    """The package deploy builds for this machine (cached across the test modules)."""
    return pkg.build(pkg.PackageSpec(PYTHON, glibc=LOCAL_GLIBC), log=lambda line: None)


# -- the package ------------------------------------------------------------------------------


def test_package_imports_on_its_own_with_the_local_versions(built, tmp_path):
    assert built.zip_path is not None and built.unzipped_bytes <= names.UNZIPPED_LIMIT
    with zipfile.ZipFile(built.zip_path) as zf:
        entries = zf.namelist()
        zf.extractall(tmp_path / "task")
    assert "dask_lambda_handler/entry.py" in entries
    assert not [e for e in entries if "/tests/" in e or e.endswith(".pyi")]
    probe = (
        "import importlib, json, sys\n"
        f"sys.path.insert(0, {str(tmp_path / 'task')!r})\n"
        "from importlib.metadata import version\n"
        "import dask_lambda_handler.entry, dask.array, dask.dataframe, s3fs, boto3\n"
        "from dask_lambda_handler import runner\n"
        "names = ['dask', 'cloudpickle', 'numpy', 'pandas', 'pyarrow', 's3fs', 'boto3',"
        " 'botocore', 'fsspec', 'dask-lambda']\n"
        "files = {m: importlib.import_module(m).__file__ for m in"
        " ['dask', 'numpy', 'pandas', 'pyarrow', 'cloudpickle', 'dask_lambda_handler']}\n"
        "print(json.dumps({'versions': {n: version(n) for n in names},"
        " 'ping': runner.handle({'op': 'ping'}, None), 'files': files}))\n")
    # -I -S: no site-packages, no environment: only the standard library and the package
    out = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout)
    assert all(f.startswith(str(tmp_path / "task")) for f in found["files"].values())
    for name, there in found["versions"].items():
        assert there == version(name), name
    assert found["ping"]["versions"] == compat.local_versions()


def test_a_runtime_without_wheels_for_the_local_versions_is_a_clear_error():
    with pytest.raises(DeployError) as info:
        pkg.build(pkg.PackageSpec(PYTHON, glibc="2.17"), log=lambda line: None)
    message = str(info.value)
    assert "(the version installed here) has no wheel for Lambda's " \
           f"python{PYTHON} x86_64 runtime (manylinux, glibc <= 2.17)" in message
    assert "Run dask-lambda from Python 3.12 or newer" in message
    assert "then run `dask-lambda deploy` again" in message


def test_a_package_over_the_limit_writes_a_dockerfile_and_says_how_to_push_it(
        aws, built, monkeypatch):
    monkeypatch.setattr(names, "UNZIPPED_LIMIT", 50 * 2**20)
    with pytest.raises(PackageTooLargeError) as info:
        deploy(Target("dl-big", "", "dl-big", "us-east-1"), glibc=LOCAL_GLIBC,
               out=lambda line: None)
    message = str(info.value)
    assert f"the package is {built.unzipped_bytes / 2**20:.0f} MB unzipped, more than " \
           "Lambda's 50 MB for zip functions" in message
    assert "docker build --platform linux/amd64 -t " \
           "ACCOUNT.dkr.ecr.us-east-1.amazonaws.com/dl-big:latest" in message
    assert "dask-lambda deploy --bucket s3://dl-big --function dl-big --region us-east-1 " \
           "--image ACCOUNT.dkr.ecr.us-east-1.amazonaws.com/dl-big:latest" in message
    dockerfile = Path(info.value.dockerfile).read_text()
    assert f"FROM public.ecr.aws/lambda/python:{PYTHON}" in dockerfile
    assert f'CMD ["{names.HANDLER}"]' in dockerfile
    requirements = (Path(info.value.dockerfile).parent / "requirements.txt").read_text()
    for name in ("dask", "cloudpickle", "numpy", "pandas", "pyarrow", "s3fs", "botocore"):
        assert f"{name}=={version(name)}" in requirements.splitlines()  # every one pinned
    assert (Path(info.value.dockerfile).parent / "task" / "dask_lambda_handler").is_dir()
    with environment(aws["env"]):  # nothing was created
        assert "dl-big" not in [b["Name"] for b in boto("s3").list_buckets()["Buckets"]]


def test_bad_arguments_show_the_corrected_command(aws):
    out = cli(aws, "deploy", "--bucket", "s3://dl-x", "--memory", "64")
    assert out.returncode == 1
    assert "--memory 64 is outside Lambda's 128-10240 MB: e.g. " \
           "`dask-lambda deploy --bucket s3://dl-x --region us-east-1 --memory 2048`" in out.stderr


# -- deploy, redeploy, status, destroy -------------------------------------------------------------


def _permissions(lam, function: str) -> list[dict]:
    try:
        return json.loads(lam.get_policy(FunctionName=function)["Policy"])["Statement"]
    except lam.exceptions.ResourceNotFoundException:
        return []


def _policy_statements(function: str) -> list[dict]:
    doc = boto("iam").get_role_policy(RoleName=names.role_name(function),
                                      PolicyName=names.POLICY_NAME)["PolicyDocument"]
    return (json.loads(doc) if isinstance(doc, str) else doc)["Statement"]


@pytest.fixture(scope="module")
def made(aws):
    """A deployment with the trigger, in a bucket deploy creates (the commands' output)."""
    return deploy_cli(aws, "s3://dl-made/team", "dl-made", "--memory", "512", "--timeout", "60",
                      "--trigger")


def test_deploy_makes_a_least_privilege_role_a_safe_bucket_the_function_and_the_trigger(
        aws, made):
    out = made
    assert out.stdout.strip().splitlines()[-1] == (
        'Deployed. Use it: LambdaClient("s3://dl-made/team", backend="aws", '
        'function="dl-made", region="us-east-1", mode="trigger")')
    s3, lam = boto("s3"), boto("lambda")
    # the bucket
    block = s3.get_public_access_block(Bucket="dl-made")["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    rule = s3.get_bucket_encryption(Bucket="dl-made")["ServerSideEncryptionConfiguration"]
    assert rule["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    rules = s3.get_bucket_lifecycle_configuration(Bucket="dl-made")["Rules"]
    assert sorted(r["Filter"]["Prefix"] for r in rules) == \
        ["team/jobs/", "team/results/", "team/runs/"]
    assert {r["Expiration"]["Days"] for r in rules} == {names.EXPIRE_DAYS}
    # the role: only the bucket's prefixes and the function's log; never a write to jobs/
    statements = _policy_statements("dl-made")
    assert statements == iam.handler_policy("dl-made", "team", "dl-made", "us-east-1",
                                            "000000000000")["Statement"]
    actions = {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str)
                                               else s["Action"])}
    assert actions == {"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload",
                       "s3:ListBucket", "logs:CreateLogStream", "logs:PutLogEvents"}
    resources = [r for s in statements for r in ([s["Resource"]] if isinstance(s["Resource"], str)
                                                 else s["Resource"])]
    assert all(r.startswith(("arn:aws:s3:::dl-made", "arn:aws:logs:us-east-1:000000000000:"
                             "log-group:/aws/lambda/dl-made:")) for r in resources)
    writes = [s for s in statements if "s3:PutObject" in s["Action"]]
    assert {(s["Effect"], s["Resource"]) for s in writes} == {
        ("Allow", "arn:aws:s3:::dl-made/team/results/*"),
        ("Deny", "arn:aws:s3:::dl-made/team/jobs/*")}
    trust = boto("iam").get_role(RoleName="dl-made-role")["Role"]["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}
    # the function, and its key
    conf = lam.get_function_configuration(FunctionName="dl-made")
    assert (conf["Runtime"], conf["Handler"], conf["MemorySize"], conf["Timeout"]) == (
        f"python{PYTHON}", names.HANDLER, 512, 60)
    key_file = Path(aws["env"]["XDG_CONFIG_HOME"]) / "dask-lambda" / "dl-made.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert conf["Environment"]["Variables"] == {"DASK_LAMBDA_SIGNING_KEY":
                                                key_file.read_text().strip()}
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="dl-made").get("Contents", [])]
    assert keys == ["team/deploy/dl-made.zip"]  # the key is not in the bucket
    # the trigger
    notification = s3.get_bucket_notification_configuration(Bucket="dl-made")
    [entry] = notification["LambdaFunctionConfigurations"]
    assert entry["LambdaFunctionArn"] == conf["FunctionArn"]
    assert entry["Events"] == ["s3:ObjectCreated:*"]
    assert {r["Name"].lower(): r["Value"] for r in entry["Filter"]["Key"]["FilterRules"]} == \
        {"prefix": "team/jobs/", "suffix": ".trigger.job"}
    [permission] = json.loads(lam.get_policy(FunctionName="dl-made")["Policy"])["Statement"]
    assert permission["Principal"] == {"Service": "s3.amazonaws.com"}
    assert permission["Condition"]["ArnLike"]["AWS:SourceArn"] == "arn:aws:s3:::dl-made"
    assert lam.get_function_event_invoke_config(FunctionName="dl-made")[
        "MaximumRetryAttempts"] == 0
    groups = boto("logs").describe_log_groups(logGroupNamePrefix="/aws/lambda/dl-made")
    assert [(g["logGroupName"], g.get("retentionInDays")) for g in groups["logGroups"]] == \
        [("/aws/lambda/dl-made", names.LOG_RETENTION_DAYS)]


def test_redeploy_updates_in_place(aws, made):
    s3, lam = boto("s3"), boto("lambda")
    role = boto("iam").get_role(RoleName="dl-made-role")["Role"]["Arn"]
    key = lam.get_function_configuration(FunctionName="dl-made")["Environment"]["Variables"]

    out = deploy_cli(aws, "s3://dl-made/team", "dl-made", "--memory", "1024", "--timeout", "60")
    assert "updated function dl-made" in out.stdout  # and no --trigger now
    assert "uploading the package" not in out.stdout  # the same package is not sent again
    conf = lam.get_function_configuration(FunctionName="dl-made")
    assert conf["MemorySize"] == 1024 and conf["Environment"]["Variables"] == key
    assert boto("iam").get_role(RoleName="dl-made-role")["Role"]["Arn"] == role
    assert "LambdaFunctionConfigurations" not in s3.get_bucket_notification_configuration(
        Bucket="dl-made")
    assert [p for p in _permissions(lam, "dl-made")] == []
    assert len(s3.get_bucket_lifecycle_configuration(Bucket="dl-made")["Rules"]) == 3

    out = deploy_cli(aws, "s3://dl-made/team", "dl-made", "--memory", "1024", "--timeout", "60")
    assert "unchanged function dl-made" in out.stdout
    names_ = [f["FunctionName"] for f in lam.list_functions()["Functions"]]
    assert names_.count("dl-made") == 1


def test_status_says_what_exists_and_how_to_fix_it(aws, made):
    out = cli(aws, "status", "--bucket", "s3://dl-made/team", "--function", "dl-made")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok    handler matches this environment" in out.stdout
    assert "ok    signing key" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == (
        'Ready: LambdaClient("s3://dl-made/team", backend="aws", function="dl-made", '
        'region="us-east-1")')
    out = cli(aws, "status", "--bucket", "s3://dl-made/team", "--function", "dl-missing")
    assert out.returncode == 1
    assert "NO  function dl-missing" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == (
        "Not ready. Fix it with `dask-lambda deploy --bucket s3://dl-made/team --function "
        "dl-missing --region us-east-1` (add --trigger for mode=\"trigger\")")


def test_destroy_removes_exactly_what_deploy_made(aws, made):
    s3, lam, iam_ = boto("s3"), boto("lambda"), boto("iam")
    # someone else's things: a bucket with data and a lifecycle rule, a role, a function
    s3.create_bucket(Bucket="dl-shared")
    s3.put_object(Bucket="dl-shared", Key="data/keep.csv", Body=b"a,b\n1,2\n")
    s3.put_bucket_lifecycle_configuration(Bucket="dl-shared", LifecycleConfiguration={"Rules": [
        {"ID": "user-rule", "Status": "Enabled", "Filter": {"Prefix": "tmp/"},
         "Expiration": {"Days": 7}}]})
    other_role = iam_.create_role(RoleName="other-role", AssumeRolePolicyDocument=json.dumps(
        iam.TRUST_POLICY))["Role"]["Arn"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("h.py", "def handler(event, context):\n    return 1\n")
    lam.create_function(FunctionName="other-fn", Runtime=f"python{PYTHON}", Role=other_role,
                        Handler="h.handler", Code={"ZipFile": buf.getvalue()})

    deploy_cli(aws, "s3://dl-shared/team", "dl-shared", "--trigger")
    out = cli(aws, "destroy", "--bucket", "s3://dl-shared/team", "--function", "dl-shared")
    assert out.returncode == 0, out.stderr
    assert "deleted the function dl-shared" in out.stdout
    assert "kept the bucket" not in out.stdout  # deploy did not create it
    functions = {f["FunctionName"] for f in lam.list_functions()["Functions"]}
    assert "dl-shared" not in functions and {"other-fn", "dl-made"} <= functions
    roles = {r["RoleName"] for r in iam_.list_roles()["Roles"]}
    assert "dl-shared-role" not in roles and {"other-role", "dl-made-role"} <= roles
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="dl-shared")["Contents"]] == \
        ["data/keep.csv"]
    assert [r["ID"] for r in s3.get_bucket_lifecycle_configuration(Bucket="dl-shared")[
        "Rules"]] == ["user-rule"]
    assert "LambdaFunctionConfigurations" not in s3.get_bucket_notification_configuration(
        Bucket="dl-shared")
    assert boto("logs").describe_log_groups(
        logGroupNamePrefix="/aws/lambda/dl-shared")["logGroups"] == []
    assert not (Path(aws["env"]["XDG_CONFIG_HOME"]) / "dask-lambda" / "dl-shared.key").exists()

    out = cli(aws, "destroy", "--bucket", "s3://dl-shared/team", "--function", "dl-shared")
    assert out.returncode == 0
    assert out.stdout.startswith("nothing to remove: no dask-lambda deployment found for "
                                 "s3://dl-shared/team and dl-shared")

    out = cli(aws, "destroy", "--bucket", "s3://dl-made/team", "--function", "dl-made")
    assert "deleted the bucket dl-made" in out.stdout  # deploy made it, and it is empty now
    buckets = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert "dl-made" not in buckets and "dl-shared" in buckets
    assert "dl-made-role" not in {r["RoleName"] for r in iam_.list_roles()["Roles"]}
