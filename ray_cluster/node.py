"""Ray node bootstrap: `python -m ray_cluster.node head|worker|deploy|status`.

Runs inside the production image and on the local "hosts", so imports stay light:
stdlib + ray + pyyaml (ray is imported lazily by the sub-commands that talk to a cluster).

The exact `ray start` argv lives in `head_start_command` / `worker_start_command`; the
cluster.yaml renderer and cloud-init call the same functions, so every place runs the same
command. Failures print ONE line naming what was waited for and what was seen.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ray_cluster import contract, nic
from ray_cluster.contract import (
    CPU_WORKER_RESOURCE,
    DASHBOARD_PORT,
    GCS_PORT,
    GPU_MODEL_PREFIX,
    gpu_model_resource,
)
from ray_cluster.driver import NodeError, auth_env, connect, split_address, wait_for_tcp
from ray_cluster.placement import PreflightError

__all__ = [
    "DASHBOARD_PORT",
    "GCS_PORT",
    "NodeError",
    "auth_env",
    "connect",
    "gpu_model_resource",
    "split_address",
    "wait_for_tcp",
]


# ---------------------------------------------------------------- start commands (pure)


def _common_args(
    ip: str,
    num_cpus: int | None,
    object_store_memory: int | None,
    temp_dir: str | None,
    block: bool,
    extra: list[str] | tuple[str, ...],
) -> list[str]:
    args = [f"--node-ip-address={ip}"]
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus}")
    if object_store_memory is not None:
        args.append(f"--object-store-memory={object_store_memory}")
    if temp_dir:
        args.append(f"--temp-dir={temp_dir}")
    args.append("--disable-usage-stats")
    if block:
        args.append("--block")
    return args + list(extra)


def head_start_command(
    ip: str,
    port: int = GCS_PORT,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    dashboard: bool = True,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int = DASHBOARD_PORT,
    block: bool = False,
    temp_dir: str | None = None,
    extra: list[str] | tuple[str, ...] = (),
    ray_bin: str = "ray",
) -> list[str]:
    """argv of `ray start --head`. The head advertises 0 GPUs: vLLM pipeline parallelism hangs otherwise."""
    argv = [ray_bin, "start", "--head", f"--port={port}", "--num-gpus=0"]
    if dashboard:
        argv += [
            "--include-dashboard=true",
            f"--dashboard-host={dashboard_host}",
            f"--dashboard-port={dashboard_port}",
        ]
    else:
        argv.append("--include-dashboard=false")
    return argv + _common_args(ip, num_cpus, object_store_memory, temp_dir, block, extra)


def worker_start_command(
    head_address: str,
    ip: str,
    num_gpus: int,
    gpu_model: str | None = None,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    block: bool = False,
    temp_dir: str | None = None,
    extra: list[str] | tuple[str, ...] = (),
    ray_bin: str = "ray",
    device: str = "gpu",
    cpu_slots: int = 0,
) -> list[str]:
    """argv of `ray start --address=HEAD:6379` for a worker.

    GPU: num_gpus GPUs and `gpu_model:<X>` = num_gpus. CPU: 0 GPUs and the CPU-worker resource
    = cpu_slots (engine ranks this host takes); the contract's bundles ask for exactly these."""
    if num_gpus < 0:
        raise NodeError(f"num_gpus {num_gpus} must be >= 0")
    if device == "cpu" and (num_gpus or cpu_slots < 1):
        raise NodeError(f"a cpu worker has 0 GPUs and cpu_slots >= 1 (got {num_gpus}, {cpu_slots})")
    slots = num_gpus if device == "gpu" else cpu_slots
    argv = [ray_bin, "start", f"--address={head_address}", f"--num-gpus={num_gpus}"]
    resources = contract.worker_resources(device, gpu_model, slots)
    if resources:
        argv.append("--resources=" + json.dumps(resources, separators=(",", ":")))
    return argv + _common_args(ip, num_cpus, object_store_memory, temp_dir, block, extra)


