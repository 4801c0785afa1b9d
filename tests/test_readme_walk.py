"""README's "Real use" is the operator's whole walk, and every line of it runs here (issue #27 point 4).

The walk is the fenced block between `<!-- walk -->` and `<!-- /walk -->` in README.md: this test
reads it (the README is the one source) and runs each line as written, in order, in one copy of
the project. AWS is a real moto server; what moto lacks comes from the boundaries the other tests
use: the vCPU quota from a botocore Stubber (tests/test_account_check.py), the head's report from
SSM is moto's empty answer (tests/test_status.py), `up`/`down` at the Automation API with the
recorded prod preview (tests/test_up_preview.py). A `[pulumi]` line is what the Pulumi CLI does:
`config set` writes the key into stacks/Pulumi.prod.yaml (stackConfigDir), `stack output` writes
the outputs file. A line no handler below knows fails the test.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from infra.account_check import model as ac_model
from infra.cli import app
from infra.constants import REPO_ROOT
from infra.local.tiny_model import ensure_tiny_model
from tests.json_http import JsonServer, chat_completion
from tests.moto_fixtures import DUMMY_CREDS, MotoServer, dlami
from tests.project import copy_project
from tests.synthetic_checkpoint import R1_CONFIG, r1_tensors, write_header_only
from tests.test_account_check import AMI_NAME, GPU_OK, quota_client
from tests.test_status import moto_stack
from tests.test_up_preview import ReplayStack, recorded

RUNNER = CliRunner()
MODEL = "deepseek-ai/DeepSeek-R1"


def walk_lines() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    block = text[text.index("<!-- walk -->") : text.index("<!-- /walk -->")]
    body = block.split("```bash\n", 1)[1].split("```", 1)[0]
    return [ln for ln in body.splitlines() if ln.strip()]


def argv_of(line: str) -> list[str]:
    return shlex.split(line, comments=True)


def test_the_walk_is_in_the_order_of_the_issue():
    firsts = [" ".join(argv_of(ln)[:2]) for ln in walk_lines()]
    order = ["llmfleet plan", "llmfleet cost", "llmfleet weights", "llmfleet up", "llmfleet status",
             "llmfleet chat", "llmfleet logs", "llmfleet down"]  # fmt: skip
    seen = [o for o in firsts if o in order]
    assert seen == sorted(seen, key=order.index)
    assert set(order) <= set(firsts) and "llmfleet preflight" in firsts
    # every line that needs the Pulumi CLI says so
    for ln in walk_lines():
        argv = argv_of(ln)
        if argv[0] == "pulumi" or argv[:2] in (["llmfleet", "up"], ["llmfleet", "down"]):
            assert "[pulumi]" in ln, ln


@pytest.fixture(scope="module")
def moto():
    with pytest.MonkeyPatch.context() as mp:
        for k, v in DUMMY_CREDS.items():
            mp.setenv(k, v)
        with MotoServer(amis=[dlami("ami-00000000000000002", AMI_NAME, "2025-06-01T00:00:00.000Z")]) as s:
            yield s


class Chat(JsonServer):
    """The endpoint behind the NLB: an OpenAI-shaped answer to a bearer-token request."""

    def __init__(self):
        super().__init__(lambda req: (200, chat_completion(MODEL, "Layers split across hosts.")))
        self.url = f"{self.base}/v1"

    @property
    def seen(self) -> list[tuple[str, str | None]]:
        return [(r.path, r.headers.get("Authorization")) for r in self.requests]


def test_every_line_of_the_walk_runs_as_written(moto, tmp_path, monkeypatch):
    moto.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    project = copy_project(tmp_path / "llm")
    monkeypatch.chdir(project)
    # the operator's own bucket, and the Automation API's stack (recorded preview; destroy recorded)
    calls: list = []

    class WalkStack(ReplayStack):
        def destroy(self, **kw):
            calls.append(("destroy", kw))
            return type("R", (), {"summary": type("S", (), {"result": "succeeded"})()})()

    from pulumi import automation as auto

    monkeypatch.setattr(auto, "create_or_select_stack", lambda *a, **k: WalkStack(recorded(), calls))
    monkeypatch.setattr(auto, "select_stack", lambda *a, **k: WalkStack(recorded(), calls))
    monkeypatch.setattr("infra.deploy.require_pulumi_cli", lambda which=None: "/usr/bin/pulumi")
    # preflight: moto's EC2 and S3, the quota from a Stubber (a fresh one per run: each is consumed)
    monkeypatch.setattr(
        ac_model,
        "make_clients",
        lambda region, session=None: ac_model.Clients(
            ec2=moto.client("ec2"), s3=moto.client("s3"), service_quotas=quota_client(GPU_OK)[0]
        ),
    )
    real_inputs = ac_model.inputs_for_stack

    def inputs(cfg, catalog=None):
        # the upload here is the tiny model, not 642 GiB: the preflight expects what was uploaded
        # (its size check against R1's card is tests/test_account_check.py's)
        inp = real_inputs(cfg, catalog)
        bucket, prefix = ac_model.split_s3_uri(inp.weights_uri)
        objs = moto.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return dataclasses.replace(inp, expected_weights_bytes=sum(o["Size"] for o in objs) or None)

    monkeypatch.setattr(ac_model, "inputs_for_stack", inputs)
    tiny = tmp_path / "tiny"
    shutil.copytree(ensure_tiny_model(), tiny)
    r1 = write_header_only(tmp_path / "r1", r1_tensors(), 163, R1_CONFIG)
    chat = Chat()
    ran: list[str] = []
    try:
        for line in walk_lines():
            run_line(line, moto, project, tiny, r1, chat, calls)
            ran.append(line)
    finally:
        chat.close()
    assert ran == walk_lines()
    assert chat.seen == [("/v1/chat/completions", "Bearer tok-walk")]
    assert [k for k, _ in calls] == ["preview", "destroy"]  # asked, answered n: nothing applied


def cli(argv: list[str], input: str | None = None):
    r = RUNNER.invoke(app, argv, input=input, env={"COLUMNS": "200"})
    return r


def run_line(line: str, moto, project: Path, tiny: Path, r1: Path, chat: Chat, calls: list) -> None:
    argv = argv_of(line)
    if argv[0] == "pulumi":
        assert "[pulumi]" in line
        return pulumi_line(argv, moto, project, chat)
    assert argv[0] == "llmfleet", line
    args = argv[1:]
    if args[:2] == ["weights", "upload"]:
        src = args[args.index("--from") + 1]
        # R1's shapes: the model check passes, nothing moves; then the tiny model for real
        r = cli([a if a != src else str(r1) for a in args] + ["--dry-run"])
        assert r.exit_code == 0, (line, r.output)
        r = cli([a if a != src else str(tiny) for a in args] + ["--skip-model-check"])
        assert r.exit_code == 0, (line, r.output)
        assert "manifest.json" in r.output
        return
    if args[0] == "up":
        # the update needs the Pulumi CLI; what it shows before asking is what runs here
        r = cli(args, input="n\n")
        assert r.exit_code == 1, (line, r.output)
        out = r.stdout
        q = out.index("Apply these changes to stack prod?")
        for needle in ("replaces GPU host cluster-worker-0", "policy pack:", "per hour", "preflight"):
            assert -1 < out.find(needle) < q, needle
        return
    if args[0] == "down":
        r = cli(args, input="y\n")
    else:
        r = cli(args)
    assert r.exit_code == 0, (line, r.output)
    expect = {
        "plan": ["3"],
        "cost": ["total"],
        "preflight": ["weights"],
        "status": ["llmfleet-t-worker-1", "lost: head"],
        "endpoint": [chat.url],
        "chat": ["Layers split across hosts."],
        "logs": ["serve deploy: applied"],
        "down": ["destroy: succeeded"],
    }.get(args[0], [])
    if args[:2] == ["weights", "verify"]:
        expect = ["manifest"]
    for needle in expect:
        assert needle.lower() in r.output.lower(), (line, needle, r.output)


def pulumi_line(argv: list[str], moto, project: Path, chat: Chat) -> None:
    if argv[1:3] == ["config", "set"]:
        stack = argv[argv.index("--stack") + 1]
        key, value = [a for a in argv[3:] if not a.startswith("--") and a != stack]
        path = project / "stacks" / f"Pulumi.{stack}.yaml"
        doc = yaml.safe_load(path.read_text())
        doc["config"][key] = value
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        bucket = re.match(r"s3://([^/]+)/", value).group(1)
        moto.client("s3").create_bucket(Bucket=bucket)  # the operator's own bucket
        return
    if argv[1:3] == ["stack", "output"]:
        assert argv[-2] == ">" or ">" in argv
        raw = moto_stack(moto)
        raw["endpoint_url"] = chat.url
        ssm, logs = moto.client("ssm"), moto.client("logs")
        ssm.put_parameter(Name=raw["token_parameter"], Value="tok-walk", Type="SecureString")
        for g in raw["log_groups"]:
            logs.create_log_group(logGroupName=g)
        stream = f"head-{raw['head_private_ip']}/llmfleet-head"
        logs.create_log_stream(logGroupName=raw["log_groups"][1], logStreamName=stream)
        logs.put_log_events(
            logGroupName=raw["log_groups"][1], logStreamName=stream,
            logEvents=[{"timestamp": int(time.time() * 1000) - 60_000, "message": "serve deploy: applied"}],
        )  # fmt: skip
        (project / argv[argv.index(">") + 1]).write_text(json.dumps(raw))
        return
    raise AssertionError(f"a [pulumi] line this test does not know: {' '.join(argv)}")
