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
from typing import Any, cast

from ray_cluster import contract
from ray_cluster.driver import NodeError
from ray_cluster.serve_rest import serve_document


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def node_rows(nodes: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Ray's state API node records (ray.util.state.common.NodeState fields) -> the rows the
    status shows: identity, liveness, engine resources and the weights fingerprint label."""
    rows = []
    for n in nodes:
        res = n.get("resources_total") or {}
        labels = n.get("labels") or {}
        rows.append(
            {
                "node_id": n.get("node_id", ""),
                "ip": n.get("node_ip", ""),
                "alive": n.get("state") == "ALIVE",
                "is_head": bool(n.get("is_head_node")) or contract.HEAD_RESOURCE in res,
                "state_message": n.get("state_message") or "",
                "gpus": float(res.get("GPU", 0)),
                "gpu_model": {
                    k[len(contract.GPU_MODEL_PREFIX) :]: float(v)
                    for k, v in res.items()
                    if k.startswith(contract.GPU_MODEL_PREFIX)
                },
                "cpu_slots": float(res.get(contract.CPU_WORKER_RESOURCE, 0)),
                "weights": labels.get(contract.WEIGHTS_LABEL) or None,
            }
        )
    return sorted(rows, key=lambda r: (not r["is_head"], r["ip"], r["node_id"]))


def serve_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Serve's `GET /api/serve/applications/` (ray.serve.schema.ServeInstanceDetails) -> each
    application, its deployments and every replica with the node it runs on."""
    apps = []
    for name, app in sorted((doc.get("applications") or {}).items()):
        deps = []
        for dname, dep in sorted((app.get("deployments") or {}).items()):
            deps.append(
                {
                    "name": dname,
                    "status": dep.get("status", ""),
                    "message": dep.get("message") or "",
                    "target_replicas": dep.get("target_num_replicas"),
                    "replicas": [
                        {
                            "replica_id": r.get("replica_id", ""),
                            "state": r.get("state", ""),
                            "node_id": r.get("node_id") or "",
                            "node_ip": r.get("node_ip") or "",
                        }
                        for r in dep.get("replicas") or []
                    ],
                }
            )
        apps.append(
            {
                "name": name,
                "status": app.get("status", ""),
                "message": app.get("message") or "",
                "deployments": deps,
            }
        )
    return apps


def _list_nodes(dashboard: str, timeout: float) -> list[dict[str, Any]]:
    from ray.util.state import list_nodes

    # The state API client adds the cluster's auth token itself when token auth is on.
    found = list_nodes(address=dashboard, timeout=int(max(1, timeout)), raise_on_missing_output=False)
    # Ray's NodeState records (typed as a bare pydantic dataclass), or plain dicts
    return [dict(n) if isinstance(n, Mapping) else dataclasses.asdict(cast(Any, n)) for n in found]


def gather(dashboard: str, timeout: float = 10.0) -> dict[str, Any]:
    """{"nodes", "nodes_error", "applications", "serve_error"} from the dashboard at `dashboard`."""
    out: dict[str, Any] = {"nodes": [], "nodes_error": "", "applications": [], "serve_error": ""}
    try:
        out["nodes"] = node_rows(_list_nodes(dashboard, timeout))
    except Exception as e:  # an unreachable dashboard/GCS: say so, keep what else answers
        out["nodes_error"] = f"Ray state API at {dashboard}: {_one_line(e)}"
    try:
        out["applications"] = serve_rows(serve_document(dashboard, timeout))
    except NodeError as e:
        out["serve_error"] = str(e)
    return out
