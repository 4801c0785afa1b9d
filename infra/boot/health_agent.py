"""The node script's self-healing section (one hook in cloud_init.render_user_data).

Workers: the health agent (ray_cluster/node_health.py), copied out of the node image (the one
the host just pulled) onto the host, and a systemd service that runs it with the host's python3.
Head: a follower that copies the deploy watcher's journal into the boot log, which reaches
CloudWatch, where the Serve app's alarm reads the watcher's lines (recovery.app_alarm). A
follower rather than redirecting the deploy unit's output: a running deploy unit is left alone
by a rollout, so a follower is what reaches heads that already run.

Why a service on the host (not in the node container): it judges the container itself and must
outlive it, and it calls autoscaling:SetInstanceHealth through the host's AWS CLI. Why copied
from the image rather than written by the node script: the script lives in an 8 KiB SSM
parameter, and the agent's source alone would take half of it. Restart=always keeps it up;
enabled, it comes back after a reboot, ordered after llmfleet-apply.service so a reboot's
re-apply runs before it judges.
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from infra.boot.metrics import BOOT_LOG  # shipped to CloudWatch by the boot log container

if TYPE_CHECKING:
    from infra.boot.cloud_init import NodeSpec

UNIT = "llmfleet-health"
AGENT_PATH = "/usr/local/lib/llmfleet/node_health.py"
UNIT_PATH = f"/etc/systemd/system/{UNIT}.service"
GRACE_S = 900  # a down container or a raylet out of the cluster this long: replace the worker
# Where images/Dockerfile copies ray_cluster/ (COPY ray_cluster/ /opt/llmfleet/ray_cluster/).
IMAGE_AGENT_PATH = "/opt/llmfleet/ray_cluster/node_health.py"
_MARK = "LLMFLEET_HEALTH_EOF"


def agent_argv(spec: NodeSpec) -> list[str]:
    return [
        "/usr/bin/python3", AGENT_PATH, "--container", spec.container, "--gpus", str(spec.gpus),
        "--head", spec.head_ip, "--region", spec.region, "--grace", str(GRACE_S),
    ]  # fmt: skip


def unit_text(spec: NodeSpec) -> str:
    return f"""[Unit]
Description=llmfleet: mark this GPU worker Unhealthy in its Auto Scaling group when it cannot serve
After=docker.service llmfleet-apply.service

[Service]
ExecStart={" ".join(shlex.quote(a) for a in agent_argv(spec))}
Restart=always
RestartSec=30

[Install]
WantedBy=multi-user.target
"""


FOLLOWER = "llmfleet-deploy-log"


def deploy_log_follower() -> str:
    """Head: the deploy unit's journal -> the boot log (started once; a rollout leaves it running)."""
    follow = ["journalctl", "--unit=llmfleet-deploy", "--follow", "--lines=0", "--output=cat"]
    return f"""
# The deploy watcher's lines -> {BOOT_LOG} (CloudWatch): the Serve app's alarm reads them there.
if ! systemctl is-active --quiet {FOLLOWER}; then
  systemctl reset-failed {FOLLOWER} >/dev/null 2>&1 || true
  systemd-run --unit={FOLLOWER} --property=Restart=always --property=RestartSec=10 \\
    --property=StandardOutput=append:{BOOT_LOG} {shlex.join(follow)}
fi
"""


def install(spec: NodeSpec) -> str:
    """Workers: (re)install and (re)start the health agent. Head: the deploy log follower."""
    if spec.role == "head":
        return deploy_log_follower() if spec.metrics is not None else ""
    if spec.role != "worker":
        return ""
    img = shlex.quote(spec.image_ref)
    return f"""
# 6. Health agent: marks this instance Unhealthy in its Auto Scaling group (which replaces it)
#    on a fatal GPU XID, a missing GPU, or a node container / raylet down past {GRACE_S} s.
install -d -m 0755 {PurePosixPath(AGENT_PATH).parent}
# (--log-driver none: the file goes to this host, not to the containers' CloudWatch group)
docker run --rm --log-driver none --entrypoint cat {img} {IMAGE_AGENT_PATH} > {AGENT_PATH}.new
cat > {UNIT_PATH}.new <<'{_MARK}'
{unit_text(spec).rstrip()}
{_MARK}
HEALTH_CHANGED=0
for f in {AGENT_PATH} {UNIT_PATH}; do
  if cmp -s "${{f}}.new" "${{f}}"; then rm -f "${{f}}.new"; else mv "${{f}}.new" "${{f}}"; HEALTH_CHANGED=1; fi
done
systemctl daemon-reload
systemctl enable {UNIT}.service
# --no-block: at a reboot this script runs inside llmfleet-apply.service, which the agent's
# unit is ordered after; a blocking start would wait for this very script to end.
if [[ "${{HEALTH_CHANGED}}" == 1 ]]; then
  systemctl --no-block restart {UNIT}.service
else
  systemctl --no-block start {UNIT}.service
fi
log "health agent: journalctl -u {UNIT}"
"""
