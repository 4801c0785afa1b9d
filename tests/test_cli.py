"""What a new user meets in the CLI: help, --version, ids, errors, honest output, 80 columns.

Every test runs the real typer app in-process (CliRunner); the offline commands run the real
program under Pulumi mocks. Snapshots: tests/snapshots/cli_*.txt (see tests/snapshot.py).
"""

from __future__ import annotations

import inspect
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version

import pytest
import typer.main
from typer.testing import CliRunner

from infra.catalog import load_catalog
from infra.cli import app
from infra.commands.preview import short_type
from infra.constants import REPO_ROOT
from infra.stack.config import load_stack_config
from infra.stack.files import available_stacks
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

    return list(walk(typer.main.get_command(app), []))


COMMANDS = _commands()
IDS = [" ".join(p) or "llmfleet" for p, _ in COMMANDS]


# --- help and options ----------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=IDS)
def test_help_shows_no_placeholder_on_flags_and_one_on_values(path, cmd):
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for p in cmd.params:
        if not getattr(p, "opts", None) or p.param_type_name != "option":
            continue
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
    no = run("plan", "--model", "deepseek-r1", "--gpu", "L4", "--gpus-per-node", "1", "--nodes", "1")
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


class _Completion(BaseHTTPRequestHandler):
    """An OpenAI chat-completions endpoint that answers every request with REPLY."""

    REPLY = "ok\x07bell\x00nul\x7fdel\nline two"
    TOKEN = "t0ken"

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Authorization") != f"Bearer {self.TOKEN}":
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": "tiny-deepseek-v3",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "length",
                        "message": {"role": "assistant", "content": self.REPLY},
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_local_chat_escapes_control_characters(tmp_path):
    """`llmfleet local chat` end to end through the official openai client, against a tiny local
    HTTP server returning one chat completion whose text holds BEL, NUL and DEL (what the
    random-weight model can emit). The server stands in for the cluster only in this printing
    test, so no Ray cluster is started; the real serving path is tests/test_local.py's."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Completion)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "t.token").write_text(_Completion.TOKEN)
        state = {
            "endpoint": f"http://127.0.0.1:{server.server_address[1]}/v1",
            "token_file": str(tmp_path / "t.token"),
            "model": "tiny-deepseek-v3",
        }
        (tmp_path / "t.json").write_text(json.dumps(state))
        result = run("local", "chat", "hi", "--name", "t", env={"LLMFLEET_STATE_DIR": str(tmp_path)})
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 0, result.stderr
    assert not {"\x07", "\x00", "\x7f"} & set(result.stdout)
    assert "ok\\x07bell\\x00nul\\x7fdel\nline two" in result.stdout
    assert "note: the reply held non-printable characters, shown escaped: \\x07 \\x00 \\x7f" in result.stderr
    as_json = run("local", "chat", "hi", "--name", "t", "--json", env={"LLMFLEET_STATE_DIR": str(tmp_path)})
    assert as_json.exit_code == 1  # the server is gone: one line, no traceback
    assert len(as_json.stderr.splitlines()) == 1


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


def _rows(table: str) -> list[list[str]]:
    """A rich table's rows with every cell whole again: a type longer than its column folds onto
    the next lines, whose other cells are then empty."""
    rows: list[list[str]] = []
    for ln in table.splitlines():
        if not ln.startswith("│"):
            continue
        cells = [c.strip() for c in ln.strip("│").split("│")]
        if rows and not all(cells[1:]):
            rows[-1] = [a + b for a, b in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    return rows


def test_preview_at_80_columns_keeps_types_and_names_whole(monkeypatch):
    real = _masked_digest(monkeypatch)
    result = run("preview", "--stack", "prod")
    assert result.exit_code == 0, result.stderr
    assert max(map(len, result.stdout.splitlines())) <= 80
    cap = real("prod", [])
    rows = _rows(result.stdout.split("outputs (one in full")[0])
    for r in cap.resources:
        assert [short_type(r["type"]), r["name"]] in rows, r
    assert (
        short_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
        == "aws:s3:BucketPublicAccessBlock"
    )
    assert short_type("llmfleet:components:Network") == "llmfleet:components:Network"
    keys = [ln.split("│")[1].strip() for ln in result.stdout.split("outputs")[1].splitlines() if "│" in ln]
    keys = [k for k in keys if k]
    assert keys == sorted(cap.outputs)
    assert_snapshot("cli_preview_prod_80.txt", result.stdout)


def test_preview_output_key_prints_one_value_whole(monkeypatch):
    _masked_digest(monkeypatch)
    result = run("preview", "--stack", "prod", "--output", "worker_groups")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == [f"llmfleet-prod-worker-{i}" for i in range(3)]
    bad = run("preview", "--stack", "prod", "--output", "endpoint_ur")
    assert bad.exit_code == 2 and "did you mean endpoint_url?" in bad.stderr


def test_cost_at_80_columns_keeps_resource_names_whole():
    result = run("cost", "--stack", "prod", "--json")
    names = [r["name"] for r in json.loads(result.stdout)["projects"][0]["breakdown"]["resources"]]
    result = run("cost", "--stack", "prod")
    assert result.exit_code == 0, result.stderr
    assert max(map(len, result.stdout.splitlines())) <= 80
    rows = [ln.strip() for ln in result.stdout.splitlines()]
    for name in names:
        assert any(row.startswith(name) for row in rows), name
    assert_snapshot("cli_cost_prod_80.txt", result.stdout)


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
    console.print(violations_table("prod", report))
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
