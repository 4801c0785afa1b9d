"""llmfleet up/down: argument building (pure), the SSM readiness waiter against moto, the CLI-missing path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra import deploy as d
from infra.stack.resolve import resolve
from tests.moto_fixtures import DUMMY_CREDS, MotoServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def creds(monkeypatch):
    for k, v in DUMMY_CREDS.items():
        monkeypatch.setenv(k, v)


# ---------------------------------------------------------------- argument building


def test_build_stack_args(tmp_path):
    (tmp_path / "Pulumi.yaml").write_text("name: llmfleet\nruntime: python\n")
    env = {"AWS_PROFILE": "ops", "PULUMI_BACKEND_URL": "s3://state", "HOME": "/root", "SECRET": "x"}
    a = d.build_stack_args(
        "prod", ["workerCount=2", "aws:region=us-west-2", "llmfleet:spot=true"], tmp_path, env
    )
    assert a.stack_name == "prod"
    assert a.work_dir == str(tmp_path.resolve())
    assert a.config == {"llmfleet:workerCount": "2", "aws:region": "us-west-2", "llmfleet:spot": "true"}
    assert a.env_vars == {
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "AWS_PROFILE": "ops",
        "PULUMI_BACKEND_URL": "s3://state",
    }


def test_build_stack_args_defaults_to_repo_root():
    a = d.build_stack_args("org/llmfleet/dev")
    assert Path(a.work_dir) == ROOT and a.config == {}


def test_override_value_may_contain_equals():
    assert d.parse_overrides(['llmfleet:tags={"a":"b=c"}']) == {"llmfleet:tags": '{"a":"b=c"}'}


@pytest.mark.parametrize(
    "stack,overrides,needle",
    [
        ("prod dev", (), "--stack 'prod dev': not a stack name"),
        ("", (), "--stack '': not a stack name"),
        ("prod", ("workerCount",), "-c 'workerCount': not KEY=VALUE"),
        ("prod", ("bad key=1",), "-c 'bad key=1': not KEY=VALUE"),
        # a namespace nothing reads is a typo, not a setting (issue #30)
        ("prod", ("foo:bar=1",), "-c 'foo:bar=1': unknown config namespace 'foo'; allowed: llmfleet:, aws:"),
    ],
)
def test_build_stack_args_errors_are_one_line(stack, overrides, needle):
    with pytest.raises(d.DeployError) as e:
        d.build_stack_args(stack, overrides)
    assert str(e.value).startswith(needle) and "\n" not in str(e.value)


def test_build_stack_args_needs_project(tmp_path):
    with pytest.raises(d.DeployError, match="no Pulumi.yaml there"):
        d.build_stack_args("prod", (), tmp_path)


def test_require_pulumi_cli():
    with pytest.raises(d.PulumiMissing) as e:
        d.require_pulumi_cli(lambda name: None)
    assert str(e.value) == d.PULUMI_MISSING
    assert d.require_pulumi_cli(lambda name: f"/usr/bin/{name}") == "/usr/bin/pulumi"


# ---------------------------------------------------------------- readiness parsing (pure)


def head_stdout(status: dict | str, code: str, body: dict | str) -> str:
    s = status if isinstance(status, str) else json.dumps(status)
    b = body if isinstance(body, str) else json.dumps(body)
    return (
        f"LLMFLEET_STATUS_BEGIN\n{s}\nLLMFLEET_STATUS_END\n"
        f"LLMFLEET_COMPLETION_HTTP={code}\nLLMFLEET_COMPLETION_BEGIN\n{b}\nLLMFLEET_COMPLETION_END\n"
    )


COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "OK"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
}
STATUS = {"role": "head", "nodes": 3, "gpus": 16}


def test_parse_ready():
    r = d.parse_readiness(head_stdout(STATUS, "200", COMPLETION))
    assert r.ready and r.status == STATUS and "2 tokens" in r.reason


def test_parse_status_after_a_warning_line():
    r = d.parse_readiness(
        head_stdout("WARNING: ray version\n" + json.dumps(STATUS, indent=2), "200", COMPLETION)
    )
    assert r.ready and r.status == STATUS


@pytest.mark.parametrize(
    "stdout,needle",
    [
        ("", "no output from the head"),
        (head_stdout(STATUS, "503", "Service Unavailable"), "completion: HTTP 503 Service Unavailable"),
        (head_stdout(STATUS, "000", ""), "completion: HTTP 000"),
        (head_stdout(STATUS, "200", "<html>"), "not JSON"),
        (
            head_stdout(STATUS, "200", {**COMPLETION, "usage": {"completion_tokens": 0}}),
            "no tokens generated",
        ),
        (head_stdout("Error: No such container: llmfleet", "200", COMPLETION), "No such container"),
    ],
)
def test_parse_not_ready(stdout, needle):
    r = d.parse_readiness(stdout)
    assert not r.ready and needle in r.reason


def test_readiness_commands_keep_token_on_the_head():
    cmds = d.readiness_commands(
        container="llmfleet-head",
        port=8000,
        model="deepseek-r1",
        token_parameter="/llmfleet/prod/token",
        region="us-east-1",
    )
    script = "\n".join(cmds)
    assert "docker exec llmfleet-head python -m ray_cluster.node status --json" in script
    assert "--with-decryption" in script and "http://127.0.0.1:8000/v1/chat/completions" in script
    assert '"model": "deepseek-r1"' in script
    # the status names the config file, so the head reports the fingerprint it deployed
    assert "status --json --serve-config /etc/llmfleet/serve.yaml 2>&1" in script


def test_readiness_asks_for_the_deployment_it_rolled_out():
    """An app that answers with the previous Serve config is not ready; the new one is."""
    new, old = d.serve_config_fingerprint("a: 2\n"), d.serve_config_fingerprint("a: 1\n")
    answered_old = d.parse_readiness(
        head_stdout({**STATUS, "deployed_serve_config": old}, "200", COMPLETION), new
    )
    assert not answered_old.ready
    assert answered_old.reason == (
        f"the app answers with Serve config {old[:12]}, not {new[:12]} "
        "(the head's deploy watcher has not applied the new one yet)"
    )
    nothing_yet = d.parse_readiness(head_stdout(STATUS, "200", COMPLETION), new)
    assert not nothing_yet.ready and "Serve config None, not" in nothing_yet.reason
    ready = d.parse_readiness(head_stdout({**STATUS, "deployed_serve_config": new}, "200", COMPLETION), new)
    assert ready.ready and ready.reason == f"completion returned 2 tokens from Serve config {new[:12]}"
    # The fingerprint never replaces the completion: the new config without an answer is not ready.
    failing = d.parse_readiness(head_stdout({**STATUS, "deployed_serve_config": new}, "503", "busy"), new)
    assert not failing.ready and "HTTP 503" in failing.reason


def test_replica_gate_needs_every_serve_app_running():
    """A completion that another replica answered while the rolled one is down does not pass."""
    down = d.parse_readiness(
        head_stdout({**STATUS, "serve": {"llm": "DEPLOYING"}}, "200", COMPLETION), require_serve_running=True
    )
    assert not down.ready and down.reason == "Serve: llm DEPLOYING (a replica is not back yet)"
    none = d.parse_readiness(head_stdout(STATUS, "200", COMPLETION), require_serve_running=True)
    assert not none.ready and "no Serve application" in none.reason
    up = d.parse_readiness(
        head_stdout({**STATUS, "serve": {"llm": "RUNNING"}}, "200", COMPLETION), require_serve_running=True
    )
    assert up.ready


def test_the_head_reports_what_the_operator_fingerprints(tmp_path, monkeypatch):
    """ray_cluster.node records the bytes it deployed; the operator fingerprints the YAML it
    rendered; both name the file the head's node script writes (YAML, one trailing newline)."""
    from ray_cluster import node

    serve_yaml = "applications:\n- name: llm\n\n\n"
    path = tmp_path / "serve.yaml"
    path.write_text(serve_yaml.rstrip() + "\n")  # what cloud_init's heredoc writes
    assert node.config_fingerprint(path.read_bytes()) == d.serve_config_fingerprint(serve_yaml)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "container-tmp"))
    (tmp_path / "container-tmp").mkdir()
    assert node.deployed_fingerprint(str(path)) is None  # a fresh container has deployed nothing
    node._record_deployed(str(path), "abc")
    assert node.deployed_fingerprint(str(path)) == "abc"
    assert node.deployed_marker(str(path)).startswith(str(tmp_path / "container-tmp"))
    assert node.deployed_fingerprint(str(tmp_path / "other.yaml")) is None
    args = node.build_parser().parse_args(["status", "--json", "--serve-config", str(path)])
    assert args.serve_config == str(path)


