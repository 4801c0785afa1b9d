"""Preflight against a real AWS emulator: moto_server on 127.0.0.1, started and stopped here.

Moto has no Service Quotas for ec2 and no capacity reservations, so those two calls are
stubbed (botocore Stubber for the service-quotas client; a botocore before-call handler
for ec2 DescribeCapacityReservations only). Everything else is moto answering real calls.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from botocore.stub import Stubber

from infra.account_check import compute as ac_compute
from infra.account_check import model as ac_model
from infra.account_check import run as ac_run
from infra.catalog import load_catalog
from infra.stack.files import load_config
from infra.stack.resolve import resolve
from tests.moto_fixtures import DUMMY_CREDS, REGION, MotoServer, dlami

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "llmfleet-weights-test"
PREFIX = "deepseek-r1/"
SHARDS = 5
SHARD_BYTES = 64 * 1024
AMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20250601"


@pytest.fixture(scope="module")
def moto():
    amis = [
        dlami(
            "ami-00000000000000001",
            "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20240101",
            "2024-01-01T00:00:00.000Z",
        ),
        dlami("ami-00000000000000002", AMI_NAME, "2025-06-01T00:00:00.000Z"),
        dlami(
            "ami-00000000000000003", "ubuntu-jammy-22.04-amd64-server-20250601", "2025-06-01T00:00:00.000Z"
        ),
    ]
    with MotoServer(amis=amis) as server:
        yield server


@pytest.fixture(autouse=True)
def creds(monkeypatch):
    for k, v in DUMMY_CREDS.items():
        monkeypatch.setenv(k, v)


def _shard(i: int) -> str:
    return f"model-{i + 1:05d}-of-{SHARDS:06d}.safetensors"


@pytest.fixture
def account(moto):
    """A seeded account: weight shards + index, a running GPU and a running CPU instance."""
    moto.reset()
    s3, ec2 = moto.client("s3"), moto.client("ec2")
    s3.create_bucket(Bucket=BUCKET)
    index = {"metadata": {}, "weight_map": {f"layer.{i}.w": _shard(i) for i in range(SHARDS)}}
    for i in range(SHARDS):
        s3.put_object(Bucket=BUCKET, Key=PREFIX + _shard(i), Body=b"\0" * SHARD_BYTES)
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "model.safetensors.index.json", Body=json.dumps(index).encode())
    ec2.run_instances(ImageId="ami-00000000000000002", InstanceType="g6e.12xlarge", MinCount=1, MaxCount=1)
    ec2.run_instances(ImageId="ami-00000000000000002", InstanceType="m7i.xlarge", MinCount=1, MaxCount=1)
    return moto


def _weights_total(s3) -> int:
    return sum(o["Size"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)["Contents"])


def prod_config(**overrides: str):
    """The prod stack's own config (stacks/Pulumi.prod.yaml + Pulumi.yaml defaults) + test overrides."""
    return load_config("prod", [f"{k}={v}" for k, v in overrides.items()])


def quota_client(values: dict[str, float]):
    """A real service-quotas client whose answers come from a Stubber (moto has no ec2 quotas)."""
    import boto3

    client = boto3.client("service-quotas", region_name=REGION)
    stub = Stubber(client)
    for code, value in values.items():
        stub.add_response(
            "get_service_quota",
            {
                "Quota": {
                    "ServiceCode": "ec2",
                    "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
                    "QuotaArn": f"arn:aws:servicequotas:{REGION}:123456789012:ec2/{code}",
                    "QuotaCode": code,
                    "QuotaName": dict(ac_model.QUOTAS.values()).get(code, code),
                    "Value": value,
                    "Unit": "None",
                    "Adjustable": True,
                    "GlobalQuota": False,
                }
            },
            {"ServiceCode": "ec2", "QuotaCode": code},
        )
    stub.activate()
    return client, stub


def fake_reservations(ec2, reservations: list[dict]) -> None:
    """Answer ec2 DescribeCapacityReservations (which moto lacks) from a table, as AWS would."""
    model = ec2.meta.service_model.operation_model("DescribeCapacityReservations")
    from botocore.awsrequest import AWSResponse
    from botocore.validate import validate_parameters

    def handler(params, **_):
        # before-call sees the serialized EC2 query body: CapacityReservationId.1, .2, ...
        body = params["body"]
        ids = [v for k, v in sorted(body.items()) if k.startswith("CapacityReservationId.")]
        found = [r for r in reservations if r["CapacityReservationId"] in ids]
        if len(found) != len(ids):
            missing = next(i for i in ids if i not in {r["CapacityReservationId"] for r in found})
            err = {
                "Error": {
                    "Code": "InvalidCapacityReservationId.NotFound",
                    "Message": f"The capacity reservation ID '{missing}' does not exist",
                }
            }
            return AWSResponse(ec2.meta.endpoint_url, 400, {}, None), err
        body = {"CapacityReservations": found}
        validate_parameters(body, model.output_shape)
        return AWSResponse(ec2.meta.endpoint_url, 200, {}, None), body

    ec2.meta.events.register("before-call.ec2.DescribeCapacityReservations", handler)


