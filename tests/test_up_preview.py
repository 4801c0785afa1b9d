"""`llmfleet up` shows the change, the policy verdict and the price before it asks.

The boundary is the Automation API: `pulumi.automation.create_or_select_stack` returns a fake
Stack whose `preview(on_event=...)` replays a recorded engine-event stream
(tests/data/up_preview_events_prod.jsonl, Pulumi's own event JSON, each line through
`EngineEvent.from_json` as the Automation API does with the CLI's event log). Everything on our
side (collecting the events, the host/serving call-outs, pricing the preview's states with
`cost --from-preview`'s code, rendering, the question) is the real code.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from pulumi import automation as auto
from pulumi.automation import events as ev
from pulumi.automation._cmd import CommandResult
from typer.testing import CliRunner

from infra.cli import app
from tests.project import copy_project

RUNNER = CliRunner()
DATA = Path(__file__).resolve().parent / "data"
STREAM = DATA / "up_preview_events_prod.jsonl"
# the config the recorded preview ran with (tests/data/make_up_preview_events.py's NEW)
NEW = ["-c", "llmfleet:gpuInstanceType=p5.48xlarge", "-c", "llmfleet:maxMonthlyUsd=90000"]


def recorded(path: Path = STREAM) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class ReplayStack:
    """The Automation API's Stack: preview replays recorded engine events; up records the call."""

    def __init__(self, events: list[dict], calls: list, fail_preview: bool = False):
        self.events, self.calls, self.fail_preview = events, calls, fail_preview

    def set_all_config(self, values):
        self.calls.append(("config", {k: v.value for k, v in values.items()}))

    def preview(self, on_event=None, **kw):
        self.calls.append(("preview", kw))
        for e in self.events:
            on_event(ev.EngineEvent.from_json(e))
        if self.fail_preview:
            raise auto.errors.CommandError(CommandResult("", "error: preview failed", 255))
        changes = next(e["summaryEvent"]["resourceChanges"] for e in self.events if "summaryEvent" in e)
        return auto._stack.PreviewResult("", "", changes)

    def up(self, **kw):
        self.calls.append(("up", kw))
        raise RuntimeError("stop after up: the update itself is not under test here")


@pytest.fixture
def automation(monkeypatch, tmp_path):
    calls: list = []
    state = {"events": recorded(), "fail": False}

    def fake(stack_name, work_dir, opts):
        return ReplayStack(state["events"], calls, state["fail"])

    monkeypatch.setattr(auto, "create_or_select_stack", fake)
    monkeypatch.setattr(auto, "select_stack", fake)
    monkeypatch.setattr("infra.deploy.require_pulumi_cli", lambda which=None: "/usr/bin/pulumi")
    monkeypatch.chdir(copy_project(tmp_path))  # the project; .llmfleet/ is written here
    return calls, state


def _up(*extra: str, input: str | None = None):
    return RUNNER.invoke(app, ["up", "--stack", "prod", "--skip-preflight", *NEW, *extra], input=input)


