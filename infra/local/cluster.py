"""`llmfleet local`: the production cluster shape on this machine (DESIGN.md, "Local target").

Layout, as in production:
- host 0 is the head: `ray_cluster.node head` (0 GPUs); it runs the Serve controller, the HTTP
  proxy and the OpenAI ingress;
- hosts 1..N-1 are CPU workers: `ray_cluster.node worker --device cpu`, 0 GPUs, advertising the
  CPU-worker resource once per engine rank (TP x PP), so engine bundles never land on the head;
- the app is the production one (`ray_cluster.serve_app:build_app`, Ray Serve LLM) from the same
  Serve config renderer, with vLLM's CPU build as the engine: one replica per worker host, each
  replica's TP x PP ranks on its own host (vLLM's Ray executor refuses CPU, so Ray Serve LLM
  runs vLLM's multiprocessing executor). The preflight still gangs ranks across every worker
  host and all-reduces over them: that, not the engine, is the local proof of cross-host TP x PP.
  When a worker host's Ray processes die, its supervisor restarts the node after
  RESTART_DELAY_S (as the production unit's restart policy does); the node rejoins and Serve
  places that replica again while the other replicas keep answering.

Each host's node runs under a supervisor (`python -m infra.local.cluster supervise`) inside the
host (network namespace when root, else a loopback address). The deploy is the production flow,
`python -m ray_cluster.node deploy` run in the head host: wait for TP x PP GPUs -> preflight ->
serve deploy -> ready after a real completion.

State lives in $LLMFLEET_STATE_DIR (default ~/.cache/llmfleet/local): `<name>.json` (hosts, pids,
endpoint, model), `<name>.token` (mode 0600), `<name>-serve.yaml` (names the token's env var,
never holds it), logs under `logs/<name>/`, and hosts' own `hosts-<name>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from infra.constants import REPO_ROOT
from infra.local import hosts
from infra.local.hosts import Host, HostSet
from ray_cluster import contract

STATE_DIR_ENV = "LLMFLEET_STATE_DIR"
DEFAULT_NAME = "local"
DEFAULT_PORT = contract.HTTP_PORT
DEFAULT_SUBNET = 1
TOKEN_ENV = contract.TOKEN_ENV  # as production names it
ENGINE = "vllm (CPU build) via Ray Serve LLM"
MAX_HOSTS = 8
MAX_RANKS_PER_HOST = 4  # each vLLM CPU rank is a process with its own model copy and KV cache
MAX_MODEL_LEN = 1024
CPU_KVCACHE_GIB = 1  # per rank; the tiny model needs far less, vLLM's unit is GiB
OBJECT_STORE_BYTES = 100 * 1024 * 1024
RESTART_DELAY_S = 5.0  # like systemd RestartSec=5: a lost host stays visible for a moment
MODES = ("auto", "netns", "loopback")

# Stage keys in the order `up` goes through them, with what each waits for.
STAGES = (
    ("model", "tiny DeepSeek-V3 model on disk"),
    ("hosts", "hosts created"),
    ("head", "head node up (GCS + dashboard)"),
    ("gpus", "workers joined with every replica's engine slots"),
    ("preflight", "preflight: gang placement + all-reduce"),
    ("deploy", "serve deploy applied"),
    ("running", "Serve application RUNNING"),
    ("ready", "first real completion"),
)
# Lines `ray_cluster.node deploy` prints on stderr when a stage is done -> the stage that follows.
_DEPLOY_MARKS = (
    ("gpus ready:", "preflight"),
    ("preflight ok:", "deploy"),
    ("serve deploy: applied", "running"),
    ("serve running", "ready"),
)


class LocalError(RuntimeError):
    """One line for the user: what failed and what to do."""


# ---------------------------------------------------------------- plan (pure)


@dataclass(frozen=True)
class Layout:
    hosts: int
    tp: int
    pp: int

    @property
    def replicas(self) -> int:
        return self.hosts - 1  # one replica per worker host

    @property
    def ranks_per_host(self) -> int:
        return self.tp * self.pp


def plan_layout(n_hosts: int, tp: int = 1, pp: int = 1) -> Layout:
    """Head + (n-1) worker hosts, one replica each; a replica's TP x PP ranks stay on its host."""
    if not 2 <= n_hosts <= MAX_HOSTS:
        raise LocalError(
            f"--hosts {n_hosts}: allowed 2..{MAX_HOSTS} (host 0 is the head, each other host one replica)"
        )
    for key, v in (("--tp", tp), ("--pp", pp)):
        if v < 1:
            raise LocalError(f"{key} {v}: allowed an integer >= 1")
    if tp * pp > MAX_RANKS_PER_HOST:
        raise LocalError(f"--tp {tp} x --pp {pp} = {tp * pp} ranks per host: allowed at most {MAX_RANKS_PER_HOST}")
    return Layout(n_hosts, tp, pp)