def shell_command(argv: list[str], env: dict[str, str] | None = None) -> str:
    """One shell line (env assignments first) for systemd units, cloud-init and cluster.yaml."""
    prefix = [f"{k}={shlex.quote(v)}" for k, v in sorted((env or {}).items())]
    return " ".join(prefix + [shlex.join(argv)])


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


def ray_cluster_state() -> list[NodeState]:
    """Nodes of the connected cluster (needs ray.init)."""
    import ray

    out = []
    for n in ray.nodes():
        res = n.get("Resources", {})
        models = {k[len(GPU_MODEL_PREFIX) :]: v for k, v in res.items() if k.startswith(GPU_MODEL_PREFIX)}
        out.append(
            NodeState(
                ip=n.get("NodeManagerAddress", ""),
                alive=bool(n.get("Alive")),
                gpus=float(res.get("GPU", 0)),
                gpu_model=models,
                is_head=contract.HEAD_RESOURCE in res,
                node_id=n.get("NodeID", ""),
                cpu_slots=float(res.get(CPU_WORKER_RESOURCE, 0)),
            )
        )
    return out


# ---------------------------------------------------------------- readiness: a real completion


def _http_json(
    method: str, url: str, body: dict | None, token: str | None, timeout: float
) -> tuple[int, dict | str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read().decode("utf-8", "replace")
            status = resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read().decode("utf-8", "replace"), e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def completion_tokens(payload: dict | str) -> str | None:
    """The generated text of an OpenAI completions/chat response, or None when it holds no tokens."""
    if not isinstance(payload, dict):
        return None
    choices = payload.get("choices") or []
    if not choices:
        return None
    c = choices[0]
    text = c.get("text")
    if text is None:
        text = (c.get("message") or {}).get("content") or (c.get("message") or {}).get("reasoning_content")
    usage = (payload.get("usage") or {}).get("completion_tokens", 0)
    if text or usage:
        return text or ""
    return None


def probe_completion(endpoint: str, token: str | None, model: str | None, timeout: float = 60.0) -> str:
    """POST one tiny completion. Returns the text; raises NodeError with what was seen."""
    base = endpoint.rstrip("/")
    if not model:
        status, models = _http_json("GET", f"{base}/v1/models", None, token, timeout)
        ids = [m.get("id") for m in models.get("data", [])] if isinstance(models, dict) else []
        if status != 200 or not ids:
            raise NodeError(f"GET {base}/v1/models gave HTTP {status} with no model id: {str(models)[:120]}")
        model = ids[0]
    body = {"model": model, "prompt": "Hello", "max_tokens": 4, "temperature": 0}
    status, payload = _http_json("POST", f"{base}/v1/completions", body, token, timeout)
    text = completion_tokens(payload) if status == 200 else None
    if text is None:
        raise NodeError(f"POST {base}/v1/completions gave HTTP {status} without tokens: {str(payload)[:120]}")
    return text


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


# ---------------------------------------------------------------- serve


def load_serve_config(path: str) -> dict:
    """Read and validate a Serve config with Ray's own schema (what `serve deploy` sends)."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise NodeError(f"--serve-config {path!r}: {e.strerror}") from None
    try:
        schema = ServeDeploySchema.model_validate(raw)
    except Exception as e:  # pydantic ValidationError: first error only, one line
        errors = e.errors() if hasattr(e, "errors") else [{"loc": (), "msg": str(e)}]
        first = errors[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        raise NodeError(f"--serve-config {path}: {loc}: {first.get('msg')}") from None
    return schema.model_dump(exclude_unset=True)


def serve_deploy(dashboard: str, config: dict) -> None:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    try:
        ServeSubmissionClient(dashboard).deploy_applications(config)
    except Exception as e:
        raise NodeError(
            f"serve deploy to {dashboard} failed: {str(e).splitlines()[0] if str(e) else e!r}"
        ) from None


def _serve_applications(dashboard: str, timeout: float) -> dict:
    """The dashboard's Serve applications document; {} when Serve/the dashboard is not there."""
    try:
        status, payload = _http_json(
            "GET", f"{dashboard.rstrip('/')}/api/serve/applications/", None, None, timeout
        )
    except OSError:
        return {}
    if status != 200 or not isinstance(payload, dict):
        return {}
    return payload.get("applications") or {}


def serve_status(dashboard: str, timeout: float = 5.0) -> dict:
    """{app: status} from the dashboard, or {} when Serve/the dashboard is not there."""
    return {name: app.get("status", "") for name, app in _serve_applications(dashboard, timeout).items()}


def serve_deployments(dashboard: str, timeout: float = 5.0) -> dict:
    """{app: {deployment: {"status", "replicas" (RUNNING ones)}}} from the dashboard."""
    return {
        name: {
            d: {
                "status": dep.get("status", ""),
                "replicas": sum(1 for r in dep.get("replicas") or [] if r.get("state") == "RUNNING"),
            }
            for d, dep in (app.get("deployments") or {}).items()
        }
        for name, app in _serve_applications(dashboard, timeout).items()
    }


def wait_serve_running(dashboard: str, timeout: float, interval: float = 5.0) -> None:
    start = time.monotonic()
    while True:
        apps = serve_status(dashboard)
        if apps and all(s == "RUNNING" for s in apps.values()):
            return
        if (
            any(s in ("DEPLOY_FAILED", "UNHEALTHY") for s in apps.values())
            or time.monotonic() - start >= timeout
        ):
            seen = ", ".join(f"{k}={v}" for k, v in apps.items()) or "no applications"
            raise NodeError(f"serve applications not RUNNING after {time.monotonic() - start:.0f} s: {seen}")
        time.sleep(interval)


# ---------------------------------------------------------------- CLI


def _nic_choice(ip: str | None, ifname: str | None, towards: str | None = None) -> nic.NicChoice:
    ifaces = nic.read_interfaces()
    if not ip and not ifname and towards:
        ip = nic.source_ip_towards(towards)
    return nic.choose_nic(ifaces, ip=ip, ifname=ifname)


def _ray_bin() -> str:
    # The `ray` of this interpreter's environment, even when its bin dir is not on PATH.
    cand = os.path.join(os.path.dirname(sys.executable), "ray")
    return cand if os.access(cand, os.X_OK) else "ray"


def last_error_line(text: str) -> str:
    """The most telling line of a failed command's output: the last one naming an error."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or [""])[-1]


def _run_ray(argv: list[str], env: dict[str, str], block: bool, retries: int = 1, delay: float = 5.0) -> int:
    env = {**env, **auth_env(os.environ)}
    full_env = {**os.environ, **env}
    print(shell_command(argv, env), file=sys.stderr, flush=True)
    if block:
        os.execvpe(argv[0], argv, full_env)  # container entrypoint: ray owns the process
    last = ""
    for attempt in range(1, retries + 1):
        # A file, not a pipe: the daemons `ray start` leaves behind may hold a pipe open for long.
        with tempfile.TemporaryFile("w+") as out:
            rc = subprocess.run(argv, env=full_env, stdout=out, stderr=subprocess.STDOUT).returncode
            out.seek(0)
            text = out.read()
        if rc == 0:
            return 0
        last = last_error_line(text) or f"exit {rc}"
        if attempt < retries:
            time.sleep(delay)
    raise NodeError(f"`ray start` failed {retries} time(s): {last}")


def cmd_head(a: argparse.Namespace) -> int:
    choice = _nic_choice(a.ip, a.ifname)
    argv = head_start_command(
        choice.ip,
        port=a.port,
        num_cpus=a.num_cpus,
        object_store_memory=a.object_store_memory,
        dashboard=a.dashboard,
        dashboard_host=a.dashboard_host,
        dashboard_port=a.dashboard_port,
        block=a.block,
        temp_dir=a.temp_dir,
        extra=a.ray_arg,
        ray_bin=_ray_bin(),
    )
    return _run_ray(argv, nic.node_env(choice), a.block)


def cmd_worker(a: argparse.Namespace) -> int:
    host, port = split_address(a.address)
    wait_for_tcp(host, port, a.wait)
    choice = _nic_choice(a.ip, a.ifname, towards=host)
    argv = worker_start_command(
        f"{host}:{port}",
        choice.ip,
        num_gpus=a.num_gpus,
        gpu_model=a.gpu_model,
        num_cpus=a.num_cpus,
        device=a.device,
        cpu_slots=a.cpu_slots,
        object_store_memory=a.object_store_memory,
        block=a.block,
        temp_dir=a.temp_dir,
        extra=a.ray_arg,
        ray_bin=_ray_bin(),
    )
    return _run_ray(argv, nic.node_env(choice), a.block, retries=a.retries)


def preflight_layout(device: str, tp: int, pp: int, replicas: int) -> tuple[int, int]:
    """(TP, PP) of the gang the preflight reserves before `serve deploy`.

    GPU: one replica's own TP x PP, the placement group vLLM will ask for. CPU: a replica's
    ranks stay on its host (vLLM's multiprocessing executor), so the cross-host proof is one
    gang of every replica's ranks: TP = ranks per host, PP = replica hosts, all-reduced across
    all of them, as production's TP x PP spans its hosts."""
    if device == "cpu":
        return tp * pp, replicas
    return tp, pp


def cmd_deploy(a: argparse.Namespace) -> int:
    import ray

    from ray_cluster import placement as preflight

    config = load_serve_config(a.serve_config)
    token = os.environ.get(a.token_env) if a.token_env else None
    if a.token_env and not token:
        raise NodeError(f"--token-env {a.token_env}: variable is not set")
    need = a.tp * a.pp * a.replicas
    expect = [ip for ip in (a.expect_workers or "").split(",") if ip]
    pre_tp, pre_pp = preflight_layout(a.device, a.tp, a.pp, a.replicas)
    connect(a.address)
    try:
        wait_for_gpus(ray_cluster_state, need, a.timeout, a.gpu_model, expect, device=a.device)
        # Stage lines on stderr: `llmfleet local up` shows them as progress, logs keep them.
        unit = "GPUs" if a.device == "gpu" else "CPU engine slots"
        print(f"gpus ready: {need} {unit}", file=sys.stderr, flush=True)
        result = preflight.run_preflight(
            a.address, pre_tp, pre_pp, gpu_model=a.gpu_model, timeout=a.timeout, device=a.device
        )
        if not result.ok:
            raise NodeError(f"preflight failed: {'; '.join(result.problems) or result.summary()}")
        print(f"preflight ok: {result.summary()}", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    serve_deploy(a.dashboard, config)
    print("serve deploy: applied", file=sys.stderr, flush=True)
    wait_serve_running(a.dashboard, a.timeout)
    print("serve running", file=sys.stderr, flush=True)
    text = wait_for_completion(a.endpoint, token, a.model, a.timeout)
    print(json.dumps({"ready": True, "endpoint": a.endpoint, "sample": text}))
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    import ray

    connect(a.address)
    try:
        nodes = ray_cluster_state()
        total = ray.cluster_resources().get("GPU", 0)
        avail = ray.available_resources().get("GPU", 0)
    finally:
        ray.shutdown()
    apps = serve_status(a.dashboard)
    doc = {
        "nodes": [asdict(n) for n in nodes],
        "gpus_total": total,
        "gpus_available": avail,
        "serve": apps,
    }
    if a.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print_status(doc)
    return 0


def print_status(doc: dict) -> None:
    """A rich table when rich is installed (operator machines), plain columns otherwise (the image)."""
    rows = [
        (
            n["ip"],
            str(n["alive"]).lower(),
            str(n["is_head"]).lower(),
            f"{n['gpus']:g}",
            ",".join(f"{k}:{v:g}" for k, v in n["gpu_model"].items()) or "-",
        )
        for n in sorted(doc["nodes"], key=lambda n: n["ip"])
    ]
    header = ("ip", "alive", "head", "GPUs", "gpu_model")
    footer = [
        f"GPUs: {doc['gpus_available']:g} available of {doc['gpus_total']:g}",
        "serve: "
        + (
            ", ".join(f"{k}={v}" for k, v in doc["serve"].items())
            or "no applications / dashboard unreachable"
        ),
    ]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for r in [header, *rows]:
            print(f"{r[0]:<16} {r[1]:<6} {r[2]:<5} {r[3]:>5}  {r[4]}")
        print("\n".join(footer))
        return
    t = Table(title="Ray cluster")
    for h in header:
        t.add_column(h)
    for r in rows:
        t.add_row(*r)
    console = Console()
    console.print(t)
    for line in footer:
        console.print(line, highlight=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ray_cluster.node", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def node_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--ip", help="this node's private IP (default: the IP of --ifname or the route to the head)"
        )
        sp.add_argument("--ifname", help="NIC for NCCL/Gloo (default: the interface holding --ip)")
        sp.add_argument("--num-cpus", type=int)
        sp.add_argument("--object-store-memory", type=int, help="bytes")
        sp.add_argument("--temp-dir")
        sp.add_argument("--block", action="store_true", help="stay in the foreground (container/systemd)")
        sp.add_argument(
            "--ray-arg", action="append", default=[], help="extra `ray start` argument (repeatable)"
        )

    h = sub.add_parser("head", help="start the Ray head (0 GPUs)")
    node_opts(h)
    h.add_argument("--port", type=int, default=GCS_PORT)
    h.add_argument("--dashboard", action=argparse.BooleanOptionalAction, default=True)
    h.add_argument("--dashboard-host", default="127.0.0.1")
    h.add_argument("--dashboard-port", type=int, default=DASHBOARD_PORT)
    h.set_defaults(func=cmd_head)

    w = sub.add_parser("worker", help="join a GPU worker to the head")
    node_opts(w)
    w.add_argument("--address", required=True, help="HEAD_IP:6379")
    w.add_argument("--num-gpus", type=int, required=True)
    w.add_argument("--gpu-model", help="e.g. L20; advertised as custom resource gpu_model:<MODEL>")
    w.add_argument("--device", choices=contract.DEVICES, default="gpu")
    w.add_argument("--cpu-slots", type=int, default=0, help=f"cpu device: engine ranks ({CPU_WORKER_RESOURCE})")
    w.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the head to answer")
    w.add_argument("--retries", type=int, default=3)
    w.set_defaults(func=cmd_worker)

    d = sub.add_parser("deploy", help="wait for GPUs, preflight, serve deploy, wait for a real completion")
    d.add_argument("--address", default="auto")
    d.add_argument("--serve-config", required=True)
    d.add_argument("--tp", type=int, required=True)
    d.add_argument("--pp", type=int, required=True)
    d.add_argument("--gpu-model")
    d.add_argument("--device", choices=contract.DEVICES, default="gpu")
    d.add_argument("--replicas", type=int, default=1)
    d.add_argument("--timeout", type=float, default=600.0)
    d.add_argument("--expect-workers", help="comma-separated worker IPs, to name the missing ones")
    d.add_argument("--dashboard", default=f"http://127.0.0.1:{DASHBOARD_PORT}")
    d.add_argument("--endpoint", default="http://127.0.0.1:8000")
    d.add_argument("--token-env", help="env var holding the endpoint bearer token")
    d.add_argument("--model", help="model id for the probe (default: first of /v1/models)")
    d.set_defaults(func=cmd_deploy)

    s = sub.add_parser("status", help="nodes, GPUs and Serve apps")
    s.add_argument("--address", default="auto")
    s.add_argument("--dashboard", default=f"http://127.0.0.1:{DASHBOARD_PORT}")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    for key in ("tp", "pp", "num_gpus", "replicas"):
        v = getattr(a, key, None)
        if v is not None and v < (0 if key == "num_gpus" else 1):
            print(
                f"error: --{key.replace('_', '-')} {v} must be >= {0 if key == 'num_gpus' else 1}",
                file=sys.stderr,
            )
            return 2
    try:
        return a.func(a)
    except (NodeError, nic.NicError, PreflightError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # preflight errors and ray connection errors: still one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {type(e).__name__}: {first}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
