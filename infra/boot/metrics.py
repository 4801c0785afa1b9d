"""The host side of observability in the EC2 user data (infra/components/observability.py has
the AWS side and the why). Pure renderers of bash snippets; cloud_init.py places them.

- every host: Docker's default log driver becomes `awslogs` (every container's stdout/stderr
  into the containers log group, one stream per host and container; `docker logs` still works
  through Docker's dual logging), and the boot log is shipped into the boot log group by a
  small container tailing it (from the node image, which every host already pulled);
- GPU workers: NVIDIA's DCGM exporter on :9400 (the cluster SG admits only its own members);
- the head: Prometheus in agent mode on 127.0.0.1 (no listener for anyone else), scraping
  every Ray node's metrics agent through Ray's own service-discovery file (copied out of the
  head container every 15 s) and each worker's DCGM exporter (the same discovery, port 9400),
  and remote-writing to AMP with SigV4 over the aps-workspaces VPC endpoint.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass

import yaml

DCGM_PORT = 9400
PROMETHEUS_LISTEN = "127.0.0.1:9090"
PROM_DIR = "/etc/llmfleet/prometheus"
SD_DIR = "/var/lib/llmfleet/prometheus-sd"
RAY_SD_FILE = "/tmp/ray/prom_metrics_service_discovery.json"  # inside the head container
SCRAPE_INTERVAL = "15s"
HEAD_IP_PLACEHOLDER = "__LLMFLEET_HEAD_IP__"
BOOT_LOG = "/var/log/llmfleet-boot.log"
# Where a rollout finds what last started each container (the node script's own directory).
STATE_DIR = "/etc/llmfleet"


@dataclass(frozen=True)
class HostMetrics:
    """What a host needs to ship its metrics and logs (from the Observability component)."""

    boot_log_group: str
    container_log_group: str
    remote_write_url: str = ""  # head: the AMP workspace's remote-write URL
    prometheus_image: str = ""  # head: repo@sha256 in the stack's ECR
    dcgm_image: str = ""  # workers: repo@sha256 in the stack's ECR
    cluster: str = ""


def prometheus_config(m: HostMetrics, region: str) -> dict:
    """prometheus.yml of the head's agent. The head's own IP is filled in at boot (placeholder)."""

    def sd() -> list[dict]:  # a fresh list per job: no YAML anchors in the rendered file
        return [{"files": [f"{SD_DIR}/ray.json"], "refresh_interval": SCRAPE_INTERVAL}]

    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "external_labels": {"llmfleet_cluster": m.cluster}},
        "scrape_configs": [
            {"job_name": "ray", "file_sd_configs": sd()},
            {
                # Ray lists one metrics agent per worker node: the same host's DCGM exporter is
                # on DCGM_PORT. The head has no GPU and no exporter.
                "job_name": "dcgm",
                "file_sd_configs": sd(),
                "relabel_configs": [
                    {
                        "source_labels": ["__address__"],
                        "regex": f"{HEAD_IP_PLACEHOLDER}:.*",
                        "action": "drop",
                    },
                    {
                        "source_labels": ["__address__"],
                        "regex": "([^:]+):.*",
                        "target_label": "__address__",
                        "replacement": f"${{1}}:{DCGM_PORT}",
                    },
                ],
            },
        ],
        "remote_write": [{"url": m.remote_write_url, "sigv4": {"region": region}}],
    }


# What dockerd applies on a reload (SIGHUP, `systemctl reload docker`) without a restart: Docker's
# "configuration reload behavior" (https://docs.docker.com/reference/cli/dockerd/#configuration-reload-behavior)
# lists debug, labels, live-restore, max-concurrent-downloads/uploads, max-download-attempts,
# default-runtime, runtimes, authorization-plugins, insecure-registries, registry-mirrors,
# shutdown-timeout and features. `log-driver` / `log-opts` are not among them: a change there
# needs a restart, which live-restore makes harmless to running containers (they keep their old
# log settings until they are next created).
RELOADABLE_DAEMON_KEYS = (
    "debug", "labels", "live-restore", "max-concurrent-downloads", "max-concurrent-uploads",
    "max-download-attempts", "default-runtime", "runtimes", "authorization-plugins",
    "insecure-registries", "registry-mirrors", "shutdown-timeout", "features",
)  # fmt: skip
DAEMON_JSON = "/etc/docker/daemon.json"

# Prints what dockerd needs: unchanged (the file is not even rewritten), reload or restart.
_DAEMON_MERGE_PY = """import json, os, sys
p, want, reloadable = sys.argv[1], json.loads(sys.argv[2]), set(json.loads(sys.argv[3]))
old = json.load(open(p)) if os.path.exists(p) else {}
new = {**old, **want}
if new == old:
    print("unchanged")
    sys.exit(0)
changed = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
with open(p + ".new", "w") as f:
    json.dump(new, f, indent=2)