def omp_threads_bind(ranks: int, cpus: int | None = None, worker_index: int = 0) -> str:
    """VLLM_CPU_OMP_THREADS_BIND of one worker host: one core per rank, round-robin over this
    machine's cores, each worker host starting where the previous one stopped, so replicas on
    different hosts do not share a core while there are cores to go round.

    vLLM's "auto" binds whole NUMA nodes and needs one per rank; this machine class has one."""
    n = max(1, cpus or os.cpu_count() or 1)
    return "|".join(str((worker_index * ranks + r) % n) for r in range(ranks))


@dataclass(frozen=True)
class Ports:
    gcs: int
    dashboard: int
    http: int


def plan_ports(mode: str, subnet_index: int, http_port: int) -> Ports:
    """Namespaces have their own port space; loopback hosts share one, so each cluster gets its own."""
    if not 1 <= http_port <= 65535:
        raise LocalError(f"--port {http_port}: allowed 1..65535")
    if mode == "netns":
        return Ports(6379, 8265, http_port)
    # hosts.plan_hosts gives loopback host i the ports base+10i..base+10i+4; 900+ is free.
    base = 20000 + subnet_index * 1000 + 900
    if base + 1 > 65535:
        raise LocalError(f"--subnet {subnet_index}: allowed 0..44 in loopback mode")
    return Ports(base, base + 1, http_port)


def resolve_mode(mode: str, root: bool) -> str:
    if mode not in MODES:
        raise LocalError(f"--mode {mode!r}: allowed {', '.join(MODES)}")
    if mode == "auto":
        return "netns" if root else "loopback"
    if mode == "netns" and not root:
        raise LocalError("--mode netns needs root (network namespaces); use --mode loopback")
    return mode


def node_argv(
    role: str,
    host: Host,
    head: Host,
    ports: Ports,
    layout: Layout,
    temp_dir: str,
    python: str = sys.executable,
) -> list[str]:
    """The `ray_cluster.node` command of one host (foreground, so the supervisor owns it)."""
    # Logical CPUs: the head's one is the ingress's; a worker's are its engine ranks plus the
    # replica actor, which Ray Serve LLM adds to bundle 0.
    common = [
        "--ip",
        host.ip,
        "--num-cpus",
        "1" if role == "head" else str(layout.ranks_per_host + 1),
        "--object-store-memory",
        str(OBJECT_STORE_BYTES),
        "--temp-dir",
        temp_dir,
        "--block",
        *[f"--ray-arg={a}" for a in host.ray_port_args],
    ]
    if role == "head":
        # Dashboard on the head's own IP: only the local bridge/loopback reaches it, and
        # `local status` reads the cluster's nodes from it without joining as a driver.
        return [
            python,
            "-m",
            "ray_cluster.node",
            "head",
            "--port",
            str(ports.gcs),
            "--dashboard-host",
            head.ip,
            "--dashboard-port",
            str(ports.dashboard),
            *common,
        ]
    return [
        python,
        "-m",
        "ray_cluster.node",
        "worker",
        "--address",
        f"{head.ip}:{ports.gcs}",
        "--num-gpus",
        "0",
        "--device",
        "cpu",
        "--cpu-slots",
        str(layout.ranks_per_host),
        "--wait",
        "120",
        *common,
    ]


def deploy_argv(
    head: Host,
    workers: list[Host],
    ports: Ports,
    layout: Layout,
    serve_config: str,
    model: str,
    timeout: float,
    python: str = sys.executable,
) -> list[str]:
    return contract.node_deploy_argv(
        python,
        serve_config,
        layout.tp,
        layout.pp,
        replicas=layout.replicas,
        device="cpu",
        timeout=timeout,
        token_env=TOKEN_ENV,
        endpoint=f"http://{head.ip}:{ports.http}",
        address=f"{head.ip}:{ports.gcs}",
        dashboard=f"http://{head.ip}:{ports.dashboard}",
        expect_workers=[w.ip for w in workers],
        model=model,
    )


