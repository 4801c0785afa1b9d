"""Day 2 under the offline engine: which change replaces a host and which updates it in place.

The replace-triggering inputs of the head instance are the ones the program names in its
`replace_on_changes` (infra/components/host_updates.py, recorded by the capture). A worker is an
Auto Scaling group of one: its replace-triggering inputs are every input of the launch template
(a new version starts the group's instance refresh) plus the group's own `replace_on_changes`.
A change is "in place" when those inputs of every worker are the same before and after it; the
README's change -> effect table is CHANGE_EFFECTS, and each case below checks one of its rows.
"""

from __future__ import annotations

import shutil
from functools import cache

import pytest

from infra.boot.node_apply import node_parameter_name
from infra.boot.rollout_effects import NODE_CONTAINER, TOUCHES, rollout_touches, steps
from infra.components.host_updates import (
    CHANGE_EFFECTS,
    GROUP_FIELDS,
    GROUP_REPLACE_FIELDS,
    LAUNCH_TEMPLATE_FIELDS,
)
from infra.constants import REPO_ROOT
from infra.program.offline import capture
from infra.worker_groups import find_template
from tests.hosts import groups, head_group, hosts, template
from tests.node_scripts import node_script

# Launch template inputs that are not launch data (no new version when they change).
TEMPLATE_METADATA = {"name", "description", "tags", "updateDefaultVersion"}


@cache
def cap(stack: str, *overrides: str):
    return capture(stack, overrides)


def worker_replace_view(c, group: dict) -> dict:
    """The inputs whose change replaces a group's instance (a worker slot's, the head's): its
    launch template's (every one is launch data; any change is a new version, which the group
    rolls out by instance refresh) and the group's own replace_on_changes."""
    assert group["replace_on_changes"] == GROUP_REPLACE_FIELDS, group["name"]
    lt = find_template(group["inputs"], [(t["id"], t["inputs"]) for t in c.of_type(template(c)["type"])])
    assert lt is not None, group["name"]
    assert set(lt) - TEMPLATE_METADATA <= set(LAUNCH_TEMPLATE_FIELDS), (
        "a template input missing from the table"
    )
    return {
        **{f"template.{k}": lt.get(k) for k in LAUNCH_TEMPLATE_FIELDS},
        **{k: group["inputs"].get(k) for k in group["replace_on_changes"]},
    }


def _row(prefix: str) -> tuple[str, str, str]:
    return next(r for r in CHANGE_EFFECTS if r[0].startswith(prefix))


def _replaced(row) -> bool:
    return row[1].startswith("replaced")


def _assert_effect(before, after, row, *, script_changes: set[str]):
    workers_before, workers_after = groups(before), groups(after)
    same = [
        worker_replace_view(before, b) == worker_replace_view(after, a)
        for b, a in zip(workers_before, workers_after, strict=False)
    ]
    if _replaced(row):
        assert not any(same), f"{row[0]}: expected every worker replaced"
        return
    assert len(workers_before) == len(workers_after) and all(same), f"{row[0]}: a worker would be replaced"
    assert worker_replace_view(before, head_group(before)) == worker_replace_view(after, head_group(after))
    # ... and the change reaches the hosts through their node scripts (a new parameter version),
    # which the operator-side rollout (infra/rollout/) applies in order
    for role in ("head", "worker"):
        changed = node_script(before, role) != node_script(after, role)
        assert changed == (role in script_changes), (row[0], role)


def test_replace_fields_are_the_declared_replace_rows():
    assert set(GROUP_REPLACE_FIELDS) <= {k for k, (e, _) in GROUP_FIELDS.items() if e == "replace"}
    assert {"instanceType", "imageId", "blockDeviceMappings", "userData"} <= set(LAUNCH_TEMPLATE_FIELDS)
    assert "tags" not in GROUP_REPLACE_FIELDS and "launchTemplate" not in GROUP_REPLACE_FIELDS


def test_a_new_template_version_replaces_the_slot_instance_by_instance_refresh():
    c = cap("prod")
    lt = template(c)
    for g in groups(c):
        i = g["inputs"]
        # The group follows the template's latest version: a new version is a group update,
        # which the provider turns into an instance refresh (terminate, then launch).
        assert i["launchTemplate"] == {
            "name": lt["inputs"]["name"],
            "version": str(lt["outputs"]["latestVersion"]),
        }
        assert i["instanceRefresh"]["strategy"] == "Rolling"
        assert i["instanceRefresh"]["preferences"]["minHealthyPercentage"] == 0


