"""ClusterStatus: the one status model `llmfleet status` (a deployed stack) and `llmfleet local
status` fill and render. The cluster side (Ray's nodes, Serve's apps and replicas) comes from
ray_cluster.cluster_status in both cases; the host side from the local hosts' processes or from
EC2 Auto Scaling; the live figures from Prometheus (the local one, or the stack's AMP workspace).

Pure: pydantic models and the functions that combine their parts; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field

from infra.local.live import Live
from infra.validation import first_error


class StatusError(ValueError):
    """One line: what could not be read and why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HostSlot(_Model):
    """The head or one worker slot: a local host, or an Auto Scaling group of one."""

    name: str  # local: the host's name; AWS: "head" or "worker-<slot>"
    # trainer: a local host that runs fine-tune jobs and serves nothing (`local up --train-hosts`)
    role: Literal["head", "worker", "trainer"]
    ip: str | None = None
    status: Literal["alive", "lost", "asleep"]  # asleep: scaled to zero on purpose (schedule, idle, sleep)
    reason: str = ""
    # AWS: the slot's group and its instance as EC2 Auto Scaling sees it
    group: str | None = None
    instance_id: str | None = None
    lifecycle_state: str | None = None  # InService, Pending, Terminating, ...
    health: str | None = None  # Healthy | Unhealthy
    # local: the engine ranks the host runs
    ranks: int | None = None


class RayNode(_Model):
    node_id: str
    ip: str
    alive: bool
    is_head: bool
    state_message: str = ""
    gpus: float = 0.0
    gpu_model: dict[str, float] = Field(default_factory=dict)
    cpu_slots: float = 0.0
    weights: str | None = None  # the staged checkpoint's fingerprint (node label), if any


class Replica(_Model):
    replica_id: str
    state: str
    node_id: str = ""
    node_ip: str = ""


class Deployment(_Model):
    name: str
    status: str
    message: str = ""
    target_replicas: int | None = None
    replicas: list[Replica] = Field(default_factory=list)

    @property
    def running(self) -> int:
        return sum(1 for r in self.replicas if r.state == "RUNNING")


class ServeApp(_Model):
    name: str
    status: str
    message: str = ""
    deployments: list[Deployment] = Field(default_factory=list)


class ClusterSide(_Model):
    """What ray_cluster.cluster_status.gather reports (validated here: it crossed SSM)."""

    nodes: list[RayNode] = Field(default_factory=list)
    nodes_error: str = ""
    applications: list[ServeApp] = Field(default_factory=list)
    serve_error: str = ""


class RoleRollout(_Model):
    role: str
    parameter: str
    newest: int  # the version `pulumi up` wrote last
    good: int | None  # the version labelled llmfleet-good (what the hosts run and passed with)


class Rollout(_Model):
    """The last rollout's result as the node-script parameters record it (infra/rollout/ssm.py)."""

    outcome: Literal["done", "rolled-back", "pending", "in-progress", "unknown"]
    detail: str
    roles: list[RoleRollout] = Field(default_factory=list)


class Cost(_Model):
    stack: str
    instance_type: str
    usd_per_hour: float | None
    measured_tokens_per_s: float | None
    usd_per_million_output_tokens_measured: float | None
    planner_tokens_per_s: float | None
    usd_per_million_output_tokens_planner: float | None


class Metrics(Live):
    """Live figures from Prometheus' query API (infra.local.live's PromQL and its model), priced."""

    cost: Cost | None = None
    cost_error: str = ""


class ClusterStatus(_Model):
    target: Literal["local", "aws"]
    name: str  # the local cluster's name, or the stack's
    endpoint: str
    model: str
    hosts: list[HostSlot]
    nodes: list[RayNode] = Field(default_factory=list)
    nodes_error: str = ""
    applications: list[ServeApp] = Field(default_factory=list)
    serve_error: str = ""
    # A real completion through the endpoint (local); None when not probed.
    serving: bool | None = None
    serving_detail: str = ""
    deployed_serve_config: str | None = None  # what the head deployed and saw answer
    serve_config: str | None = None  # what is on the head's disk
    rollout: Rollout | None = None
    metrics: Metrics
    details: dict[str, Any] = Field(default_factory=dict)  # target-specific: mode, layout, region
    # serving / waking / asleep: the workers' power state (power_state); None = not known
    power: Literal["serving", "waking", "asleep"] | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def lost(self) -> list[str]:
        return [h.name for h in self.hosts if h.status == "lost"]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def serve(self) -> dict[str, str]:
        return {a.name: a.status for a in self.applications}

    @computed_field  # type: ignore[prop-decorator]
    @property
    def gpus_total(self) -> float:
        return sum(n.gpus for n in self.nodes if n.alive)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def cluster_side(doc: Mapping[str, Any], where: str) -> ClusterSide:
    """ray_cluster.cluster_status.gather's document -> ClusterSide; StatusError in one line."""
    try:
        return ClusterSide.model_validate(doc)
    except ValidationError as e:
        err = first_error(e)
        raise StatusError(f"{where}: cluster report {err.path or '(document)'}: {err.msg}") from None


def classify(slot: HostSlot, nodes: list[RayNode], nodes_error: str) -> HostSlot:
    """A slot that is up on its own side (a raylet process, an InService instance) is alive only
    when Ray's node table has an alive node at its IP."""
    if slot.status == "lost":
        return slot
    if nodes_error:
        why = "Ray's node table unreachable" if slot.role == "head" else "head unreachable, state unknown"
        return slot.model_copy(update={"status": "lost", "reason": why})
    at_ip = [n for n in nodes if n.ip == slot.ip]
    if any(n.alive for n in at_ip):
        return slot
    why = "Ray marks its node dead" if at_ip else "no Ray node with this IP"
    return slot.model_copy(update={"status": "lost", "reason": why})


def replicas_by_node(apps: list[ServeApp]) -> dict[str, list[str]]:
    """{node IP: ["<app>/<deployment>", ...]} of the RUNNING replicas (for the nodes table)."""
    out: dict[str, list[str]] = {}
    for a in apps:
        for d in a.deployments:
            for r in d.replicas:
                if r.state == "RUNNING" and r.node_ip:
                    out.setdefault(r.node_ip, []).append(f"{a.name}/{d.name}")
    return out


def power_state(
    workers: list[HostSlot], serving: bool | None, apps: dict[str, str]
) -> Literal["serving", "waking", "asleep"]:
    """asleep: every worker slot is scaled to zero on purpose; serving: every worker is alive and
    a completion answered (or, unprobed, every Serve app is RUNNING); waking: anything between."""
    if workers and all(w.status == "asleep" for w in workers):
        return "asleep"
    alive = all(w.status == "alive" for w in workers)
    answered = serving if serving is not None else bool(apps) and all(v == "RUNNING" for v in apps.values())
    return "serving" if alive and answered else "waking"
