"""The GPU worker's health agent: marks its own instance Unhealthy in its Auto Scaling group
when the host can no longer serve, so the group replaces it (infra/components/workers.py).

It ships in the node image (stdlib only, importing nothing else of ray_cluster), and the node
script copies it out of the image onto the host (infra/boot/health_agent.py: the systemd unit),
where the host's python3 runs it: it must judge the node container from outside, and its one
AWS call goes through the host's AWS CLI (what the node script already uses), not boto3, which
the image never imports. Shipping it in the image, not in the node script, keeps the script
within its SSM parameter's 8 KiB.

`decide` is the pure verdict over one observation (recorded tool outputs, tested without the
tools); `observe` and `mark_unhealthy` are the thin side effects. Unhealthy when:
- a fatal XID is in this boot's kernel log or the DCGM exporter's last-XID gauge (NVIDIA's
  catalog below; application XIDs such as 13, 31, 43 are the engine's business, not the host's);
- `nvidia-smi -L` lists fewer GPUs than the type has, for GPU_CONFIRM_S (a GPU fell off);
- the node container is not running, or its raylet is not alive in the cluster, for longer than
  the grace period, counted from when the agent first saw it so. The agent starts only after a
  boot's node script has run (its unit is ordered after llmfleet-apply.service), so a boot that
  is still staging weights is never counted. Both are judged only while the head's GCS port
  answers: a head outage stops every worker's raylet, and replacing every worker would not
  bring the head back.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# NVIDIA's Xid catalog, "Resolution Bucket (Immediate Action)":
# https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html (and, for 48/63/64,
# https://docs.nvidia.com/deploy/dynamic-page-retirement/visibility.html). Fatal here = the
# fix is a GPU reset, a reboot or service: on a cloud worker, a new instance.
FATAL_XIDS = {
    48: "double bit ECC error (DBE)",
    63: "row remapping / page retirement pending: needs a GPU reset",
    64: "row remapping / page retirement failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}
# The application's own faults (restart the app, which the head's deploy watcher does): logged,
# never a reason to replace the host.
APP_XIDS = {
    13: "graphics engine exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing (channel reset)",
    45: "preemptive cleanup after a previous error",
    94: "contained ECC error (only the faulting application)",
}
REMARK_S = 600.0  # marked and still here: mark again (a call inside the group's grace is a no-op)
GPU_CONFIRM_S = 120.0  # a missing GPU seen this long (one flaky nvidia-smi is not a fault)
GCS_PORT = 6379
DCGM_URL = "http://127.0.0.1:9400/metrics"  # the DCGM exporter (infra/boot/metrics.py)
BOOT_LOG = "/var/log/llmfleet-boot.log"

_XID_RE = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9A-Fa-f:.]+)\): (\d+)")
_DCGM_RE = re.compile(r"^DCGM_FI_DEV_XID_ERRORS\{([^}]*)\}\s+(\S+)", re.M)
_GPU_RE = re.compile(r"^GPU \d+: ", re.M)


def gpu_count(listing: str | None) -> int:
    """GPUs in `nvidia-smi -L` output (None: nvidia-smi failed or hung)."""
    return len(_GPU_RE.findall(listing or ""))


def xids(kernel_log: str, dcgm_metrics: str) -> list[tuple[str, int]]:
    """(where, XID) from `NVRM: Xid` kernel lines and the DCGM exporter's last-XID gauge."""
    found = [(m.group(1), int(m.group(2))) for m in _XID_RE.finditer(kernel_log)]
    for labels, value in _DCGM_RE.findall(dcgm_metrics):
        code = int(float(value))
        if code:
            gpu = re.search(r'gpu="(\d+)"', labels)
            found.append((f"gpu {gpu.group(1) if gpu else '?'} (DCGM)", code))
    return found


