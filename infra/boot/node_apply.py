"""The boot contract and the in-place apply path of an EC2 host (pure functions).

An instance's user data is only the *boot contract*: its role, its region and the name of the
SSM parameter that holds its *node script* (infra/boot/cloud_init.py's render_user_data: image
digest, weights location, Serve config, start commands). At boot, and on every rollout, the
host runs `llmfleet-apply`, which reads the parameter and runs the node script it holds.

Why the split: user data is an input that replaces the instance when it changes (a new host,
a new 640 GiB download). What changes on a day-2 update (the Serve config, maxModelLen, the
model, the image digest) lives in the parameter instead, which updates in place; the
operator-side rollout (infra/rollout/) re-runs `llmfleet-apply NAME:VERSION rollout` on the
hosts, one at a time, replica by replica and the head last. The node script is idempotent: the
weights marker skips a download of the same checkpoint, a container restarts only when its run
line (image, mounts, arguments) changes, dockerd only when its daemon.json changes, and the
head's deploy watcher re-applies a changed Serve config in place (infra/boot/rollout_effects.py
reads what a rollout touches from two renderings of the script).

The parameter holds the script without its comment lines, gzip+base64 (an Advanced-tier
parameter takes 8 KiB; prod's worker script is ~17 KiB rendered, ~6.6 KiB packed), never a
secret: secrets stay in their own SecureStrings.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
import shlex

APPLY_BIN = "/usr/local/sbin/llmfleet-apply"
APPLY_LOCK = "/run/llmfleet-apply.lock"
NODE_SCRIPT = "/etc/llmfleet/node.sh"
# Bumped only when the launcher below changes: that is a boot-contract change (replaces hosts).
BOOT_CONTRACT_VERSION = "1"
# A rollout's command waits for a boot still staging weights (flock), so it may run for hours.
APPLY_TIMEOUT_S = 172800  # AWS-RunShellScript's maximum executionTimeout
# After a worker's container restarts, the next worker waits until this one is back in the
# cluster (rolling, one host at a time).
REJOIN_TIMEOUT_S = 1800
PARAMETER_NAME_RE = re.compile(r"^/[A-Za-z0-9_.\-/]{1,1010}$")  # SSM's name characters, as a path
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")


def node_parameter_name(stack: str, role: str) -> str:
    if role not in ("head", "worker"):
        raise ValueError(f"role {role!r}: allowed head, worker")
    return f"/llmfleet/{stack}/node/{role}"


def node_parameter_prefix(stack: str) -> str:
    return f"/llmfleet/{stack}/node/"


# A here-document's opening line (`<<'EOF'`, `<<EOF`, `<<-EOF`, `<<"EOF"`): its body is data.
_HEREDOC = re.compile(r"(?<!<)<<(?!<)-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")


def strip_comments(text: str) -> str:
    """The script without its comment-only lines (the shebang stays), here-documents untouched.

    Why: the renderers explain every step in comments for the people who read them (the
    snapshots, `llmfleet render`), and they are a fifth of the script: without them the packed
    worker script keeps ~1.8 KiB of room under the parameter's 8 KiB. A `#` line inside a
    here-document is data (a unit file, a YAML config, a script's shebang) and is kept; the
    renderers write no multi-line quoted strings (tests/test_node_apply.py checks, with bash's
    own parser, that stripping changes no command of any shipped stack's scripts).
    """
    out: list[str] = []
    end: str | None = None
    for i, line in enumerate(text.splitlines()):
        if end is not None:  # inside a here-document: copied as is up to its end marker
            out.append(line)
            if line.strip() == end:
                end = None
            continue
        if i > 0 and line.lstrip().startswith("#"):
            continue
        out.append(line)
        if m := _HEREDOC.search(line):
            end = m.group(2)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def pack_script(text: str) -> str:
    """The script without comments (strip_comments), gzip (mtime 0, so the same script packs to
    the same bytes) + base64."""
    return base64.b64encode(gzip.compress(strip_comments(text).encode(), mtime=0)).decode()


def unpack_script(value: str) -> str:
    return gzip.decompress(base64.b64decode(value)).decode()


def script_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_REJOIN_PY = r"""import json, sys
doc = json.load(sys.stdin)
ip = sys.argv[1]
sys.exit(0 if any(n.get("ip") == ip and n.get("alive") for n in doc.get("nodes", [])) else 1)
"""


def _apply_script(role: str, region: str) -> str:
    # Every byte of this script is in each host's user data: editing even a comment replaces
    # every host (its words "the association" predate infra/rollout/ and stay for that reason).
    container = f"llmfleet-{role}"
    rejoin = ""
    if role == "worker":
        # Rolling: the association moves to the next worker only when this one has rejoined.
        rejoin = f"""if [[ "${{MODE}}" == rollout ]]; then
# A worker is done when its node is alive in the cluster again (the next worker waits for it).
IMDS_TOKEN=$(curl -sS -X PUT http://169.254.169.254/latest/api/token \\
  -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
NODE_IP=$(curl -sS -H "X-aws-ec2-metadata-token: ${{IMDS_TOKEN}}" \\
  http://169.254.169.254/latest/meta-data/local-ipv4)
DEADLINE=$(( $(date +%s) + {REJOIN_TIMEOUT_S} ))
until docker exec {container} python -m ray_cluster.node status --json 2>/dev/null \\
    | python3 -c '{_REJOIN_PY.strip()}' "${{NODE_IP}}"; do
  [[ $(date +%s) -lt ${{DEADLINE}} ]] || {{ echo "llmfleet-apply: ${{NODE_IP}} not back in the cluster" >&2; exit 1; }}
  sleep 10
done
fi
"""
    return f"""#!/bin/bash
# llmfleet-apply: fetch this host's node script from SSM and run it (boot and every rollout).
set -euo pipefail
export AWS_DEFAULT_REGION={shlex.quote(region)}
PARAM="$1"
MODE="${{2:-boot}}"  # boot (user data) or rollout (the association)
install -d -m 0755 /etc/llmfleet
# One apply at a time: a rollout that arrives during the boot waits, then applies the latest.
exec 9>{APPLY_LOCK}
flock 9
PACKED=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
  PACKED=$(aws ssm get-parameter --name "${{PARAM}}" --query Parameter.Value --output text) && break
  sleep 6
done
[[ -n "${{PACKED}}" ]] || {{ echo "llmfleet-apply: cannot read SSM parameter ${{PARAM}}" >&2; exit 1; }}
printf '%s' "${{PACKED}}" | base64 -d | gunzip > {NODE_SCRIPT}.new
chmod 0700 {NODE_SCRIPT}.new
mv {NODE_SCRIPT}.new {NODE_SCRIPT}
LLMFLEET_APPLY_MODE="${{MODE}}" bash {NODE_SCRIPT}
{rejoin}"""


def launcher_user_data(role: str, region: str, parameter_name: str) -> str:
    """The whole user data of a host: install llmfleet-apply, then run it once (the boot).

    Only the role, the region and the parameter's name are in it, so it stays the same across
    every day-2 change that the parameter carries."""
    if role not in ("head", "worker"):
        raise ValueError(f"role {role!r}: allowed head, worker")
    # Checked here, not quoted, so that the user data of every valid stack stays byte for byte
    # what it was (a new user data replaces the instance): the name sits in a comment and a
    # unit file, the region in the apply script, and neither may carry anything but these.
    if not PARAMETER_NAME_RE.match(parameter_name):
        raise ValueError(
            f"parameter_name {parameter_name!r}: allowed an SSM parameter path /... of [A-Za-z0-9_.-/]"
        )
    if not REGION_RE.match(region):
        raise ValueError(f"region {region!r}: allowed an AWS region name such as us-east-1")
    return f"""#!/bin/bash
# llmfleet {role} boot contract v{BOOT_CONTRACT_VERSION} (rendered by infra/boot/node_apply.py).
# The node script itself is in SSM ({parameter_name}); rollouts re-run {APPLY_BIN}.
set -euo pipefail
install -d -m 0755 "$(dirname {APPLY_BIN})"
cat > {APPLY_BIN} <<'LLMFLEET_APPLY_EOF'
{_apply_script(role, region).rstrip()}
LLMFLEET_APPLY_EOF
chmod 0755 {APPLY_BIN}
# Every later boot (a stopped spot worker that EC2 starts again, a reboot) applies again:
# the instance-store NVMe comes back empty after a stop, and the node script re-stages it.
cat > /etc/systemd/system/llmfleet-apply.service <<'LLMFLEET_UNIT_EOF'
[Unit]
Description=llmfleet: apply this host's node script from SSM
Wants=network-online.target
After=network-online.target docker.service

[Service]
Type=oneshot
ExecStart={APPLY_BIN} {shlex.quote(parameter_name)} boot

[Install]
WantedBy=multi-user.target
LLMFLEET_UNIT_EOF
systemctl daemon-reload
systemctl enable llmfleet-apply.service
exec {APPLY_BIN} {shlex.quote(parameter_name)} boot
"""


def rollout_command(parameter_name: str, version: int) -> str:
    """What the operator-side rollout (infra/rollout/ssm.py) runs on one host: this exact version
    of the node script (GetParameter's `name:version` selector), so a rollback can name the
    previous version by number while the parameter's newest version is another."""
    if int(version) < 1:
        raise ValueError(f"version {version!r}: allowed a parameter version >= 1")
    return f"{APPLY_BIN} {shlex.quote(f'{parameter_name}:{int(version)}')} rollout"
