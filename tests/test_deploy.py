"""``dask-lambda deploy``, ``status`` and ``destroy`` against a local AWS API (ministack).

The commands run for real (the console script in a subprocess), as an IAM user that has
exactly the permissions the README documents (ministack enforces IAM); the test reads
back what they made with boto3 and the root credentials: the role's policy, the bucket's
settings, the trigger, the function, the signing key's secret. The built package is
opened and imported on its own.
"""

from __future__ import annotations

import io
import json
import re
import stat
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import boto3
import pytest
from dask_lambda_handler import env as handler_env

from dask_lambda.deploy import Target, bucket, deploy, iam, permissions
from dask_lambda.deploy import package as pkg
from dask_lambda.deployment import compat, names, states
from dask_lambda.errors import DeployError, PackageTooLargeError

from .aws_fixtures import (
    LOCAL_GLIBC,
    REGION,
    LambdaFake,
    aws_environment,
    boto,
    environment,
    iam_user,
    ministack,
    subprocess_env,
)

PYTHON = compat.local_python()
ACCOUNT = "000000000000"  # ministack's
README = Path(__file__).parent.parent / "README.md"
#: (bucket, prefix, function) of every deployment this module makes as the deployer.
DEPLOYMENTS = [("dl-made", "team", "dl-made"), ("dl-shared", "team", "dl-shared"),
               ("dl-made", "foreign", "dl-foreign"), ("dl-far", "", "dl-far"),
               ("dl-kms", "", "dl-kms"), ("dl-made", "team", "dl-missing")]


@pytest.fixture(scope="module")
def aws(request, tmp_path_factory):
    """ministack (IAM enforced), and a deployer with exactly the documented permissions."""
    home = tmp_path_factory.mktemp("deploy-home")
    with ministack(request.config, home) as endpoint:
        values = aws_environment(endpoint, request.config, home)
        with environment(values):
            deployer = iam_user("deployer", [permissions.deployer_policy(b, p, f, REGION, ACCOUNT)
                                             for b, p, f in DEPLOYMENTS], deployer=True)
            yield {"env": values, "home": home, "endpoint": endpoint, "deployer": deployer}


def cli(aws, *args: str, credentials: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``dask-lambda ARGS`` as the deployer (or with ``credentials``)."""
    env = {**aws["env"], **(credentials or aws["deployer"])}
    return subprocess.run(["dask-lambda", *args], capture_output=True, text=True, timeout=600,
                          env=subprocess_env(env))


def deploy_cli(aws, bucket: str, function: str, *extra: str) -> subprocess.CompletedProcess:
    out = cli(aws, "deploy", "--bucket", bucket, "--function", function, "--glibc",
              LOCAL_GLIBC, *extra)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def refused(aws, bucket: str, function: str, *extra: str) -> str:
    """Run a deploy that must stop; its error message."""
    out = cli(aws, "deploy", "--bucket", bucket, "--function", function, "--glibc",
              LOCAL_GLIBC, *extra)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.startswith("dask-lambda deploy: "), out.stderr
    return " ".join(out.stderr.split())


@pytest.fixture(scope="module")
def built(aws):
    """The package deploy builds for this machine (cached across the test modules)."""
    return pkg.build(pkg.PackageSpec(PYTHON, glibc=LOCAL_GLIBC), log=lambda line: None)


@pytest.fixture
def in_process(aws, monkeypatch):
    """Run deploy's own functions here, as the deployer, through a `LambdaFake`."""
    monkeypatch.setattr(states, "_POLL", 0.2)
    with LambdaFake(aws["endpoint"]) as fake, environment(
            {**aws["deployer"], "AWS_ENDPOINT_URL_LAMBDA": fake.url}):
        yield fake


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
        "from dask_lambda_handler import entry\n"
        "names = ['dask', 'cloudpickle', 'numpy', 'pandas', 'pyarrow', 's3fs', 'boto3',"
        " 'botocore', 'fsspec', 'dask-lambda']\n"
        "files = {m: importlib.import_module(m).__file__ for m in"
        " ['dask', 'numpy', 'pandas', 'pyarrow', 'cloudpickle', 'dask_lambda_handler']}\n"
        "print(json.dumps({'versions': {n: version(n) for n in names},"
        " 'ping': entry.handler({'op': 'ping'}, None), 'files': files}))\n")
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


