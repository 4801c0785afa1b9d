"""What a new user meets in the CLI: help, --version, ids, errors, honest output, 80 columns.

Every test runs the real typer app in-process (CliRunner); the offline commands run the real
program under Pulumi mocks. Snapshots: tests/snapshots/cli_*.txt (see tests/snapshot.py).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from importlib.metadata import version

import pytest
import typer.main
from typer.testing import CliRunner

from infra.catalog import load_catalog
from infra.cli import COMMANDS as ROOT_TABLE
from infra.cli import app, full_group
from infra.commands.preview import short_type
from infra.constants import REPO_ROOT
from infra.local.state import save_state
from infra.stack.config import load_stack_config
from infra.stack.files import available_stacks
from tests.json_http import JsonServer, Request, chat_completion
from tests.local_state_fixtures import new_state
from tests.snapshot import assert_snapshot

RUNNER = CliRunner()
COLS80 = {"COLUMNS": "80"}
# No credential anywhere botocore looks: env, files, SSO, container and instance metadata.
NO_AWS = {
    **COLS80,
    "AWS_ACCESS_KEY_ID": None,
    "AWS_SECRET_ACCESS_KEY": None,
    "AWS_SESSION_TOKEN": None,
    "AWS_PROFILE": None,
    "AWS_DEFAULT_PROFILE": None,
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": None,
    "AWS_CONTAINER_CREDENTIALS_FULL_URI": None,
    "AWS_WEB_IDENTITY_TOKEN_FILE": None,
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ENDPOINT_URL": None,
}


def run(*args: str, env: dict | None = None):
    return RUNNER.invoke(app, list(args), env={**COLS80, **(env or {})})


def _commands():
    """(path, click command) for the root, every group and every command."""

    def walk(cmd, path):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(full_group(), []))


COMMANDS = _commands()
IDS = [" ".join(p) or "llmfleet" for p, _ in COMMANDS]


# --- help and options ----------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=IDS)
def test_help_shows_no_placeholder_on_flags_and_one_on_values(path, cmd):
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for p in cmd.params:
        if not getattr(p, "opts", None) or p.param_type_name != "option" or p.hidden:
            continue  # a hidden option is a deprecated alias: not in --help by design
        long = next(o for o in p.opts if o.startswith("--"))
        # the option's own row in a panel (it starts the row, after the border), not the
        # description above the panels that mentions it
        row = rf"^│\s*(\*\s+)?{re.escape(long)}(\s|,|$)"  # "*" marks a required option
        (line,) = [ln for ln in lines if re.search(row, ln)][:1] or [""]
        assert line, f"{long} missing from `{' '.join(path)} --help`"
        placeholder = re.search(r"<(bool|str|int|float|path|text)[a-z ]*>", line)
        if p.is_flag:
            assert not placeholder, f"flag {long} shows a value placeholder: {line}"
        elif p.metavar is None:
            assert placeholder, f"value option {long} lost its type: {line}"


def test_flag_help_rows_by_example():
    out = run("plan", "--help").stdout
    json_row = next(ln for ln in out.splitlines() if "--json" in ln)
    conc_row = next(ln for ln in out.splitlines() if "--concurrency" in ln)
    assert "<bool>" not in json_row and "Machine-readable JSON" in json_row
    assert "<int>" in conc_row
    assert "<bool>" not in run("--help").stdout


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=IDS)
def test_every_option_has_help_and_no_hard_line_breaks(path, cmd):
    for p in cmd.params:
        if p.param_type_name == "option":
            assert p.help, f"{' '.join(path)} {p.opts}: no help text"
    # typer's rich help keeps a paragraph's single newlines, so a hard-wrapped paragraph turns
    # ragged at any width but the one it was wrapped for.
    for para in inspect.cleandoc(cmd.help or "").split("\n\n"):
        assert "\n" not in para, f"{' '.join(path)}: hard line break in {para[:60]!r}"


def test_the_root_table_is_what_the_modules_register():
    """`llmfleet --help` lists the commands from infra.cli.COMMANDS without importing them: each
    entry names the module that registers the command and its help's first paragraph."""
    registered = {name: cmd for name, cmd in full_group().commands.items()}
    assert list(registered) == list(ROOT_TABLE)
    for name, (module, first) in ROOT_TABLE.items():
        cmd = registered[name]
        assert cmd.callback is None or cmd.callback.__module__ == f"infra.commands.{module}", name
        assert inspect.cleandoc(cmd.help or "").split("\n\n")[0] == first, name


