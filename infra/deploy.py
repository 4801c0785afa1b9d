"""`llmfleet up` / `down`: the Pulumi Automation API around the real program, plus a readiness waiter.

Pure parts (tested alone): `build_stack_args` (stack name, work dir, -c overrides, env),
`change_counts` (a preview's summary), `PolicyEvents` (the policy pack's verdicts from the
engine's events), `readiness_commands` (what runs on the head) and `parse_readiness`.
Side effects: `open_stack`, `stack_preview`, `stack_up`, `stack_down` (need the pulumi CLI;
preview and up run with the policy pack, `policy/`) and `wait_head_ready` (SSM on the head).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from infra import worker_lookup
from infra.boot.cloud_init import SERVE_CONFIG_PATH
from infra.constants import REPO_ROOT
from infra.rayconf.cluster_yaml import render_validated
from infra.rayconf.serve_config import to_yaml
from infra.rayconf.serving import render_for_outputs, serve_config_yaml
from infra.stack.config import ConfigError, StackConfig
from infra.stack.files import check_namespace, project_root
from infra.stack.names import STACK_NAME_ALLOWED, STACK_REF_RE
from infra.stack.outputs import OutputsError, StackOutputs
from infra.stack.resolve import resolve
from infra.worker_lookup import HeadLookupError
from ray_cluster.node import NodeError
from ray_cluster.readiness import wait_for_completion

PROJECT = "llmfleet"
POLICY_PACK_DIR = REPO_ROOT / "policy"
# What a preview summary shows, in `pulumi up`'s order.
CHANGE_KINDS = ("create", "update", "replace", "delete")
PULUMI_MISSING = "pulumi CLI not found on PATH: install it (curl -fsSL https://get.pulumi.com | sh) and retry"
KEY_RE = re.compile(r"^([A-Za-z0-9_-]+:)?[A-Za-z0-9_.-]+$")


class DeployError(Exception):
    """A problem to report in one line (str)."""


class PulumiMissing(DeployError):
    def __init__(self) -> None:
        super().__init__(PULUMI_MISSING)


def require_pulumi_cli(which: Callable[[str], str | None] | None = None) -> str:
    path = (which or shutil.which)("pulumi")
    if not path:
        raise PulumiMissing()
    return path


# ---------------------------------------------------------------- argument building (pure)


@dataclass(frozen=True)
class StackArgs:
    stack_name: str
    work_dir: str
    config: dict[str, str] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)


def parse_overrides(pairs: Sequence[str], project: str = PROJECT) -> dict[str, str]:
    """`-c KEY=VALUE` as `pulumi up -c` takes it; a bare key gets the project namespace."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not KEY_RE.match(key):
            raise DeployError(f"-c {pair!r}: not KEY=VALUE; allowed: e.g. -c llmfleet:workerCount=2")
        full = key if ":" in key else f"{project}:{key}"
        try:
            check_namespace(full, pair)
        except ConfigError as e:
            raise DeployError(str(e)) from None
        out[full] = value
    return out


def build_stack_args(
    stack: str,
    overrides: Sequence[str] = (),
    work_dir: Path | str | None = None,
    env: Mapping[str, str] | None = None,
) -> StackArgs:
    """Everything `open_stack` needs, validated: one-line DeployError on bad input. The work
    dir defaults to the project the working directory is in (where Pulumi.yaml is)."""
    if not STACK_REF_RE.fullmatch(stack):
        raise DeployError(
            f"--stack {stack!r}: not a stack name; allowed: NAME, ORG/NAME or ORG/PROJECT/NAME, each {STACK_NAME_ALLOWED}"
        )
    if work_dir is None:
        try:
            work_dir = project_root()
        except ConfigError as e:
            raise DeployError(str(e)) from None
    wd = Path(work_dir).resolve()
    if not (wd / "Pulumi.yaml").is_file():
        raise DeployError(f"work dir {str(wd)!r}: no Pulumi.yaml there; allowed: the llmfleet project root")
    env_vars = {"PULUMI_SKIP_UPDATE_CHECK": "true"}
    # Carry only what the program and the pulumi CLI read; the rest of the environment is inherited anyway.
    for k, v in (env or {}).items():
        if k.startswith(("PULUMI_", "AWS_")):
            env_vars[k] = v
    return StackArgs(stack_name=stack, work_dir=str(wd), config=parse_overrides(overrides), env_vars=env_vars)