@dataclass(frozen=True)
class Observation:
    now: float
    gpu_listing: str | None  # `nvidia-smi -L`
    kernel_log: str = ""  # this boot's kernel messages
    dcgm_metrics: str = ""  # the DCGM exporter's /metrics text ("" when it does not answer)
    container: str = "running"  # docker's State.Status, or "missing"
    raylet: str = "unknown"  # alive | gone (dead or absent in the node table) | unknown
    head_reachable: bool = True


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reason: str


def decide(
    obs: Observation, gpus: int, grace_s: float, seen: dict[str, float]
) -> tuple[Verdict, dict[str, float]]:
    """The verdict on one observation, and since when each timed condition has held (`seen`,
    carried from the previous call; the agent keeps it in memory)."""
    for where, code in xids(obs.kernel_log, obs.dcgm_metrics):
        if code in FATAL_XIDS:
            return Verdict(False, f"XID {code} ({FATAL_XIDS[code]}) on {where}"), seen
    bad: dict[str, str] = {}
    have = gpu_count(obs.gpu_listing)
    if have < gpus:
        bad["gpus"] = f"nvidia-smi lists {have} of {gpus} GPUs"
    if obs.head_reachable:
        if obs.container != "running":
            bad["container"] = f"node container {obs.container}"
        elif obs.raylet == "gone":
            bad["raylet"] = "raylet not alive in the cluster"
    now_seen = {k: seen.get(k, obs.now) for k in bad}
    for key, what in bad.items():
        if obs.now - now_seen[key] >= (GPU_CONFIRM_S if key == "gpus" else grace_s):
            return Verdict(False, f"{what} for {obs.now - now_seen[key]:.0f} s"), now_seen
    if bad:
        return Verdict(True, "waiting: " + "; ".join(bad.values())), now_seen
    held = "" if obs.head_reachable else " (head unreachable: container and raylet not judged)"
    app = sorted({c for _, c in xids(obs.kernel_log, obs.dcgm_metrics)})
    noted = f"; application XIDs {app} ignored" if app else ""
    return Verdict(True, f"ok: {have} GPUs, container {obs.container}, raylet {obs.raylet}{held}{noted}"), {}


# ---------------------------------------------------------------- side effects (the host)


def _run(argv: list[str], timeout: float = 60.0) -> tuple[int, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, str(e)
    return p.returncode, p.stdout


def raylet_state(status_json: str, ip: str) -> str:
    """alive | gone from `python -m ray_cluster.node status --json`; unknown when unreadable."""
    try:
        nodes = json.loads(status_json)["nodes"]
    except (ValueError, KeyError, TypeError):
        return "unknown"
    return "alive" if any(n.get("ip") == ip and n.get("alive") for n in nodes) else "gone"


def _imds(path: str) -> str:
    put = urllib.request.Request(
        "http://169.254.169.254/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"},
    )
    token = urllib.request.urlopen(put, timeout=5).read().decode()
    get = urllib.request.Request(
        f"http://169.254.169.254/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": token}
    )
    return urllib.request.urlopen(get, timeout=5).read().decode()


def _head_reachable(head: str, port: int) -> bool:
    try:
        socket.create_connection((head, port), timeout=5).close()
        return True
    except OSError:
        return False


def observe(
    container: str, head: str, ip: str, raylet: str | None, gcs_port: int = GCS_PORT, dcgm_url: str = DCGM_URL
) -> Observation:
    """One look at the host. `raylet`: the last raylet state to keep, or None to ask again
    (a `status` is a Ray driver: asked every few polls, not every one)."""
    _, listing = _run(["nvidia-smi", "-L"])
    _, klog = _run(["journalctl", "-k", "-b", "--no-pager", "-o", "short-iso"])
    try:
        dcgm = urllib.request.urlopen(dcgm_url, timeout=5).read().decode()
    except OSError:
        dcgm = ""
    rc, state = _run(["docker", "inspect", "-f", "{{.State.Status}}", container])
    state = state.strip() if rc == 0 else "missing"
    if state != "running":
        raylet = "unknown"
    elif raylet is None:
        rc, out = _run(
            ["docker", "exec", container, "python", "-m", "ray_cluster.node", "status", "--json"], 120
        )
        raylet = raylet_state(out, ip) if rc == 0 else "unknown"
    return Observation(
        now=time.time(),
        gpu_listing=listing,
        kernel_log="\n".join(line for line in klog.splitlines() if "NVRM: Xid" in line),
        dcgm_metrics=dcgm,
        container=state,
        raylet=raylet,
        head_reachable=_head_reachable(head, gcs_port),
    )