os.replace(p + ".new", p)
print("reload" if changed <= reloadable else "restart")
"""


def daemon_settings(m: HostMetrics | None, region: str, role: str) -> dict:
    """The keys llmfleet owns in the AMI's daemon.json (merged over it)."""
    # Containers keep running while dockerd restarts (an upgrade, a config change): a rollout
    # that must restart dockerd does not take the Ray head and the engine with it.
    out: dict = {"live-restore": True}
    if m is None:
        return out
    return {
        **out,
        "log-driver": "awslogs",
        "log-opts": {
            "awslogs-region": region,
            "awslogs-group": m.container_log_group,
            # one stream per host and container: {{.Name}} is Docker's own template
            "tag": f"{role}-NODEIP/{{{{.Name}}}}",
            "mode": "non-blocking",  # a slow CloudWatch never stalls the engine's stdout
        },
    }


def docker_daemon(m: HostMetrics | None, region: str, role: str) -> str:
    """daemon.json: live-restore + every container's logs to CloudWatch. dockerd is left alone
    when the file already says this (every rollout after the first boot); reloaded when only
    reloadable keys change; restarted otherwise, after a reload has switched live-restore on so
    the restart keeps the running containers."""
    want = json.dumps(daemon_settings(m, region, role), sort_keys=True)
    logs = (
        ", and every container's output to CloudWatch (the containers log group) over the logs endpoint"
        if m
        else ""
    )
    # NODEIP sits in a single-quoted word: it becomes the host's IP (the same on every rollout).
    # Comments and log lines name no stack value: a newline in one would end the comment.
    want_arg = shlex.quote(want).replace("NODEIP", "'\"${NODE_IP}\"'")
    return f"""
# Docker: live-restore{logs}.
# dockerd is restarted only when daemon.json changes in a way a reload cannot apply; a rollout
# that finds it unchanged leaves dockerd alone.
# SIGHUP through the unit's ExecReload (Docker's own docker.service has one), else directly.
reload_dockerd() {{ systemctl reload docker 2>/dev/null || kill -s HUP "$(pidof dockerd)"; }}
DOCKER_ACTION=$(python3 -c {shlex.quote(_DAEMON_MERGE_PY)} {DAEMON_JSON} \\
  {want_arg} {shlex.quote(json.dumps(list(RELOADABLE_DAEMON_KEYS)))}) || die "cannot update {DAEMON_JSON}"
case "${{DOCKER_ACTION}}" in
  unchanged) log "docker daemon config unchanged: dockerd left running" ;;
  reload) reload_dockerd; log "docker daemon config reloaded (live-restore)" ;;
  restart)
    # The reload first: live-restore must be on in the running daemon before it stops (a
    # SIGHUP is applied asynchronously, so wait until the daemon reports it).
    reload_dockerd
    for _ in $(seq 30); do
      [[ "$(docker info --format '{{{{.LiveRestoreEnabled}}}}' 2>/dev/null)" == true ]] && break
      sleep 1
    done
    systemctl restart docker
    log "dockerd restarted (live-restore kept the containers running)" ;;
  *) die "unexpected docker config action ${{DOCKER_ACTION}}" ;;
esac
docker info >/dev/null 2>&1 || die "docker is not running after its config update"
"""


def keep_or_replace(name: str, identity: str, replace: str) -> str:
    """Run `replace` (pull, remove, run) unless a rollout finds container `name` running with
    the same identity (its run line, plus any config it reads) that last started it. A boot
    always replaces it."""
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    marker = f"{STATE_DIR}/{name}.run"
    return f"""if [[ "${{LLMFLEET_APPLY_MODE:-boot}}" == rollout ]] \\
    && [[ "$(cat {marker} 2>/dev/null)" == {digest} ]] \\
    && [[ "$(docker inspect -f '{{{{.State.Running}}}}' {name} 2>/dev/null)" == true ]]; then
  log "container {name} unchanged: left running"
else
{replace.strip()}
install -d -m 0755 {STATE_DIR}
echo {digest} > {marker}
fi
"""


def boot_log_shipper(m: HostMetrics, region: str, role: str, image_ref: str) -> str:
    """A container that follows the boot log into the boot log group (from the node image).
    Left running by a rollout that does not change it: `tail -F` already follows the lines a
    rollout appends, and a new one would ship the whole log again from its first line."""
    argv = [
        "docker", "run", "--detach", "--name", "llmfleet-bootlog", "--restart", "unless-stopped",
        "--log-driver", "awslogs", "--log-opt", f"awslogs-region={region}",
        "--log-opt", f"awslogs-group={m.boot_log_group}", "--log-opt", f"awslogs-stream={role}-NODEIP",
        "--volume", f"{BOOT_LOG}:{BOOT_LOG}:ro", "--no-healthcheck",
        "--entrypoint", "tail", image_ref, "-n", "+1", "-F", BOOT_LOG,
    ]  # fmt: skip
    # --no-healthcheck: the node image's HEALTHCHECK asks for a Ray node this container never runs.
    # NODEIP sits in a token shlex leaves unquoted: it becomes the shell's "${NODE_IP}".
    cmd = " ".join(shlex.quote(a) for a in argv).replace("NODEIP", '"${NODE_IP}"')
    replace = f"docker rm -f llmfleet-bootlog >/dev/null 2>&1 || true\n{cmd}"
    return f"""
# Boot log -> CloudWatch (the boot log group, stream ROLE-<ip>), from the first line on.
{keep_or_replace("llmfleet-bootlog", cmd, replace)}"""


