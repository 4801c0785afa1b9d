"""`llmfleet local status`: the local cluster as a ClusterStatus. The hosts' side from their own
processes (a raylet per host), the cluster side from ray_cluster.cluster_status.gather against
the local head's dashboard (the code the deployed head runs), a real completion, and the live
figures from the cluster's Prometheus."""

from __future__ import annotations

from pathlib import Path

from infra.local.layout import LocalError
from infra.local.processes import raylet_running
from infra.local.state import DEFAULT_NAME, LocalState, load_state, read_token, state_dir
from infra.status.metrics import no_metrics, read_metrics
from infra.status.model import ClusterStatus, HostSlot, Metrics, classify, cluster_side, power_state
from ray_cluster.cluster_status import gather
from ray_cluster.node import NodeError
from ray_cluster.readiness import probe_completion


def local_metrics(st: LocalState, price_stack: str | None = "prod") -> Metrics:
    """The live figures from the cluster's own Prometheus, or why there are none (one line)."""
    prom = st.prometheus
    if prom is None or not prom.url:
        why = (prom and prom.missing) or "started by an older llmfleet; `local down` and `up` again"
        return no_metrics(f"this cluster runs no Prometheus: {why}")
    return read_metrics(prom.url, st.model, price_stack=price_stack)


def local_status(
    name: str = DEFAULT_NAME, sd: Path | None = None, probe: bool = True, price_stack: str | None = "prod"
) -> ClusterStatus:

    sd = sd or state_dir()
    st = load_state(name, sd)
    if st is None:
        raise LocalError(f"no local cluster {name!r} in {sd}; start one with `llmfleet local up`")
    running = {h.name: raylet_running(h) for h in st.hostset.hosts}
    head_ip = st.hosts[0].ip
    side = cluster_side(gather(f"http://{head_ip}:{st.ports.dashboard}", timeout=5), "local head")
    hosts = []
    for h in st.hosts:
        slot = HostSlot(name=h.name, role=h.role, ip=h.ip, ranks=h.ranks, status="alive")
        if h.role == "worker" and st.asleep and not running.get(h.name, False):
            slot = slot.model_copy(
                update={"status": "asleep", "reason": "`llmfleet local sleep`; `local wake` starts it"}
            )
        elif not running.get(h.name, False):
            # The GCS notices a killed raylet only after its health checks (tens of seconds):
            # a host whose raylet process is gone is lost at once, as a host-level check says.
            slot = slot.model_copy(update={"status": "lost", "reason": "no raylet process on the host"})
        hosts.append(slot if slot.status == "asleep" else classify(slot, side.nodes, side.nodes_error))
    serving, detail = None, "not probed"
    if probe:
        try:
            probe_completion(st.base_url, read_token(st), st.model, timeout=10)
            serving, detail = True, ""
        except (NodeError, OSError) as e:
            serving, detail = False, (str(e).splitlines()[0] if str(e) else type(e).__name__)
    metrics = local_metrics(st, price_stack)
    return ClusterStatus(
        target="local",
        name=st.name,
        endpoint=st.endpoint,
        model=st.model,
        hosts=hosts,
        **side.model_dump(),
        serving=serving,
        serving_detail=detail,
        metrics=metrics,
        details={"mode": st.mode, "layout": st.layout.model_dump(), "engine": st.engine},
        power=power_state(
            [h for h in hosts if h.role == "worker"], serving, {a.name: a.status for a in side.applications}
        ),
    )