def render_local_serve_config(
    model_id: str, model_dir: str, layout: Layout, head_ip: str, http_port: int
) -> dict:
    """The production Serve config (serve_config.render_serve_config) on the CPU device."""
    from infra.rayconf.serve_config import ServeInputs, render_serve_config, validate_serve_config

    doc = render_serve_config(
        ServeInputs(
            model_id=model_id,
            model_source=model_dir,
            tensor_parallel_size=layout.tp,
            pipeline_parallel_size=layout.pp,
            max_model_len=MAX_MODEL_LEN,
            api_token_env=TOKEN_ENV,
            http_port=http_port,
            replicas=layout.replicas,
            device="cpu",
            cpu_kvcache_gib=CPU_KVCACHE_GIB,
        )
    )
    # The proxy binds the head's IP: loopback clusters share one port space.
    doc["http_options"]["host"] = head_ip
    validate_serve_config(doc)
    return doc


@dataclass
class HostStatus:
    name: str
    ip: str
    role: str
    ranks: int
    status: str  # "alive" | "lost"
    reason: str = ""


def classify_hosts(
    hosts_: list[dict], nodes: list[dict] | None, raylet_running: dict[str, bool]
) -> list[HostStatus]:
    """alive/lost per host from Ray's node table and the host's own processes.

    nodes: [{"ip", "alive"}] from the GCS, or None when the head cannot be asked. The GCS notices
    a killed raylet only after its health checks (tens of seconds), so a host whose raylet
    process is gone counts as lost at once, as a host-level check would say.
    """
    out = []
    for h in hosts_:
        base = dict(name=h["name"], ip=h["ip"], role=h["role"], ranks=h["ranks"])
        if not raylet_running.get(h["name"], False):
            out.append(HostStatus(**base, status="lost", reason="no raylet process on the host"))
        elif nodes is None:
            why = "GCS unreachable" if h["role"] == "head" else "head unreachable, state unknown"
            out.append(HostStatus(**base, status="lost", reason=why))
        elif any(n["ip"] == h["ip"] and n["alive"] for n in nodes):
            out.append(HostStatus(**base, status="alive"))
        elif any(n["ip"] == h["ip"] for n in nodes):
            out.append(HostStatus(**base, status="lost", reason="Ray marks its node dead"))
        else:
            out.append(HostStatus(**base, status="lost", reason="no Ray node with this IP"))
    return out


# ---------------------------------------------------------------- state files


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or Path.home() / ".cache" / "llmfleet" / "local")


def _paths(sd: Path, name: str) -> dict[str, Path]:
    return {
        "state": sd / f"{name}.json",
        "token": sd / f"{name}.token",
        "serve": sd / f"{name}-serve.yaml",
        "logs": sd / "logs" / name,
    }


def load_state(name: str = DEFAULT_NAME, sd: Path | None = None) -> dict | None:
    path = _paths(sd or state_dir(), name)["state"]
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise LocalError(f"state file {path} is corrupt; run `llmfleet local down` to clean up") from None


def _save_state(st: dict, sd: Path) -> None:
    path = _paths(sd, st["name"])["state"]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(st, indent=2))
    tmp.replace(path)


def read_token(st: dict) -> str:
    try:
        return Path(st["token_file"]).read_text().strip()
    except OSError as e:
        raise LocalError(
            f"token file {st['token_file']}: {e.strerror}; run `llmfleet local up` again"
        ) from None


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.chmod(path, 0o600)  # an existing file keeps its mode on O_CREAT


def public_doc(st: dict) -> dict:
    """What `up --json` prints: endpoint, token, model, hosts."""
    return {
        "endpoint": st["endpoint"],
        "token": read_token(st),
        "model": st["model"],
        "hosts": [{"name": h["name"], "ip": h["ip"]} for h in st["hosts"]],
    }


# ---------------------------------------------------------------- processes of a host


def _hostset(st: dict) -> HostSet:
    return HostSet.from_json(st["hostset"])


def _tagged(pid: int, want: bytes) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return want in environ.split(b"\0")


