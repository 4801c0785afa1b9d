"""The bootstrap script for one existing host (llmfleet:provider = existing). Pure renderer.

`render_bootstrap(stack, host, head_ip, image_ref)` returns a bash script that the program
runs on the host over SSH (pulumi_command.remote.Command). It:
1. checks the host: Docker present and running, the NVIDIA runtime, `nvidia-smi -L` count
   == the declared gpuCount, free disk at weightsPath >= the checkpoint. Each failure is ONE
   line `llmfleet-bootstrap: <check> failed on <host>: <what was seen>; <fix>`, exit 1;
2. stages the weights from llmfleet:weightsUri (s3:// via `aws s3 sync`, https via curl
   with resumable ranges against a SHA256SUMS manifest, an NFS path via rsync), then verifies;
3. pulls the image, replaces the fixed-name container and starts `python -m ray_cluster.node
   head|worker` in it, the same node code (and so the same `ray start` argv, built by
   `ray_cluster.ray_start.head_start_command` / `worker_start_command`) as the AWS hosts.
4. on the head, installs `llmfleet-deploy.service` (`deploy_unit`): the same `deploy --watch`
   as the AWS head's, under systemd (Restart=always, enabled), so Serve is deployed again after
   a head container restart or a reboot, and re-applied when the app stays failed.

`--dry-run` (or LLMFLEET_DRY_RUN=1) runs the checks and prints every side effect as
`dry-run: <argv>` instead of running it. Secrets come on stdin (the remote Command's secret
`stdin`, one KEY=value a line, see `stdin_secrets`): the Ray cluster token for every host, the
endpoint token for the head too. The script writes them to the root-only env file the node
container reads (--env-file), so no token is ever in the script or in a process argv.

The host's NodeSpec, container and `ray start` argv, stdin and stop command are `ssh_node`'s.
"""

from __future__ import annotations

import hashlib
import math
import re
import shlex
from typing import TYPE_CHECKING

from infra.boot import cloud_init, imds_guard
from infra.boot.cloud_init import HEAD_INCLUDES, RAY_AUTH_ENV, RAY_TOKEN_ENV, TOKEN_ENV, NodeSpec, ShellVar
from infra.boot.ssh_node import DEPLOY_UNIT, container_argv, host_index, node_spec, ray_argv, weights_gib
from infra.stack.resolve import Stack
from ray_cluster.contract import HOST_ENV_FILE  # cloud-init writes the same file

if TYPE_CHECKING:
    from infra.stack.host_spec import HostSpec

DRY_RUN_PREFIX = "dry-run:"
MESSAGE_PREFIX = "llmfleet-bootstrap:"
ECR_RE = re.compile(r"^(?P<registry>\d{12}\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com)/")
HEAD_FILES_RE = "[.](" + "|".join(p.removeprefix("*.") for p in HEAD_INCLUDES) + ")$"
# One SHA256SUMS line (`sha256sum` text or binary mode): 64 hex digits, a space, ' ' or '*',
# then a relative name whose every component starts with a letter, digit or '_' (so no '.',
# '..', leading '/' or '-') and holds only letters, digits, '.', '_', '-'.
_NAME_PART = "[A-Za-z0-9_][A-Za-z0-9._-]*"
SHA256SUMS_LINE_RE = f"[0-9a-f]{{64}} [ *]{_NAME_PART}(/{_NAME_PART})*"


# ---------------------------------------------------------------- weights staging (bash)