def reservation(rid: str, itype: str = "g6e.48xlarge", az: str = "us-east-1a", free: int = 4) -> dict:
    return {
        "CapacityReservationId": rid,
        "InstanceType": itype,
        "InstancePlatform": "Linux/UNIX",
        "AvailabilityZone": az,
        "TotalInstanceCount": free,
        "AvailableInstanceCount": free,
        "State": "active",
    }


def run(
    moto, inputs: ac_model.PreflightInputs, quotas: dict[str, float], reservations=()
) -> dict[str, ac_model.Check]:
    sq, stub = quota_client(quotas)
    ec2 = moto.client("ec2")
    fake_reservations(ec2, list(reservations))
    checks = ac_run.run_checks(inputs, ac_model.Clients(ec2=ec2, s3=moto.client("s3"), service_quotas=sq))
    stub.assert_no_pending_responses()
    return {c.name: c for c in checks}


def prod_inputs(account, **cfg_overrides: str) -> ac_model.PreflightInputs:
    """The prod stack's inputs, with the weights pointed at the seeded test prefix.

    The seeded shards cannot be 642 GiB, so the expected size is the seeded total: the
    size arithmetic against the real model card is tested in test_prod_inputs_expect_model_card_size.
    """
    cfg = prod_config(**{"llmfleet:weightsUri": f"s3://{BUCKET}/{PREFIX}", **cfg_overrides})
    return dataclasses.replace(
        ac_model.inputs_for_stack(cfg), expected_weights_bytes=_weights_total(account.client("s3"))
    )


GPU_OK = {"L-DB2E81BA": 2000.0, "L-1216C47A": 64.0}


def test_prod_inputs_expect_model_card_size():
    cfg = prod_config()
    inp = ac_model.inputs_for_stack(cfg)
    model = load_catalog().models[cfg.model]
    assert inp.expected_weights_bytes == int(model.checkpoint_gib * 1024**3)
    assert cfg.model == "deepseek-r1" and round(inp.expected_weights_bytes / 1024**3) == 642
    inst = load_catalog().instances[cfg.gpu_instance_type]
    assert inp.vcpus_needed == inst.vcpus * resolve(cfg).workers
    assert inp.quota_family == inst.quota_family


def test_prod_stack_passes_on_seeded_account(account):
    inp = prod_inputs(account, **{"llmfleet:availabilityZone": "us-east-1a"})
    checks = run(account, inp, GPU_OK)
    assert {c.status for c in checks.values()} == {"pass"}, [c for c in checks.values() if c.status != "pass"]
    assert ac_run.exit_code(checks.values()) == 0
    assert set(checks) >= {"instance-type-offered", "gpu-facts", "gpu-quota", "ami", "weights"}
    # The newest image matching the shared filter wins over older and unrelated ones.
    assert "ami-00000000000000002" in checks["ami"].message
    # 48 vCPUs of the running g6e.12xlarge count against the same quota.
    assert "(48 in use)" in checks["gpu-quota"].message


def test_type_not_offered_in_az(account):
    checks = run(account, prod_inputs(account, **{"llmfleet:availabilityZone": "us-east-1e"}), GPU_OK)
    c = checks["instance-type-offered"]
    assert c.status == "fail"
    assert "not offered in us-east-1e" in c.message and "us-east-1a" in c.message
    assert ac_run.exit_code(checks.values()) == 1


def test_no_az_lists_offering_zones(account):
    checks = run(account, prod_inputs(account), GPU_OK)
    c = checks["instance-type-offered"]
    assert c.status == "pass" and "us-east-1d" in c.message and "us-east-1e" not in c.message


def test_quota_too_low(account):
    inp = prod_inputs(account)
    # Exactly what the plan needs, but the running g6e.12xlarge already holds 48 vCPUs of it.
    checks = run(account, inp, {"L-DB2E81BA": float(inp.vcpus_needed), "L-1216C47A": 64.0})
    c = checks["gpu-quota"]
    assert c.status == "fail"
    assert "L-DB2E81BA" in c.message and f"needs {inp.vcpus_needed}" in c.message
    assert f"--desired-value {inp.vcpus_needed + 48}" in c.message
    assert ac_run.exit_code(checks.values()) == 1