def _attached(function: str) -> list[str]:
    return [p["PolicyArn"] for p in boto("iam").list_attached_role_policies(
        RoleName=names.role_name(function))["AttachedPolicies"]]


@pytest.fixture(scope="module")
def made(aws):
    """A deployment with the trigger, in a bucket deploy creates (the commands' output)."""
    return deploy_cli(aws, "s3://dl-made/team", "dl-made", "--memory", "512", "--timeout", "60",
                      "--trigger")


@pytest.fixture(scope="module")
def data_policy(aws):
    """A managed policy for the tasks' own data, to attach with --attach-policy."""
    return boto("iam").create_policy(PolicyName="dl-task-data", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                                "Resource": "arn:aws:s3:::data/*"}]}))[
        "Policy"]["Arn"]


def test_deploy_makes_a_least_privilege_role_a_safe_bucket_the_function_and_the_trigger(
        aws, made):
    out = made
    assert out.stdout.strip().splitlines()[-1] == (
        'Deployed. Use it: LambdaClient("s3://dl-made/team", backend="aws", '
        'function="dl-made", region="us-east-1", mode="trigger")')
    s3, lam, sm = boto("s3"), boto("lambda"), boto("secretsmanager")
    # the bucket (deploy created it: public access blocked, encryption on)
    block = s3.get_public_access_block(Bucket="dl-made")["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    rule = s3.get_bucket_encryption(Bucket="dl-made")["ServerSideEncryptionConfiguration"]
    assert rule["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    rules = s3.get_bucket_lifecycle_configuration(Bucket="dl-made")["Rules"]
    assert sorted(r["Filter"]["Prefix"] for r in rules) == \
        ["team/jobs/", "team/results/", "team/runs/"]
    assert {r["Expiration"]["Days"] for r in rules} == {names.EXPIRE_DAYS}
    # the signing key: in its secret and the key file, not in the function's configuration
    key_file = Path(aws["env"]["XDG_CONFIG_HOME"]) / "dask-lambda" / "dl-made.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    secret = sm.describe_secret(SecretId="dask-lambda/dl-made/signing-key")
    assert sm.get_secret_value(SecretId=secret["ARN"])["SecretString"] == key
    conf = lam.get_function_configuration(FunctionName="dl-made")
    assert key not in json.dumps(conf) and key not in json.dumps(lam.get_function(
        FunctionName="dl-made"))
    [current] = [v for v, stages in secret["VersionIdsToStages"].items() if "AWSCURRENT" in stages]
    assert conf["Environment"]["Variables"] == {
        handler_env.KEY_SECRET_ENV: secret["ARN"], handler_env.KEY_VERSION_ENV: current,
        handler_env.KEY_ID_ENV: handler_env.key_id(bytes.fromhex(key))}
    # the role: only the bucket's prefixes, the key and the function's log; never jobs/
    statements = _policy_statements("dl-made")
    assert statements == iam.handler_policy("dl-made", "team", "dl-made", "us-east-1",
                                            ACCOUNT, secret_arn=secret["ARN"])["Statement"]
    actions = {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str)
                                               else s["Action"])}
    assert actions == {"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload",
                       "s3:ListBucket", "logs:CreateLogStream", "logs:PutLogEvents",
                       "secretsmanager:GetSecretValue"}
    resources = [r for s in statements for r in ([s["Resource"]] if isinstance(s["Resource"], str)
                                                 else s["Resource"])]
    assert all(r.startswith(("arn:aws:s3:::dl-made", f"arn:aws:logs:us-east-1:{ACCOUNT}:"
                             "log-group:/aws/lambda/dl-made:")) or r == secret["ARN"]
               for r in resources)
    writes = [s for s in statements if "s3:PutObject" in s["Action"]]
    assert {(s["Effect"], s["Resource"]) for s in writes} == {
        ("Allow", "arn:aws:s3:::dl-made/team/results/*"),
        ("Deny", "arn:aws:s3:::dl-made/team/jobs/*")}
    trust = boto("iam").get_role(RoleName="dl-made-role")["Role"]["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}
    # the function
    assert (conf["Runtime"], conf["Handler"], conf["MemorySize"], conf["Timeout"]) == (
        f"python{PYTHON}", names.HANDLER, 512, 60)
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


def test_redeploy_updates_in_place_and_keeps_attached_policies(aws, made, data_policy):
    s3, lam = boto("s3"), boto("lambda")
    role = boto("iam").get_role(RoleName="dl-made-role")["Role"]["Arn"]
    variables = lam.get_function_configuration(FunctionName="dl-made")["Environment"]
    out = deploy_cli(aws, "s3://dl-made/team", "dl-made", "--memory", "1024", "--timeout", "60",
                     "--attach-policy", data_policy)
    assert "updated function dl-made" in out.stdout  # and no --trigger now
    assert f"role dl-made-role: attached {data_policy}" in out.stdout
    assert "uploading the package" not in out.stdout  # the same package is not sent again
    conf = lam.get_function_configuration(FunctionName="dl-made")
    assert conf["MemorySize"] == 1024 and conf["Environment"] == variables  # the same key
    assert boto("iam").get_role(RoleName="dl-made-role")["Role"]["Arn"] == role
    assert "LambdaFunctionConfigurations" not in s3.get_bucket_notification_configuration(
        Bucket="dl-made")
    assert [p for p in _permissions(lam, "dl-made")] == []
    assert len(s3.get_bucket_lifecycle_configuration(Bucket="dl-made")["Rules"]) == 3

    # a later deploy that does not repeat --attach-policy keeps the tasks' data access
    out = deploy_cli(aws, "s3://dl-made/team", "dl-made", "--memory", "1024", "--timeout", "60")
    assert "unchanged function dl-made" in out.stdout
    assert _attached("dl-made") == [data_policy]
    assert f"role dl-made-role: keeps {data_policy} (detach with --detach-policy ARN)" \
        in out.stdout
    names_ = [f["FunctionName"] for f in lam.list_functions()["Functions"]]
    assert names_.count("dl-made") == 1


def test_deploy_waits_for_an_update_in_progress(aws, made, in_process):
    """Lambda refuses an update while another is in progress (ResourceConflictException)."""
    in_process.updating("dl-made", reads=2)
    lines: list[str] = []
    result = deploy(Target("dl-made", "team", "dl-made", REGION), memory=1024, timeout=90,
                    glibc=LOCAL_GLIBC, out=lines.append)
    assert result["function"] == "updated"
    assert "waiting: the function dl-made is Active, an update is in progress" in lines
    assert not in_process.refused  # no update was sent while one was in progress
    assert boto("lambda").get_function_configuration(FunctionName="dl-made")["Timeout"] == 90


def test_status_and_deploy_wake_an_inactive_function(aws, made, in_process):
    """A function idle for weeks is Inactive: the first invoke fails and wakes it."""
    in_process.inactive("dl-made")
    lines: list[str] = []
    from dask_lambda.deploy import status

    assert status(Target("dl-made", "team", "dl-made", REGION), out=lines.append)
    assert "--  function dl-made was Inactive (no invocations for a long time)" in lines
    assert "the function dl-made is Inactive (The function is idle.): waking it" in lines
    assert lines[-1].startswith('Ready: LambdaClient("s3://dl-made/team"')
    assert in_process.refused == {("Invoke", "dl-made"): 1}

    in_process.inactive("dl-made")
    lines.clear()
    result = deploy(Target("dl-made", "team", "dl-made", REGION), memory=1024, timeout=90,
                    glibc=LOCAL_GLIBC, out=lines.append)
    assert result["function"] == "unchanged" and result["versions"] == compat.local_versions()
    assert in_process.refused == {("Invoke", "dl-made"): 2}


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


def test_rotate_key_replaces_it_everywhere_and_an_old_key_is_refused(aws, made, data_policy):
    from dask_lambda import LambdaClient
    from dask_lambda.errors import ConfigurationError

    key_file = Path(aws["env"]["XDG_CONFIG_HOME"]) / "dask-lambda" / "dl-made.key"
    old = key_file.read_text().strip()
    before = boto("lambda").get_function_configuration(FunctionName="dl-made")["Environment"][
        "Variables"]
    out = deploy_cli(aws, "s3://dl-made/team", "dl-made", "--memory", "1024", "--timeout", "90",
                     "--rotate-key", "--detach-policy", data_policy)
    assert "signing key: replaced by a new one (--rotate-key)" in out.stdout
    assert f"role dl-made-role: detached {data_policy}" in out.stdout
    assert _attached("dl-made") == []
    new = key_file.read_text().strip()
    after = boto("lambda").get_function_configuration(FunctionName="dl-made")["Environment"][
        "Variables"]
    assert new != old and boto("secretsmanager").get_secret_value(
        SecretId=after[handler_env.KEY_SECRET_ENV])["SecretString"] == new
    assert after[handler_env.KEY_VERSION_ENV] != before[handler_env.KEY_VERSION_ENV]
    assert after[handler_env.KEY_ID_ENV] == handler_env.key_id(bytes.fromhex(new))
    # a machine still holding the old key is told at once, not at its first task
    import dask

    with environment(aws["deployer"]), dask.config.set({"lambda.aws.signing-key": old}), \
            pytest.raises(ConfigurationError) as info:
        LambdaClient("s3://dl-made/team", backend="aws", function="dl-made",
                     dashboard_address=None)
    assert str(info.value).startswith(
        "the signing key this machine has for the Lambda function 'dl-made' (")
    assert "it was replaced on another machine (`dask-lambda deploy --rotate-key`)" \
        in str(info.value)


def test_a_key_left_in_the_functions_configuration_is_moved_and_replaced(aws, made):
    """What an upgrade meets: a function deployed with the key in its environment (readable
    by every user of the function) and no secret."""
    lam, sm = boto("lambda"), boto("secretsmanager")
    sm.delete_secret(SecretId="dask-lambda/dl-made/signing-key", ForceDeleteWithoutRecovery=True)
    exposed = "ab" * 32
    lam.update_function_configuration(FunctionName="dl-made", Environment={
        "Variables": {"DASK_LAMBDA_SIGNING_KEY": exposed}})
    states.wait_ready(lam, "dl-made")
    out = cli(aws, "status", "--bucket", "s3://dl-made/team", "--function", "dl-made")
    assert out.returncode == 1
    assert "NO    the signing key is in the function's configuration, which every user of the " \
           "function may read: deploy again to move it to Secrets Manager (and replace it)" \
        in out.stdout
    out = deploy_cli(aws, "s3://dl-made/team", "dl-made", "--memory", "1024", "--timeout", "90")
    assert "signing key: the old one was in the function's configuration, which every user of " \
           "the function may read; replaced by a new one, kept in Secrets Manager" in out.stdout
    variables = lam.get_function_configuration(FunctionName="dl-made")["Environment"]["Variables"]
    assert "DASK_LAMBDA_SIGNING_KEY" not in variables
    key = sm.get_secret_value(SecretId=variables[handler_env.KEY_SECRET_ENV])["SecretString"]
    assert key != exposed and key == (Path(aws["env"]["XDG_CONFIG_HOME"]) / "dask-lambda" /
                                      "dl-made.key").read_text().strip()


def test_the_role_is_what_lets_the_function_read_its_key(aws, made):
    """Without secretsmanager:GetSecretValue in its role the function cannot read the key:
    status says so (the ping reports it), and deploy gives the role its policy back."""
    iam_, lam = boto("iam"), boto("lambda")
    statements = [s for s in _policy_statements("dl-made") if s["Sid"] != "ReadSigningKey"]
    iam_.put_role_policy(RoleName="dl-made-role", PolicyName=names.POLICY_NAME,
                         PolicyDocument=json.dumps({"Version": "2012-10-17",
                                                    "Statement": statements}))
    # any configuration change makes new execution environments (ministack: a worker change)
    lam.update_function_configuration(FunctionName="dl-made", Timeout=91)
    states.wait_ready(lam, "dl-made")
    out = cli(aws, "status", "--bucket", "s3://dl-made/team", "--function", "dl-made")
    assert out.returncode == 1
    secret = lam.get_function_configuration(FunctionName="dl-made")["Environment"]["Variables"][
        handler_env.KEY_SECRET_ENV]
    assert "NO    the function cannot use its signing key: the function could not read its " \
           f"signing key from the secret {secret} (version " in out.stdout
    assert "AccessDeniedException: allow secretsmanager:GetSecretValue on it in the role's " \
           "policy, or run `dask-lambda deploy` again, which grants it" in out.stdout
    out = deploy_cli(aws, "s3://dl-made/team", "dl-made", "--memory", "1024", "--timeout", "90")
    assert f"role dl-made-role: inline policy {names.POLICY_NAME} updated" in out.stdout
    out = cli(aws, "status", "--bucket", "s3://dl-made/team", "--function", "dl-made")
    assert out.returncode == 0 and "ok    the function can read its signing key" in out.stdout


def test_a_role_deploy_did_not_make_is_left_alone(aws, made):
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}
    boto("iam").create_role(RoleName="dl-foreign-role", AssumeRolePolicyDocument=json.dumps(trust))
    message = refused(aws, "s3://dl-made/foreign", "dl-foreign")
    assert "an IAM role 'dl-foreign-role' exists that dask-lambda deploy did not make" in message
    assert "`dask-lambda deploy ... --function dl-foreign-dask` uses the role " \
           "dl-foreign-dask-role" in message
    role = boto("iam").get_role(RoleName="dl-foreign-role")["Role"]
    doc = role["AssumeRolePolicyDocument"]
    assert (json.loads(doc) if isinstance(doc, str) else doc) == trust  # untouched
    assert boto("iam").list_role_policies(RoleName="dl-foreign-role")["PolicyNames"] == []
    # nothing else was made either
    assert "dl-foreign" not in {f["FunctionName"] for f in
                                boto("lambda").list_functions()["Functions"]}
    assert not (Path(aws["env"]["XDG_CONFIG_HOME"]) / "dask-lambda" / "dl-foreign.key").exists()