def host_pids(host: Host) -> set[int]:
    """Every process of one host: its namespace's pids, and those tagged LLMF_HOST=<name>."""
    pids: set[int] = set()
    if host.netns and hosts.is_root():
        out = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True).stdout
        pids.update(int(p) for p in out.split() if p.isdigit())
    want = f"{hosts.HOST_ENV}={host.name}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _tagged(int(entry.name), want):
            pids.add(int(entry.name))
    pids.discard(os.getpid())
    return pids


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def raylet_running(host: Host) -> bool:
    return any(_comm(p) == "raylet" for p in host_pids(host))


def ray_pids(st: dict, host_name: str) -> set[int]:
    """The host's Ray processes: everything in it except its supervisor (for fault tests)."""
    host = next(h for h in _hostset(st).hosts if h.name == host_name)
    sup = {h["supervisor_pid"] for h in st["hosts"] if h["name"] == host_name}
    return host_pids(host) - sup


def _pid_alive(pid: int | None, prefix: str) -> bool:
    """Alive and still ours: it carries our host tag (pids get reused)."""
    if not pid:
        return False
    want = f"{hosts.HOST_ENV}={prefix}-h".encode()
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and any(v.startswith(want) for v in environ.split(b"\0"))


# ---------------------------------------------------------------- up


@dataclass
class UpOptions:
    hosts: int = 2
    tp: int = 1
    pp: int = 1
    port: int = DEFAULT_PORT
    mode: str = "auto"
    name: str = DEFAULT_NAME
    subnet: int = DEFAULT_SUBNET
    timeout: float = 600.0
    restart_delay: float = RESTART_DELAY_S


Progress = Callable[[str, str], None]  # (stage key, detail)


def _node_env(token: str) -> dict[str, str]:
    root = str(REPO_ROOT)
    pp = os.environ.get("PYTHONPATH")
    return {
        TOKEN_ENV: token,  # every node's Ray workers inherit it; the ingress reads it there
        "RAY_AUTH_MODE": "disabled",  # Ray's ports stay on the local bridge/loopback
        "PYTHONPATH": f"{root}{os.pathsep}{pp}" if pp else root,
    }