def test_readiness_sends_the_token_through_curls_stdin_never_an_argv(tmp_path):
    """The rendered lines run for real in bash: `aws` (a stub) prints the token, the real curl
    (behind a wrapper that records every argv it is given) posts to a local endpoint. The
    endpoint gets the bearer header; no argv ever holds the token."""
    import os
    import stat
    import subprocess

    from tests.json_http import JsonServer

    real_curl = shutil.which("curl")
    if real_curl is None:
        pytest.skip("needs curl")
    token = "tok-" + "s3cr3t" * 6
    srv = JsonServer(
        lambda req: (200, {"choices": [{"message": {"content": "OK"}}], "usage": {"completion_tokens": 2}})
    )
    bin_dir, argv_log = tmp_path / "bin", tmp_path / "argv.log"
    bin_dir.mkdir()
    stubs = {
        "aws": f"printf '%s\\n' {token}",
        "docker": "echo '{\"nodes\": []}'",
        # every argv of every curl call, one per line, then the real curl with the same stdin
        "curl": f'printf \'%s\\n\' "$0" "$@" >> {argv_log}\nexec {real_curl} "$@"',
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    try:
        cmds = d.readiness_commands(
            container="llmfleet-head",
            port=srv.server.server_port,
            model="m",
            token_parameter="/t",
            region="r",
        )
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "NO_PROXY": "*"}
        run = subprocess.run(
            ["bash", "-c", "\n".join(cmds)], capture_output=True, text=True, env=env, timeout=60
        )
    finally:
        srv.close()
    assert [r.headers.get("Authorization") for r in srv.requests] == [f"Bearer {token}"], run.stderr
    logged = argv_log.read_text()
    assert "chat/completions" in logged and token not in logged
    assert d.parse_readiness(run.stdout).ready, run.stdout + run.stderr
    assert all(token not in line for line in cmds)  # nor in the command SSM carries