def _staging(uri: str | None, head: bool) -> tuple[str, list[str]]:
    """(tool the source needs, bash lines of stage_weights) for a weightsUri. The head takes
    only the config/tokenizer files its OpenAI ingress reads (as cloud-init's head does)."""
    if uri is None:
        return "", [
            '[ -f "$MODEL_PATH/config.json" ] || fail weights "no $MODEL_PATH/config.json and no '
            'llmfleet:weightsUri" "set llmfleet:weightsUri or copy the checkpoint to $MODEL_PATH"'
        ]
    if uri.startswith("s3://"):
        only = (
            " ".join(["--exclude '*'", *(f"--include {shlex.quote(p)}" for p in HEAD_INCLUDES)])
            if head
            else ""
        )
        sync = f'aws s3 sync "$WEIGHTS_URI" "$MODEL_PATH" --only-show-errors {only}'.rstrip()
        return "aws", [
            f"run {sync}",
            'if [ "$DRY_RUN" != 1 ]; then',
            f"  left=$({sync} --dryrun | wc -l)",
            '  [ "$left" -eq 0 ] || fail weights "$left objects still differ from $WEIGHTS_URI after sync" '
            '"check the bucket and re-run"',
            "fi",
        ]
    if uri.startswith("https://"):  # plain http is refused by the config (config_values)
        # The URL is a directory holding SHA256SUMS (`sha256sum * > SHA256SUMS`): the manifest
        # lists the files and verifies them. `-C -` resumes a partial file with a range request.
        # Every line of the manifest must be `<sha256>  <name>` with a relative name of safe
        # components: a name from the server becomes a path here, so an absolute one or a '..'
        # (or a character a shell or xargs reads) would write outside the model directory.
        pick = f" | grep -E {shlex.quote(HEAD_FILES_RE)}" if head else ""
        partial = " --ignore-missing" if head else ""
        return "curl", [
            'base="${WEIGHTS_URI%/}"',
            'run curl -fsSL --proto =https --retry 5 -o "$MODEL_PATH/SHA256SUMS" "$base/SHA256SUMS"',
            'if [ "$DRY_RUN" != 1 ]; then',
            f'  bad=$(grep -Evx {shlex.quote(SHA256SUMS_LINE_RE)} "$MODEL_PATH/SHA256SUMS" | first_line || true)',
            '  [ -z "$bad" ] || fail weights "SHA256SUMS line $(printf %q "$bad") is not <sha256> <relative name>" '
            '"names must be relative paths of letters, digits, ., _, - (no /, .. or spaces at the start)"',
            "  # shellcheck disable=SC2016  # $1..$3 belong to the inner sh",
            f'  cut -c 67- "$MODEL_PATH/SHA256SUMS"{pick} | xargs -P 8 -I{{}} sh -c '
            '\'curl -fsSL --proto =https --retry 5 -C - --create-dirs -o "$1/$3" "$2/$3" || '
            'curl -fsSL --proto =https --retry 5 --create-dirs -o "$1/$3" "$2/$3"\' _ "$MODEL_PATH" "$base" {}',
            f'  (cd "$MODEL_PATH" && sha256sum --quiet{partial} -c SHA256SUMS) >/dev/null 2>&1 || '
            'fail weights "sha256sum -c SHA256SUMS reports bad files in $MODEL_PATH" "remove them and re-run"',
            "fi",
        ]
    src = uri.removeprefix("file://").rstrip("/") + "/"
    only = (
        " ".join(
            ["--include='*/'", *(f"--include={shlex.quote(p)}" for p in HEAD_INCLUDES), "--exclude='*'", "-m"]
        )
        if head
        else ""
    )
    sync = f'rsync -a --partial {only} "$src" "$MODEL_PATH/"'.replace("  ", " ")
    return "rsync", [
        f"src={_sq(src)}",
        '[ -d "$src" ] || fail weights "$src is not a directory (NFS not mounted?)" '
        '"mount the share at the same path on every host"',
        f"run {sync}",
        'if [ "$DRY_RUN" != 1 ]; then',
        f"  left=$({sync.replace('rsync -a', 'rsync -a --dry-run --itemize-changes')} | wc -l)",
        '  [ "$left" -eq 0 ] || fail weights "$left files still differ from $src after rsync" '
        '"check the share and re-run"',
        "fi",
    ]


# ---------------------------------------------------------------- the script


