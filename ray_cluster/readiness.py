"""What a deploy waits for: every replica's engine slots in Ray's node table, then a real
completion from the OpenAI endpoint (stdlib HTTP; one line on failure)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ray_cluster import contract, ray_api
from ray_cluster.contract import (
    CPU_WORKER_RESOURCE,
    GPU_MODEL_PREFIX,
    gpu_model_resource,
)
from ray_cluster.driver import NodeError
from ray_cluster.json_read import Json, num, obj, seq, text

# An HTTP response body: the parsed JSON, or the raw text when it is not JSON
Payload = object


@dataclass
class NodeState:
    ip: str
    alive: bool
    gpus: float
    gpu_model: dict[str, float] = field(default_factory=dict)  # model -> count
    is_head: bool = False
    node_id: str = ""
    cpu_slots: float = 0.0


def gpu_shortfall(
    nodes: list[NodeState],
    need_gpus: int,
    gpu_model: str | None = None,
    expect_workers: list[str] | None = None,
    device: str = "gpu",
) -> tuple[str, str] | None:
    """None when the cluster holds enough engine slots (GPUs, or CPU-worker slots on CPU);
    else (what is held, which nodes are missing)."""
    alive = [n for n in nodes if n.alive]
    alive_ips = {n.ip for n in alive}
    missing = [ip for ip in (expect_workers or []) if ip not in alive_ips]
    if device == "cpu":
        have = have_model = sum(n.cpu_slots for n in alive)
        msg = f"cluster has {have:g} of {need_gpus} CPU engine slots ({CPU_WORKER_RESOURCE})"
    else:
        have = sum(n.gpus for n in alive)
        have_model = sum(n.gpu_model.get(gpu_model, 0) for n in alive) if gpu_model else have
        msg = f"cluster has {have:g} of {need_gpus} GPUs"
        if gpu_model:
            msg += f" ({gpu_model_resource(gpu_model)} {have_model:g} of {need_gpus})"
    if have >= need_gpus and have_model >= need_gpus and not missing:
        return None
    detail = ""
    if missing:
        detail = f"workers {', '.join(missing)} missing"
    else:
        dead = [n.ip for n in nodes if not n.alive]
        if dead:
            detail = f"nodes {', '.join(dead)} dead"
    return msg, detail


def wait_for_gpus(
    get_state: Callable[[], list[NodeState]],
    need_gpus: int,
    timeout: float,
    gpu_model: str | None = None,
    expect_workers: list[str] | None = None,
    interval: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    device: str = "gpu",
) -> list[NodeState]:
    start = clock()
    while True:
        nodes = get_state()
        short = gpu_shortfall(nodes, need_gpus, gpu_model, expect_workers, device)
        if short is None:
            return nodes
        if clock() - start >= timeout:
            msg, detail = short
            line = f"{msg} after {timeout:g} s"
            raise NodeError(f"{line}: {detail}" if detail else line)
        sleep(interval)


def mixed_weights(nodes: Iterable[Json], head_weights: str | None) -> str | None:
    """None when every alive worker in `nodes` (the shape `ray.nodes()` returns) advertises the
    weights fingerprint the head holds (ray_cluster.contract.WEIGHTS_LABEL); else one line
    naming the first odd worker by IP and both fingerprints. Without a fingerprint on the head,
    the workers' most common one is the reference; with none anywhere (the local cluster, owned
    hosts) there is nothing to compare."""
    workers: list[tuple[str, str | None]] = sorted(
        (
            (
                text(n.get("NodeManagerAddress")),
                text(obj(n.get("Labels")).get(contract.WEIGHTS_LABEL)) or None,
            )
            for n in nodes
            if n.get("Alive") and contract.HEAD_RESOURCE not in obj(n.get("Resources"))
        ),
        key=lambda w: w[0],
    )
    seen = [w for _, w in workers if w]
    if not head_weights and not seen:
        return None
    want = head_weights or max(sorted(set(seen)), key=seen.count)
    where = "the head's" if head_weights else "most workers'"
    for ip, got in workers:
        if got != want:
            return (
                f"worker {ip} holds weights {got or 'none (no ready marker)'}, {where} are {want}: "
                "a mixed set of checkpoints (a rollout re-stages one worker at a time; the deploy retries)"
            )
    return None


def engine_placements(pg_table: Mapping[str, object], ip_by_node: dict[str, str]) -> list[list[str]]:
    """The hosts of each engine replica, in pipeline-stage order, from Ray's placement group
    table: every CREATED group whose bundles hold engine slots (GPU, or the CPU-worker resource),
    its nodes by their lowest bundle index (rank = stage x TP + tp rank). Which hosts make a
    replica is Ray's choice at deploy time, so a rollout asks this rather than assume slot order.
    Sorted by first host, so the numbering is stable while the placement is."""
    out: list[list[str]] = []
    for pg in map(obj, pg_table.values()):
        if pg.get("state") != "CREATED":
            continue
        bundles = obj(pg.get("bundles"))
        if not any("GPU" in b or CPU_WORKER_RESOURCE in b for b in map(obj, bundles.values())):
            continue
        placed = obj(pg.get("bundles_to_node_id"))
        ips: list[str] = []
        for idx in sorted(placed, key=int):
            ip = ip_by_node.get(text(placed[idx]))
            if ip and ip not in ips:
                ips.append(ip)
        if ips:
            out.append(ips)
    return sorted(out)


def ray_cluster_state() -> list[NodeState]:
    """Nodes of the connected cluster (needs ray.init)."""
    out: list[NodeState] = []
    for n in ray_api.nodes():
        res = obj(n.get("Resources"))
        models = {
            k[len(GPU_MODEL_PREFIX) :]: num(v) for k, v in res.items() if k.startswith(GPU_MODEL_PREFIX)
        }
        out.append(
            NodeState(
                ip=text(n.get("NodeManagerAddress")),
                alive=bool(n.get("Alive")),
                gpus=num(res.get("GPU")),
                gpu_model=models,
                is_head=contract.HEAD_RESOURCE in res,
                node_id=text(n.get("NodeID")),
                cpu_slots=num(res.get(CPU_WORKER_RESOURCE)),
            )
        )
    return out


def http_json(
    method: str, url: str, body: Mapping[str, object] | None, token: str | None, timeout: float
) -> tuple[int, Payload]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw: str = resp.read().decode("utf-8", "replace")
            status: int = resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read().decode("utf-8", "replace"), e.code
    try:
        parsed: object = json.loads(raw)
        return status, parsed
    except ValueError:
        return status, raw


def completion_tokens(payload: Payload) -> str | None:
    """The generated text of an OpenAI completions/chat response, or None when it holds no tokens."""
    doc = obj(payload)  # not a JSON object (an error page's text): no choices, so None
    choices = seq(doc.get("choices"))
    if not choices:
        return None
    c = obj(choices[0])
    out = c.get("text")
    if out is None:
        message = obj(c.get("message"))
        out = message.get("content") or message.get("reasoning_content")
    usage = obj(doc.get("usage")).get("completion_tokens", 0)
    if out or usage:
        return str(out) if out else ""
    return None


def probe_completion(endpoint: str, token: str | None, model: str | None, timeout: float = 60.0) -> str:
    """POST one tiny completion. Returns the text; raises NodeError with what was seen."""
    base = endpoint.rstrip("/")
    chosen: object = model
    if not model:
        status, models = http_json("GET", f"{base}/v1/models", None, token, timeout)
        ids = [obj(m).get("id") for m in seq(obj(models).get("data"))]
        if status != 200 or not ids:
            raise NodeError(f"GET {base}/v1/models gave HTTP {status} with no model id: {str(models)[:120]}")
        chosen = ids[0]
    body: dict[str, object] = {"model": chosen, "prompt": "Hello", "max_tokens": 4, "temperature": 0}
    status, payload = http_json("POST", f"{base}/v1/completions", body, token, timeout)
    got = completion_tokens(payload) if status == 200 else None
    if got is None:
        raise NodeError(f"POST {base}/v1/completions gave HTTP {status} without tokens: {str(payload)[:120]}")
    return got


def wait_for_completion(
    endpoint: str,
    token: str | None,
    model: str | None,
    timeout: float,
    interval: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    start = clock()
    while True:
        try:
            return probe_completion(endpoint, token, model, timeout=max(5.0, min(60.0, timeout)))
        except (NodeError, OSError) as e:
            last = str(e) if isinstance(e, NodeError) else f"{endpoint}: {e}"
        if clock() - start >= timeout:
            raise NodeError(f"no completion within {timeout:g} s; last: {last}")
        sleep(interval)