def test_a_bucket_in_another_region_is_refused(aws):
    """botocore follows the bucket into its region, so HeadBucket succeeds: its
    BucketRegion says where the bucket is (the function's code must be in its region)."""
    boto("s3").create_bucket(Bucket="dl-far",
                             CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    message = refused(aws, "s3://dl-far", "dl-far")
    assert message == (
        "dask-lambda deploy: the bucket 'dl-far' is in region eu-west-1, not us-east-1: the "
        "function must be in the bucket's region. Deploy there (`dask-lambda deploy --bucket "
        "s3://dl-far --function dl-far --region eu-west-1`), or use a bucket in us-east-1")
    assert "dl-far" not in {f["FunctionName"] for f in boto("lambda").list_functions()["Functions"]}


def test_an_existing_sse_kms_bucket_keeps_its_settings_and_the_role_may_use_its_key(aws):
    s3, kms = boto("s3"), boto("kms")
    s3.create_bucket(Bucket="dl-kms")
    key = kms.create_key(Description="the team's bucket key")["KeyMetadata"]
    kms.create_alias(AliasName="alias/dl-team", TargetKeyId=key["KeyId"])
    encryption = {"Rules": [{"ApplyServerSideEncryptionByDefault": {
        "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/dl-team"}}]}
    s3.put_bucket_encryption(Bucket="dl-kms", ServerSideEncryptionConfiguration=encryption)
    # the team publishes some objects of this bucket: its public access is theirs to decide
    public = {"BlockPublicAcls": False, "IgnorePublicAcls": False, "BlockPublicPolicy": False,
              "RestrictPublicBuckets": False}
    s3.put_public_access_block(Bucket="dl-kms", PublicAccessBlockConfiguration=public)

    out = deploy_cli(aws, "s3://dl-kms", "dl-kms")
    assert "bucket dl-kms: public access and encryption settings left as they are (deploy did " \
           "not create it)" in out.stdout
    assert f"bucket dl-kms encrypts with the KMS key {key['Arn']}: the role may use it through " \
           "S3; users of this deployment need kms:GenerateDataKey and kms:Decrypt on it too" \
           in out.stdout
    [grant] = [s for s in _policy_statements("dl-kms") if s.get("Sid") == "BucketKmsKey"]
    assert grant == {"Sid": "BucketKmsKey", "Effect": "Allow",
                     "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": key["Arn"],
                     "Condition": {"StringEquals": {
                         "kms:ViaService": "s3.us-east-1.amazonaws.com"}}}
    # the bucket's own settings are the team's: its public access block and its key are kept
    assert s3.get_public_access_block(Bucket="dl-kms")["PublicAccessBlockConfiguration"] == \
        public
    assert s3.get_bucket_encryption(Bucket="dl-kms")[
        "ServerSideEncryptionConfiguration"]["Rules"][0]["ApplyServerSideEncryptionByDefault"] == \
        encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"]


def test_lifecycle_rewrite_keeps_the_buckets_other_lifecycle_settings(aws):
    """PutBucketLifecycleConfiguration without TransitionDefaultMinimumObjectSize resets it
    to S3's default. (ministack and moto do not keep the setting: S3's answer is played by
    a hook, and the request deploy sends is read back.)"""
    s3 = boto("s3")
    s3.create_bucket(Bucket="dl-lifecycle")
    s3.put_bucket_lifecycle_configuration(Bucket="dl-lifecycle", LifecycleConfiguration={
        "Rules": [{"ID": "team-rule", "Status": "Enabled", "Filter": {"Prefix": "tmp/"},
                   "Expiration": {"Days": 7}}]})
    sent: list[dict] = []

    def as_s3_answers(parsed, **kwargs):
        parsed["TransitionDefaultMinimumObjectSize"] = "varies_by_storage_class"

    s3.meta.events.register("after-call.s3.GetBucketLifecycleConfiguration", as_s3_answers)
    s3.meta.events.register("provide-client-params.s3.PutBucketLifecycleConfiguration",
                            lambda params, **kwargs: sent.append(dict(params)))
    bucket.configure(s3, "dl-lifecycle", "team", 3, secure=False)
    bucket.remove(s3, "dl-lifecycle", "team", "dl-lifecycle")
    assert [p.get("TransitionDefaultMinimumObjectSize") for p in sent] == \
        ["varies_by_storage_class"] * 2
    assert [r["ID"] for r in sent[0]["LifecycleConfiguration"]["Rules"]][0] == "team-rule"
    assert [r["ID"] for r in sent[1]["LifecycleConfiguration"]["Rules"]] == ["team-rule"]


def test_switching_between_zip_and_image_says_what_to_do(aws, made):
    message = refused(aws, "s3://dl-made/team", "dl-made", "--image",
                      f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/dl-made:latest")
    assert "the Lambda function 'dl-made' was deployed as a zip package, and Lambda cannot " \
           "switch an existing function to --image" in message
    assert "(`dask-lambda deploy ... --function dl-made-image`)" in message
    assert "`aws lambda delete-function --function-name dl-made`" in message
    assert boto("lambda").get_function_configuration(FunctionName="dl-made")[
        "PackageType"] == "Zip"


def test_a_deployer_without_list_tags_is_told_which_permission_is_missing(aws, made):
    policy = permissions.deployer_policy("dl-made", "team", "dl-made", REGION, ACCOUNT)
    for statement in policy["Statement"]:
        if statement["Sid"] == "Function":
            statement["Action"].remove("lambda:ListTags")
    out = cli(aws, "destroy", "--bucket", "s3://dl-made/team", "--function", "dl-made",
              credentials=iam_user("no-list-tags", [policy], deployer=True))
    assert out.returncode == 1
    message = " ".join(out.stderr.split())
    assert message.startswith("dask-lambda destroy: AWS refused lambda:ListTags on the function "
                              "'dl-made' (AccessDeniedException): deploy and destroy read its "
                              "tags")
    assert "Allow lambda:ListTags on it for these credentials" in message
    assert "dl-made" in {f["FunctionName"] for f in boto("lambda").list_functions()["Functions"]}


def test_a_refused_action_is_named_with_the_fix(aws, made):
    policy = permissions.deployer_policy("dl-made", "team", "dl-made", REGION, ACCOUNT)
    for statement in policy["Statement"]:
        if statement["Sid"] == "Bucket":
            statement["Action"].remove("s3:GetLifecycleConfiguration")
    out = cli(aws, "status", "--bucket", "s3://dl-made/team", "--function", "dl-made",
              credentials=iam_user("no-lifecycle", [policy], deployer=True))
    assert out.returncode == 1
    message = " ".join(out.stderr.split())
    assert message.startswith("dask-lambda status: AWS refused s3:GetLifecycleConfiguration "
                              "(GetBucketLifecycleConfiguration: AccessDenied")
    assert message.endswith("`dask-lambda permissions --bucket s3://dl-made/team --function "
                            "dl-made --region us-east-1` prints them for this deployment")


def test_the_readme_documents_the_permissions_the_tests_run_under(aws):
    """The README shows the policies the deployer and the users above run with (with
    placeholders), and `dask-lambda permissions` prints them filled in."""
    text = README.read_text()
    ph = permissions.PLACEHOLDERS
    args = (ph["bucket"], ph["prefix"], ph["function"], ph["region"], ph["account"])
    for policy in (permissions.deployer_policy(*args), permissions.user_policy(*args),
                   permissions.image_policy(ph["function"], ph["region"], ph["account"])):
        assert permissions.render(policy) in text
    out = cli(aws, "permissions", "--bucket", "s3://dl-made/team", "--function", "dl-made")
    assert out.returncode == 0, out.stderr
    assert permissions.render(permissions.deployer_policy(
        "dl-made", "team", "dl-made", REGION, ACCOUNT)) in out.stdout
    assert '"Resource": ["arn:aws:s3:::dl-made/team/jobs/*"' in out.stdout
    for action in re.findall(r"lambda:\w+|s3:\w+", json.dumps(permissions.ACTIONS)):
        assert action in json.dumps(permissions.deployer_policy(*args)), action


def test_the_handler_reads_its_key_once_and_names_the_fix_when_it_cannot(aws, monkeypatch):
    """handler/env.py as the function runs it: the secret version its configuration names."""
    from dask_lambda_handler import protocol
    from dask_lambda_handler.errors import SigningKeyError

    key = bytes(range(32))
    secret = boto("secretsmanager").create_secret(Name="dl-env-test", SecretString=key.hex())
    stranger = iam_user("stranger", [{"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}]}])
    monkeypatch.setattr(handler_env, "_cached", {})
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it keeps the first credentials
    monkeypatch.delenv(protocol.SIGNING_KEY_ENV, raising=False)
    for name, value in {**stranger, handler_env.KEY_SECRET_ENV: secret["ARN"],
                        handler_env.KEY_VERSION_ENV: secret["VersionId"],
                        handler_env.KEY_ID_ENV: handler_env.key_id(key)}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SigningKeyError) as info:
        handler_env.signing_key()  # a role without secretsmanager:GetSecretValue on it
    assert str(info.value) == (
        f"the function could not read its signing key from the secret {secret['ARN']} "
        f"(version {secret['VersionId']}): AccessDeniedException: allow "
        "secretsmanager:GetSecretValue on it in the role's policy, or run `dask-lambda deploy` "
        "again, which grants it")
    for name, value in aws["env"].items():  # root: may read it
        if name.startswith("AWS_ACCESS") or name.startswith("AWS_SECRET"):
            monkeypatch.setenv(name, value)
    boto3.DEFAULT_SESSION = None
    monkeypatch.setenv(handler_env.KEY_ID_ENV, "0" * 16)
    with pytest.raises(SigningKeyError, match="holds another key than the one the function's "
                                              "configuration names"):
        handler_env.signing_key()
    monkeypatch.setenv(handler_env.KEY_ID_ENV, handler_env.key_id(key))
    assert handler_env.signing_key() == key
    monkeypatch.setattr(handler_env, "_secrets_client", None)  # read once: no second request
    assert handler_env.signing_key() == key


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
    assert "deleted the secret dask-lambda/dl-shared/signing-key" in out.stdout
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
    secrets = {x["Name"] for x in boto("secretsmanager").list_secrets()["SecretList"]}
    assert "dask-lambda/dl-shared/signing-key" not in secrets
    assert "dask-lambda/dl-made/signing-key" in secrets
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