def test_spot_uses_spot_quota(account):
    inp = prod_inputs(account, **{"llmfleet:spot": "true"})
    # The Stubber's expected_params fail the call unless the spot code is asked for.
    checks = run(account, inp, {"L-3819A6DF": 10_000.0, "L-1216C47A": 64.0})
    assert checks["gpu-quota"].status == "pass" and "L-3819A6DF" in checks["gpu-quota"].message
    assert "(0 in use)" in checks["gpu-quota"].message  # on-demand instances do not count against spot


def test_head_quota_only_warns(account):
    checks = run(account, prod_inputs(account), {"L-DB2E81BA": 2000.0, "L-1216C47A": 4.0})
    assert checks["head-quota"].status == "warn" and "L-1216C47A" in checks["head-quota"].message
    assert ac_run.exit_code(checks.values()) == 0


def test_missing_weights_prefix(account):
    inp = dataclasses.replace(prod_inputs(account), weights_uri=f"s3://{BUCKET}/nothing-here/")
    c = run(account, inp, GPU_OK)["weights"]
    assert c.status == "fail"
    assert c.message == (
        f"s3://{BUCKET}/nothing-here/ holds no objects: upload the weights "
        f"(aws s3 sync <local checkpoint dir> s3://{BUCKET}/nothing-here/)"
    )


def test_missing_bucket(account):
    inp = dataclasses.replace(prod_inputs(account), weights_uri="s3://no-such-bucket-xyz/r1/")
    c = run(account, inp, GPU_OK)["weights"]
    assert c.status == "fail" and "NoSuchBucket" in c.message


def test_weights_twenty_percent_short(account):
    inp = prod_inputs(account)
    # The index is not uploaded yet here, so only the size can tell: 4 of 5 equal shards = 80 %.
    s3 = account.client("s3")
    s3.delete_object(Bucket=BUCKET, Key=PREFIX + "model.safetensors.index.json")
    s3.delete_object(Bucket=BUCKET, Key=PREFIX + _shard(4))
    inp = dataclasses.replace(inp, expected_weights_bytes=SHARDS * SHARD_BYTES)
    c = run(account, inp, GPU_OK)["weights"]
    assert c.status == "fail"
    assert "expected" in c.message and "±5%" in c.message and "finish the upload" in c.message
    held = 4 * SHARD_BYTES / 1024**3
    assert f"holds {held:.1f} GiB in 4 objects" in c.message


def test_weights_within_tolerance_pass(account):
    inp = prod_inputs(account)
    inp = dataclasses.replace(inp, expected_weights_bytes=int(inp.expected_weights_bytes * 1.04))
    assert run(account, inp, GPU_OK)["weights"].status == "pass"


def test_index_names_a_missing_shard(account):
    inp = prod_inputs(account)
    account.client("s3").delete_object(Bucket=BUCKET, Key=PREFIX + _shard(2))
    inp = dataclasses.replace(inp, expected_weights_bytes=None)
    c = run(account, inp, GPU_OK)["weights"]
    assert c.status == "fail" and f"{_shard(2)} missing" in c.message


def test_manifest_size_mismatch(account):
    s3 = account.client("s3")
    manifest = {"files": [{"path": _shard(i), "size": SHARD_BYTES} for i in range(SHARDS)]}
    manifest["files"][1]["size"] = SHARD_BYTES + 1
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "manifest.json", Body=json.dumps(manifest).encode())
    inp = prod_inputs(account)
    c = run(account, inp, GPU_OK)["weights"]
    assert (
        c.status == "fail"
        and f"{_shard(1)} is {SHARD_BYTES} bytes, manifest says {SHARD_BYTES + 1}" in c.message
    )


def test_wrong_reservation_id(account):
    inp = prod_inputs(
        account,
        **{
            "llmfleet:availabilityZone": "us-east-1a",
            "llmfleet:capacityReservationId": "cr-0badbadbadbadbad0",
        },
    )
    c = run(account, inp, GPU_OK, [reservation("cr-0123456789abcdef0")])["capacity-reservation"]
    assert c.status == "fail"
    assert c.message.startswith("cr-0badbadbadbadbad0 not found (InvalidCapacityReservationId.NotFound")