# ---------------------------------------------------------------- the waiter against moto's SSM


@pytest.fixture(scope="module")
def moto():
    with MotoServer() as server:
        yield server


@pytest.fixture
def head(moto):
    moto.reset()
    ec2 = moto.client("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    inst = ec2.run_instances(ImageId=image, InstanceType="m7i.2xlarge", MinCount=1, MaxCount=1)["Instances"][
        0
    ]
    return inst["InstanceId"]


CMDS = d.readiness_commands(
    container="llmfleet-head", port=8000, model="deepseek-r1", token_parameter="/t", region="us-east-1"
)


def test_waiter_times_out_on_moto_empty_output(moto, head):
    """Moto's SSM runs nothing and returns an empty stdout: the waiter must keep trying, then give up in time."""
    ssm = moto.client("ssm")
    seen = []
    now = [0.0]  # a clock that moves only by the waiter's sleeps: a loaded machine cannot starve it

    def sleep(s: float) -> None:
        now[0] += s

    r = d.wait_head_ready(
        ssm, head, CMDS, timeout_s=1.0, poll_s=0.2, on_progress=lambda e, t, why: seen.append(why),
        clock=lambda: now[0], sleep=sleep,
    )  # fmt: skip
    assert not r.ready and r.reason.startswith("not ready after 1 s: no output from the head")
    assert r.attempts >= 2 and seen
    sent = ssm.list_commands(InstanceId=head)["Commands"]
    assert len(sent) == r.attempts
    assert sent[0]["DocumentName"] == "AWS-RunShellScript" and sent[0]["InstanceIds"] == [head]
    assert sent[0]["Parameters"]["commands"] == CMDS