def _sq(value: str) -> str:
    """Always single-quoted (shlex.quote leaves safe words bare, which shellcheck flags)."""
    return "'" + value.replace("'", "'\"'\"'") + "'"


def _array(argv: list[str]) -> str:
    return " ".join(f'"${{{a}}}"' if isinstance(a, ShellVar) else shlex.quote(a) for a in argv)


def _preamble(host: HostSpec, stack: Stack, head_ip: str, v: dict[str, str], argv: list[str]) -> list[str]:
    """Header, variables, helpers (fail, run under --dry-run, sudo) and the docker check."""
    q = shlex.quote
    return [
        "#!/usr/bin/env bash",
        # No value in a comment: a newline in one would end the comment (values are data below).
        f"# llmfleet bootstrap of one {host.role} (HOST below); rendered by",
        "# infra/boot/ssh_bootstrap.py -- edit the stack config, not this script.",
        "set -euo pipefail",
        "",
        *(f"{k}={_sq(val)}" for k, val in v.items()),
        "# What the container's node module runs (for a reader: the node module builds it).",
        "# shellcheck disable=SC2034",
        f"RAY_START=({_array(ray_argv(host, head_ip))})",
        # argv[0] is `docker`; the script runs it as "${DOCKER[@]}" (sudo when needed).
        f"CONTAINER_ARGS=({_array(argv[1:])})",
        'DRY_RUN="${LLMFLEET_DRY_RUN:-0}"',
        'for arg in "$@"; do if [ "$arg" = --dry-run ]; then DRY_RUN=1; fi; done',
        "",
        "fail() {  # check, what was seen, fix",
        f'  echo "{MESSAGE_PREFIX} $1 failed on $HOST: $2; $3" >&2',
        "  exit 1",
        "}",
        "run() {  # a side effect, or its argv under --dry-run",
        '  if [ "$DRY_RUN" = 1 ]; then',
        f"    printf '%s' {q(DRY_RUN_PREFIX)}",
        "    printf ' %q' \"$@\"",
        "    printf '\\n'",
        "  else",
        '    "$@"',
        "  fi",
        "}",
        "first_line() { head -n 1 | cut -c 1-160; }",
        'SUDO=(); [ "$(id -u)" -eq 0 ] || SUDO=(sudo -n)',
        "",
        "# 1. checks ------------------------------------------------------------------",
        'command -v docker >/dev/null 2>&1 || fail docker "docker not found in PATH ($PATH)" '
        '"install Docker Engine: https://docs.docker.com/engine/install/"',
        "if docker info >/dev/null 2>&1; then",
        "  DOCKER=(docker)",
        "elif sudo -n docker info >/dev/null 2>&1; then",
        "  DOCKER=(sudo -n docker)",
        "else",
        '  seen=$(docker info 2>&1 | grep -i -m 1 -E "error|cannot|denied" | cut -c 1-160 || true)',
        '  fail docker "daemon not reachable: ${seen:-docker info failed}" '
        '"sudo systemctl enable --now docker, and add $(id -un) to the docker group"',
        "fi",
    ]