def test_root_help_imports_no_command_module():
    code = (
        "import sys\nfrom infra.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('infra.commands.') and m != 'infra.commands._common'"
        " or m.split('.')[0] in ('pulumi', 'boto3', 'ray', 'vllm')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **COLS80},
    ).stdout
    assert "Usage: " in out and "preflight-cluster" in out
    assert out.splitlines()[-1] == "[]"


def test_a_mistyped_command_is_suggested_from_every_command():
    result = run("rollot")
    assert result.exit_code == 2
    assert "no such command 'rollot'. Did you mean 'rollout'?" in result.stderr


def test_version():
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout == f"llmfleet {version('llmfleet-iac')}\n"


# --- ids: case-insensitive, did you mean ---------------------------------------------------------


def test_gpu_and_model_ids_are_case_insensitive():
    result = run("plan", "--model", "DeepSeek-R1", "--gpu", "l20", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["model"], doc["gpu"]) == ("deepseek-r1", "L20")
    assert load_stack_config({"llmfleet:model": "DEEPSEEK-R1"}).model == "deepseek-r1"


def test_did_you_mean_gpu_and_model():
    gpus = ", ".join(load_catalog().gpus)
    bad_gpu = run("plan", "--model", "deepseek-r1", "--gpu", "L2")
    assert bad_gpu.exit_code == 2
    assert bad_gpu.stderr == f"error: --gpu: 'L2' is not a known GPU; did you mean L20? allowed: {gpus}\n"
    bad_model = run("plan", "--model", "r1", "--gpu", "L20")
    assert bad_model.exit_code == 2
    assert bad_model.stderr.startswith(
        "error: --model: 'r1' is not a known model; did you mean deepseek-r1? allowed: deepseek-r1, "
    )
    far = run("plan", "--model", "llama", "--gpu", "L20")
    assert far.exit_code == 2 and "did you mean" not in far.stderr and "allowed: deepseek-r1" in far.stderr


def test_did_you_mean_stack_name():
    result = run("preflight", "--stack", "prd")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --stack 'prd': no file stacks/Pulumi.prd.yaml; did you mean prod? "
        f"allowed: {', '.join(available_stacks())}\n"
    )


def test_unknown_config_key_through_the_cli_gets_did_you_mean():
    result = run("preflight", "--stack", "prod", "-c", "llmfleet:workrCount=3")
    assert result.exit_code == 2
    assert (
        result.stderr == "error: llmfleet:workrCount = '3': unknown key; did you mean llmfleet:workerCount?\n"
    )
    # nothing close: one line that lists what is allowed
    far = run("preflight", "--stack", "prod", "-c", "llmfleet:zzz=1")
    assert far.exit_code == 2 and len(far.stderr.splitlines()) == 1
    assert "unknown key; allowed keys: llmfleet:provider, " in far.stderr


def test_cost_diff_error_names_diff_not_stack():
    result = run("cost", "--stack", "dev", "--diff", "dve")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: --diff: 'dve' is not a stack (no stacks/Pulumi.dve.yaml); did you mean dev?"
    )
    assert "--stack" not in result.stderr


# --- honest output -------------------------------------------------------------------------------


def test_plan_exit_codes_fits_does_not_fit_bad_input():
    fits = run("plan", "--model", "deepseek-r1", "--gpu", "H200")
    assert fits.exit_code == 0 and "yes" in fits.stdout
    no = run("plan", "--model", "deepseek-r1", "--gpu", "L4", "--tp", "1", "--pp", "1")
    assert no.exit_code == 3
    assert "does not fit:" in no.stdout and "no" in no.stdout
    bad = run("plan", "--model", "deepseek-r1", "--gpu", "L20", "--quantization", "fp7")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --quantization: 'fp7'")


def test_plan_says_when_the_speeds_are_for_a_capped_concurrency():
    result = run("plan", "--model", "deepseek-r1", "--gpu", "L20", "--concurrency", "500")
    assert result.exit_code == 0
    fits_row = next(ln for ln in result.stdout.splitlines() if ln.startswith("│ fits"))
    assert "yes, at concurrency 210 (not 500)" in fits_row
    doc = json.loads(run("plan", "--model", "deepseek-r1", "--gpu", "L4", "--json").stdout)
    assert "reasons" in doc and "reason" not in doc