def test_waiter_ready_when_head_answers(moto, head):
    """The real send_command/get_command_invocation round trip; the head's stdout is what moto cannot produce."""
    ssm = moto.client("ssm")
    answers = iter([head_stdout(STATUS, "503", "starting"), head_stdout(STATUS, "200", COMPLETION)])

    def agent_output(parsed, **_):
        parsed["StandardOutputContent"] = next(answers)

    ssm.meta.events.register("after-call.ssm.GetCommandInvocation", agent_output)
    r = d.wait_head_ready(ssm, head, CMDS, timeout_s=30, poll_s=0.05)
    assert r.ready and r.attempts == 2 and r.status == STATUS


def test_waiter_unknown_instance_keeps_waiting():
    calls = []

    class Flaky:
        """send_command fails like AWS does before the SSM agent registers, then succeeds."""

        def send_command(self, **kw):
            calls.append(kw)
            from botocore.exceptions import ClientError

            raise ClientError(
                {"Error": {"Code": "InvalidInstanceId", "Message": "not registered"}}, "SendCommand"
            )

    r = d.wait_head_ready(Flaky(), "i-0123", CMDS, timeout_s=0.3, poll_s=0.1)
    assert not r.ready and "InvalidInstanceId" in r.reason and len(calls) >= 2


# ---------------------------------------------------------------- the Automation API


@pytest.mark.skipif(
    shutil.which("pulumi") is None, reason="pulumi CLI not on PATH: the Automation API needs it"
)
def test_open_stack_selects_local_program(tmp_path, monkeypatch):
    monkeypatch.setenv("PULUMI_BACKEND_URL", f"file://{tmp_path}")
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "test")
    args = d.build_stack_args(
        "citest", (), ROOT, {"PULUMI_BACKEND_URL": f"file://{tmp_path}", "PULUMI_CONFIG_PASSPHRASE": "test"}
    )
    stack = d.open_stack(args)
    try:
        assert stack.name == "citest"
    finally:
        stack.workspace.remove_stack("citest")