# ---------------------------------------------------------------- Automation API (needs the CLI)


def open_stack(args: StackArgs, create: bool = True) -> Any:
    from pulumi import automation as auto

    opts = auto.LocalWorkspaceOptions(work_dir=args.work_dir, env_vars=args.env_vars)
    fn = auto.create_or_select_stack if create else auto.select_stack
    stack = fn(stack_name=args.stack_name, work_dir=args.work_dir, opts=opts)
    if args.config:
        # Same effect as `pulumi up -c`: the values are saved into the stack's config file.
        stack.set_all_config({k: auto.ConfigValue(value=v) for k, v in args.config.items()})
    return stack


@dataclass(frozen=True)
class PolicyPacks:
    """The Automation API's policy-pack options: the pack directory and its config file."""

    packs: tuple[str, ...]
    configs: tuple[str, ...]

    def kwargs(self) -> dict[str, list[str]]:
        return {"policy_packs": list(self.packs), "policy_pack_configs": list(self.configs)}


def policy_pack_dir(out_dir: Path, packaged: Path = POLICY_PACK_DIR, prefix: str = sys.prefix) -> Path:
    """The pack directory the Pulumi CLI runs. A checkout's policy/ names its virtualenv as
    ../.venv (PulumiPolicy.yaml); installed, policy/ sits in site-packages, where ../.venv is
    nothing: then a copy of PulumiPolicy.yaml naming the virtualenv llmfleet runs in, and a
    __main__.py that runs the installed pack, are written to out_dir/policy-pack."""
    if (packaged.parent / ".venv").is_dir():
        return packaged
    d = out_dir / "policy-pack"
    d.mkdir(parents=True, exist_ok=True)
    text = (packaged / "PulumiPolicy.yaml").read_text()
    # JSON's double-quoted string is a YAML scalar too: any path stays one value.
    text = re.sub(r"^(\s*virtualenv:).*$", lambda m: f"{m.group(1)} {json.dumps(prefix)}", text, flags=re.M)
    (d / "PulumiPolicy.yaml").write_text(text)
    (d / "__main__.py").write_text('import runpy\n\nrunpy.run_module("policy", run_name="__main__")\n')
    return d


def policy_packs(config: Mapping[str, Any], out_dir: Path, pack_dir: Path | None = None) -> PolicyPacks:
    """Write the pack's config (policy name -> settings, as `pulumi --policy-pack-config` reads
    it) and return the options that run `pack_dir` (default: policy_pack_dir) with it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pack_dir = pack_dir or policy_pack_dir(out_dir)
    path = out_dir / "policy-config.json"
    path.write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    return PolicyPacks((str(pack_dir),), (str(path),))


@dataclass(frozen=True)
class PolicyViolation:
    policy: str
    resource: str | None  # logical name, None for the stack
    message: str
    enforcement: str


@dataclass
class PolicyEvents:
    """An `on_event` callback that keeps the policy pack's verdicts (PolicyEvent) of a run."""

    violations: list[PolicyViolation] = field(default_factory=list)

    def __call__(self, event: Any) -> None:
        pe = getattr(event, "policy_event", None)
        if pe is None:
            return
        urn = pe.resource_urn or ""
        v = PolicyViolation(
            pe.policy_name, urn.rsplit("::", 1)[-1] or None, pe.message.strip(), pe.enforcement_level
        )
        if (
            v not in self.violations
        ):  # the engine reports a resource policy per resource once, stack ones once
            self.violations.append(v)

    @property
    def mandatory(self) -> list[PolicyViolation]:
        return [v for v in self.violations if v.enforcement == "mandatory"]