def test_cost_live_without_credentials_titles_the_table_snapshot(tmp_path, monkeypatch):
    import boto3

    # boto3's default session keeps the credentials it resolved first (an earlier test's moto
    # keys): start from a fresh one, which resolves them under NO_AWS
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    result = run("cost", "--stack", "dev", "--live", env={**NO_AWS, "LLMFLEET_CACHE_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.stderr
    head = result.stdout.split("Resource / component")[0]
    title = " ".join(head.split())
    assert "live (AWS Price List" not in result.stdout
    assert re.fullmatch(
        r"llmfleet cost: stack dev \(us-east-1, snapshot \d{4}-\d\d-\d\d: live prices unavailable "
        r"\(no AWS credentials\)\)",
        title,
    ), title
    (warning,) = result.stderr.splitlines()
    assert warning.startswith("warning: no AWS credentials found; configure them with `aws configure`")


def test_preflight_without_credentials_is_one_line():
    result = run("preflight", "--stack", "prod", env=NO_AWS)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "error: no AWS credentials found; configure them with `aws configure` (or `aws sso login`), "
        "AWS_PROFILE, or AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY\n"
    )


def test_render_of_a_deployed_stack_without_credentials_is_one_line():
    """The running workers come from EC2 (their groups' tag); no credentials: the one fix."""
    outputs = str(REPO_ROOT / "tests" / "data" / "stack_outputs_prod.json")
    result = run("render", "cluster-yaml", "--stack", "prod", "--outputs", outputs, env=NO_AWS)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: looking up the running workers of llmfleet-prod-worker-0")
    assert result.stderr.endswith(
        "no AWS credentials found; configure them with `aws configure` (or "
        "`aws sso login`), AWS_PROFILE, or AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY\n"
    )


class _Completion:
    """An OpenAI chat-completions endpoint (tests/json_http.py's server) that answers every
    request with `reply` (and `reasoning`, vLLM's field for a reasoning model's thought, when set);
    a request without the bearer token gets 401."""

    TOKEN = "t0ken"

    def __init__(self, reply: str = "ok\x07bell\x00nul\x7fdel\nline two", reasoning: str | None = None):
        self.reply, self.reasoning = reply, reasoning
        self.server = JsonServer(self._answer)

    def _answer(self, req: Request) -> tuple[int, dict]:
        if req.headers.get("Authorization") != f"Bearer {self.TOKEN}":
            return 401, {"error": {"message": "unauthorized"}}
        doc = chat_completion("tiny-deepseek-v3", self.reply, prompt_tokens=3, completion_tokens=8)
        doc["choices"][0]["finish_reason"] = "length"
        if self.reasoning is not None:
            doc["choices"][0]["message"]["reasoning"] = self.reasoning
        return 200, doc

    @property
    def last_body(self) -> dict:
        return self.server.requests[-1].json()

    def state_dir(self, tmp_path) -> dict[str, str]:
        """A local cluster's state file named `t` that points `local chat` at this server."""
        st = new_state(
            tmp_path, "t", token=self.TOKEN, endpoint=f"{self.server.base}/v1", model="tiny-deepseek-v3"
        )
        save_state(st, tmp_path)
        return {"LLMFLEET_STATE_DIR": str(tmp_path)}


def test_local_chat_escapes_control_characters(tmp_path):
    """`llmfleet local chat` end to end through the official openai client, against a tiny local
    HTTP server returning one chat completion whose text holds BEL, NUL and DEL (what the
    random-weight model can emit). The server stands in for the cluster only in this printing
    test, so no Ray cluster is started; the real serving path is tests/test_local.py's."""
    endpoint = _Completion()
    with endpoint.server:
        env = endpoint.state_dir(tmp_path)
        result = run("local", "chat", "hi", "--name", "t", env=env)
    assert result.exit_code == 0, result.stderr
    assert not {"\x07", "\x00", "\x7f"} & set(result.stdout)
    assert "ok\\x07bell\\x00nul\\x7fdel\nline two" in result.stdout
    assert "note: the reply held non-printable characters, shown escaped: \\x07 \\x00 \\x7f" in result.stderr
    as_json = run("local", "chat", "hi", "--name", "t", "--json", env=env)
    assert as_json.exit_code == 1  # the server is gone: one JSON error, no traceback
    assert as_json.stderr == "" and len(as_json.stdout.splitlines()) == 1
    assert json.loads(as_json.stdout)["error"]["message"]


def test_local_chat_prints_the_thought_before_the_answer_and_sends_the_budget(tmp_path):
    """A reasoning model's reply (vLLM's `reasoning` beside `content`): the thought first, dim,
    then the answer; --thinking-budget reaches the request as vLLM's thinking_token_budget. The
    server stands in for the cluster in this printing test, as above."""
    endpoint = _Completion(reply="the answer", reasoning="weigh [b]it[/b]")
    with endpoint.server:
        env = endpoint.state_dir(tmp_path)
        result = run("local", "chat", "hi", "--name", "t", "--thinking-budget", "8", env=env)
        assert result.exit_code == 0, result.stderr
        assert result.stdout == "assistant (tiny-deepseek-v3):\n<think>weigh [b]it[/b]</think>\nthe answer\n"
        assert endpoint.last_body["thinking_token_budget"] == 8
        as_json = json.loads(run("local", "chat", "hi", "--name", "t", "--json", env=env).stdout)
        assert (as_json["reasoning"], as_json["reply"]) == ("weigh [b]it[/b]", "the answer")
        assert "thinking_token_budget" not in endpoint.last_body
        endpoint.reply = ""
        result = run("local", "chat", "hi", "--name", "t", env=env)
        assert result.stdout.endswith("</think>\n(no answer after the reasoning, finish_reason=length)\n")


# --- 80 columns ----------------------------------------------------------------------------------


def _masked_digest(monkeypatch):
    """The image digest hashes the build context (its absolute path and every file in it), so it
    differs per checkout and per commit; the snapshot shows a fixed one."""
    from infra.program import offline

    real = offline.capture

    def capture(stack, overrides):
        cap = real(stack, overrides)
        cap.outputs["image_ref"] = re.sub(
            r"sha256:[0-9a-f]{64}", "sha256:" + "0" * 64, cap.outputs["image_ref"]
        )
        return cap

    monkeypatch.setattr(offline, "capture", capture)
    return real


# An identifier is whole when it appears on one raw line as a token: no word character, '.' or
# '-' right before or after it. Folded cells (`p5en.48│xlarge`) are never re-joined.
def split_ids(text: str, ids) -> list[str]:
    """The ids that appear whole on no raw line of `text`."""
    lines = text.splitlines()
    return sorted(
        {i for i in ids if not any(re.search(rf"(?<![\w.-]){re.escape(i)}(?![\w.-])", ln) for ln in lines)}
    )


def test_split_ids_sees_a_folded_cell():
    """The check itself: rich's own layout folds an instance type at 80 columns (as `plan
    --compare` did), and split_ids reports it; the fitted table keeps it whole."""
    from rich.console import Console
    from rich.table import Table

    from infra.commands._fit import Col, fitted_table

    row = ["A100-40GB", "p5en.48xlarge", "some words " * 12]
    console = Console(width=80, record=True, color_system=None, file=open("/dev/null", "w"))  # noqa: SIM115
    t = Table()
    for h in ("GPU", "instance", "note"):
        t.add_column(h, overflow="fold")
    t.add_row(*row)
    for _ in range(6):
        t.add_column("x" * 9, overflow="fold")
    console.print(t)
    assert split_ids(console.export_text(), row[:2])
    console.print(
        fitted_table(console, [Col("GPU", whole=True), Col("instance", whole=True), Col("note")], [row])
    )
    assert split_ids(console.export_text(), row[:2]) == []


def _width_run(width: int, *args: str):
    result = RUNNER.invoke(app, list(args), env={"COLUMNS": str(width)})
    assert max(map(len, result.stdout.splitlines())) <= width
    return result


@pytest.mark.parametrize("width", [80, 100])
def test_plan_compare_keeps_gpu_ids_and_instance_types_whole(width):
    doc = json.loads(run("plan", "--compare", "--model", "deepseek-r1", "--json").stdout)
    ids = [r["gpu"] for r in doc["rows"]] + [r["instance_type"] for r in doc["rows"] if r["instance_type"]]
    result = _width_run(width, "plan", "--compare", "--model", "deepseek-r1")
    assert result.exit_code == 0, result.stderr
    assert len(ids) > 10 and split_ids(result.stdout, ids) == []
    for header in ("GPU", "TP x PP", "AWS instance", "tok/s", "USD/1M", "note"):
        assert header in result.stdout  # headers whole too
    # 80 columns make room by dropping the optional columns, and say so
    # (which ones depends on the longest instance type: p6-b200.48xlarge also costs USD/h)
    flat = " ".join(result.stdout.split())
    dropped = flat.split("not shown at this width: ")[1].split(" (--json")[0] if width == 80 else ""
    assert ("user tok/s" in dropped.split(", ")) == (width == 80)
    assert ("not shown at this width" in flat) == (width == 80)


@pytest.mark.parametrize("width", [80, 100])
def test_preview_keeps_types_names_and_output_keys_whole(monkeypatch, width):
    real = _masked_digest(monkeypatch)
    result = _width_run(width, "preview", "--stack", "prod")
    assert result.exit_code == 0, result.stderr
    cap = real("prod", [])
    ids = (
        [short_type(r["type"]) for r in cap.resources]
        + [r["name"] for r in cap.resources]
        + list(cap.outputs)
    )
    assert split_ids(result.stdout, ids) == []
    assert "aws:s3:BucketServerSideEncryptionConfiguration" in ids
    assert (
        short_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
        == "aws:s3:BucketPublicAccessBlock"
    )
    assert short_type("llmfleet:components:Network") == "llmfleet:components:Network"
    if width == 80:
        assert_snapshot("cli_preview_prod_80.txt", result.stdout)


@pytest.mark.parametrize("width", [80, 100])
def test_preview_schedule_keeps_groups_actions_and_time_zones_whole(width):
    # the scheduled-actions table under a schedule folded them at 80 columns
    # (`llmfleet-pr│od-worker-0`, `llmfleet-do│wn-0`, `Europe/Berl│in`)
    schedule = "llmfleet:schedule=mon-fri 08:00-20:00 Europe/Berlin"
    result = _width_run(width, "preview", "--stack", "prod", "-c", schedule)
    assert result.exit_code == 0, result.stderr
    table = result.stdout[result.stdout.index("scheduled actions") :]
    ids = [f"llmfleet-prod-worker-{i}" for i in range(3)] + [
        "llmfleet-up-0",
        "llmfleet-down-0",
        "Europe/Berlin",
    ]
    assert split_ids(table, ids) == []
    # every action is there, with its cron and its lead before the opening
    flat = " ".join(table.split())
    assert flat.count("49 7 * * 1,2,3,4,5") == 3 and flat.count("0 20 * * 1,2,3,4,5") == 3, table
    assert flat.count("11 min") == 3, table


@pytest.mark.parametrize("width", [80, 100])
def test_cost_keeps_resource_names_and_instance_types_whole(width):
    doc = json.loads(run("cost", "--stack", "prod", "--json").stdout)
    resources = doc["projects"][0]["breakdown"]["resources"]
    ids = [r["name"] for r in resources] + ["g6e.48xlarge", "m7i.2xlarge"]
    result = _width_run(width, "cost", "--stack", "prod")
    assert result.exit_code == 0, result.stderr
    assert split_ids(result.stdout, ids) == []
    if width == 80:
        assert_snapshot("cli_cost_prod_80.txt", result.stdout)


@pytest.mark.parametrize("width", [80, 100])
def test_policy_keeps_policies_resources_and_config_keys_whole(width):
    doc = json.loads(run("policy", "--stack", "prod", "--json").stdout)
    ids = {v["policy"] for v in doc["violations"]} | {
        v["resource"] for v in doc["violations"] if v["resource"]
    }
    ids |= {"llmfleet:endpointCertificateArn", "llmfleet:alarmTopicArn"}
    result = _width_run(width, "policy", "--stack", "prod")
    assert result.exit_code == 0, result.stderr
    assert len(ids) > 5 and split_ids(result.stdout, ids) == []
    # 80 columns: the enforcement moves under the resource; 100: its own column
    assert ("┃ enforcement ┃" in result.stdout) == (width == 100)


def _steps() -> list[dict]:
    """Two sweep steps as the sweep records them (sweep.summarize over request results), beside
    the planner's prediction for prod's layout."""
    from infra.bench import calibration, sweep
    from infra.bench.sweep import RequestResult

    ok = [RequestResult(True, ttft_s=0.1 * i, latency_s=0.1 * i + 0.9, output_tokens=10, prompt_tokens=64)
          for i in range(1, 5)]  # fmt: skip
    bad = [RequestResult(False, "http_503"), RequestResult(False, "step_timeout")]
    steps = [sweep.summarize(4, ok, wall_s=2.0, timed_out=False), sweep.summarize(128, ok + bad, 2.5, True)]
    calibration.attach_predictions(steps, calibration.layout_for_stack("prod"), 128, 32)
    return [s.to_dict() for s in steps]


@pytest.mark.parametrize("width", [80, 100])
def test_bench_table_keeps_figures_and_headers_whole(width):
    from rich.console import Console

    from infra.commands import bench

    steps = _steps()
    console = Console(width=width, record=True, color_system=None, file=open("/dev/null", "w"))  # noqa: SIM115
    real = bench.console
    bench.console = console
    try:
        bench.render_steps(steps, "tiny at http://127.0.0.1:8000/v1 (128 in / 32 out tokens)")
    finally:
        bench.console = real
    text = console.export_text()
    assert max(map(len, text.splitlines())) <= width
    figures = [f"{s['succeeded']}/{s['requests']}" for s in steps]
    figures += [f"{s['ttft_ms_p50']:,.1f}/{s['ttft_ms_p95']:,.1f}" for s in steps]
    figures += [f"{s['output_tokens_per_s']:,.1f}" for s in steps] + ["http_503", "step_timeout"]
    words = "conc. req ok/sent errors req/s out tok/s TTFT TPOT ms p50/p95".split()
    assert split_ids(text, figures + words) == []
    assert ("planner" in text) == (width == 100)  # the planner's columns go first at 80


@pytest.mark.parametrize("width", [80, 100])
def test_status_tables_keep_hosts_groups_and_instance_ids_whole(width):
    from rich.console import Console

    from infra.commands._status_view import render
    from infra.status.model import ClusterStatus, Deployment, HostSlot, Metrics, RayNode, Replica, ServeApp

    hosts = [HostSlot(name="head", role="head", ip="10.42.0.10", status="alive", group="llmfleet-prod-head",
                      instance_id="i-0123456789abcdef0", lifecycle_state="InService", health="Healthy")] + [
        HostSlot(name=f"worker-{i}", role="worker", ip=f"10.42.0.{20 + i}", status="lost" if i == 2 else "alive",
                 reason="instance i-0fedcba9876543210 Terminating" if i == 2 else "",
                 group=f"llmfleet-prod-worker-{i}", instance_id=f"i-0123456789abcdef{i + 1}",
                 lifecycle_state="Terminating" if i == 2 else "InService", health="Healthy")
        for i in range(3)
    ]  # fmt: skip
    nodes = [RayNode(node_id=f"{i:02d}" + "ab" * 27, ip=f"10.42.0.{20 + i}", alive=True, is_head=False, gpus=8,
                     gpu_model={"L40S": 8}, weights="sha256:0123456789abcdef") for i in range(2)]  # fmt: skip
    apps = [ServeApp(name="llm", status="RUNNING", deployments=[Deployment(
        name="LLMServer:deepseek-ai--DeepSeek-R1", status="HEALTHY", target_replicas=1,
        replicas=[Replica(replica_id="r1", state="RUNNING", node_ip="10.42.0.20")])])]  # fmt: skip
    s = ClusterStatus(target="aws", name="prod", endpoint="http://nlb:8000/v1", model="deepseek-r1", hosts=hosts,
                      nodes=nodes, applications=apps, metrics=Metrics(source="none", error="no workspace"))  # fmt: skip
    console = Console(width=width, record=True, color_system=None, file=open("/dev/null", "w"))  # noqa: SIM115
    render(s, console)
    text = console.export_text()
    assert max(map(len, text.splitlines())) <= width
    ids = [h.group for h in hosts] + [h.instance_id for h in hosts] + [n.ip for n in nodes]
    ids += ["LLMServer:deepseek-ai--DeepSeek-R1", "i-0fedcba9876543210"]
    if width == 100:  # at 80 the IP and host columns give way (the group names the host)
        ids += [h.ip for h in hosts] + [h.name for h in hosts]
    assert split_ids(text, ids) == []
    assert "lost" in text and ("10.42.0.10" in text) == (width == 100)


def test_preview_output_key_prints_one_value_whole(monkeypatch):
    _masked_digest(monkeypatch)
    result = run("preview", "--stack", "prod", "--output-key", "worker_groups")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == [f"llmfleet-prod-worker-{i}" for i in range(3)]
    old = run("preview", "--stack", "prod", "--output", "worker_groups")  # the old name, deprecated
    assert old.stdout == result.stdout and "--output KEY is now --output-key KEY" in old.stderr
    bad = run("preview", "--stack", "prod", "--output-key", "endpoint_ur")
    assert bad.exit_code == 2 and "did you mean endpoint_url?" in bad.stderr


def test_plan_at_80_columns():
    result = run("plan", "--model", "deepseek-r1", "--gpu", "L40S")
    assert result.exit_code == 0
    assert max(map(len, result.stdout.splitlines())) <= 80
    assert "deepseek-r1 on L40S" in result.stdout
    assert_snapshot("cli_plan_l40s_80.txt", result.stdout)


def test_policy_violations_at_80_columns_keep_policy_and_resource_whole():
    """The real pack on prod's real capture with the workers' launch template made non-compliant
    (IMDSv1 and an unencrypted root volume): the pack's two longest-named resource policies fire.
    The capture has an alarm topic, so the table holds those two and the TLS advisory; prod as
    shipped (the CLI run at the end) adds the alarms' advisories."""
    import copy

    from rich.console import Console

    from infra.commands.policy import violations_table
    from infra.program.offline import capture
    from policy.runner import run_policies, stack_policy_config

    cap = capture("prod", ["llmfleet:alarmTopicArn=arn:aws:sns:us-east-1:123456789012:llmfleet-alarms"])
    resources = copy.deepcopy(cap.resources)
    template = next(r for r in resources if r["name"] == "cluster-worker")
    template["inputs"]["blockDeviceMappings"][0]["ebs"]["encrypted"] = "false"
    template["inputs"]["metadataOptions"]["httpTokens"] = "optional"
    report = run_policies(resources, stack_policy_config(cap.config), stack=cap.config)
    assert {(v.policy, v.resource) for v in report.violations} == {
        ("ec2-imdsv2-required", "cluster-worker"),
        ("ec2-ebs-encrypted", "cluster-worker"),
        ("endpoint-tls-internal", "endpoint-listener"),  # advisory: prod's internal NLB has no TLS
    }
    console = Console(width=80, record=True, color_system=None, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(violations_table("prod", report, console))
    text = console.export_text()
    cells = {c.strip() for ln in text.splitlines() for c in ln.split("│")}
    assert {"ec2-imdsv2-required", "ec2-ebs-encrypted", "cluster-worker"} <= cells
    assert_snapshot("cli_policy_violations_80.txt", text)
    clean = run("policy", "--stack", "prod")
    # prod as shipped: no mandatory violation; the advisories are its internal endpoint without
    # TLS and its five alarms (head status, the Serve app, three worker slots) without a topic (no
    # llmfleet:alarmTopicArn)
    assert clean.exit_code == 0 and clean.stdout.endswith("0 mandatory, 6 advisory\n")
    assert "endpoint-tls-internal" in clean.stdout
    cells = {c.strip() for ln in clean.stdout.splitlines() for c in ln.split("│")}
    assert {"alarm-notifies", "cluster-head-status-alarm", "cluster-worker-2-status-alarm"} <= cells


# --- conventions: the stack, one error style, --json errors, completion, one TP/PP vocabulary --


def test_json_errors_are_one_object_on_stdout_with_the_same_exit_code():
    as_json = run("cost", "--stack", "nope", "--json")
    assert as_json.exit_code == 2 and as_json.stderr == ""
    (line,) = as_json.stdout.splitlines()
    err = json.loads(line)["error"]
    stacks = ", ".join(available_stacks())
    assert err == {
        "key": "--stack",
        "value": "nope",
        "allowed": stacks,
        "message": f"--stack 'nope': no file stacks/Pulumi.nope.yaml; allowed: {stacks}",
    }
    text = run("cost", "--stack", "nope")
    assert text.exit_code == 2 and text.stdout == ""
    assert text.stderr == f"error: {err['message']}\n"


@pytest.mark.parametrize(
    ("args", "key", "value", "start"),
    [
        (
            ["plan", "--gpus"],
            "--gpus",
            "--gpus",
            "error: --gpus: no such option; did you mean --gpu?; allowed: --model,",
        ),
        (["plan"], "--model", None, "error: --model: missing (see `llmfleet plan --help`)"),
        (["local", "up", "--tp", "9"], "--tp", "9", "error: --tp: '9' is not allowed; allowed: less than or"),
        (["cost", "-s", "prod", "--diff"], "--diff", None, "error: --diff: requires an argument"),
        # checked by the command, before the engine or any host: the same exit code and shape
        (
            ["local", "up", "--routing", "rr"],
            "--routing",
            "rr",
            "error: --routing 'rr': allowed: pow2, prefix",
        ),
        (
            ["local", "up", "--model", "x/y"],
            "--model",
            "x/y",
            "error: --model 'x/y': allowed: llmfleet/tiny-deep",
        ),
    ],
)
def test_usage_errors_are_one_line_and_json_with_json(args, key, value, start):
    """click's usage errors: the project's one line (exit 2, click's code), not typer's box;
    with --json one JSON object on stdout. Nothing runs: parsing fails first."""
    text = run(*args)
    assert text.exit_code == 2 and text.stdout == ""
    assert text.stderr.startswith(start) and len(text.stderr.splitlines()) == 1, text.stderr
    assert "╭" not in text.stderr and "Usage:" not in text.stderr
    as_json = run(*args, "--json") if args[-1] != "--diff" else run(*args[:-1], "--json", "--diff")
    assert as_json.exit_code == 2 and as_json.stderr == ""
    err = json.loads(as_json.stdout)["error"]
    assert (err["key"], err["value"]) == (key, value) and err["message"] == text.stderr[
        len("error: ") :
    ].strip()


def test_the_usage_errors_caught_are_the_ones_typer_raises():
    """typer vendors click from 0.26 (typer._click): RootGroup must catch those classes, and the
    project must not install a typer whose parser raises the `click` package's instead."""
    import tomllib

    from packaging.requirements import Requirement

    from infra import cli

    assert issubclass(cli.click.ClickException, typer.TyperException)  # typer's public base
    assert cli.click.BadParameter is typer.BadParameter
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [req] = [Requirement(d) for d in deps if Requirement(d).name == "typer"]
    assert not req.specifier.contains("0.25.1") and req.specifier.contains("0.26.0"), req


def test_error_parts_read_the_projects_three_message_forms():
    from infra.commands._common import error_parts

    assert error_parts("llmfleet:workerCount = '0': allowed: a number >= 1") == {
        "key": "llmfleet:workerCount",
        "value": "0",
        "allowed": "a number >= 1",
        "message": "llmfleet:workerCount = '0': allowed: a number >= 1",
    }
    assert error_parts("--gpu: 'A1' is not a known GPU; allowed: L20, L40S")["value"] == "A1"
    assert error_parts("--stack 'x': no file stacks/Pulumi.x.yaml; allowed: dev")["key"] == "--stack"
    assert error_parts("readiness: the head did not answer") == {
        "key": "readiness",
        "value": None,
        "allowed": None,
        "message": "readiness: the head did not answer",
    }


def test_stack_from_pulumi_stack_and_fully_qualified_names():
    key = ("preview", "--output-key", "cluster_name")
    assert run(*key, env={"PULUMI_STACK": "dev"}).stdout == "llmfleet-dev\n"
    assert run(*key, "-s", "myorg/llmfleet/dev").stdout == "llmfleet-dev\n"
    assert run(*key, "-s", "myorg/dev", env={"PULUMI_STACK": "prod"}).stdout == "llmfleet-dev\n"  # -s wins
    other = run(*key, "-s", "myorg/other/dev")
    assert other.exit_code == 2 and other.stderr == (
        "error: --stack 'myorg/other/dev': project 'other' is not this project; "
        "allowed: myorg/llmfleet/dev (Pulumi.yaml's name)\n"
    )
    for bad in ("../../etc/passwd", "a/b/c/d", "dev/"):
        r = run(*key, "-s", bad)
        assert r.exit_code == 2 and r.stderr.startswith(f"error: --stack {bad!r}: not a stack name; allowed:")
    missing = run(*key, env={"PULUMI_STACK": None})
    assert missing.exit_code == 2 and missing.stderr.startswith("error: --stack: missing")


def test_completion_of_stacks_gpus_and_models():
    import os
    import subprocess
    import sys
    from pathlib import Path

    from infra.commands._common import complete_gpu, complete_model, complete_stack

    assert complete_stack("") == available_stacks() and complete_stack("pr") == ["prod"]
    assert complete_gpu("a1") == ["A10G", "A100-40GB", "A100-80GB"] and complete_gpu("H2") == ["H20", "H200"]
    assert complete_model("deepseek-r1-d") == [
        m for m in load_catalog().models if m.startswith("deepseek-r1-d")
    ]
    assert "--install-completion" in run("--help").stdout
    # a real <TAB> through click's bash protocol, as the installed script sends it
    exe = Path(sys.executable).parent / "llmfleet"
    out = subprocess.run(
        [str(exe)],
        env={
            **os.environ,
            "_LLMFLEET_COMPLETE": "complete_bash",
            "COMP_WORDS": "llmfleet plan --gpu A100",
            "COMP_CWORD": "3",
        },  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.split() == ["A100-40GB", "A100-80GB"]


def test_plan_tp_pp_with_vllms_long_names_and_the_old_names_deprecated():
    base = ("plan", "--model", "deepseek-r1", "--gpu", "H100", "--json")
    short = run(*base, "--tp", "8", "--pp", "2")
    long = run(*base, "--tensor-parallel-size", "8", "--pipeline-parallel-size", "2")
    old = run(*base, "--gpus-per-node", "8", "--nodes", "2")
    assert short.exit_code == 0 and json.loads(short.stdout)["pipeline_parallel_size"] == 2
    assert short.stdout == long.stdout == old.stdout
    assert old.stderr == "deprecated: --gpus-per-node is now --tp\ndeprecated: --nodes is now --pp\n"
    clash = run(*base, "--tp", "4", "--gpus-per-node", "8")
    assert clash.exit_code == 2 and json.loads(clash.stdout)["error"]["key"] == "--gpus-per-node"
    help_text = run("plan", "--help").stdout
    assert "--tensor-parallel-size" in help_text and "--gpus-per-node" not in help_text