def test_up_and_down_without_cli_say_so(tmp_path):
    """The installed `llmfleet` entry point, with a PATH that holds no pulumi."""
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("llmfleet")
    env = {**DUMMY_CREDS, "PATH": str(tmp_path), "HOME": str(tmp_path), "COLUMNS": "200"}
    for cmd in (["up", "--stack", "prod"], ["down", "--stack", "prod", "--yes"]):
        res = subprocess.run([str(exe), *cmd], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert res.returncode == 2, res.stderr
        assert res.stdout == ""
        assert res.stderr.strip().splitlines() == [f"error: {d.PULUMI_MISSING}"]


def test_existing_hosts_readiness_is_a_real_completion_sent_to_the_endpoint():
    """provider=existing has no SSM: `up` waits for a completion straight from the endpoint,
    with the stack's api_token; a server that only answers /health never counts."""
    from infra.program.offline import capture
    from tests.json_http import JsonServer

    c = capture("onprem-l20")
    assert c.config.provider == "existing"

    def wait(srv: JsonServer, timeout: float) -> d.Readiness:
        outputs = {**c.outputs, "endpoint_url": f"{srv.base}/v1", "api_token": "t0k"}
        return d.wait_stack_ready(c.config, outputs, timeout)

    def endpoint(ready: bool):
        def answer(req):
            if req.method == "GET" and req.path == "/health":
                return 200, {}
            if not ready:  # the app is not up: only /health answers
                return 404, {}
            if req.path == "/v1/models":
                return 200, {"data": [{"id": "deepseek-ai/DeepSeek-R1"}]}
            return (200, {"choices": [{"text": " hi"}]}) if req.method == "POST" else (404, {})

        return JsonServer(answer)

    with endpoint(ready=True) as ok:
        r = wait(ok, timeout=5)
    assert r.ready and r.reason == "a completion returned ' hi'"
    assert ("POST", "/v1/completions", "Bearer t0k") in [
        (q.method, q.path, q.headers.get("Authorization")) for q in ok.requests
    ]
    with endpoint(ready=False) as health_only:
        r = wait(health_only, timeout=1)
    assert not r.ready and r.reason.startswith("no completion within 1 s")


def test_up_readiness_asks_for_the_model_the_rendered_serve_config_serves(monkeypatch):
    """`up` waits on a completion for outputs['served_model']: the id the Serve app serves, from
    the same program outputs `up` renders serve.yaml from (not the catalog key 'deepseek-r1')."""
    from infra.commands._readiness import wait_ready
    from infra.program.offline import capture
    from infra.rayconf.serving import render_for_outputs

    c = capture("prod")
    outputs = dict(c.outputs)
    seen: dict = {}
    monkeypatch.setattr(d, "readiness_commands", lambda **kw: seen.update(kw) or ["true"])
    waited: list = []
    monkeypatch.setattr(d, "wait_head_ready", lambda *a, **kw: waited.append(a) or d.Readiness(True, "ok"))
    # the head's instance comes from its group (infra/worker_lookup.py; against moto in test_rollout)
    import infra.worker_lookup as lookup

    asked: list = []
    monkeypatch.setattr(lookup, "head_instance_id", lambda o, ec2: asked.append(o["head_group"]) or "i-0head")
    assert wait_ready(c.config, outputs, timeout=1) is True
    assert asked == ["llmfleet-prod-head"] and "i-0head" in waited[0]
    doc, _ = render_for_outputs(outputs, c.config, resolve(c.config).plan)
    served = doc["applications"][0]["args"]["llm_configs"][0]["model_loading_config"]["model_id"]
    assert seen["model"] == served == "deepseek-ai/DeepSeek-R1" != c.config.model
    outputs.pop("served_model")
    import typer

    with pytest.raises(typer.Exit):  # a program that does not export it: one line, exit 1
        wait_ready(c.config, outputs, timeout=1)
    with pytest.raises(d.DeployError, match="served_model"):
        d.wait_stack_ready(c.config, outputs, 1)


def test_policy_pack_dir_is_policy_in_a_checkout_and_a_generated_pack_when_installed(tmp_path):
    # the checkout: policy/ itself (its PulumiPolicy.yaml names ../.venv, which exists)
    assert d.policy_pack_dir(tmp_path / "out") == d.POLICY_PACK_DIR
    # installed: policy/ in site-packages, no ../.venv beside it
    site = tmp_path / "site-packages"
    shutil.copytree(d.POLICY_PACK_DIR, site / "policy")
    pack = d.policy_pack_dir(tmp_path / "out", site / "policy", prefix="/opt/tool venv")
    assert pack == tmp_path / "out" / "policy-pack"
    doc = yaml.safe_load((pack / "PulumiPolicy.yaml").read_text())
    want = yaml.safe_load((d.POLICY_PACK_DIR / "PulumiPolicy.yaml").read_text())
    want["runtime"]["options"]["virtualenv"] = "/opt/tool venv"
    assert doc == want
    # its entry runs the installed pack's __main__ (here: the copy's, which fails on purpose)
    (site / "policy" / "__main__.py").write_text("raise SystemExit('ran ' + __name__)\n")
    out = subprocess.run(
        [sys.executable, str(pack / "__main__.py")],
        env={"PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    assert out.stderr.strip() == "ran __main__"
    assert d.policy_packs({}, tmp_path / "o2", site / "policy").packs == (str(site / "policy"),)


def test_a_restarted_deploy_on_a_head_that_deployed_before_skips_the_preflight(tmp_path, monkeypatch):
    """The head's Ray restarted without GCS fault tolerance: no Serve app, but this head's deploy
    marker (its container's temp dir) is there, so the deploy does not run the gang preflight
    again (issue #26: serving after a head kill); a fresh head (no marker) does."""
    from ray_cluster import node

    path = tmp_path / "serve.yaml"
    path.write_text("applications: []\n")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "container-tmp"))
    (tmp_path / "container-tmp").mkdir()
    calls: list[bool] = []
    monkeypatch.setattr(node, "load_serve_config", lambda p: {})
    monkeypatch.setattr(node, "serve_status", lambda dashboard: {})  # the app died with the GCS
    monkeypatch.setattr(node, "_apply", lambda a, token, *, preflight_first: calls.append(preflight_first))
    args = node.build_parser().parse_args(["deploy", "--serve-config", str(path), "--tp", "1", "--pp", "1"])
    assert node.cmd_deploy(args) == 0 and calls == [True]  # a new head: the preflight runs
    node._record_deployed(str(path), "abc")
    assert node.cmd_deploy(args) == 0 and calls == [True, False]
