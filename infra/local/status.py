"""The local hosts alive/lost (Ray's node table + the hosts' own processes), whether the cluster
is healthy (what `local up` waits for) and the engines' counters read from each node's metrics
agent. `llmfleet local status` itself is infra/status/local.py (the model the deployed status
shares)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from infra.local.processes import raylet_running
from infra.local.state import HostEntry, LocalState, read_token
from ray_cluster.node import NodeError
from ray_cluster.readiness import probe_completion


@dataclass
class HostStatus:
    name: str
    ip: str
    role: str
    ranks: int
    status: str  # "alive" | "lost"
    reason: str = ""


def classify_hosts(
    hosts_: list[HostEntry], nodes: list[dict[str, Any]] | None, raylet_running: dict[str, bool]
) -> list[HostStatus]:
    """alive/lost per host from Ray's node table and the host's own processes.

    nodes: [{"ip", "alive"}] from the GCS, or None when the head cannot be asked. The GCS notices
    a killed raylet only after its health checks (tens of seconds), so a host whose raylet
    process is gone counts as lost at once, as a host-level check would say.
    """
    out = []
    for h in hosts_:
        if not raylet_running.get(h.name, False):
            status, why = "lost", "no raylet process on the host"
        elif nodes is None:
            status = "lost"
            why = "GCS unreachable" if h.role == "head" else "head unreachable, state unknown"
        elif any(n["ip"] == h.ip and n["alive"] for n in nodes):
            status, why = "alive", ""
        elif any(n["ip"] == h.ip for n in nodes):
            status, why = "lost", "Ray marks its node dead"
        else:
            status, why = "lost", "no Ray node with this IP"
        out.append(HostStatus(h.name, h.ip, h.role, h.ranks, status, why))
    return out


def _ray_nodes(st: LocalState) -> list[dict[str, Any]] | None:
    from ray.util.state import list_nodes

    head_ip, port = st.hosts[0].ip, st.ports.dashboard
    try:
        nodes = list_nodes(address=f"http://{head_ip}:{port}", timeout=5, raise_on_missing_output=False)
    except Exception:  # unreachable dashboard/GCS: the caller reports the head as lost
        return None
    rows = [cast("Any", n) for n in nodes]  # Ray's NodeState: its stub types it as a bare dataclass
    return [{"ip": n.node_ip, "alive": n.state == "ALIVE", "node_id": n.node_id} for n in rows]


def host_alive(st: LocalState, host_name: str) -> bool:
    """The host's raylet runs and Ray's node table has it ALIVE (the rollout's wait)."""
    entries = [h for h in st.hosts if h.name == host_name]
    host = next((h for h in st.hostset.hosts if h.name == host_name), None)
    if not entries or host is None:
        return False
    [hs] = classify_hosts(entries, _ray_nodes(st), {host_name: raylet_running(host)})
    return hs.status == "alive"


def metrics_targets(st: LocalState) -> list[str]:
    """host:port of every Ray node's metrics agent, from Ray's own Prometheus service-discovery
    file (Ray writes it in the head's temp dir; a real Prometheus reads the same file)."""
    path = Path(st.temp_dir) / "prom_metrics_service_discovery.json"
    try:
        groups = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [t for g in groups for t in g.get("targets", [])]


# vLLM's counters as Ray Serve LLM exports them through each node's metrics agent: vLLM's name
# with ':' made '_', Ray's `ray_` prefix, Prometheus' `_total` for a counter.
REQUESTS_FINISHED = "ray_vllm_request_success_total"  # vllm:request_success
PREFIX_CACHE_HITS = "ray_vllm_prefix_cache_hits_total"  # vllm:prefix_cache_hits (tokens)
PREFIX_CACHE_QUERIES = "ray_vllm_prefix_cache_queries_total"  # vllm:prefix_cache_queries (tokens)


def engine_counter_by_host(st: LocalState, name: str, timeout: float = 5.0) -> dict[str, float]:
    """{node IP: value} of one of vLLM's counters (`name` as exported, e.g. PREFIX_CACHE_HITS),
    read from every host's own metrics endpoint and summed over its label sets."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for target in metrics_targets(st):
        try:
            with urllib.request.urlopen(f"http://{target}/metrics", timeout=timeout) as r:
                text = r.read().decode()
        except OSError:
            continue  # a node that is gone has no figures
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name:
                    ip = s.labels.get("NodeAddress", target.split(":")[0])
                    out[ip] = out.get(ip, 0.0) + s.value
    return out


def engine_requests_by_host(st: LocalState, timeout: float = 5.0) -> dict[str, float]:
    """{node IP: finished requests} from vLLM's own counter (`vllm:request_success`)."""
    return engine_counter_by_host(st, REQUESTS_FINISHED, timeout)


def healthy(st: LocalState) -> tuple[bool, str]:
    """(ok, why not): every host alive and a real completion answered (what `local up` waits
    for; `llmfleet local status` reports the whole picture through infra/status/)."""

    running = {h.name: raylet_running(h) for h in st.hostset.hosts}
    lost = [r for r in classify_hosts(st.hosts, _ray_nodes(st), running) if r.status != "alive"]
    if lost:
        return False, "host " + ", ".join(f"{h.name} ({h.ip}) lost" for h in lost)
    try:
        probe_completion(st.base_url, read_token(st), st.model, timeout=10)
    except (NodeError, OSError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        return False, f"endpoint not serving: {detail}"
    return True, ""