def _worker_checks() -> list[str]:
    """GPU hosts: the NVIDIA runtime, the declared GPU count, disk for the weights."""
    return [
        "runtimes=$(\"${DOCKER[@]}\" info --format '{{json .Runtimes}}' 2>/dev/null || true)",
        'if [[ "$runtimes" != *nvidia* ]] && ! command -v nvidia-container-cli >/dev/null 2>&1; then',
        '  fail nvidia-runtime "docker runtimes ${runtimes:-none} lack nvidia and nvidia-container-cli '
        'is missing" "install nvidia-container-toolkit, then: sudo nvidia-ctk runtime configure '
        '--runtime=docker && sudo systemctl restart docker"',
        "fi",
        'command -v nvidia-smi >/dev/null 2>&1 || fail gpu-count "nvidia-smi not found in PATH" '
        '"install the NVIDIA driver"',
        'gpus=$(nvidia-smi -L 2>&1) || fail gpu-count "nvidia-smi -L: $(echo "$gpus" | first_line)" '
        '"fix the NVIDIA driver (nvidia-smi must list the GPUs)"',
        'found=$(echo "$gpus" | grep -c "^GPU [0-9]" || true)',
        '[ "$found" -eq "$GPU_COUNT" ] || fail gpu-count "nvidia-smi -L lists $found GPUs, declared '
        '$GPU_COUNT" "set $ENTRY.gpuCount to $found, or fix the host"',
        "# Free space where the weights go (nearest existing directory), plus what is already there.",
        'probe="$WEIGHTS_DIR"; while [ ! -d "$probe" ]; do probe=$(dirname "$probe"); done',
        "free=$(df -P -B1G \"$probe\" | awk 'NR==2 {print $4}')",
        'have=0; if [ -d "$MODEL_PATH" ]; then have=$(du -s -B1G "$MODEL_PATH" | cut -f1); fi',
        '[ $((free + have)) -ge "$NEED_GIB" ] || fail disk "$free GiB free at $probe, the weights '
        'need $NEED_GIB GiB" "free space, or set llmfleet:weightsPath to a larger volume"',
    ]


def _head_checks() -> list[str]:
    """The head keeps its deploy watcher under systemd (step 4)."""
    return [
        'command -v systemctl >/dev/null 2>&1 || fail systemd "systemctl not found in PATH" '
        '"the head runs its deploy watcher as a systemd unit: use a systemd host"',
    ]


def _tool_checks(tool: str, ecr: re.Match | None) -> list[str]:
    lines: list[str] = []
    if tool:
        lines.append(
            f'command -v {tool} >/dev/null 2>&1 || fail weights "{tool} not found in PATH, needed for '
            f'$WEIGHTS_URI" "install {tool}"'
        )
    if ecr:
        lines.append(
            'command -v aws >/dev/null 2>&1 || fail image "aws CLI not found, needed to log in to ECR" '
            '"install awscli v2 and give the host credentials that may pull from the repository"'
        )
    return lines


def _secrets(is_worker: bool) -> list[tuple[str, str, str, str]]:
    # (env name, shell variable, check name, dry-run text): what this host takes on stdin.
    secrets = [(RAY_TOKEN_ENV, "ray_token", "ray-token", "<ray token>")]
    if not is_worker:
        secrets.append((TOKEN_ENV, "api_token", "api-token", "<token>"))
    return secrets


def _read_secrets(secrets: list[tuple[str, str, str, str]]) -> list[str]:
    return [
        "# Secrets come on stdin (Pulumi secrets, KEY=value lines), never in this script or an argv.",
        " ".join(f'{var}="";' for _, var, _, _ in secrets) + ' line=""',
        'while IFS= read -r -t 10 line || [ -n "$line" ]; do',
        '  case "${line%%=*}" in',
        *(f'    {env}) {var}="${{line#*=}}" ;;' for env, var, _, _ in secrets),
        "  esac",
        '  line=""',
        "done",
        *(
            f'[ -n "${var}" ] || fail {check} "no {env}=... line on stdin" '
            '"run through the Pulumi program (it passes the generated tokens on stdin)"'
            for env, var, check, _ in secrets
        ),
    ]


def _weights(stage: list[str]) -> list[str]:
    return [
        "",
        "# 2. weights ------------------------------------------------------------------",
        "stage_weights() {",
        '  if ! run mkdir -p "$MODEL_PATH" 2>/dev/null; then',
        '    run "${SUDO[@]}" mkdir -p "$MODEL_PATH"',
        '    run "${SUDO[@]}" chown "$(id -u):$(id -g)" "$MODEL_PATH"',
        "  fi",
        *(f"  {line}" for line in stage),
        "}",
        "stage_weights",
    ]


