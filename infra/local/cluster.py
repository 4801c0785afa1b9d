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
- The head is supervised too, and after the first deploy the head runs the deploy watcher
  (`ray_cluster.node deploy --watch`, supervised) as production's deploy unit does: a head whose
  Ray processes die comes back with a new, empty GCS (or, with --gcs-redis, the same GCS state
  from redis); the workers' raylets lose their GCS, exit, and their supervisors rejoin them to
  the new head; the watcher sees the workers come back and deploys the Serve app again. That is
  production's replaced head (an Auto Scaling group of one) on this machine.

Each host's node runs under a supervisor (`python -m infra.local.processes supervise`) inside the
host (network namespace when root, else a loopback address). The deploy is the production flow,
`python -m ray_cluster.node deploy` run in the head host: wait for TP x PP GPUs -> preflight ->
serve deploy -> ready after a real completion.

Modules: `layout` (the pure plan and each host's commands), `state` (files on disk), `processes`
(finding/stopping a host's processes, the supervisor), `status`; this one runs up/down/chat.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from infra.constants import REPO_ROOT
from infra.local import adapters, containers, hosts, prometheus, tiny_model
from infra.local.hosts import Host, HostSet
from infra.local.layout import (
    DEFAULT_PORT,
    DEFAULT_SUBNET,
    ENGINE,
    TOKEN_ENV,
    Layout,
    LocalError,
    Ports,
    check_options,
    check_routing,
    every_node_serving,
    gcs_redis_env,
    local_deploy_argv,
    local_watch_argv,
    node_argv,
    omp_threads_bind,
    plan_layout,
    plan_ports,
    redis_conf,
    redis_server_argv,
    render_local_serve_config,
    resolve_mode,
)
from infra.local.processes import (
    RESTART_DELAY_S,
    last_lines,
    pid_alive,
    start_node,
    start_supervisor,
    stop_processes,
)
from infra.local.state import (
    DEFAULT_NAME,
    GcsRedis,
    HostEntry,
    LayoutRecord,
    LocalState,
    LoraStore,
    Options,
    Supervised,
    load_state,
    save_state,
    state_dir,
    state_paths,
    write_secret,
)
from infra.local.status import healthy
from infra.local.tiny_model import MODEL_ID, check_model_id
from infra.rayconf.serve_config import DIRECT_LOSES
from infra.stack.engine_options import ingress_options
from ray_cluster.contract import ACTIVITY_PATH_RE, is_direct
from ray_cluster.node import NodeError, deployed_marker, wait_for_tcp

# Stage keys in the order `up` goes through them, with what each waits for. A label is shown
# from the moment the stage starts, so it names the goal ("... to be RUNNING"), never a state
# it has not reached: "Serve application RUNNING" sat above the error of an app that never ran.
STAGES = (
    ("model", "tiny model on disk"),
    ("hosts", "hosts created"),
    ("head", "head node up (GCS + dashboard)"),
    ("gpus", "workers joined with every replica's engine slots"),
    ("preflight", "preflight: gang placement + all-reduce"),
    ("deploy", "serve deploy applied"),
    ("running", "Serve application starting (engine load, until RUNNING)"),
    ("ready", "first real completion"),
)
FAILED_STAGE = "failed"  # on_stage(FAILED_STAGE, why): the stage in flight did not finish


# Lines `ray_cluster.node deploy` prints on stderr when a stage is done -> the stage that follows.
_DEPLOY_MARKS = (
    ("gpus ready:", "preflight"),
    ("preflight ok:", "deploy"),
    ("serve deploy: applied", "running"),
    ("serve running", "ready"),
)


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
    image: str | None = None  # run each host's node in this node image (infra.local.containers)
    # Ray's GCS fault tolerance on a local redis-server (unproven: never run by its author)
    gcs_redis: bool = False
    # `-c llmfleet:engineArgs=...` / `llmfleet:serveOptions=...`: as on a stack, over the
    # local defaults (infra.stack.engine_options.check_local holds them to the local layout)
    engine_args: dict = field(default_factory=dict)
    serve_options: dict = field(default_factory=dict)
    routing: str = "pow2"  # the Serve request router: pow2, or prefix (llmfleet:routing)
    # which tiny model the replicas serve (infra.local.tiny_model.TINY_MODEL_IDS); the default
    # is R1's stand-in, the Llama one has no MLA (prefix caching works on vLLM's CPU build)
    model: str = MODEL_ID
    # issue #33: the last N worker hosts train (`finetune --local`) instead of serving
    train_hosts: int = 0
    # serve LoRA adapters from the local adapters store (infra.local.adapters)
    lora: bool = False
    # `-c llmfleet:directStreaming=true`: the engine replica's own vLLM app, gated in the
    # replica, is the HTTP ingress (ray_cluster.serve_app, direct streaming)
    direct_streaming: bool = False


Progress = Callable[[str, str], None]  # (stage key, detail)


def check_direct(o: UpOptions) -> None:
    """Direct streaming's refusals (serve_config.DIRECT_LOSES) in local up's words, before any
    host exists."""
    if not o.direct_streaming:
        return
    ingress = sorted(ingress_options(o.serve_options))
    for bad, why in (
        (o.lora and "--lora", DIRECT_LOSES["lora_config"]),
        (o.routing != "pow2" and f"--routing {o.routing}", DIRECT_LOSES["routing"]),
        (ingress and f"llmfleet:serveOptions.ingress.{ingress[0]}", DIRECT_LOSES["ingress_options"]),
    ):
        if bad:
            raise LocalError(f"{bad} with llmfleet:directStreaming=true: not allowed; {why}")


def _node_env(token: str, st: LocalState | None = None) -> dict[str, str]:
    root = str(REPO_ROOT)
    pp = os.environ.get("PYTHONPATH")
    # `up --lora`: every node reaches the adapters store (a woken or restarted node too)
    store = st.lora if st is not None else None
    return {
        TOKEN_ENV: token,  # every node's Ray workers inherit it; the ingress reads it there
        "RAY_AUTH_MODE": "disabled",  # Ray's ports stay on the local bridge/loopback
        "PYTHONPATH": f"{root}{os.pathsep}{pp}" if pp else root,
        **(adapters.env(store.endpoint) if store is not None else {}),
    }


def _wait_head(st: LocalState, hs: HostSet, ports: Ports, log: Path, timeout: float) -> None:

    head = hs.hosts[0]
    deadline = time.monotonic() + timeout
    for port in (ports.gcs, ports.dashboard):
        while True:
            if not pid_alive(st.hosts[0].supervisor_pid, hs.prefix):
                raise LocalError(f"head node exited; log {log}: {last_lines(log)}")
            try:
                wait_for_tcp(head.ip, port, 1.0, interval=0.5)
                break
            except NodeError as e:
                if time.monotonic() > deadline:
                    raise LocalError(f"{e}; log {log}: {last_lines(log)}") from None


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

    assert proc.stdout is not None and proc.stderr is not None  # both PIPE above
    stdout, stderr = proc.stdout, proc.stderr

    def read_stderr() -> None:
        with open(log, "a") as f:
            for line in stderr:
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
        threading.Thread(target=lambda: out.extend(stdout), daemon=True),
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


def serves_direct(st: LocalState) -> bool:
    """The cluster's Serve config (the file its deploy watcher applies) asks for direct streaming."""
    import yaml

    try:
        doc = yaml.safe_load(Path(st.serve_config).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return any(is_direct(a.get("args")) for a in doc.get("applications") or [])


def _reuse(existing: LocalState, o: UpOptions, mode: str) -> LocalState:
    """`up` on a running cluster: the same shape and healthy -> it, else one line saying why not."""
    have = existing.layout
    routing = existing.routing
    want = (o.hosts, o.tp, o.pp, o.port, mode, o.routing, o.model, o.train_hosts, o.lora)
    have_t = (have.hosts, have.tp, have.pp, existing.ports.http, existing.mode, routing)
    have_x = (have.trainers, existing.lora is not None)
    if (*have_t, existing.model, *have_x) != want:
        raise LocalError(
            f"local cluster {o.name!r} already runs with --hosts {have.hosts} --tp {have.tp} "
            f"--pp {have.pp} --port {existing.ports.http} --routing {routing} "
            f"--model {existing.model} --train-hosts {have_x[0]}{' --lora' if have_x[1] else ''} "
            f"({existing.mode}); run `llmfleet local down` first"
        )
    if serves_direct(existing) != o.direct_streaming:
        raise LocalError(
            f"local cluster {o.name!r} already runs with llmfleet:directStreaming="
            f"{str(not o.direct_streaming).lower()}; run `llmfleet local down` first"
        )
    ok, why = healthy(existing)
    if not ok:
        raise LocalError(
            f"local cluster {o.name!r} exists but is not healthy ({why}); run `llmfleet local down` first"
        )
    options = Options(engine_args=o.engine_args, serve_options=o.serve_options)
    if existing.options != options:
        raise LocalError(
            f"local cluster {o.name!r} already runs with other engine/Serve options "
            f"({existing.options.model_dump_json()}); run `llmfleet local down` first"
        )
    existing.reused = True
    return existing


def _new_state(
    o: UpOptions,
    mode: str,
    sd: Path,
    paths: dict,
    layout: Layout,
    ports: Ports,
    hs: HostSet,
    model_id: str,
    model_dir: Path,
) -> LocalState:
    head = hs.hosts[0]
    return LocalState(
        name=o.name,
        mode=mode,
        state_dir=str(sd),
        created=time.time(),
        layout=LayoutRecord(**asdict(layout), replicas=layout.replicas),
        routing=o.routing,
        engine=ENGINE,
        ports=ports,
        endpoint=f"http://{head.ip}:{ports.http}/v1",
        model=model_id,
        model_dir=str(model_dir),
        token_file=str(paths["token"]),
        token_env=TOKEN_ENV,
        serve_config=str(paths["serve"]),
        image=o.image,
        options=Options(engine_args=o.engine_args, serve_options=o.serve_options),
        temp_dir=f"/tmp/llmf-{o.name}",
        restart_delay_s=o.restart_delay,
        hostset=hs,
    )


def _start_nodes(
    st: LocalState, hs: HostSet, layout: Layout, ports: Ports, env: dict, o: UpOptions, paths: dict
) -> None:
    """One supervised `ray_cluster.node` per host, each inside its host; pids saved as they start."""
    if o.image:  # the node image instead of the venv: one container per host
        st.serve_config = containers.start_nodes(
            st, hs, layout, ports, env[TOKEN_ENV], o.image, paths, save_state
        )
        return
    head = hs.hosts[0]
    redis_password = _start_gcs_redis(st, head, ports, paths) if o.gcs_redis else None
    for i, h in enumerate(hs.hosts):
        role = layout.role(i)
        log = paths["logs"] / f"{h.name}.log"
        argv = node_argv(role, h, head, ports, layout, st.temp_dir)
        host_env = dict(env)
        if redis_password is not None:
            host_env |= gcs_redis_env(role, head.ip, ports.redis, redis_password)
        if role == "head":  # the Ray dashboard's metrics panels query the cluster's Prometheus
            host_env["RAY_PROMETHEUS_HOST"] = prometheus.url_for(st.mode, head, ports)
        if role == "worker":
            # Each host's own cores, as each host's own NIC: in the node's env, not the config.
            host_env["VLLM_CPU_OMP_THREADS_BIND"] = omp_threads_bind(
                layout.ranks_per_host, worker_index=i - 1
            )
        # The head restarts too: with an empty GCS the deploy watcher (_start_watcher) deploys
        # the Serve app again once the workers rejoin; with --gcs-redis the GCS keeps it.
        pid = start_node(h, argv, host_env, o.restart_delay, log)
        st.hosts.append(
            HostEntry(
                name=h.name,
                ip=h.ip,
                role=role,
                ranks=layout.ranks_per_host if role == "worker" else 0,
                supervisor_pid=pid,
                log=str(log),
            )
        )
        save_state(st, Path(st.state_dir))  # pids on disk at once: `down` finds them even if `up` dies here


def _start_watcher(
    st: LocalState, head: Host, deploy_argv: list[str], env: dict, paths: dict, restart: float
) -> None:
    """The head's deploy watcher, supervised (production: the deploy unit, Restart=always). Its
    first pass re-applies the config just deployed, which Serve treats as no change."""
    log = paths["logs"] / "watch.log"
    pid = start_supervisor(head, local_watch_argv(deploy_argv), env, restart, log)
    st.watcher = Supervised(supervisor_pid=pid, log=str(log))
    save_state(st, Path(st.state_dir))


def _start_gcs_redis(st: LocalState, head: Host, ports: Ports, paths: dict) -> str:
    """redis-server on the head host, supervised; its config (with the password) in a 0600 file."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise LocalError("--gcs-redis: redis-server not found; install it (scripts/system-deps.sh)")
    password = secrets.token_urlsafe(32)
    data = Path(st.state_dir) / "gcs-redis"
    data.mkdir(parents=True, exist_ok=True)
    conf = data / "redis.conf"
    write_secret(conf, redis_conf(head.ip, ports.redis, str(data), password))
    log = paths["logs"] / "gcs-redis.log"
    pid = start_supervisor(head, redis_server_argv(str(conf), binary), {}, RESTART_DELAY_S, log)
    st.gcs_redis = GcsRedis(supervisor_pid=pid, port=ports.redis, log=str(log))
    save_state(st, Path(st.state_dir))
    return password


def _start_adapters_store(st: LocalState, head: Host, ports: Ports, paths: dict) -> None:
    """`up --lora`: the adapters store on the head host, supervised, its bucket created (its
    endpoint in the state: _node_env gives every node the env that reaches it)."""
    log = paths["logs"] / "adapters-store.log"
    url = adapters.endpoint(head, ports)
    pid = start_supervisor(head, adapters.server_argv(head, ports), {}, RESTART_DELAY_S, log)
    st.lora = LoraStore(supervisor_pid=pid, endpoint=url, adapters=adapters.adapters_uri(), log=str(log))
    save_state(st, Path(st.state_dir))
    adapters.wait_and_create_bucket(url, log)


def up(o: UpOptions, on_stage: Progress = lambda s, d: None) -> LocalState:
    """Create the hosts, start the nodes, run the production deploy flow; returns the state."""

    try:
        model_id = check_model_id(o.model)
    except ValueError as e:
        raise LocalError(f"--{e}") from None
    layout = plan_layout(o.hosts, o.tp, o.pp, model_id=model_id, trainers=o.train_hosts)
    if o.image and (o.train_hosts or o.lora):
        raise LocalError("--train-hosts/--lora: allowed with the venv's nodes, not --image (not built there)")
    if o.lora:
        adapters.check_installed()
    check_options(o.engine_args, o.serve_options, layout)
    check_routing(o.routing, layout)  # before any host exists
    check_direct(o)
    mode = containers.resolve_mode(o.mode) if o.image else resolve_mode(o.mode, hosts.is_root())
    ports = plan_ports(mode, o.subnet, o.port)
    sd = state_dir()
    paths = state_paths(sd, o.name)
    existing = load_state(o.name, sd)
    if existing is not None:
        return _reuse(existing, o, mode)

    if mode == "loopback":
        _check_ports_free(hosts.plan_hosts(o.name, o.hosts, mode, o.subnet).hosts[0].ip, ports)
    if o.image:
        containers.check_image(o.image)
    on_stage("model", "")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the rich display is the progress; no tqdm bar through it
    model_dir = tiny_model.ensure_tiny_model(model_id=model_id)  # by module: tests replace it
    on_stage("hosts", f"{o.hosts} hosts ({mode})")
    sd.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(paths["logs"], ignore_errors=True)
    try:
        hs = hosts.create(o.name, o.hosts, state_dir=sd, mode=mode, subnet_index=o.subnet)
    except hosts.HostsError as e:
        raise LocalError(str(e)) from None
    head, workers = hs.hosts[0], hs.hosts[1 : 1 + layout.replicas]  # serving hosts; trainers after
    token = secrets.token_urlsafe(32)
    write_secret(paths["token"], token)
    st = _new_state(o, mode, sd, paths, layout, ports, hs, model_id, model_dir)
    try:
        import yaml

        if o.image:  # where the image's uid can read it (containers.NODE_ROOT says why)
            model_dir = containers.stage_model(o.name, model_dir)
            st.model_dir = str(model_dir)
        doc = render_local_serve_config(
            model_id,
            str(model_dir),
            layout,
            head.ip,
            ports.http,
            o.engine_args,
            o.serve_options,
            routing=o.routing,
            # not in image mode (the container sees no state dir), nor a path the gate would refuse
            # nor with direct streaming: idle stop's file is the ingress's (DIRECT_LOSES)
            activity_file=None
            if o.image or o.direct_streaming or not ACTIVITY_PATH_RE.fullmatch(str(paths["activity"]))
            else str(paths["activity"]),
            lora=adapters.settings() if o.lora else None,
            every_node=every_node_serving(mode, layout),
            direct_streaming=o.direct_streaming,
        )
        paths["serve"].write_text(yaml.safe_dump(doc, sort_keys=False))
        # A marker an earlier cluster of this name left in this machine's temp dir would make
        # the deploy skip its preflight (ray_cluster.watch.preflight_needed): a new cluster has
        # deployed nothing. (Image mode keeps it in the head container's own temp dir.)
        Path(deployed_marker(str(paths["serve"]))).unlink(missing_ok=True)
        if o.lora:  # before the nodes: their env points S3 at it
            _start_adapters_store(st, head, ports, paths)
        env = _node_env(token, st)
        _start_nodes(st, hs, layout, ports, env, o, paths)
        on_stage("head", f"{head.name} {head.ip}")
        _wait_head(st, hs, ports, paths["logs"] / f"{head.name}.log", min(o.timeout, 180))
        # Metrics: scraping starts before the deploy, so the first requests are counted too.
        st.prometheus = prometheus.start_if_installed(st, head, ports, sd, paths["logs"] / "prometheus.log")
        save_state(st, sd)
        on_stage(
            "gpus",
            f"{layout.replicas} replica(s) x TP {layout.tp} x PP {layout.pp} = "
            f"{layout.replicas * layout.ranks_per_host} engine slots",
        )
        python = "python3" if o.image else sys.executable  # the image's interpreter, or the venv's
        argv = local_deploy_argv(head, workers, ports, layout, st.serve_config, model_id, o.timeout, python)
        if o.image:  # the production flow from inside the head container
            argv = containers.exec_argv(head, argv)
        result = _run_deploy(
            argv,
            head,
            env,
            on_stage,
            paths["logs"] / "deploy.log",
            o.timeout * 4,
        )
        st.ready = True
        st.sample = str(result.get("sample", ""))
        if not o.image:  # the image mode's head container has no watcher here (yet)
            _start_watcher(st, head, argv, env, paths, o.restart_delay)
        save_state(st, sd)
        on_stage("done", "")
        return st
    except BaseException as e:
        on_stage(FAILED_STAGE, type(e).__name__)
        # Ray's own logs live in its temp dir, which `down` removes: keep them beside ours,
        # and say what the engine itself reported (Serve's message often ends in "See root
        # cause above" with the root cause only in a worker's log).
        kept = keep_ray_logs(st.temp_dir, paths["logs"] / "ray")
        down(o.name, keep_logs=True)
        if isinstance(e, LocalError) and kept is not None:
            cause = engine_error(kept)
            raise LocalError(
                f"{e}" + (f"; engine: {cause}" if cause else "") + f"; Ray's logs kept in {kept}"
            ) from None
        raise


def keep_ray_logs(temp_dir: str, dest: Path) -> Path | None:
    """Copy every Ray session's logs/ under `temp_dir` to `dest` (None when there are none)."""
    sessions = sorted(p for p in Path(temp_dir).glob("session_2*") if (p / "logs").is_dir())
    if not sessions:
        return None
    for session in sessions:
        # sockets and dangling links are not logs; the copy must not fail the error path
        shutil.copytree(
            session / "logs",
            dest / session.name,
            ignore=shutil.ignore_patterns("*.sock", "sockets"),
            ignore_dangling_symlinks=True,
            dirs_exist_ok=True,
        )
    return dest


# "ValueError: ...", "vllm.x.EngineError: ...": an exception line of a Python traceback
_EXC_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception)): (.+)$")
# Wrappers that carry no cause of their own: the replica/actor died, the engine failed to start
_WRAPPERS = (
    "RayTaskError",
    "RayActorError",
    "ActorDiedError",
    "ActorUnavailableError",
    "DeploymentUnavailable",
)


def engine_error(logs: Path) -> str | None:
    """The first exception a Ray worker logged that is not a wrapper of another one: the
    engine's own error (vLLM's ValueError, a CUDA/OMP error, ...), in one line. Worker stderr
    (worker-*.err, where vLLM's engine core prints) first, then Serve's replica logs."""
    files = sorted(logs.rglob("worker-*.err"), key=lambda f: f.stat().st_mtime)
    files += sorted((f for f in logs.rglob("*.log") if "replica" in f.name), key=lambda f: f.stat().st_mtime)
    for f in files:
        try:
            lines = f.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            m = _EXC_LINE.match(line.strip())
            if not m or m.group(1).startswith(_WRAPPERS) or "See root cause above" in m.group(2):
                continue
            return f"{m.group(1)}: {m.group(2).strip()[:500]} ({f.name})"
    return None


def down(name: str = DEFAULT_NAME, keep_logs: bool = False) -> list[str]:
    """Stop supervisors, then every Ray process of the hosts, then remove namespaces and state.

    Idempotent; returns what was removed (empty when nothing was there)."""
    sd = state_dir()
    paths = state_paths(sd, name)
    removed: list[str] = []
    try:
        st = load_state(name, sd)
    except LocalError:
        st = None
    prefix = hosts.prefix_for(name)
    removed += prometheus.stop(st, sd, name)
    removed += containers.down(st, name, sd, paths["logs"])  # first: no restart policy revives a node
    if st is not None:
        stop_processes(st, prefix)
        removed.append(f"supervisors of {len(st.hosts)} hosts")
    removed += hosts.teardown(prefix, cluster=name, state_dir=sd)
    temp_dir = st.temp_dir if st is not None else f"/tmp/llmf-{name}"
    if os.path.isdir(temp_dir):
        shutil.rmtree(temp_dir, ignore_errors=True)
        removed.append(f"ray temp dir {temp_dir}")
    for key in ("state", "token", "serve", "activity"):
        if paths[key].exists():
            paths[key].unlink()
            removed.append(f"{key} {paths[key]}")
    if not keep_logs and paths["logs"].exists():
        shutil.rmtree(paths["logs"], ignore_errors=True)
        removed.append(f"logs {paths['logs']}")
    return removed