def test_matching_reservation_passes_and_mismatch_fails(account):
    rid = "cr-0123456789abcdef0"
    inp = prod_inputs(
        account, **{"llmfleet:availabilityZone": "us-east-1a", "llmfleet:capacityReservationId": rid}
    )
    ok = run(account, inp, GPU_OK, [reservation(rid, free=inp.workers)])["capacity-reservation"]
    assert ok.status == "pass"
    bad = run(account, inp, GPU_OK, [reservation(rid, itype="p5.48xlarge", az="us-east-1b", free=0)])
    msg = bad["capacity-reservation"].message
    assert bad["capacity-reservation"].status == "fail"
    assert "reserves p5.48xlarge" in msg and "us-east-1b" in msg and "0 instances free" in msg


def test_gpu_facts_differ_warns(account):
    inp = dataclasses.replace(prod_inputs(account), expected_gpu_mib=46068, expected_gpu="L20")
    checks = run(account, inp, GPU_OK)
    c = checks["gpu-facts"]
    assert c.status == "warn" and "model L40S vs catalog L20" in c.message and "45776 MiB" in c.message
    assert ac_run.exit_code(checks.values()) == 0


def test_ami_missing(account):
    inp = prod_inputs(account)
    args = {**inp.ami_describe_args, "Filters": [{"Name": "name", "Values": ["No Such AMI *"]}]}
    c = run(account, dataclasses.replace(inp, ami_describe_args=args), GPU_OK)["ami"]
    assert c.status == "fail" and c.message.startswith("no AMI named")


def test_standard_endpoint_env_reaches_moto(account, monkeypatch):
    """make_clients builds plain boto3 clients: AWS_ENDPOINT_URL alone points them at the emulator."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", account.url)
    clients = ac_model.make_clients(REGION)
    assert clients.ec2.meta.endpoint_url == account.url
    c = ac_compute.check_offered(clients.ec2, "g6e.48xlarge", "us-east-1e")
    assert c.status == "fail" and "us-east-1a" in c.message


@pytest.mark.parametrize(
    "itype,family",
    [
        ("g6e.48xlarge", "G and VT"),
        ("vt1.3xlarge", "G and VT"),
        ("p5.48xlarge", "P"),
        ("m7i.xlarge", "Standard"),
        ("c7i.large", "Standard"),
        ("inf2.xlarge", None),
        ("trn1.32xlarge", None),
        ("x2idn.large", None),
    ],
)
def test_quota_family_of(itype, family):
    assert ac_model.quota_family_of(itype) == family


def test_split_s3_uri():
    assert ac_model.split_s3_uri("s3://b/a/b") == ("b", "a/b/")
    assert ac_model.split_s3_uri("s3://b") == ("b", "")
    with pytest.raises(ValueError, match="not an s3://"):
        ac_model.split_s3_uri("https://b/x")


def test_cli_json_against_moto(account, tmp_path):
    """`llmfleet preflight --json` end to end: plain boto3 clients reach moto through AWS_ENDPOINT_URL.

    Service Quotas are not emulated, so the quota checks can only warn here; the prod weights
    expectation is the real 642 GiB model card, so the small seeded upload fails.
    """
    import subprocess
    import sys

    env = {
        **DUMMY_CREDS,
        "PATH": str(Path(sys.executable).parent),
        "HOME": str(tmp_path),
        "AWS_ENDPOINT_URL": account.url,
        "AWS_MAX_ATTEMPTS": "1",
    }
    cmd = [
        str(Path(sys.executable).with_name("llmfleet")),
        "preflight",
        "--stack",
        "prod",
        "--json",
        "-c",
        f"llmfleet:weightsUri=s3://{BUCKET}/{PREFIX}",
        "-c",
        "llmfleet:availabilityZone=us-east-1e",
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert set(doc) == {"checks"}
    by = {c["name"]: c for c in doc["checks"]}
    assert all(set(c) == {"name", "status", "message"} for c in doc["checks"])
    assert (
        by["instance-type-offered"]["status"] == "fail"
        and "us-east-1e" in by["instance-type-offered"]["message"]
    )
    assert by["ami"]["status"] == "pass" and by["gpu-facts"]["status"] == "pass"
    assert (
        by["weights"]["status"] == "fail"
        and "expected 642.0 GiB ±5% (model card deepseek-r1)" in by["weights"]["message"]
    )
    assert by["gpu-quota"]["status"] == "warn"


def test_cli_bad_stack_is_one_line():
    from typer.testing import CliRunner

    from infra.cli import app

    res = CliRunner().invoke(app, ["preflight", "--stack", "nope"])
    assert res.exit_code == 2 and "--stack 'nope'" in res.output and "Traceback" not in res.output