def test_max_model_len_changes_the_serve_config_in_place():
    before, after = cap("prod"), cap("prod", "llmfleet:maxModelLen=4096")
    _assert_effect(before, after, _row("Serve config"), script_changes={"head"})
    assert "max_model_len: 4096" in node_script(after, "head")


def test_a_new_auto_context_is_a_serve_config_change_that_restarts_serving():
    """README (maxModelLen): `auto` picking another context changes the rendered Serve config, so
    the next `up` restarts serving, and its preview says so (up_preview.serving_callouts)."""
    from infra import up_preview
    from infra.boot.rollout_effects import SERVE_YAML, rollout_touches

    before, after = cap("prod"), cap("prod", "llmfleet:targetConcurrency=32")
    _assert_effect(before, after, _row("Serve config"), script_changes={"head"})
    assert "max_model_len: 24576" in node_script(before, "head")
    assert "max_model_len: 12288" in node_script(after, "head")
    touched = rollout_touches(node_script(before, "head"), node_script(after, "head"), "head")
    assert touched == {SERVE_YAML} and touched - up_preview._KEEPS_SERVING  # "restarts serving: ..."


def test_engine_args_and_serve_options_change_the_serve_config_in_place():
    engine, serve = (
        'llmfleet:engineArgs={"max_num_seqs": 48}',
        'llmfleet:serveOptions={"max_ongoing_requests": 24}',
    )
    before, after = cap("prod"), cap("prod", engine, serve)
    _assert_effect(before, after, _row("Serve config"), script_changes={"head"})
    script = node_script(after, "head")  # the head's node script in SSM carries the Serve config
    assert "max_num_seqs: 48" in script and "max_ongoing_requests: 24" in script


def test_replicas_at_the_same_worker_count_redeploys_in_place():
    before, after = cap("dev"), cap("dev", "llmfleet:replicas=1")
    _assert_effect(before, after, _row("`replicas`"), script_changes={"head"})
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
    monkeypatch.setattr("infra.constants.REPO_ROOT", copy)  # the image context is the copy's
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


def test_no_state_manager_association_rolls_the_scripts_out():
    """The rollout is operator-side, ordered and gated (infra/rollout/): an association would run
    the head's and the workers' scripts at the same time and leave a failure half-applied."""
    c = cap("prod")
    assert c.of_type("aws:ssm/association:Association") == []
    names = sorted(g["inputs"]["name"] for g in groups(c))
    # What the rollout reads to find the hosts: the head's group and the worker groups, in slot
    # order (the instances are looked up by the groups' tag: infra/worker_lookup.py).
    assert names == sorted(c.outputs["worker_groups"]) and len(names) == 3
    assert c.outputs["head_group"] == head_group(c)["inputs"]["name"]
    assert "head_instance_id" not in c.outputs  # the group replaces it: no id to export


def test_the_head_reports_the_fingerprint_readiness_expects():
    """The Serve config the head's node script writes is the file whose sha256 the head reports
    once deployed (ray_cluster.node), and the operator fingerprints the config it renders."""
    from infra.deploy import serve_config_fingerprint
    from infra.rayconf.serving import serve_config_yaml
    from infra.stack.resolve import resolve
    from ray_cluster.node import config_fingerprint

    c = cap("prod")
    script = node_script(c, "head")
    written = script.split("cat > /etc/llmfleet/serve.yaml <<'LLMFLEET_EOF'\n", 1)[1].split(
        "\nLLMFLEET_EOF", 1
    )[0]
    expected = serve_config_fingerprint(serve_config_yaml(c.config, resolve(c.config).plan))
    assert config_fingerprint((written + "\n").encode()) == expected


def test_user_data_is_only_the_boot_contract():
    c = cap("prod")
    assert len(hosts(c)) == 4
    for inst in hosts(c):
        ud = inst["inputs"]["userData"]
        assert c.outputs["image_ref"] not in ud and "s3://" not in ud and "serve" not in ud.lower()
        role = inst["inputs"]["tags"]["llmfleet:role"]
        assert f"llmfleet-apply {node_parameter_name('prod', role)} boot" in ud