def change_counts(change_summary: Mapping[Any, int]) -> dict[str, int]:
    """create/update/replace/delete counts of a preview (OpType keys or their string values)."""
    flat = {getattr(k, "value", k): int(n) for k, n in (change_summary or {}).items()}
    return {kind: flat.get(kind, 0) for kind in CHANGE_KINDS}


def stack_preview(
    stack: Any, on_output: Callable[[str], None], on_event: Callable[[Any], None], packs: PolicyPacks
) -> dict[str, int]:
    """`pulumi preview --refresh --policy-pack policy/ --policy-pack-config ...`; the change counts
    (refreshed, as `stack_up` is, so the counts are what up will do)."""
    result = stack.preview(
        on_output=on_output, on_event=on_event, color="never", diff=False, refresh=True, **packs.kwargs()
    )
    return change_counts(result.change_summary)


def stack_up(
    stack: Any,
    on_output: Callable[[str], None],
    on_event: Callable[[Any], None] | None = None,
    packs: PolicyPacks | None = None,
    refresh: bool = True,
) -> dict[str, Any]:
    """`pulumi up --refresh` with the policy pack: a mandatory violation stops it before any change.

    Refresh: a rollout that rolled back put the previous node script back into its SSM
    parameter behind Pulumi's back; refreshed, Pulumi sees that and writes the program's
    script again, so a retry rolls it out again instead of finding nothing changed."""
    extra = packs.kwargs() if packs else {}
    result = stack.up(on_output=on_output, on_event=on_event, color="never", refresh=refresh, **extra)
    return {k: v.value for k, v in result.outputs.items()}


def stack_down(stack: Any, on_output: Callable[[str], None]) -> str:
    result = stack.destroy(on_output=on_output, color="never")
    return result.summary.result


# ---------------------------------------------------------------- after up: artifacts


def render_artifacts(outputs: Mapping[str, Any], cfg: StackConfig, out_dir: Path) -> list[Path]:
    """Write cluster.yaml and the Serve config from the real stack outputs, each validated by
    Ray's own code first (the same renderers as `llmfleet render`)."""

    cluster = render_validated(outputs)
    serve, _notes = render_for_outputs(outputs, cfg, resolve(cfg).plan)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, doc in (("cluster.yaml", cluster), ("serve.yaml", serve)):
        path = out_dir / filename
        path.write_text(to_yaml(doc))
        written.append(path)
    return written


# ---------------------------------------------------------------- readiness (SSM on the head)

TERMINAL = {"Success", "Failed", "Cancelled", "TimedOut", "Cancelling"}
MARK = "LLMFLEET"


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str
    status: dict[str, Any] | None = None
    attempts: int = 0


def serve_config_fingerprint(serve_yaml: str) -> str:
    """The fingerprint the head reports for this rendered Serve config once it deployed it and saw
    it answer: sha256 of the file the head's node script writes (the YAML, trailing whitespace
    trimmed, one newline: infra/boot/cloud_init.py's heredoc), as ray_cluster.node computes it."""
    return hashlib.sha256((serve_yaml.rstrip() + "\n").encode()).hexdigest()


def expected_fingerprint(cfg: StackConfig) -> str:
    """The fingerprint of the Serve config this stack's program puts in the head's node script."""

    return serve_config_fingerprint(serve_config_yaml(cfg, resolve(cfg).plan))