def set_unhealthy_argv(instance_id: str, region: str) -> list[str]:
    """The AWS CLI call that has the instance's Auto Scaling group replace it; the group's health
    check grace period still protects a newly launched instance."""
    return [
        "aws", "autoscaling", "set-instance-health", "--region", region, "--instance-id", instance_id,
        "--health-status", "Unhealthy", "--should-respect-grace-period",
    ]  # fmt: skip


def _log(line: str, boot_log: bool) -> None:
    line = f"llmfleet-health {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}"
    print(line, flush=True)  # the journal (the unit's stdout)
    if boot_log:  # shipped to CloudWatch with the boot log
        try:
            with open(BOOT_LOG, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmfleet-health", description=(__doc__ or "").partition("\n")[0])
    p.add_argument("--container", required=True)
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--head", required=True, help="the head's private IP")
    p.add_argument("--region", required=True)
    p.add_argument("--grace", type=float, default=900.0, help="seconds a down container/raylet is tolerated")
    p.add_argument("--interval", type=float, default=60.0)
    p.add_argument("--raylet-every", type=int, default=5, help="check the raylet every N polls")
    p.add_argument("--dry-run", action="store_true", help="decide and log, never call AWS")
    return p


@dataclass
class AgentState:
    instance_id: str
    region: str
    seen: dict[str, float] = field(default_factory=dict)
    last: str = ""
    marked_at: float | None = None

    @property
    def marked(self) -> bool:
        return self.marked_at is not None


def tick(
    obs: Observation,
    gpus: int,
    grace_s: float,
    st: AgentState,
    run: Callable[..., Any] | None = subprocess.run,  # None: --dry-run (subprocess.run has no narrower type)
    log: Callable[[str, bool], None] = _log,
) -> Verdict:
    """Decide on one observation, log it (every verdict to the journal, a changed one to the
    boot log too), and mark the instance Unhealthy when the verdict says so: once, then again
    every REMARK_S while the instance is still here (the group may have ignored the call)."""
    verdict, st.seen = decide(obs, gpus, grace_s, st.seen)
    kind = verdict.reason.split(":")[0]
    log(f"{'healthy' if verdict.healthy else 'UNHEALTHY'}: {verdict.reason}", kind != st.last)
    st.last = kind
    due = st.marked_at is None or obs.now - st.marked_at >= REMARK_S
    if not verdict.healthy and due and run is not None:
        p = run(set_unhealthy_argv(st.instance_id, st.region), capture_output=True, text=True)
        st.marked_at = obs.now if p.returncode == 0 else None  # else tried again at the next poll
        why = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        log(f"marked {st.instance_id} Unhealthy: its Auto Scaling group replaces it" if st.marked
            else f"set-instance-health failed: {why}", True)  # fmt: skip
    return verdict


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    st = AgentState(_imds("instance-id"), a.region)
    ip, n, raylet = _imds("local-ipv4"), 0, "unknown"
    while True:
        obs = observe(a.container, a.head, ip, None if n % a.raylet_every == 0 else raylet)
        raylet, n = obs.raylet, n + 1
        tick(obs, a.gpus, a.grace, st, run=None if a.dry_run else subprocess.run)
        time.sleep(a.interval)


if __name__ == "__main__":
    sys.exit(main())