def _cost_from_preview(tmp_path: Path) -> dict:
    """What `llmfleet cost --from-preview` says of the same preview: the recorded steps written
    as a `pulumi preview --json` document (the engine's old/new states), priced by the command."""
    from infra.up_preview import preview_document

    steps = [
        ev.EngineEvent.from_json(e).resource_pre_event.metadata for e in recorded() if "resourcePreEvent" in e
    ]
    path = tmp_path / "preview.json"
    path.write_text(json.dumps(preview_document(steps)))
    r = RUNNER.invoke(app, ["cost", "--stack", "prod", *NEW, "--from-preview", str(path), "--json"])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_up_names_the_replaced_gpu_host_its_property_and_the_cost_change_before_asking(automation, tmp_path):
    calls, _ = automation
    r = _up(input="n\n")
    assert r.exit_code == 1, r.output
    out = r.stdout
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80  # laid out at 80 columns
    # the change per resource, as the preview reports it
    assert "stack prod: 0 to create, 5 to update, 0 to replace, 2 to delete" in out
    assert "~ update cluster-worker  aws:ec2/launchTemplate:LaunchTemplate" in out
    assert "instanceType: update" in out
    assert "- delete cluster-worker-2  aws:autoscaling/group:Group" in out
    # the replaced GPU host, in its own line, with the property that forces it
    host = next(i for i, ln in enumerate(lines) if "replaces GPU host cluster-worker-0" in ln)
    assert "(llmfleet-prod-worker-0)" in lines[host]
    assert "changes instanceType" in " ".join(ln.strip(" │├└─") for ln in lines[host : host + 3])
    assert any("replaces GPU host cluster-worker-1" in ln for ln in lines)
    assert any("removes GPU host cluster-worker-2" in ln for ln in lines)
    # the head's new Serve config (TP/PP for H100s): its rollout restarts serving
    serving = next(i for i, ln in enumerate(lines) if "restarts serving" in ln and "head" in ln)
    assert "serve.yaml" in " ".join(lines[serving : serving + 2])
    # the pack's verdict: the recorded stream's five advisory findings
    assert "policy pack: 0 mandatory, 5 advisory" in out
    assert sum("advisory alarm-notifies (" in ln for ln in lines) == 4
    # the cost change: the same numbers `llmfleet cost --from-preview` gives for this preview
    doc = _cost_from_preview(tmp_path)
    before, after = Decimal(doc["pastTotalHourlyCost"]), Decimal(doc["totalHourlyCost"])
    assert before > 3 * Decimal("30.131") and after > 2 * Decimal("55")  # 3 g6e workers -> 2 p5
    cost = next(i for i, ln in enumerate(lines) if ln.strip().startswith("per hour"))
    assert lines[cost].split()[2:] == [f"{before:,.4f}", f"{after:,.4f}", f"+{after - before:,.4f}"]
    month = lines[cost + 1].split()
    assert month[-2] == f"{Decimal(doc['totalMonthlyCost']):,.2f}"
    assert month[-3] == f"{Decimal(doc['pastTotalMonthlyCost']):,.2f}"
    per_m = lines[cost + 2].split()
    assert per_m[:4] == ["per", "1M", "output", "tokens"] and Decimal(per_m[-1]) < 0  # cheaper per token
    # ... and the question comes after all of it; nothing was applied
    question = next(i for i, ln in enumerate(lines) if "Apply these changes to stack prod?" in ln)
    assert question > max(host, serving, cost + 2)
    assert [k for k, _ in calls] == ["config", "preview"]
    preview_kw = calls[1][1]
    assert preview_kw["refresh"] is True and preview_kw["policy_packs"]


def test_up_json_is_one_document_and_asks_on_stderr(automation):
    calls, _ = automation
    asked = _up("--json", input="n\n")
    assert asked.exit_code == 1
    assert "Apply these changes to stack prod?" in asked.stderr
    assert "Apply these" not in asked.stdout and [k for k, _ in calls] == ["config", "preview"]
    r = _up("--json", "--yes")
    assert r.exit_code == 1  # the fake stops after up
    doc = json.loads(r.stdout)  # stdout: the one document, nothing else
    assert doc["counts"] == {"create": 0, "update": 5, "replace": 0, "delete": 2}
    lt = next(c for c in doc["changes"] if c["name"] == "cluster-worker")
    assert lt["op"] == "update" and lt["diffs"] == ["instanceType", "networkInterfaces"]
    replaced = [c for c in doc["callouts"] if c["kind"] == "replaces-host"]
    assert [c["resource"] for c in replaced] == ["cluster-worker-0", "cluster-worker-1"]
    assert all("instanceType" in c["line"] for c in replaced)
    assert {c["resource"] for c in doc["callouts"] if c["kind"] == "restarts-serving"} == {
        "cluster-node-head",
        "cluster-node-worker",
    }
    assert doc["policy"]["mandatory"] == 0 and doc["policy"]["advisory"] == 5
    assert {v["policy"] for v in doc["policy"]["violations"]} == {"endpoint-tls-internal", "alarm-notifies"}
    cost = doc["cost"]
    assert Decimal(cost["after"]["hourlyUsd"]) > Decimal(cost["before"]["hourlyUsd"])
    assert Decimal(cost["after"]["usdPerMillionOutputTokens"]) < Decimal(
        cost["before"]["usdPerMillionOutputTokens"]
    )
    assert "old states" in cost["basis"]["before"]
    assert "pulumi up failed" in r.stderr
    assert [k for k, _ in calls][2:] == ["config", "preview", "up"]


