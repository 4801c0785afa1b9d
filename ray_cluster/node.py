"""Ray node bootstrap: `python -m ray_cluster.node head|worker|deploy|status|healthcheck`.

Runs inside the production image and on the local "hosts", so imports stay light:
stdlib + ray + pyyaml (ray is imported lazily by the sub-commands that talk to a cluster).

The exact `ray start` argv lives in `ray_start.head_start_command` / `worker_start_command`; the
cluster.yaml renderer and cloud-init call the same functions, so every place runs the same
command. Failures print ONE line naming what was waited for and what was seen.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict

from ray_cluster import contract, healthcheck, nic, ray_api
from ray_cluster import placement as preflight
from ray_cluster.cluster_status import gather
from ray_cluster.contract import (
    AGENT_PORTS,
    CPU_WORKER_RESOURCE,
    DASHBOARD_PORT,
    GCS_PORT,
    gpu_model_resource,
)
from ray_cluster.driver import NodeError, auth_env, connect, split_address, wait_for_tcp
from ray_cluster.json_read import Json, num, obj, seq, text
from ray_cluster.placement import PreflightError
from ray_cluster.ray_start import head_start_command, shell_command, worker_start_command
from ray_cluster.readiness import (
    engine_placements,
    mixed_weights,
    ray_cluster_state,
    wait_for_completion,
    wait_for_gpus,
)
from ray_cluster.serve_rest import (
    app_needs_restart,
    load_serve_config,
    serve_deploy,
    serve_deployments,
    serve_status,
    wait_serve_running,
)
from ray_cluster.watch import WatchView, activity_file_of, file_digest, idle_line, preflight_needed, watch

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


REDACTED_REDIS = "--redis-password=***"


def agent_port_args(extra: Sequence[str]) -> list[str]:
    """extra plus each agent port it does not set already (a loopback host sets its own)."""
    given = {x.split("=", 1)[0] for x in extra}
    return [*extra, *(f"{flag}={port}" for flag, port in AGENT_PORTS if flag not in given)]


def _run_ray(argv: list[str], env: dict[str, str], block: bool, retries: int = 1, delay: float = 5.0) -> int:
    env = {**env, **auth_env(os.environ)}
    full_env = {**os.environ, **env}
    # the logged command never shows the GCS store's password (gcs_redis_args)
    shown = [REDACTED_REDIS if x.startswith("--redis-password=") else x for x in argv]
    print(shell_command(shown, env), file=sys.stderr, flush=True)
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
        extra=agent_port_args([*(a.ray_arg or []), *gcs_redis_args(os.environ)]),
        ray_bin=_ray_bin(),
    )
    return _run_ray(argv, nic.node_env(choice), a.block)


def gcs_redis_args(env: Mapping[str, str]) -> list[str]:
    """With an external GCS store (RAY_REDIS_ADDRESS, which Ray reads itself), its password from
    the env file: Ray 2.60's `ray start` takes it only as --redis-password. It is then in this
    container's process table (as in the GCS server's own argv, which Ray builds), never in the
    host's `docker run` line, the node script or user data."""
    pw = env.get(contract.GCS_REDIS_PASSWORD_ENV, "")
    if not pw or not env.get("RAY_REDIS_ADDRESS"):
        return []
    return [f"--redis-password={pw}"]