def _env_file(secrets: list[tuple[str, str, str, str]]) -> list[str]:
    q = shlex.quote
    # The node container reads the secrets from a root-only env file (--env-file); printf is a
    # shell builtin, so the values reach `install` through a pipe, never through an argv.
    env_dir = HOST_ENV_FILE.rsplit("/", 1)[0]
    plain = [f"{k}={val}" for k, val in RAY_AUTH_ENV.items()]
    shown = " ".join([*plain, *(f"{env}={text}" for env, _, _, text in secrets)])
    written = " ".join([*map(_sq, plain), *(f'"{env}=${var}"' for env, var, _, _ in secrets)])
    return [
        'if [ "$DRY_RUN" = 1 ]; then',
        f"  echo {q(f'{DRY_RUN_PREFIX} write {shown} to {HOST_ENV_FILE} (0600)')}",
        "else",
        f'  "${{SUDO[@]}}" install -d -m 0700 {q(env_dir)}',
        f"  printf '%s\\n' {written} | \"${{SUDO[@]}}\" install -m 0600 /dev/stdin {q(HOST_ENV_FILE)}",
        "fi",
        "unset " + " ".join(var for _, var, _, _ in secrets),
    ]


def _serve_config(spec: NodeSpec) -> list[str]:
    q = shlex.quote
    return [
        "# The Serve deploy config (no secrets), mounted read-only into the head container.",
        f"SERVE_CONFIG={_sq(spec.serve_config)}",
        'if [ "$DRY_RUN" = 1 ]; then',
        f"  echo {q(f'{DRY_RUN_PREFIX} write the Serve config to {cloud_init.SERVE_CONFIG_PATH}')}",
        "else",
        f'  printf \'%s\\n\' "$SERVE_CONFIG" | "${{SUDO[@]}}" install -D -m 0644 /dev/stdin '
        f"{q(cloud_init.SERVE_CONFIG_PATH)}",
        "fi",
    ]


def _image_and_container(ecr: re.Match | None) -> list[str]:
    q = shlex.quote
    lines = ["", "# 3. image and container ------------------------------------------------------"]
    if ecr:
        registry, region = ecr.group("registry"), ecr.group("region")
        lines += [
            'if [ "$DRY_RUN" = 1 ]; then',
            f"  echo {q(f'{DRY_RUN_PREFIX} aws ecr get-login-password --region {region} | docker login')}",
            "else",
            f"  aws ecr get-login-password --region {q(region)} | "
            f'"${{DOCKER[@]}}" login --username AWS --password-stdin {q(registry)} >/dev/null',
            "fi",
        ]
    lines += [
        'run "${DOCKER[@]}" pull --quiet "$IMAGE"',
        'if "${DOCKER[@]}" container inspect "$CONTAINER" >/dev/null 2>&1; then',
        '  run "${DOCKER[@]}" rm -f "$CONTAINER"',
        "fi",
        'run "${DOCKER[@]}" "${CONTAINER_ARGS[@]}"',
        'if [ "$DRY_RUN" != 1 ]; then',
        "  sleep 5",
        '  state=$("${DOCKER[@]}" inspect -f \'{{.State.Status}}\' "$CONTAINER" 2>&1 || true)',
        '  [ "$state" = running ] || fail container "$CONTAINER is ${state:-missing}: '
        '$("${DOCKER[@]}" logs --tail 1 "$CONTAINER" 2>&1 | first_line)" "see docker logs $CONTAINER"',
        "fi",
    ]
    return lines


DEPLOY_UNIT_PATH = f"/etc/systemd/system/{DEPLOY_UNIT}"


def deploy_unit(spec: NodeSpec) -> str:
    """The owned head's deploy unit: the same `deploy --watch` as the AWS head's, kept running by
    systemd. Restart=always: a deploy that fails (workers not there yet) is tried again, and
    when the head container restarts the `docker exec` ends and the next one deploys afresh
    into the new container; enabled, it starts again after a reboot (the container comes back
    with Docker's restart policy; until it runs, `docker exec` fails and is retried)."""
    run = ["/usr/bin/env", "docker", "exec", spec.container, *cloud_init.head_deploy_argv(spec), "--watch"]
    return f"""[Unit]
Description=llmfleet: deploy the Serve app in {spec.container} and keep watching it
Wants=docker.service
After=docker.service network-online.target

[Service]
ExecStart={shlex.join(run)}
Restart=always
RestartSec=30

[Install]
WantedBy=multi-user.target
"""