def test_a_mandatory_violation_in_the_stream_stops_after_the_preview_is_shown(automation):
    calls, state = automation
    events = recorded()
    pe = next(
        e["policyEvent"]
        for e in events
        if e.get("policyEvent", {}).get("policyName") == "endpoint-tls-internal"
    )
    pe["enforcementLevel"] = "mandatory"  # as the CLI reports it when the pack enforces it
    state["events"], state["fail"] = events, True
    r = _up(input="y\n")
    assert r.exit_code == 1
    assert "policy pack: 1 mandatory, 4 advisory" in r.stdout
    assert "replaces GPU host cluster-worker-0" in r.stdout  # the change is still shown
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: policy endpoint-tls-internal (endpoint-listener): {pe['message']}"]
    assert "Apply these changes" not in r.output
    assert [k for k, _ in calls] == ["config", "preview"]


def _step(op: str, urn: str, rtype: str, **meta) -> ev.EngineEvent:
    state = {"type": rtype, "urn": urn, "inputs": meta.pop("inputs", {}), "parent": ""}
    metadata = {"op": op, "urn": urn, "type": rtype, "old": state, "new": state, **meta}
    return ev.EngineEvent.from_json({"resourcePreEvent": {"metadata": metadata, "planning": True}})


def test_a_replacement_is_one_change_with_the_keys_that_force_it():
    """A group moved to another subnet: the engine's three steps (delete-before-replace) are one
    `replace`, and the host line names vpcZoneIdentifiers and why it replaces the host."""
    from infra.up_preview import PreviewEvents, build

    urn = (
        "urn:pulumi:prod::llmfleet::llmfleet:components:Cluster$aws:autoscaling/group:Group::cluster-worker-0"
    )
    group = {"name": "llmfleet-prod-worker-0", "tags": [{"key": "llmfleet:role", "value": "worker"}]}
    diff = {"vpcZoneIdentifiers": {"diffKind": "update-replace", "inputDiff": True}}
    events = PreviewEvents()
    for op in ("delete-replaced", "replace", "create-replacement"):
        events(_step(op, urn, "aws:autoscaling/group:Group", inputs=group, keys=["vpcZoneIdentifiers"],
                     diffs=["vpcZoneIdentifiers"], detailedDiff=diff))  # fmt: skip
    report = build("prod", events)
    [change] = report.changes
    assert change.op == "replace" and change.replace_keys == ("vpcZoneIdentifiers",)
    assert report.counts == {"create": 0, "update": 0, "replace": 1, "delete": 0}
    [line] = [c.line for c in report.callouts]
    assert line.startswith(
        "replaces GPU host cluster-worker-0 (llmfleet-prod-worker-0): the group is replaced on"
    )
    assert "vpcZoneIdentifiers (hardware placement" in line


def test_a_node_script_known_only_during_up_may_restart_serving():
    """In a real preview the new script can hold computed values (a new image digest): its text is
    unknown, so the line says it may restart serving instead of guessing either way."""
    from infra.up_preview import PreviewEvents, build

    step = next(
        e
        for e in recorded()
        if e.get("resourcePreEvent", {}).get("metadata", {}).get("urn", "").endswith("::cluster-node-head")
    )
    meta = step["resourcePreEvent"]["metadata"]
    meta["new"]["inputs"]["insecureValue"] = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # Pulumi's unknown
    events = PreviewEvents()
    events(ev.EngineEvent.from_json(step))
    [c] = build("prod", events).callouts
    assert c.kind == "restarts-serving" and c.resource == "cluster-node-head"
    assert c.line.startswith("may restart serving: the head node script (cluster-node-head) changes")