def _start_supervisor(host: Host, argv: list[str], env: dict, restart: float | None, log: Path) -> int:
    cmd = [sys.executable, "-m", "infra.local.cluster", "supervise"]
    cmd += ["--restart-delay", f"{restart:g}"] if restart is not None else ["--no-restart"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        proc = hosts.run_in_host(
            host,
            [*cmd, "--", *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives `local up`; Ctrl-C in the terminal does not reach it
        )
    return proc.pid


def _last_lines(path: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def _wait_head(st: dict, hs: HostSet, ports: Ports, log: Path, timeout: float) -> None:
    from ray_cluster.node import NodeError, wait_for_tcp

    head = hs.hosts[0]
    deadline = time.monotonic() + timeout
    for port in (ports.gcs, ports.dashboard):
        while True:
            if not _pid_alive(st["hosts"][0]["supervisor_pid"], hs.prefix):
                raise LocalError(f"head node exited; log {log}: {_last_lines(log)}")
            try:
                wait_for_tcp(head.ip, port, 1.0, interval=0.5)
                break
            except NodeError as e:
                if time.monotonic() > deadline:
                    raise LocalError(f"{e}; log {log}: {_last_lines(log)}") from None


def _run_deploy(
    argv: list[str], head: Host, env: dict, on_stage: Progress, log: Path, timeout: float
) -> dict:
    proc = hosts.run_in_host(
        head,
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    errors: list[str] = []

    def read_stderr() -> None:
        with open(log, "a") as f:
            for line in proc.stderr:
                f.write(line)
                f.flush()
                for mark, nxt in _DEPLOY_MARKS:
                    if line.startswith(mark):
                        on_stage(nxt, "")
                if line.startswith("error:"):
                    errors.append(line.strip()[len("error:") :].strip())

    out: list[str] = []
    readers = [
        threading.Thread(target=read_stderr, daemon=True),
        threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True),
    ]
    for t in readers:
        t.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise LocalError(f"deploy did not finish within {timeout:g} s; log {log}") from None
    for t in readers:
        t.join(5)
    if proc.returncode != 0:
        raise LocalError(f"deploy failed: {errors[-1] if errors else f'exit {proc.returncode}'}; log {log}")
    lines = [ln for ln in out if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def healthy(st: dict) -> tuple[bool, str]:
    """(ok, why not): every host alive and a real completion answered."""
    rep = status(st["name"], Path(st["state_dir"]))
    lost = [h for h in rep["hosts"] if h["status"] != "alive"]
    if lost:
        return False, "host " + ", ".join(f"{h['name']} ({h['ip']}) lost" for h in lost)
    if not rep["serving"]:
        return False, f"endpoint not serving: {rep['serving_detail']}"
    return True, ""


def _check_ports_free(ip: str, ports: Ports) -> None:
    """Loopback hosts share this machine's ports: fail in one line before starting anything."""
    import socket

    for key, port in (("--port", ports.http), ("gcs port", ports.gcs), ("dashboard port", ports.dashboard)):
        with socket.socket() as s:
            try:
                s.bind((ip, port))
            except OSError as e:
                raise LocalError(
                    f"{key} {port}: cannot bind {ip}:{port} ({e.strerror}); pick another"
                ) from None


def up(o: UpOptions, on_stage: Progress = lambda s, d: None) -> dict:
    """Create the hosts, start the nodes, run the production deploy flow; returns the state."""
    from infra.local.tiny_model import MODEL_ID, ensure_tiny_model

    layout = plan_layout(o.hosts, o.tp, o.pp)
    mode = resolve_mode(o.mode, hosts.is_root())
    ports = plan_ports(mode, o.subnet, o.port)
    sd = state_dir()
    paths = _paths(sd, o.name)

    existing = load_state(o.name, sd)
    if existing is not None:
        have = existing["layout"]
        if (have["hosts"], have["tp"], have["pp"], existing["ports"]["http"], existing["mode"]) != (
            o.hosts,
            o.tp,
            o.pp,
            o.port,
            mode,
        ):
            raise LocalError(
                f"local cluster {o.name!r} already runs with --hosts {have['hosts']} --tp {have['tp']} "
                f"--pp {have['pp']} --port {existing['ports']['http']} ({existing['mode']}); "
                "run `llmfleet local down` first"
            )
        ok, why = healthy(existing)
        if not ok:
            raise LocalError(
                f"local cluster {o.name!r} exists but is not healthy ({why}); run `llmfleet local down` first"
            )
        existing["reused"] = True
        return existing

    if mode == "loopback":
        _check_ports_free(hosts.plan_hosts(o.name, o.hosts, mode, o.subnet).hosts[0].ip, ports)
    on_stage("model", "")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the rich display is the progress; no tqdm bar through it
    model_dir = ensure_tiny_model()
    on_stage("hosts", f"{o.hosts} hosts ({mode})")
    sd.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(paths["logs"], ignore_errors=True)
    try:
        hs = hosts.create(o.name, o.hosts, state_dir=sd, mode=mode, subnet_index=o.subnet)
    except hosts.HostsError as e:
        raise LocalError(str(e)) from None
    head, workers = hs.hosts[0], hs.hosts[1:]
    temp_dir = f"/tmp/llmf-{o.name}"
    token = secrets.token_urlsafe(32)
    _write_secret(paths["token"], token)
    st: dict = {
        "name": o.name,
        "mode": mode,
        "state_dir": str(sd),
        "created": time.time(),
        "layout": {**asdict(layout), "replicas": layout.replicas},
        "engine": ENGINE,
        "ports": asdict(ports),
        "endpoint": f"http://{head.ip}:{ports.http}/v1",
        "model": MODEL_ID,
        "model_dir": str(model_dir),
        "token_file": str(paths["token"]),
        "token_env": TOKEN_ENV,
        "serve_config": str(paths["serve"]),
        "temp_dir": temp_dir,
        "restart_delay_s": o.restart_delay,
        "hostset": hs.to_json(),
        "hosts": [],
        "ready": False,
    }
    try:
        import yaml

        doc = render_local_serve_config(MODEL_ID, str(model_dir), layout, head.ip, ports.http)
        paths["serve"].write_text(yaml.safe_dump(doc, sort_keys=False))
        env = _node_env(token)
        for i, h in enumerate(hs.hosts):
            role = "head" if i == 0 else "worker"
            log = paths["logs"] / f"{h.name}.log"
            argv = node_argv(role, h, head, ports, layout, temp_dir)
            host_env = dict(env)
            if role == "worker":
                # Each host's own cores, as each host's own NIC: in the node's env, not the config.
                host_env["VLLM_CPU_OMP_THREADS_BIND"] = omp_threads_bind(layout.ranks_per_host, worker_index=i - 1)
            # The head is not restarted: a new GCS would not know the Serve app (no GCS FT here).
            pid = _start_supervisor(h, argv, host_env, None if role == "head" else o.restart_delay, log)
            st["hosts"].append(
                {
                    "name": h.name,
                    "ip": h.ip,
                    "role": role,
                    "ranks": 0 if role == "head" else layout.ranks_per_host,
                    "supervisor_pid": pid,
                    "log": str(log),
                }
            )
            _save_state(st, sd)  # pids on disk at once: `down` finds them even if `up` dies here
        on_stage("head", f"{head.name} {head.ip}")
        _wait_head(st, hs, ports, paths["logs"] / f"{head.name}.log", min(o.timeout, 180))
        on_stage(
            "gpus",
            f"{layout.replicas} replica(s) x TP {layout.tp} x PP {layout.pp} = "
            f"{layout.replicas * layout.ranks_per_host} engine slots",
        )
        result = _run_deploy(
            deploy_argv(head, workers, ports, layout, str(paths["serve"]), MODEL_ID, o.timeout),
            head,
            env,
            on_stage,
            paths["logs"] / "deploy.log",
            o.timeout * 4,
        )
        st["ready"] = True
        st["sample"] = result.get("sample", "")
        _save_state(st, sd)
        on_stage("done", "")
        return st
    except BaseException:
        # Nothing half-started stays behind; the logs stay for the error message.
        down(o.name, keep_logs=True)
        raise


# ---------------------------------------------------------------- status / down / chat


def _ray_nodes(st: dict) -> list[dict] | None:
    from ray.util.state import list_nodes

    head_ip, port = st["hosts"][0]["ip"], st["ports"]["dashboard"]
    try:
        nodes = list_nodes(address=f"http://{head_ip}:{port}", timeout=5, raise_on_missing_output=False)
    except Exception:  # unreachable dashboard/GCS: the caller reports the head as lost
        return None
    return [{"ip": n.node_ip, "alive": n.state == "ALIVE", "node_id": n.node_id} for n in nodes]


def status(name: str = DEFAULT_NAME, sd: Path | None = None, probe: bool = True) -> dict:
    """Hosts alive/lost, Serve application state and whether a real completion answers."""
    from ray_cluster.node import NodeError, probe_completion, serve_deployments, serve_status

    sd = sd or state_dir()
    st = load_state(name, sd)
    if st is None:
        raise LocalError(f"no local cluster {name!r} in {sd}; start one with `llmfleet local up`")
    hs = _hostset(st)
    running = {h.name: raylet_running(h) for h in hs.hosts}
    nodes = _ray_nodes(st)
    rows = classify_hosts(st["hosts"], nodes, running)
    head_ip = st["hosts"][0]["ip"]
    dashboard = f"http://{head_ip}:{st['ports']['dashboard']}"
    apps = serve_status(dashboard, timeout=5) if nodes is not None else {}
    # Which engine serves is read from Serve itself: the app's deployments and their replicas.
    deployments = serve_deployments(dashboard, timeout=5) if nodes is not None else {}
    serving, detail = False, "not probed"
    if probe:
        try:
            probe_completion(st["endpoint"][: -len("/v1")], read_token(st), st["model"], timeout=10)
            serving, detail = True, ""
        except (NodeError, OSError) as e:
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
    return {
        "name": st["name"],
        "mode": st["mode"],
        "endpoint": st["endpoint"],
        "model": st["model"],
        "layout": st["layout"],
        "engine": st.get("engine", ENGINE),
        "deployments": deployments,
        "hosts": [asdict(r) for r in rows],
        "lost": [r.name for r in rows if r.status != "alive"],
        "serve": apps,
        "serving": serving,
        "serving_detail": detail,
    }


def metrics_targets(st: dict) -> list[str]:
    """host:port of every Ray node's metrics agent, from Ray's own Prometheus service-discovery
    file (Ray writes it in the head's temp dir; a real Prometheus reads the same file)."""
    path = Path(st["temp_dir"]) / "prom_metrics_service_discovery.json"
    try:
        groups = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [t for g in groups for t in g.get("targets", [])]


def engine_requests_by_host(st: dict, timeout: float = 5.0) -> dict[str, float]:
    """{node IP: finished requests} from vLLM's own counter (`vllm:request_success`, which Ray
    Serve LLM exports through each node's metrics agent as ray_vllm_request_success_total)."""
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
                if s.name == "ray_vllm_request_success_total":
                    ip = s.labels.get("NodeAddress", target.split(":")[0])
                    out[ip] = out.get(ip, 0.0) + s.value
    return out


def _kill(find: Callable[[], set[int]], grace: float) -> None:
    """SIGTERM, then SIGKILL what is left after grace s; wait until all are gone (max 5 s)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        pids = find()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = find()
        if not pids:
            return


def _stop_processes(st: dict, prefix: str, grace: float = 2.0) -> None:
    # Supervisors first, so nothing restarts a node while it is being stopped. Ray's own graceful
    # stop takes 10-20 s per node here; the cluster is being destroyed, so a short grace will do
    # (as `ray stop --force`).
    sups = {h.get("supervisor_pid") for h in st.get("hosts", [])}
    _kill(lambda: {p for p in sups if _pid_alive(p, prefix)}, grace=0.0)
    hs = _hostset(st)
    _kill(lambda: set().union(*(host_pids(h) for h in hs.hosts)), grace=grace)


def down(name: str = DEFAULT_NAME, keep_logs: bool = False) -> list[str]:
    """Stop supervisors, then every Ray process of the hosts, then remove namespaces and state.

    Idempotent; returns what was removed (empty when nothing was there)."""
    sd = state_dir()
    paths = _paths(sd, name)
    removed: list[str] = []
    try:
        st = load_state(name, sd)
    except LocalError:
        st = None
    prefix = hosts.prefix_for(name)
    if st is not None:
        _stop_processes(st, prefix)
        removed.append(f"supervisors of {len(st.get('hosts', []))} hosts")
    removed += hosts.teardown(prefix, cluster=name, state_dir=sd)
    temp_dir = (st or {}).get("temp_dir") or f"/tmp/llmf-{name}"
    if os.path.isdir(temp_dir):
        shutil.rmtree(temp_dir, ignore_errors=True)
        removed.append(f"ray temp dir {temp_dir}")
    for key in ("state", "token", "serve"):
        if paths[key].exists():
            paths[key].unlink()
            removed.append(f"{key} {paths[key]}")
    if not keep_logs and paths["logs"].exists():
        shutil.rmtree(paths["logs"], ignore_errors=True)
        removed.append(f"logs {paths['logs']}")
    return removed


def chat(message: str, name: str = DEFAULT_NAME, max_tokens: int = 48, temperature: float = 0.7) -> dict:
    """One chat completion against the local endpoint with the official openai client."""
    import openai

    st = load_state(name)
    if st is None:
        raise LocalError(f"no local cluster {name!r} in {state_dir()}; start one with `llmfleet local up`")
    client = openai.OpenAI(base_url=st["endpoint"], api_key=read_token(st), timeout=120, max_retries=1)
    try:
        r = client.chat.completions.create(
            model=st["model"],
            messages=[{"role": "user", "content": message}],
            max_tokens=max_tokens,
            temperature=temperature,
        )
    except openai.APIConnectionError as e:
        raise LocalError(f"{st['endpoint']}: {e}; see `llmfleet local status`") from None
    except openai.APIStatusError as e:
        raise LocalError(f"{st['endpoint']}: HTTP {e.status_code}: {e.message}") from None
    c = r.choices[0]
    return {
        "model": r.model,
        "reply": c.message.content or "",
        "finish_reason": c.finish_reason,
        "usage": r.usage.model_dump() if r.usage else None,
    }


# ---------------------------------------------------------------- supervisor (runs inside a host)


def supervise(argv: list[str], restart_delay: float | None) -> int:
    """Run argv; when it exits, start it again after restart_delay s (None: do not). SIGTERM stops."""
    child: subprocess.Popen | None = None
    stopping = False

    def on_term(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes on SIGTERM

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while True:
        child = subprocess.Popen(argv)
        rc = child.wait()
        if stopping or restart_delay is None:
            return rc
        print(f"supervisor: node exited with {rc}; restarting in {restart_delay:g} s", flush=True)
        deadline = time.monotonic() + restart_delay
        while time.monotonic() < deadline and not stopping:
            time.sleep(0.2)
        if stopping:
            return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.local.cluster")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("supervise", help="run a node command, restarting it when it exits")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--restart-delay", type=float, default=RESTART_DELAY_S)
    g.add_argument("--no-restart", action="store_true")
    s.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        p.error("supervise: no command given after --")
    return supervise(cmd, None if a.no_restart else a.restart_delay)


if __name__ == "__main__":
    sys.exit(main())