def dcgm_exporter(m: HostMetrics) -> str:
    img = shlex.quote(m.dcgm_image)
    run = (
        "docker run --detach --name llmfleet-dcgm --restart unless-stopped --gpus all --cap-add SYS_ADMIN "
        f"--network host {img} -a :{DCGM_PORT}"
    )
    replace = f"""docker pull {img}
docker rm -f llmfleet-dcgm >/dev/null 2>&1 || true
{run}
log "dcgm exporter on :{DCGM_PORT}"
"""
    return f"""
# GPU metrics: NVIDIA DCGM exporter on :{DCGM_PORT} (only the cluster's own SG reaches it).
{keep_or_replace("llmfleet-dcgm", run, replace)}"""


def head_prometheus(m: HostMetrics, region: str, head_container: str) -> str:
    cfg = yaml.safe_dump(prometheus_config(m, region), sort_keys=False)
    if "LLMFLEET_PROM_EOF" in cfg:
        raise ValueError("prometheus config must not contain the heredoc marker")
    img = shlex.quote(m.prometheus_image)
    copy = (
        f"while sleep 15; do docker exec {shlex.quote(head_container)} cat {RAY_SD_FILE} > {SD_DIR}/ray.json.tmp "
        f"2>/dev/null && mv {SD_DIR}/ray.json.tmp {SD_DIR}/ray.json; done"
    )
    sd_unit = f"systemd-run --unit=llmfleet-metrics-sd --property=Restart=always bash -c {shlex.quote(copy)}"
    sd_digest = hashlib.sha256(sd_unit.encode()).hexdigest()[:16]
    run = (
        "docker run --detach --name llmfleet-prometheus --restart unless-stopped --network host "
        f"--volume {PROM_DIR}:{PROM_DIR}:ro --volume {SD_DIR}:{SD_DIR}:ro {img} "
        f"--config.file={PROM_DIR}/prometheus.yml --enable-feature=agent "
        f"--storage.agent.path=/prometheus --web.listen-address={PROMETHEUS_LISTEN}"
    )
    replace = f"""docker pull {img}
docker rm -f llmfleet-prometheus >/dev/null 2>&1 || true
{run}
log "prometheus agent ->" {shlex.quote(m.remote_write_url)}
"""
    # The container's identity includes its config: a new remote-write URL restarts it.
    identity = run + "\n" + cfg
    return f"""
# Metrics: Prometheus agent on {PROMETHEUS_LISTEN} -> AMP (SigV4, aps-workspaces VPC endpoint).
install -d -m 0755 {PROM_DIR} {SD_DIR} {STATE_DIR}
cat > {PROM_DIR}/prometheus.yml <<'LLMFLEET_PROM_EOF'
{cfg.rstrip()}
LLMFLEET_PROM_EOF
sed -i "s/{HEAD_IP_PLACEHOLDER}/${{NODE_IP}}/" {PROM_DIR}/prometheus.yml
[[ -f {SD_DIR}/ray.json ]] || echo '[]' > {SD_DIR}/ray.json
# Ray rewrites its discovery file inside the head container as nodes join and leave. A second
# systemd-run of a unit that exists fails: a rollout leaves the same running copier alone.
if systemctl is-active --quiet llmfleet-metrics-sd \\
    && [[ "$(cat {STATE_DIR}/metrics-sd.sha 2>/dev/null)" == {sd_digest} ]]; then
  log "metrics discovery copier unchanged: left running"
else
  systemctl stop llmfleet-metrics-sd >/dev/null 2>&1 || true
  systemctl reset-failed llmfleet-metrics-sd >/dev/null 2>&1 || true
  {sd_unit}
  echo {sd_digest} > {STATE_DIR}/metrics-sd.sha
fi
{keep_or_replace("llmfleet-prometheus", identity, replace)}"""


def agents(m: HostMetrics, region: str, role: str, image_ref: str, container: str) -> str:
    """What starts after the node container: the boot log shipper, then DCGM or Prometheus."""
    out = boot_log_shipper(m, region, role, image_ref)
    return out + (dcgm_exporter(m) if role == "worker" else head_prometheus(m, region, container))