def readiness_commands(
    *,
    container: str,
    port: int,
    model: str,
    token_parameter: str,
    region: str,
    serve_config: str | None = SERVE_CONFIG_PATH,
) -> list[str]:
    """Shell lines for AWS-RunShellScript on the head: node status + one real completion.

    The token is read on the head (its role may read the parameter); it never travels in the
    command, and on the head it never enters an argv (the process table shows every argv to
    every local user): `printf` is a bash builtin, and curl reads the header from its stdin
    (`-H @-`). The reply goes to a fresh mktemp file, not a fixed /tmp name another user could
    plant a symlink at.
    With `serve_config`, the status also reports the fingerprint of the config the head deployed.
    """
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "Reply with OK."}], "max_tokens": 16}
    )
    q = shlex.quote
    return [
        f"echo {MARK}_STATUS_BEGIN",
        f"docker exec {q(container)} python -m ray_cluster.node status --json"
        + (f" --serve-config {q(serve_config)}" if serve_config else "")
        + " 2>&1 | tail -c 4000",
        f"echo {MARK}_STATUS_END",
        f"TOKEN=$(aws ssm get-parameter --region {q(region)} --name {q(token_parameter)} --with-decryption "
        "--query Parameter.Value --output text)",
        "OUT=$(mktemp)",
        "CODE=$(printf 'Authorization: Bearer %s\\n' \"$TOKEN\" | curl -sS -o \"$OUT\" -w '%{http_code}' "
        f"--max-time 120 -H @- -H 'Content-Type: application/json' -d {q(body)} "
        f"http://127.0.0.1:{int(port)}/v1/chat/completions)",
        "unset TOKEN",
        f'echo "{MARK}_COMPLETION_HTTP=$CODE"',
        f"echo {MARK}_COMPLETION_BEGIN",
        'head -c 4000 "$OUT"; echo',
        'rm -f "$OUT"',
        f"echo {MARK}_COMPLETION_END",
    ]


def _section(text: str, name: str) -> str | None:
    m = re.search(rf"^{MARK}_{name}_BEGIN\s*$(.*?)^{MARK}_{name}_END\s*$", text, re.S | re.M)
    return m.group(1).strip() if m else None


def parse_readiness(
    stdout: str, expect_fingerprint: str | None = None, require_serve_running: bool = False
) -> Readiness:
    """Ready only when a real completion came back with tokens; /health alone never counts.

    With `expect_fingerprint`, also only when the head reports that Serve config as the one it
    deployed and saw answer: an app still answering with the previous config is not ready.
    With `require_serve_running`, also only when every Serve app is RUNNING: Serve says so only
    when every replica is healthy, so a completion that another replica answered while a rolled
    one is still down does not pass."""
    if not stdout.strip():
        return Readiness(False, "no output from the head yet (SSM agent or container still starting)")
    status_text = _section(stdout, "STATUS")
    status = None
    if status_text:
        try:
            # stderr is merged in: a warning line may precede the JSON document.
            status = json.loads(status_text[status_text.find("{") :] if "{" in status_text else status_text)
        except ValueError:
            return Readiness(False, f"ray_cluster.node status: {status_text.splitlines()[-1][:200]}")
    m = re.search(rf"^{MARK}_COMPLETION_HTTP=(\d*)\s*$", stdout, re.M)
    code = m.group(1) if m else ""
    body = _section(stdout, "COMPLETION") or ""
    if code != "200":
        return Readiness(False, f"completion: HTTP {code or 'no answer'} {body[:160]}".strip(), status)
    try:
        answer = json.loads(body)
    except ValueError:
        return Readiness(False, f"completion: HTTP 200 but not JSON: {body[:160]}", status)
    choices = answer.get("choices") or []
    tokens = (answer.get("usage") or {}).get("completion_tokens") or 0
    if not choices or tokens <= 0:
        return Readiness(False, "completion: HTTP 200 but no tokens generated", status)
    if require_serve_running:
        apps = (status or {}).get("serve") or {}
        down = sorted(f"{name} {st}" for name, st in apps.items() if st != "RUNNING")
        if not apps or down:
            why = ", ".join(down) if down else "no Serve application"
            return Readiness(False, f"Serve: {why} (a replica is not back yet)", status)
    if expect_fingerprint:
        deployed = (status or {}).get("deployed_serve_config")
        if deployed != expect_fingerprint:
            return Readiness(
                False,
                f"the app answers with Serve config {str(deployed)[:12]}, not {expect_fingerprint[:12]}"
                " (the head's deploy watcher has not applied the new one yet)",
                status,
            )
        return Readiness(
            True, f"completion returned {tokens} tokens from Serve config {expect_fingerprint[:12]}", status
        )
    return Readiness(True, f"completion returned {tokens} tokens", status)


