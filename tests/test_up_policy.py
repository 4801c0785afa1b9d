"""`llmfleet up` / `down` through the Automation API, stubbed at its boundary.

`pulumi.automation.create_or_select_stack` / `select_stack` are replaced by a fake Stack that
behaves as the Pulumi CLI does with `--policy-pack`: it runs the real policy pack (offline, on the
real program's capture with the same -c overrides and the pack config file it was handed),
reports each violation as a PolicyEvent, and fails the preview or update on a mandatory one.
Everything on our side of that boundary (open_stack, the pack options, the event collector, the
command) is the real code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pulumi import automation as auto
from pulumi.automation import events as ev
from pulumi.automation._cmd import CommandResult
from typer.testing import CliRunner

from infra.cli import app
from infra.deploy import POLICY_PACK_DIR, change_counts
from infra.program.offline import capture
from policy.runner import run_policies
from tests.project import copy_project

RUNNER = CliRunner()


class FakeStack:
    """The Automation API's Stack, as far as llmfleet calls it."""

    def __init__(self, stack_name: str, work_dir: str, calls: list, summary: dict):
        self.name, self.work_dir, self.calls, self.summary = stack_name, work_dir, calls, summary
        self.config: dict[str, str] = {}

    def set_all_config(self, values):
        self.config.update({k: v.value for k, v in values.items()})

    def _policy_run(self, kind: str, kw: dict) -> None:
        self.calls.append((kind, kw))
        [pack] = kw["policy_packs"]
        assert Path(pack) == POLICY_PACK_DIR
        [cfg_file] = kw["policy_pack_configs"]
        pack_config = json.loads(Path(cfg_file).read_text())
        cap = capture(self.name, [f"{k}={v}" for k, v in self.config.items()])
        report = run_policies(cap.resources, pack_config, stack=cap.config)
        for i, v in enumerate(report.violations):
            urn = f"urn:pulumi:{self.name}::llmfleet::x::{v.resource}" if v.resource else None
            pe = ev.PolicyEvent(v.message, "never", v.policy, "llmfleet", "0.0.1", "", v.enforcement, urn)
            kw["on_event"](ev.EngineEvent(i, 0, policy_event=pe))
        if report.mandatory:
            raise auto.errors.CommandError(CommandResult("", "error: preview failed", 255))

    def preview(self, **kw):
        self._policy_run("preview", kw)
        return auto._stack.PreviewResult("", "", self.summary)

    def up(self, **kw):
        self._policy_run("up", kw)
        raise RuntimeError("stop after up: outputs are not under test here")

    def destroy(self, **kw):
        self.calls.append(("destroy", kw))
        return type("R", (), {"summary": type("S", (), {"result": "succeeded"})()})()


@pytest.fixture
def automation(monkeypatch, tmp_path):
    calls: list = []
    state = {"summary": {ev.OpType.CREATE: 60, ev.OpType.SAME: 0}}

    def fake(stack_name, work_dir, opts):
        assert Path(work_dir) == Path(opts.work_dir) and (Path(work_dir) / "Pulumi.yaml").is_file()
        return FakeStack(stack_name, work_dir, calls, state["summary"])

    monkeypatch.setattr(auto, "create_or_select_stack", fake)
    monkeypatch.setattr(auto, "select_stack", fake)
    monkeypatch.setattr("infra.deploy.require_pulumi_cli", lambda which=None: "/usr/bin/pulumi")
    monkeypatch.chdir(copy_project(tmp_path))  # the project; .llmfleet/ is written here
    return calls, state


def test_up_stops_on_a_mandatory_violation_before_anything_is_created(automation):
    calls, _ = automation
    r = RUNNER.invoke(
        app, ["up", "--stack", "prod", "-c", "llmfleet:workerCount=2", "--skip-preflight", "--yes"]
    )
    assert r.exit_code == 1, r.output
    # the planner's one-line reason, as `llmfleet policy` shows it
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: policy gpu-fit: ")
    assert "memory" in lines[0]
    assert "policy pack: 1 mandatory" in r.output  # the verdict, each violation on its own line
    assert "mandatory gpu-fit: " in r.output
    assert [k for k, _ in calls] == ["preview"]  # never `up`
    kw = calls[0][1]
    cfg = json.loads(Path(kw["policy_pack_configs"][0]).read_text())
    assert cfg["monthly-budget"]["maxMonthlyUsd"] == 75000  # the stack's own policy config


def test_up_previews_shows_counts_and_asks(automation):
    calls, state = automation
    state["summary"] = {"create": 3, "update": 2, "replace": 1, "same": 40}
    r = RUNNER.invoke(app, ["up", "--stack", "prod", "--skip-preflight"], input="n\n")
    assert r.exit_code == 1
    assert "3 to create, 2 to update, 1 to replace, 0 to delete" in r.output
    assert "Apply these changes to stack prod?" in r.output
    assert [k for k, _ in calls] == ["preview"]
    r = RUNNER.invoke(app, ["up", "--stack", "prod", "--skip-preflight"], input="y\n")
    assert [k for k, _ in calls] == ["preview", "preview", "up"]
    up_kw = calls[-1][1]
    assert up_kw["policy_packs"] == [str(POLICY_PACK_DIR)] and up_kw["color"] == "never"
    assert "pulumi up failed" in r.output  # the fake stops after up


def test_down_asks_and_destroys_only_when_confirmed(automation):
    calls, _ = automation
    assert RUNNER.invoke(app, ["down", "--stack", "dev"], input="n\n").exit_code == 1
    assert calls == []
    r = RUNNER.invoke(app, ["down", "--stack", "dev"], input="y\n")
    assert r.exit_code == 0 and [k for k, _ in calls] == ["destroy"]


def test_change_counts_reads_optype_or_string_keys():
    assert change_counts({ev.OpType.REPLACE: 2, "create": 1, "same": 9}) == {
        "create": 1,
        "update": 0,
        "replace": 2,
        "delete": 0,
    }