def cmd_worker(a: argparse.Namespace) -> int:
    host, port = split_address(a.address)
    wait_for_tcp(host, port, a.wait)
    choice = _nic_choice(a.ip, a.ifname, towards=host)
    # The checkpoint this host staged (its ready marker), for the head's deploy to compare.
    weights = contract.read_weights_fingerprint(os.environ.get(contract.MODEL_PATH_ENV))
    argv = worker_start_command(
        f"{host}:{port}",
        choice.ip,
        num_gpus=a.num_gpus,
        gpu_model=a.gpu_model,
        num_cpus=a.num_cpus,
        device=a.device,
        cpu_slots=a.cpu_slots,
        train_slots=a.train_slots,
        object_store_memory=a.object_store_memory,
        block=a.block,
        temp_dir=a.temp_dir,
        extra=agent_port_args(a.ray_arg or []),
        ray_bin=_ray_bin(),
        labels={contract.WEIGHTS_LABEL: weights} if weights else None,
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


def preflight_dims(device: str, tp: int, pp: int, replicas: int) -> str:
    """The preflight line's shape: the replica's TP x PP as asked, and on CPU the gang it checked
    (ranks per host x hosts), which is not a TP x PP: "TP=3 PP=1" read as a wrong layout for
    `--pp 3` (3 ranks on one host)."""
    if device != "cpu":
        return f"TP={tp} PP={pp}"
    ranks, hosts = preflight_layout(device, tp, pp, replicas)
    return f"TP={tp} PP={pp} per replica; gang of {ranks} rank(s) per host x {hosts} host(s)"


def config_fingerprint(data: bytes) -> str:
    """sha256 of a Serve config file's bytes: the deployment's fingerprint (infra/deploy.py
    computes the same from the config it rendered, and readiness compares the two)."""
    return hashlib.sha256(data).hexdigest()


def deployed_marker(serve_config: str) -> str:
    """Where the deploy records what it deployed: the container's own temp dir (the config dir
    is mounted read-only), keyed by the config's path. A restarted container has none, which is
    right: nothing is deployed until its deploy unit runs again."""
    key = hashlib.sha256(os.path.abspath(serve_config).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"llmfleet-deployed-{key}")


def deployed_fingerprint(serve_config: str) -> str | None:
    """The fingerprint of the config this head last deployed and saw a real completion from."""
    try:
        with open(deployed_marker(serve_config)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _record_deployed(serve_config: str, fingerprint: str) -> None:
    path = deployed_marker(serve_config)
    with open(path + ".tmp", "w") as f:
        f.write(fingerprint + "\n")
    os.replace(path + ".tmp", path)


def _apply(a: argparse.Namespace, token: str | None, *, preflight_first: bool) -> str:
    """Wait for every replica's slots -> (preflight) -> serve deploy -> RUNNING -> a real completion.

    Then records the fingerprint of the bytes it deployed (read before the deploy: a rollout may
    rewrite the file meanwhile), so `status --serve-config` reports what answers, not what is on disk.
    Returns that fingerprint: the watcher's baseline (the same sha256 as its file_digest)."""
    with open(a.serve_config, "rb") as f:
        data = f.read()
    fingerprint = config_fingerprint(data)
    config = load_serve_config(a.serve_config)
    need = a.tp * a.pp * a.replicas
    expect = [ip for ip in (a.expect_workers or "").split(",") if ip]
    pre_tp, pre_pp = preflight_layout(a.device, a.tp, a.pp, a.replicas)
    connect(a.address)
    try:
        wait_for_gpus(ray_cluster_state, need, a.timeout, a.gpu_model, expect, device=a.device)
        # Every worker must hold the checkpoint the head staged the tokenizer of: a rollout to
        # a new weightsUri re-stages one worker at a time, and a mixed set would serve garbage.
        mixed = mixed_weights(
            ray_api.nodes(), contract.read_weights_fingerprint(os.environ.get(contract.MODEL_PATH_ENV))
        )
        if mixed:
            raise NodeError(f"refusing to deploy: {mixed}")
        # Stage lines on stderr: `llmfleet local up` shows them as progress, logs keep them.
        unit = "GPUs" if a.device == "gpu" else "CPU engine slots"
        print(f"gpus ready: {need} {unit}", file=sys.stderr, flush=True)
        # On a re-apply the engine may hold the GPUs, so the gang cannot be reserved again; the
        # first deploy proved the fabric.
        if preflight_first:
            result = preflight.run_preflight(
                a.address, pre_tp, pre_pp, gpu_model=a.gpu_model, timeout=a.timeout, device=a.device
            )
            dims = preflight_dims(a.device, a.tp, a.pp, a.replicas)
            if not result.ok:
                raise NodeError(f"preflight failed: {'; '.join(result.problems) or result.summary(dims)}")
            print(f"preflight ok: {result.summary(dims)}", file=sys.stderr, flush=True)
    finally:
        ray_api.shutdown()
    if not preflight_first and app_needs_restart(serve_status(a.dashboard), serve_deployments(a.dashboard)):
        # Serve does not retry a failed deploy of an unchanged config, nor rebuild an app that
        # stays UNHEALTHY on one (the watcher's backoff gave Serve's own replica restarts time
        # first): start it afresh, unless its failed deployments still have RUNNING replicas.
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        ServeSubmissionClient(a.dashboard).delete_applications()
    serve_deploy(a.dashboard, config)
    print("serve deploy: applied", file=sys.stderr, flush=True)
    wait_serve_running(a.dashboard, a.timeout)
    print("serve running", file=sys.stderr, flush=True)
    sample = wait_for_completion(a.endpoint, token, a.model, a.timeout)
    _record_deployed(a.serve_config, fingerprint)
    print(
        json.dumps({"ready": True, "endpoint": a.endpoint, "sample": sample, "config": fingerprint}),
        flush=True,
    )
    return fingerprint  # sha256 of the bytes, as the watcher's file_digest


def _watch_view(a: argparse.Namespace) -> WatchView:
    digest = file_digest(a.serve_config)
    connect(a.address)
    try:
        workers = {n.ip: n.node_id for n in ray_cluster_state() if n.alive and not n.is_head}
    finally:
        ray_api.shutdown()
    return WatchView(digest, workers, serve_status(a.dashboard))


def cmd_deploy(a: argparse.Namespace) -> int:
    load_serve_config(a.serve_config)  # a bad file fails before any wait
    token = os.environ.get(a.token_env) if a.token_env else None
    if a.token_env and not token:
        raise NodeError(f"--token-env {a.token_env}: variable is not set")

    deployed_before = deployed_fingerprint(a.serve_config) is not None
    deployed = _apply(a, token, preflight_first=preflight_needed(serve_status(a.dashboard), deployed_before))
    if a.watch:
        import time

        import yaml

        # When the workers were last seen joining (None: none alive): idle counts from there.
        awake: dict[str, float | None] = {"since": time.time()}

        def observe() -> WatchView:
            view = _watch_view(a)
            if not view.workers:
                awake["since"] = None
            elif awake["since"] is None:
                awake["since"] = time.time()
            return view

        def idle() -> str | None:
            # Read each poll: a rollout may turn idle stop on or off in the Serve config.
            try:
                with open(a.serve_config) as f:
                    path = activity_file_of(yaml.safe_load(f) or {})
            except (OSError, yaml.YAMLError):
                return None
            return idle_line(path, time.time(), awake["since"]) if path else None

        watch(
            observe,
            lambda _reason: _apply(a, token, preflight_first=False),
            interval=a.watch_interval,
            idle=idle,
            deployed_digest=deployed,
        )
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    connect(a.address)
    try:
        nodes = ray_cluster_state()
        total = ray_api.cluster_resources().get("GPU", 0)
        avail = ray_api.available_resources().get("GPU", 0)
        # Which hosts serve which engine replica (a rollout rolls one replica's hosts at a time).
        placements = engine_placements(ray_api.placement_group_table(), {n.node_id: n.ip for n in nodes})
    finally:
        ray_api.shutdown()
    apps = serve_status(a.dashboard)
    doc: dict[str, object] = {
        "nodes": [asdict(n) for n in nodes],
        "gpus_total": total,
        "gpus_available": avail,
        "serve": apps,
        "placements": placements,
    }
    if a.cluster:
        # What `llmfleet status` renders: the same gatherer `llmfleet local status` runs. Only on
        # request: the readiness gates keep the last 4,000 characters of this document.
        doc["cluster"] = gather(a.dashboard)
    if a.serve_config:
        # What the head last deployed and saw answer (None: nothing yet) beside what is on disk.
        doc["deployed_serve_config"] = deployed_fingerprint(a.serve_config)
        try:
            with open(a.serve_config, "rb") as f:
                doc["serve_config"] = config_fingerprint(f.read())
        except OSError:
            doc["serve_config"] = None
    if a.json:
        # --compact: one line, for SSM Run Command, whose output is capped (24,000 characters).
        print(
            json.dumps(doc, sort_keys=True, separators=(",", ":"))
            if a.compact
            else json.dumps(doc, indent=2, sort_keys=True)
        )
        return 0
    print_status(doc)
    return 0


def cmd_healthcheck(a: argparse.Namespace) -> int:

    return healthcheck.main()


def print_status(doc: Json) -> None:
    """A rich table when rich is installed (operator machines), plain columns otherwise (the image)."""
    rows = [
        (
            text(n.get("ip")),
            str(n.get("alive")).lower(),
            str(n.get("is_head")).lower(),
            f"{num(n.get('gpus')):g}",
            ",".join(f"{k}:{num(v):g}" for k, v in obj(n.get("gpu_model")).items()) or "-",
        )
        for n in sorted(map(obj, seq(doc.get("nodes"))), key=lambda n: text(n.get("ip")))
    ]
    header = ("ip", "alive", "head", "GPUs", "gpu_model")
    footer = [
        f"GPUs: {num(doc.get('gpus_available')):g} available of {num(doc.get('gpus_total')):g}",
        "serve: "
        + (
            ", ".join(f"{k}={v}" for k, v in obj(doc.get("serve")).items())
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
    p = argparse.ArgumentParser(
        prog="python -m ray_cluster.node", description=(__doc__ or "").partition("\n")[0]
    )
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
    w.add_argument(
        "--cpu-slots", type=int, default=0, help=f"cpu device: engine ranks ({CPU_WORKER_RESOURCE})"
    )
    w.add_argument(
        "--train-slots",
        type=int,
        default=0,
        help=f"fine-tune workers this host takes ({contract.TRAIN_RESOURCE}); with --cpu-slots 0, a trainer host",
    )
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
    d.add_argument(
        "--watch",
        action="store_true",
        help="after the deploy, re-apply when the config file changes, a worker comes back, or the "
        "app stays DEPLOY_FAILED/UNHEALTHY (with backoff)",
    )
    d.add_argument("--watch-interval", type=float, default=30.0, help="seconds between watch polls")
    d.set_defaults(func=cmd_deploy)

    s = sub.add_parser("status", help="nodes, GPUs and Serve apps")
    s.add_argument("--address", default="auto")
    s.add_argument("--dashboard", default=f"http://127.0.0.1:{DASHBOARD_PORT}")
    s.add_argument("--json", action="store_true")
    s.add_argument("--compact", action="store_true", help="with --json: one line, no indentation")
    s.add_argument(
        "--cluster",
        action="store_true",
        help="also every node and Serve replica (what `llmfleet status` shows)",
    )
    s.add_argument("--serve-config", help="also report this config's fingerprint and the deployed one")
    s.set_defaults(func=cmd_status)

    hc = sub.add_parser(
        "healthcheck", help="exit 0 when this node's raylet is alive in the cluster (the image's HEALTHCHECK)"
    )
    hc.set_defaults(func=cmd_healthcheck)
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
