"""The cluster side of `llmfleet status` and `llmfleet local status`: Ray's nodes (state API) and
the Serve applications with their replicas (Serve's REST API), read from the head's dashboard.

One function, two callers: on a deployed stack the head runs it (`python -m ray_cluster.node
status --json` inside the head container, brought back over SSM Run Command); for the local
cluster the operator's process runs it against the local head's dashboard. Both hand the same
document to infra/status/, which renders it. Failures are reported in the document (one line per
source), never raised: a status must still show what it could read.

Stdlib + ray (lazily); the image carries this file, so it never imports infra.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict, cast

from ray_cluster import contract
from ray_cluster.driver import NodeError
from ray_cluster.json_read import Json
from ray_cluster.json_read import items as _items
from ray_cluster.json_read import num as _num
from ray_cluster.json_read import obj as _obj
from ray_cluster.json_read import text as _text
from ray_cluster.serve_rest import serve_document

# A JSON object from Ray (its state API's records, Serve's REST document): values untyped until
# read through ray_cluster.json_read, which turns a missing or mistyped value into the default.


class NodeRow(TypedDict):
    node_id: str
    ip: str
    alive: bool
    is_head: bool
    state_message: str
    gpus: float
    gpu_model: dict[str, float]
    cpu_slots: float
    weights: str | None


class ReplicaRow(TypedDict):
    replica_id: str
    state: str
    node_id: str
    node_ip: str


class DeploymentRow(TypedDict):
    name: str
    status: str
    message: str
    target_replicas: int | None
    replicas: list[ReplicaRow]


class AppRow(TypedDict):
    name: str
    status: str
    message: str
    deployments: list[DeploymentRow]


class ClusterStatus(TypedDict):
    nodes: list[NodeRow]
    nodes_error: str
    applications: list[AppRow]
    serve_error: str


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def node_rows(nodes: Iterable[Json]) -> list[NodeRow]:
    """Ray's state API node records (ray.util.state.common.NodeState fields) -> the rows the
    status shows: identity, liveness, engine resources and the weights fingerprint label."""
    rows: list[NodeRow] = []
    for n in nodes:
        res, labels = _obj(n.get("resources_total")), _obj(n.get("labels"))
        rows.append(
            {
                "node_id": _text(n.get("node_id")),
                "ip": _text(n.get("node_ip")),
                "alive": n.get("state") == "ALIVE",
                "is_head": bool(n.get("is_head_node")) or contract.HEAD_RESOURCE in res,
                "state_message": _text(n.get("state_message")),
                "gpus": _num(res.get("GPU")),
                "gpu_model": {
                    k[len(contract.GPU_MODEL_PREFIX) :]: _num(v)
                    for k, v in res.items()
                    if k.startswith(contract.GPU_MODEL_PREFIX)
                },
                "cpu_slots": _num(res.get(contract.CPU_WORKER_RESOURCE)),
                "weights": _text(labels.get(contract.WEIGHTS_LABEL)) or None,
            }
        )
    return sorted(rows, key=lambda r: (not r["is_head"], r["ip"], r["node_id"]))


def _replicas(dep: Json) -> list[ReplicaRow]:
    found = dep.get("replicas")
    return [
        {
            "replica_id": _text(r.get("replica_id")),
            "state": _text(r.get("state")),
            "node_id": _text(r.get("node_id")),
            "node_ip": _text(r.get("node_ip")),
        }
        for r in map(_obj, cast(list[object], found) if isinstance(found, list) else [])
    ]


def serve_rows(doc: Json) -> list[AppRow]:
    """Serve's `GET /api/serve/applications/` (ray.serve.schema.ServeInstanceDetails) -> each
    application, its deployments and every replica with the node it runs on."""
    apps: list[AppRow] = []
    for name, app in _items(doc.get("applications")):
        deps: list[DeploymentRow] = []
        for dname, dep in _items(app.get("deployments")):
            target = dep.get("target_num_replicas")
            deps.append(
                {
                    "name": dname,
                    "status": _text(dep.get("status")),
                    "message": _text(dep.get("message")),
                    "target_replicas": target if isinstance(target, int) else None,
                    "replicas": _replicas(dep),
                }
            )
        apps.append(
            {
                "name": name,
                "status": _text(app.get("status")),
                "message": _text(app.get("message")),
                "deployments": deps,
            }
        )
    return apps


def _list_nodes(dashboard: str, timeout: float) -> list[Json]:
    from ray.util.state import list_nodes

    # The state API client adds the cluster's auth token itself when token auth is on.
    found = list_nodes(address=dashboard, timeout=int(max(1, timeout)), raise_on_missing_output=False)
    # Ray's NodeState records (typed as a bare pydantic dataclass), or plain dicts
    return [dict(n) if isinstance(n, Mapping) else dataclasses.asdict(cast(Any, n)) for n in found]


def gather(dashboard: str, timeout: float = 10.0) -> ClusterStatus:
    """{"nodes", "nodes_error", "applications", "serve_error"} from the dashboard at `dashboard`."""
    out: ClusterStatus = {"nodes": [], "nodes_error": "", "applications": [], "serve_error": ""}
    try:
        out["nodes"] = node_rows(_list_nodes(dashboard, timeout))
    except Exception as e:  # an unreachable dashboard/GCS: say so, keep what else answers
        out["nodes_error"] = f"Ray state API at {dashboard}: {_one_line(e)}"
    try:
        out["applications"] = serve_rows(serve_document(dashboard, timeout))
    except NodeError as e:
        out["serve_error"] = str(e)
    return out