def test_prod_head_and_every_worker_are_replaced_by_their_groups():
    """#14 "failed hosts come back" and #26.5 "a head that comes back": the head and each GPU
    worker are Auto Scaling groups of one with EC2 health checks, which replace a host that fails
    a status check (system or instance) or is terminated, with no `pulumi up`."""
    c = cap("prod")
    alarms = [a["inputs"] for a in c.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")]
    assert c.of_type("aws:ec2/instance:Instance") == []  # no host is a bare instance any more
    assert not [a for a in alarms if "InstanceId" in a.get("dimensions", {})]  # no recover alarm
    head = head_group(c)
    workers = groups(c)
    assert len(workers) == len(hosts(c, "worker")) == c.outputs["workers"] == 3
    assert len(hosts(c, "head")) == 1
    for g in [head, *workers]:
        i = g["inputs"]
        # EC2 health checks: a failed status check makes the instance unhealthy; the group
        # terminates it and launches a new one from the template (boot contract -> node script).
        assert i["healthCheckType"] == "EC2" and i["minSize"] == i["maxSize"] == i["desiredCapacity"] == 1
        [slot] = [a for a in alarms if a.get("dimensions", {}).get("AutoScalingGroupName") == i["name"]]
        assert (
            slot["metricName"] == "GroupInServiceInstances"
            and "GroupInServiceInstances" in i["enabledMetrics"]
        )
    # Instance-store types: EC2 would reject auto-recovery in the template.
    assert "maintenanceOptions" not in template(c)["inputs"]


def test_every_alarm_notifies_the_alarm_topic_when_one_is_set():
    """llmfleet:alarmTopicArn: every alarm (the head group's, each worker slot's, the Serve
    app's) notifies it on ALARM and OK, and the groups' launch/terminate events go to it. Unset:
    the alarms are what they were (no notification inputs at all) and no group notification."""
    topic = "arn:aws:sns:us-east-1:123456789012:llmfleet-alarms"
    notification = "aws:autoscaling/notification:Notification"
    for stack in ("prod", "dev"):
        bare, told = cap(stack), cap(stack, f"llmfleet:alarmTopicArn={topic}")
        alarms = {a["name"]: a["inputs"] for a in told.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")}
        # the head group's, one per worker slot, and the Serve app's (recovery.app_alarm)
        assert len(alarms) == 2 + len(groups(told)), stack
        for name, a in alarms.items():
            if a["metricName"] == "ServeAppUnhealthySeconds":
                assert a["alarmActions"] == [topic], name
            else:
                assert a["dimensions"]["AutoScalingGroupName"] and a["alarmActions"] == [topic], name
            assert a["okActions"] == [topic] and "insufficientDataActions" not in a, name
        for a in bare.of_type("aws:cloudwatch/metricAlarm:MetricAlarm"):
            assert "okActions" not in a["inputs"] and "alarmActions" not in a["inputs"], a["name"]
        [events] = told.of_type(notification)
        every_group = {head_group(told)["inputs"]["name"], *(g["inputs"]["name"] for g in groups(told))}
        assert set(events["inputs"]["groupNames"]) == every_group and events["inputs"]["topicArn"] == topic
        assert "autoscaling:EC2_INSTANCE_LAUNCH" in events["inputs"]["notifications"]
        assert bare.of_type(notification) == []
        # the hosts are untouched (the README's row) and nothing but the alarms changes
        _assert_effect(bare, told, _row("`alarmTopicArn`"), script_changes=set())
        others = [
            {
                r["name"]: r["inputs"]
                for r in c.resources
                if "metricAlarm" not in r["type"] and r["type"] != notification
            }
            for c in (bare, told)
        ]
        assert others[0] == others[1], stack


def test_spot_workers_are_one_time_and_the_group_replaces_them():
    c = cap("dev")
    assert len(groups(c)) == 2
    for w in hosts(c, "worker"):
        assert w["inputs"]["instanceMarketOptions"] == {
            "marketType": "spot",
            "spotOptions": {"spotInstanceType": "one-time", "instanceInterruptionBehavior": "terminate"},
        }


@pytest.mark.parametrize("row", CHANGE_EFFECTS, ids=[r[0][:30] for r in CHANGE_EFFECTS])
def test_readme_table_is_change_effects(row):
    readme = (REPO_ROOT / "README.md").read_text()
    assert "| " + " | ".join(row) + " |" in readme


# ------------------------------------------------------------------ the README's table, checked
README_HEADER = "| change | what happens | a rollout touches | downtime |"
CERT = "arn:aws:acm:us-east-1:123456789012:certificate/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
# One representative change per README row (by the row's first words): stack, base, change.
ROW_CASES = {
    "Serve config": ("prod", (), ("llmfleet:maxModelLen=4096",)),
    "`replicas`": ("dev", (), ("llmfleet:replicas=1",)),
    "`model`": ("prod", ("llmfleet:workerCount=3",), ("llmfleet:model=deepseek-r1-distill-llama-70b",)),
    "`weightsUri`": ("prod", (), ("llmfleet:weightsUri=s3://corp-models/deepseek-r1-v2/",)),
    # a new build argument is a new image digest, as any edit under ray_cluster/ or images/ is
    # (test_node_code_change_rolls_the_image_in_place makes that edit on a copy of the tree)
    "node image digest": ("prod", (), ("llmfleet:baseImage=vllm/vllm-openai:v0.30.0@sha256:" + "1" * 64,)),
    "`gpuInstanceType`": ("prod", ("llmfleet:workerCount=3",), ("llmfleet:gpuInstanceType=p5.48xlarge",)),
    "`endpointCertificateArn`": ("prod", (), (f"llmfleet:endpointCertificateArn={CERT}",)),
    "`gcsRedis`": ("prod", (), ("llmfleet:gcsRedis=true",)),
    "`alarmTopicArn`": (
        "prod",
        (),
        ("llmfleet:alarmTopicArn=arn:aws:sns:us-east-1:123456789012:llmfleet-alarms",),
    ),
}


def readme_rows() -> list[list[str]]:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index(README_HEADER)
    lines = text[start:].split("\n\n", 1)[0].splitlines()[2:]  # after the header and |---|
    rows = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines]
    assert rows and all(len(r) == 4 for r in rows), lines
    return rows


def parse_touches(cell: str) -> dict[str, str | set[str]]:
    """'head: serve.yaml, deploy watcher; workers: nothing' -> {'head': {...}, 'worker': set()};
    'replaced' for a host the change replaces."""
    out: dict[str, str | set[str]] = {}
    for part in cell.split("; "):
        who, _, what = part.partition(": ")
        role = {"head": "head", "workers": "worker"}[who]
        if what in ("replaced", "nothing"):
            out[role] = "replaced" if what == "replaced" else set()
            continue
        items = set(what.split(", "))
        assert items <= set(TOUCHES), f"{cell!r}: allowed {TOUCHES}, nothing, replaced"
        out[role] = items
    assert set(out) == {"head", "worker"}, cell
    return out


def observed_touches(before, after) -> dict[str, str | set[str]]:
    """What the program says happens: a replaced host, else what the rollout of its node
    script touches (the steps whose identity differs)."""
    out: dict[str, str | set[str]] = {}
    views = [worker_replace_view(before, b) != worker_replace_view(after, a)
             for b, a in zip(groups(before), groups(after), strict=True)]  # fmt: skip
    assert all(views) or not any(views), "some workers replaced, some not"
    head_replaced = worker_replace_view(before, head_group(before)) != worker_replace_view(
        after, head_group(after)
    )
    for role, replaced in (("head", head_replaced), ("worker", all(views))):
        out[role] = (
            "replaced"
            if replaced
            else rollout_touches(node_script(before, role), node_script(after, role), role)
        )
    return out


def test_every_readme_row_has_a_case_and_every_case_a_row():
    rows = [r[0] for r in readme_rows()]
    assert [next(k for k in ROW_CASES if r.startswith(k)) for r in rows] == list(ROW_CASES)


@pytest.mark.parametrize("row", readme_rows(), ids=lambda r: r[0][:30])
def test_readme_row_states_what_the_rollout_does(row):
    change, happens, touches, _downtime = row
    [key] = [k for k in ROW_CASES if change.startswith(k)]
    stack, base, overrides = ROW_CASES[key]
    before, after = cap(stack, *base), cap(stack, *base, *overrides)
    observed = observed_touches(before, after)
    assert parse_touches(touches) == observed, change
    assert happens.startswith("replaced") == ("replaced" in observed.values()), change
    for role, what in observed.items():  # the prose names the node container when it restarts
        if what != "replaced" and NODE_CONTAINER in what:
            assert "restarts" in happens and "node container" in happens, (change, role)


def test_the_classifier_sees_every_step_of_the_rendered_scripts():
    """A rendering change must not make the table's check blind: every step it compares is found."""
    c = cap("prod")
    head, worker = steps(node_script(c, "head")), steps(node_script(c, "worker"))
    assert {"container llmfleet-head", "container llmfleet-bootlog", "container llmfleet-prometheus",
            "unit deploy", "unit metrics-sd", "serve.yaml", "daemon.json"} <= set(head)  # fmt: skip
    assert {"container llmfleet-worker", "container llmfleet-bootlog", "container llmfleet-dcgm",
            "daemon.json"} <= set(worker)  # fmt: skip
    assert all(head.values()) and all(worker.values())
    assert "live-restore" in worker["daemon.json"] and "s3://" in worker["weights"]


def test_packed_node_scripts_fit_an_advanced_ssm_parameter():
    """An Advanced-tier String parameter holds at most 8 KiB: the node scripts grow with every
    step a rollout can keep or redo, and a script over the limit fails `pulumi up`."""
    for stack in ("prod", "dev"):
        c = cap(stack)
        for role in ("head", "worker"):
            [param] = [
                p
                for p in c.of_type("aws:ssm/parameter:Parameter")
                if p["inputs"]["name"] == node_parameter_name(stack, role)
            ]
            assert param["inputs"]["tier"] == "Advanced"
            assert len(param["inputs"]["insecureValue"].encode()) <= 8192, (stack, role)


def test_a_serve_app_that_stays_failed_raises_an_alarm_from_the_watchers_lines():
    """#26: the head's deploy watcher logs a JSON line while an app is DEPLOY_FAILED/UNHEALTHY;
    a follower copies the deploy unit's journal to the boot log (CloudWatch); a metric filter on the boot log
    group turns it into a metric, and the alarm fires when an app stays failed for 30 min."""
    import json

    from infra.components.recovery import APP_ALARM_AFTER_S, APP_METRIC, APP_PATTERN
    from ray_cluster.watch import ALARM_EVENT, AppBackoff

    c = cap("prod")
    [f] = c.of_type("aws:cloudwatch/logMetricFilter:LogMetricFilter")
    boot = [g for g in c.of_type("aws:cloudwatch/logGroup:LogGroup") if g["inputs"]["name"].endswith("/boot")]
    assert f["inputs"]["logGroupName"] == boot[0]["inputs"]["name"]
    t = f["inputs"]["metricTransformation"]
    assert (t["name"], t["value"]) == (APP_METRIC, "$.seconds")
    [alarm] = [
        a["inputs"]
        for a in c.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
        if a["inputs"]["metricName"] == APP_METRIC
    ]
    assert alarm["namespace"] == t["namespace"] and alarm["threshold"] == APP_ALARM_AFTER_S
    assert alarm["treatMissingData"] == "notBreaching"
    # the filter's pattern selects exactly the watcher's lines, and their seconds is a number
    b = AppBackoff()
    b.step({"llm": "UNHEALTHY"}, 0.0)
    line = json.loads(b.alarm_line({"llm": "UNHEALTHY"}, 1900.0, True))
    assert (
        APP_PATTERN == f'{{ $.llmfleet_watch = "{ALARM_EVENT}" }}' and line["llmfleet_watch"] == ALARM_EVENT
    )
    assert line["seconds"] == 1900 >= APP_ALARM_AFTER_S
    # and the deploy unit's journal is followed into the boot log, which the shipper reads
    head = node_script(c, "head")
    assert (
        "--property=StandardOutput=append:/var/log/llmfleet-boot.log journalctl --unit=llmfleet-deploy "
        "--follow --lines=0 --output=cat" in head
    )