def _deploy(spec: NodeSpec) -> list[str]:
    # Same deploy and watcher as the AWS head's unit (cloud_init): waits for TP x PP GPUs,
    # preflight, serve deploy, a real completion, then re-applies on a new config, a returning
    # worker or a failed app. Under systemd, so it outlives this script, a container restart
    # and a reboot. Restarted on every run: this script has just replaced the container.
    q = shlex.quote
    return [
        "# 4. deploy and watch the inference actors: a systemd unit on this host -------------",
        f"DEPLOY_UNIT={_sq(deploy_unit(spec))}",
        'if [ "$DRY_RUN" = 1 ]; then',
        f"  echo {q(f'{DRY_RUN_PREFIX} write {DEPLOY_UNIT_PATH}')}",
        "else",
        f'  printf \'%s\\n\' "$DEPLOY_UNIT" | "${{SUDO[@]}}" install -D -m 0644 /dev/stdin {q(DEPLOY_UNIT_PATH)}',
        "fi",
        'run "${SUDO[@]}" systemctl daemon-reload',
        f'run "${{SUDO[@]}}" systemctl enable {DEPLOY_UNIT}',
        f'run "${{SUDO[@]}}" systemctl restart {DEPLOY_UNIT}',
    ]


def render_bootstrap(stack: Stack, host: HostSpec, head_ip: str, image_ref: str) -> str:
    """The bash bootstrap script for one host (deterministic: its hash triggers re-runs)."""
    cfg = stack.cfg
    if not cfg.model_path.startswith("/"):  # else an option to mkdir (config_values checks it too)
        raise ValueError(f"model_path {cfg.model_path!r}: allowed an absolute path")
    idx = host_index(cfg, host)
    is_worker = host.role == "worker"
    spec = node_spec(stack, host, head_ip, image_ref)
    tool, stage = _staging(cfg.weights_uri, head=not is_worker)
    ecr = ECR_RE.match(image_ref)
    v = {"HOST": host.address, "ROLE": host.role, "NODE_IP": str(host.ray_ip)}
    if is_worker:
        v.update(ENTRY=f"llmfleet:hosts[{idx}]", GPU_COUNT=str(host.gpu_count))
        v.update(WEIGHTS_DIR=cfg.weights_path, NEED_GIB=str(math.ceil(weights_gib(stack))))
    v["MODEL_PATH"] = cfg.model_path
    if cfg.weights_uri:
        v["WEIGHTS_URI"] = cfg.weights_uri
    v.update(IMAGE=image_ref, CONTAINER=spec.container)
    secrets = _secrets(is_worker)
    lines = _preamble(host, stack, head_ip, v, container_argv(spec))
    lines += _worker_checks() if is_worker else _head_checks()
    lines += _tool_checks(tool, ecr) + _read_secrets(secrets) + _weights(stage) + _env_file(secrets)
    lines += [] if is_worker else _serve_config(spec)
    # After the bootstrap's own `aws` calls, before the container starts.
    lines += imds_guard.bootstrap_lines() + _image_and_container(ecr)
    lines += [] if is_worker else _deploy(spec)
    lines += [f'echo "{MESSAGE_PREFIX} $ROLE $HOST ready (container $CONTAINER)"', ""]
    return "\n".join(lines)


def script_sha256(script: str) -> str:
    return hashlib.sha256(script.encode()).hexdigest()


def remote_create_command(script: str) -> str:
    """The remote Command's `create`: the script through bash whatever the login shell is."""
    return f"bash -c {shlex.quote(script)} llmfleet-bootstrap"
