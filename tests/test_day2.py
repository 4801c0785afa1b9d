"""Day 2 under the offline engine: which change replaces a host and which updates it in place.

The replace-triggering inputs of an instance are the ones the program names in its
`replace_on_changes` (infra/components/host_updates.py, recorded by the capture). A change is
"in place" when those inputs of every worker are the same before and after it; the README's
change -> effect table is CHANGE_EFFECTS, and each case below checks one of its rows.
"""

from __future__ import annotations

import shutil
from functools import cache

import pulumi
import pytest

from infra.boot.node_apply import node_parameter_name
from infra.components.host_updates import CHANGE_EFFECTS, INSTANCE_FIELDS, REPLACE_FIELDS
from infra.constants import REPO_ROOT
from infra.program.offline import capture
from tests.node_scripts import node_script

INST = "aws:ec2/instance:Instance"


@pytest.fixture(autouse=True, scope="module")
def _reset_pulumi_config():
    """A capture leaves its stack's config in Pulumi's process-wide runtime config, which the
    policy pack falls back to; do not leak the last one (dev's replicas) into later modules."""
    yield
    pulumi.runtime.set_all_config({}, [])


@cache
def cap(stack: str, *overrides: str):
    return capture(stack, overrides)


def hosts(c, role: str) -> list[dict]:
    return [i for i in c.of_type(INST) if i["inputs"]["tags"]["llmfleet:role"] == role]


def replace_view(inst: dict) -> dict:
    """The inputs whose change replaces this instance, as the program declares them."""
    assert inst["replace_on_changes"] == REPLACE_FIELDS, inst["name"]
    return {k: inst["inputs"].get(k) for k in inst["replace_on_changes"]}


def rollout_command(c, role: str) -> str:
    [assoc] = [
        a
        for a in c.of_type("aws:ssm/association:Association")
        if a["inputs"]["tags"]["llmfleet:role"] == role
    ]
    return assoc["inputs"]["parameters"]["commands"]


def _row(prefix: str) -> tuple[str, str, str]:
    return next(r for r in CHANGE_EFFECTS if r[0].startswith(prefix))


def _replaced(row) -> bool:
    return row[1].startswith("replaced")


def _assert_effect(before, after, row, *, script_changes: set[str]):
    workers_before, workers_after = hosts(before, "worker"), hosts(after, "worker")
    same = [replace_view(a) == replace_view(b) for a, b in zip(workers_before, workers_after, strict=False)]
    if _replaced(row):
        assert not any(same), f"{row[0]}: expected every worker replaced"
        return
    assert len(workers_before) == len(workers_after) and all(same), f"{row[0]}: a worker would be replaced"
    assert replace_view(hosts(before, "head")[0]) == replace_view(hosts(after, "head")[0])
    # ... and the change reaches the hosts through their node scripts, which the rollout re-applies
    for role in ("head", "worker"):
        changed = node_script(before, role) != node_script(after, role)
        assert changed == (role in script_changes), (row[0], role)
        assert (rollout_command(before, role) != rollout_command(after, role)) == changed


def test_replace_fields_are_the_declared_replace_rows():
    assert set(REPLACE_FIELDS) == {k for k, (e, _) in INSTANCE_FIELDS.items() if e == "replace"}
    assert {"instanceType", "ami", "subnetId", "rootBlockDevice", "userData"} <= set(REPLACE_FIELDS)
    assert "tags" not in REPLACE_FIELDS  # the model / maxModelLen tags update in place


def test_max_model_len_changes_the_serve_config_in_place():
    before, after = cap("prod"), cap("prod", "llmfleet:maxModelLen=4096")
    _assert_effect(before, after, _row("Serve config"), script_changes={"head"})
    assert "max_model_len: 4096" in node_script(after, "head")


def test_replicas_at_the_same_worker_count_redeploys_in_place():
    before, after = cap("dev"), cap("dev", "llmfleet:replicas=1")
    _assert_effect(before, after, _row("Serve config"), script_changes={"head"})
    assert "--replicas 1" in node_script(after, "head")


