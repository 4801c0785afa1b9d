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
NODE_IP_PLACEHOLDER = "__LLMFLEET_NODE_IP__"
BOOT_LOG = "/var/log/llmfleet-boot.log"


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


def docker_logging(m: HostMetrics, region: str, role: str) -> str:
    """Docker's default log driver -> awslogs (merged into the AMI's daemon.json), then restart."""
    opts = {
        "awslogs-region": region,
        "awslogs-group": m.container_log_group,
        # one stream per host and container: {{.Name}} is Docker's own template; the host's
        # IP goes in at boot as data (sys.argv[2]), never through the shell's quoting
        "tag": f"{role}-{NODE_IP_PLACEHOLDER}/{{{{.Name}}}}",
        "mode": "non-blocking",  # a slow CloudWatch never stalls the engine's stdout
    }
    merge = (
        "import json,os,sys; p='/etc/docker/daemon.json'; "
        "d=json.load(open(p)) if os.path.exists(p) else {}; "
        "d['log-driver']='awslogs'; d['log-opts']=json.loads(sys.argv[1].replace(sys.argv[3], sys.argv[2])); "
        "json.dump(d, open(p,'w'), indent=2)"
    )
    return f"""
# Logs: every container's output to CloudWatch (the containers log group) through the logs VPC endpoint.
python3 -c {shlex.quote(merge)} {shlex.quote(json.dumps(opts))} "${{NODE_IP}}" {NODE_IP_PLACEHOLDER}
systemctl restart docker
log "docker logs -> CloudWatch" {shlex.quote(m.container_log_group)}
"""


def boot_log_shipper(m: HostMetrics, region: str, role: str, image_ref: str) -> str:
    """A container that follows the boot log into the boot log group (from the node image)."""
    argv: list[str | tuple[str, str]] = [
        "docker", "run", "--detach", "--name", "llmfleet-bootlog", "--restart", "unless-stopped",
        "--log-driver", "awslogs", "--log-opt", f"awslogs-region={region}",
        "--log-opt", f"awslogs-group={m.boot_log_group}", "--log-opt", (f"awslogs-stream={role}-", "NODE_IP"),
        "--volume", f"{BOOT_LOG}:{BOOT_LOG}:ro", "--entrypoint", "tail", image_ref, "-n", "+1", "-F", BOOT_LOG,
    ]  # fmt: skip
    # (text, VAR): the quoted text followed by the shell's "${VAR}", expanded at boot.
    cmd = " ".join(
        shlex.quote(a) if isinstance(a, str) else shlex.quote(a[0]) + f'"${{{a[1]}}}"' for a in argv
    )
    return f"""
# Boot log -> CloudWatch (the boot log group, stream ROLE-<ip>), from the first line on.
docker rm -f llmfleet-bootlog >/dev/null 2>&1 || true
{cmd}
"""


def dcgm_exporter(m: HostMetrics) -> str:
    img = shlex.quote(m.dcgm_image)
    return f"""
# GPU metrics: NVIDIA DCGM exporter on :{DCGM_PORT} (only the cluster's own SG reaches it).
docker pull {img}
docker rm -f llmfleet-dcgm >/dev/null 2>&1 || true
docker run --detach --name llmfleet-dcgm --restart unless-stopped --gpus all --cap-add SYS_ADMIN \\
  --network host {img} -a :{DCGM_PORT}
log "dcgm exporter on :{DCGM_PORT}"
"""


def head_prometheus(m: HostMetrics, region: str, head_container: str) -> str:
    cfg = yaml.safe_dump(prometheus_config(m, region), sort_keys=False)
    # A quoted heredoc ends only at a line that is exactly its marker: no value expands in it.
    if "LLMFLEET_PROM_EOF" in cfg.splitlines():
        raise ValueError("prometheus config must not contain a line LLMFLEET_PROM_EOF (the heredoc marker)")
    img = shlex.quote(m.prometheus_image)
    copy = (
        f"while sleep 15; do docker exec {shlex.quote(head_container)} cat {RAY_SD_FILE} > {SD_DIR}/ray.json.tmp "
        f"2>/dev/null && mv {SD_DIR}/ray.json.tmp {SD_DIR}/ray.json; done"
    )
    return f"""
# Metrics: Prometheus agent on {PROMETHEUS_LISTEN} -> AMP (SigV4, aps-workspaces VPC endpoint).
install -d -m 0755 {PROM_DIR} {SD_DIR}
cat > {PROM_DIR}/prometheus.yml <<'LLMFLEET_PROM_EOF'
{cfg.rstrip()}
LLMFLEET_PROM_EOF
sed -i "s/{HEAD_IP_PLACEHOLDER}/${{NODE_IP}}/" {PROM_DIR}/prometheus.yml
echo '[]' > {SD_DIR}/ray.json
# Ray rewrites its discovery file inside the head container as nodes join and leave.
systemd-run --unit=llmfleet-metrics-sd --property=Restart=always bash -c {shlex.quote(copy)}
docker pull {img}
docker rm -f llmfleet-prometheus >/dev/null 2>&1 || true
docker run --detach --name llmfleet-prometheus --restart unless-stopped --network host \\
  --volume {PROM_DIR}:{PROM_DIR}:ro --volume {SD_DIR}:{SD_DIR}:ro {img} \\
  --config.file={PROM_DIR}/prometheus.yml --enable-feature=agent \\
  --storage.agent.path=/prometheus --web.listen-address={PROMETHEUS_LISTEN}
log "prometheus agent ->" {shlex.quote(m.remote_write_url)}
"""


def agents(m: HostMetrics, region: str, role: str, image_ref: str, container: str) -> str:
    """What starts after the node container: the boot log shipper, then DCGM or Prometheus."""
    out = boot_log_shipper(m, region, role, image_ref)
    return out + (dcgm_exporter(m) if role == "worker" else head_prometheus(m, region, container))