def wait_head_ready(
    ssm: Any,
    instance_id: str,
    commands: list[str],
    *,
    timeout_s: float = 1800.0,
    poll_s: float = 10.0,
    on_progress: Callable[[float, float, str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    expect_fingerprint: str | None = None,
    require_serve_running: bool = False,
) -> Readiness:
    """Re-run the readiness script on the head until it reports ready or `timeout_s` passes."""
    start = clock()
    deadline = start + timeout_s
    last = Readiness(False, "not checked yet")
    attempts = 0

    def progress(reason: str) -> None:
        if on_progress:
            on_progress(clock() - start, timeout_s, reason)

    while clock() < deadline:
        attempts += 1
        try:
            cmd = ssm.send_command(
                InstanceIds=[instance_id],
                DocumentName="AWS-RunShellScript",
                Comment="llmfleet readiness",
                Parameters={"commands": commands, "executionTimeout": ["300"]},
                TimeoutSeconds=300,
            )["Command"]
        except ClientError as e:
            # InvalidInstanceId: the SSM agent has not registered yet; keep waiting.
            last = Readiness(False, f"send_command: {e.response['Error'].get('Code')}", attempts=attempts)
            progress(last.reason)
            sleep(poll_s)
            continue
        while clock() < deadline:
            try:
                inv = ssm.get_command_invocation(CommandId=cmd["CommandId"], InstanceId=instance_id)
            except ClientError as e:
                if e.response["Error"].get("Code") != "InvocationDoesNotExist":
                    raise
                inv = {"Status": "Pending"}  # eventual consistency right after send_command
            if inv["Status"] in TERMINAL:
                r = parse_readiness(
                    inv.get("StandardOutputContent", ""), expect_fingerprint, require_serve_running
                )
                last = Readiness(r.ready, r.reason, r.status, attempts)
                break
            progress(f"readiness command {inv['Status']}")
            sleep(min(poll_s, 2.0))
        progress(last.reason)
        if last.ready:
            return last
        sleep(poll_s)
    return Readiness(False, f"not ready after {timeout_s:.0f} s: {last.reason}", last.status, attempts)


def wait_stack_ready(
    cfg: StackConfig,
    outputs: Mapping[str, Any],
    timeout_s: float,
    *,
    session: Any | None = None,
    on_progress: Callable[[float, float, str], None] | None = None,
) -> Readiness:
    """Wait until the stack's deployment answers a real completion: what `up`, `rollout` and
    `wake` end on. provider existing has no SSM, but the operator's machine reaches the head on
    the hosts' network, so the completion goes straight to the endpoint. aws: the readiness script
    on the head group's running instance over SSM (`session`: a boto3 Session, the default one
    when None), ready only once the head reports the Serve config this stack's program renders
    (an app still answering with the previous one is not). DeployError (one line) when the
    outputs cannot say where to ask."""

    try:
        o = StackOutputs.parse(outputs)
    except OutputsError as e:
        raise DeployError(str(e)) from None
    if cfg.provider == "existing":
        endpoint = o.endpoint_url.rstrip("/").removesuffix("/v1")
        try:
            text = wait_for_completion(endpoint, o.api_token, o.served_model, timeout_s)
        except NodeError as e:
            return Readiness(False, str(e))
        return Readiness(True, f"a completion returned {text!r}")
    from boto3.session import Session

    sess = session if session is not None else Session()
    try:  # the head group's running instance (the group replaces it; the stack names the group)
        head = worker_lookup.head_instance_id(outputs, sess.client("ec2", region_name=cfg.region))
    except HeadLookupError as e:
        raise DeployError(f"readiness: {e}") from None
    if not o.token_parameter:
        raise DeployError("stack output 'token_parameter' is missing: the program must export it")
    cmds = readiness_commands(
        container=o.head_container,
        port=cfg.endpoint_port,
        model=o.served_model,
        token_parameter=o.token_parameter,
        region=cfg.region,
    )
    return wait_head_ready(
        sess.client("ssm", region_name=cfg.region),
        head,
        cmds,
        timeout_s=timeout_s,
        on_progress=on_progress,
        expect_fingerprint=expected_fingerprint(cfg),
    )