def test_model_change_restages_in_place():
    pin = "llmfleet:workerCount=3"
    before = cap("prod", pin)
    after = cap("prod", pin, "llmfleet:model=deepseek-r1-distill-llama-70b")
    _assert_effect(before, after, _row("`model`"), script_changes={"head", "worker"})
    assert "/deepseek-r1-distill-llama-70b" in node_script(after, "worker")


def test_node_code_change_rolls_the_image_in_place(tmp_path, monkeypatch):
    copy = tmp_path / "tree"
    shutil.copytree(
        REPO_ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".tools", ".git", "__pycache__", "*_cache")
    )
    for mod in ("infra.program.shared", "infra.constants"):
        monkeypatch.setattr(f"{mod}.REPO_ROOT", copy)
    before = capture("prod", (), project_dir=copy)
    with open(copy / "ray_cluster" / "node.py", "a") as f:
        f.write("\n# a host-side edit\n")
    after = capture("prod", (), project_dir=copy)
    assert before.outputs["image_ref"] != after.outputs["image_ref"]
    _assert_effect(before, after, _row("node image digest"), script_changes={"head", "worker"})
    assert after.outputs["image_ref"] in node_script(after, "worker")


def test_gpu_instance_type_replaces_the_workers():
    before, after = cap("prod"), cap("prod", "llmfleet:gpuInstanceType=p5.48xlarge")
    _assert_effect(before, after, _row("`gpuInstanceType`"), script_changes=set())


def test_the_rollout_is_rolling_and_stops_on_a_failure():
    c = cap("prod")
    workers = {w["id"] for w in hosts(c, "worker")}
    for assoc in c.of_type("aws:ssm/association:Association"):
        i = assoc["inputs"]
        assert (i["maxConcurrency"], i["maxErrors"], i["name"]) == ("1", "0", "AWS-RunShellScript")
        if i["tags"]["llmfleet:role"] == "worker":
            assert set(i["targets"][0]["values"]) == workers


def test_user_data_is_only_the_boot_contract():
    c = cap("prod")
    for inst in c.of_type(INST):
        ud = inst["inputs"]["userData"]
        assert c.outputs["image_ref"] not in ud and "s3://" not in ud and "serve" not in ud.lower()
        role = inst["inputs"]["tags"]["llmfleet:role"]
        assert f"llmfleet-apply {node_parameter_name('prod', role)} boot" in ud


def test_every_prod_instance_has_a_status_alarm_and_the_head_auto_recovery():
    c = cap("prod")
    alarms = {
        a["inputs"]["dimensions"]["InstanceId"]: a["inputs"]
        for a in c.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
    }
    for inst in c.of_type(INST):
        alarm = alarms[inst["id"]]
        role = inst["inputs"]["tags"]["llmfleet:role"]
        if role == "head":  # EBS-only: EC2 recovers it (same id, IP and volumes) on new hardware
            assert inst["inputs"]["maintenanceOptions"] == {"autoRecovery": "default"}
            assert alarm["alarmActions"] == ["arn:aws:automate:us-east-1:ec2:recover"]
            assert alarm["metricName"] == "StatusCheckFailed_System"
        else:  # instance-store NVMe: EC2 rejects recover; reboot keeps the staged weights
            assert "maintenanceOptions" not in inst["inputs"]
            assert alarm["alarmActions"] == ["arn:aws:automate:us-east-1:ec2:reboot"]
            assert alarm["metricName"] == "StatusCheckFailed_Instance"


def test_spot_workers_persist_and_stop_on_interruption():
    c = cap("dev")
    for w in hosts(c, "worker"):
        assert w["inputs"]["instanceMarketOptions"] == {
            "marketType": "spot",
            "spotOptions": {"spotInstanceType": "persistent", "instanceInterruptionBehavior": "stop"},
        }


@pytest.mark.parametrize("row", CHANGE_EFFECTS, ids=[r[0][:30] for r in CHANGE_EFFECTS])
def test_readme_table_is_change_effects(row):
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"| {row[0]} | {row[1]} | {row[2]} |" in readme
