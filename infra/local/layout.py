"""The plan of a local cluster (pure): layout, ports, mode, and the node/deploy commands and
Serve config each host runs, built from the node contract and the production renderer."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from infra.catalog import load_catalog
from infra.local.hosts import Host
from infra.local.tiny_model import MODEL_ID, TINY_HEADS, TINY_LAYERS
from infra.rayconf.serve_config import ServeInputs, render_serve_config, validate_serve_config
from infra.rayconf.serving import lora_inputs, serving_default_inputs
from infra.stack import serve_autoscaling
from infra.stack.engine_options import OptionError, check_local, ingress_options, llm_options
from ray_cluster import contract

if TYPE_CHECKING:
    from infra.stack.lora import LoraSettings

TOKEN_ENV = contract.TOKEN_ENV  # as production names it


DEFAULT_PORT = contract.HTTP_PORT


DEFAULT_SUBNET = 1


ENGINE = "vllm (CPU build) via Ray Serve LLM"


MAX_HOSTS = 8


MAX_RANKS_PER_HOST = 4  # each vLLM CPU rank is a process with its own model copy and KV cache


MAX_MODEL_LEN = 1024


# What one CPU replica of the tiny model serves at once before another replica helps (Serve
# autoscaling's target; a stack's comes from its plan).
LOCAL_CONCURRENCY = 4
CPU_KVCACHE_GIB = 1  # per rank; the tiny model needs far less, vLLM's unit is GiB


OBJECT_STORE_BYTES = 100 * 1024 * 1024


HEAD_CPUS = 2  # the ingress's, and the prefix router's tree actor's (node_argv says why)


MODES = ("auto", "netns", "loopback")


def every_node_serving(mode: str, layout: Layout) -> bool:
    """A Serve proxy and an ingress replica on the head and on each serving worker: where each
    host has its own port space (not loopback, where every proxy would bind the same port) and no
    trainer host (its CPU is a Ray Train worker's; the ingress' spread could take it)."""
    return mode != "loopback" and layout.trainers == 0


def ingress_hosts(layout: Layout) -> int:
    return 1 + layout.replicas  # the head and each serving worker


class LocalError(RuntimeError):
    """One line for the user: what failed and what to do."""


# `local up --train-hosts N`: the last N worker hosts are trainer hosts (issue #33): no engine
# resource, TRAIN_SLOTS units of contract.TRAIN_RESOURCE and as many CPUs, for `finetune --local`.
TRAIN_SLOTS = 1


Role = Literal["head", "worker", "trainer"]


@dataclass(frozen=True)
class Layout:
    hosts: int
    tp: int
    pp: int
    trainers: int = 0

    @property
    def replicas(self) -> int:
        return self.hosts - 1 - self.trainers  # one replica per serving worker host

    def role(self, i: int) -> Role:
        """Host i's role: the head, a serving worker, or (the last `trainers` hosts) a trainer."""
        if i == 0:
            return "head"
        return "trainer" if i > self.replicas else "worker"

    @property
    def ranks_per_host(self) -> int:
        return self.tp * self.pp


def plan_layout(
    n_hosts: int,
    tp: int = 1,
    pp: int = 1,
    heads: int = TINY_HEADS,
    layers: int = TINY_LAYERS,
    model_id: str = MODEL_ID,
    trainers: int = 0,
) -> Layout:
    """Head + (n-1) worker hosts, one replica each; a replica's TP x PP ranks stay on its host.

    Checked against the model before anything starts: vLLM refuses a TP that does not divide
    the attention heads and a PP with more stages than layers, but only inside the replica,
    after hosts, nodes, the preflight and a deploy (minutes), with the cause in Ray's logs."""
    if not 2 <= n_hosts <= MAX_HOSTS:
        raise LocalError(
            f"--hosts {n_hosts}: allowed 2..{MAX_HOSTS} (host 0 is the head, each other host one replica)"
        )
    for key, v in (("--tp", tp), ("--pp", pp)):
        if v < 1:
            raise LocalError(f"{key} {v}: allowed an integer >= 1")
    if heads % tp:
        allowed = ", ".join(str(d) for d in range(1, heads + 1) if heads % d == 0)
        raise LocalError(
            f"--tp {tp}: {model_id} has {heads} attention heads, which tensor parallelism splits evenly; "
            f"allowed: {allowed}"
        )
    if pp > layers:
        raise LocalError(
            f"--pp {pp}: {model_id} has {layers} layers, at least one per pipeline stage; allowed: 1..{layers}"
        )
    if tp * pp > MAX_RANKS_PER_HOST:
        raise LocalError(
            f"--tp {tp} x --pp {pp} = {tp * pp} ranks per host: allowed at most {MAX_RANKS_PER_HOST}"
        )
    if not 0 <= trainers <= n_hosts - 2:
        raise LocalError(
            f"--train-hosts {trainers}: allowed 0..{n_hosts - 2} with --hosts {n_hosts} "
            "(the head and at least one serving worker host stay)"
        )
    return Layout(n_hosts, tp, pp, trainers)


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
    redis: int = 6380  # `local up --gcs-redis`: the GCS store on the head host
    s3: int = 6381  # `local up --lora`: the adapters store on the head host (infra.local.adapters)


# `local up --gcs-redis`: Ray's GCS fault tolerance on a local redis-server (Debian's, from
# scripts/system-deps.sh). The head's node restarts (its supervisor) into the same GCS state.
GCS_RECONNECT_TIMEOUT_S = 120


def redis_conf(ip: str, port: int, data_dir: str, password: str) -> str:
    """redis-server's config (a 0600 file, so the password is in no process's argv): the head's
    address only, append-only persistence (a restarted redis-server keeps the GCS tables)."""
    return "\n".join(
        [
            f"bind {ip}",
            f"port {port}",
            "protected-mode yes",
            f"requirepass {password}",
            f"dir {data_dir}",
            "appendonly yes",
            'save ""',
            "daemonize no",
            "",
        ]
    )


def redis_server_argv(conf_path: str, binary: str = "redis-server") -> list[str]:
    return [binary, conf_path]


def gcs_redis_env(role: str, ip: str, port: int, password: str) -> dict[str, str]:
    """The node env of a host with the GCS on redis: the head's store address and password (the
    node passes it to `ray start`, ray_cluster/node.py gcs_redis_args), every host's longer wait
    for a GCS that comes back (Ray reads RAY_<config> for its system config)."""
    env = {"RAY_gcs_rpc_server_reconnect_timeout_s": str(GCS_RECONNECT_TIMEOUT_S)}
    if role == "head":
        env |= {"RAY_REDIS_ADDRESS": f"{ip}:{port}", contract.GCS_REDIS_PASSWORD_ENV: password}
    return env


def plan_ports(mode: str, subnet_index: int, http_port: int) -> Ports:
    """Namespaces have their own port space; loopback hosts share one, so each cluster gets its own."""
    if not 1 <= http_port <= 65535:
        raise LocalError(f"--port {http_port}: allowed 1..65535")
    if mode == "netns":
        return Ports(6379, 8265, http_port, 6380)
    # hosts.plan_hosts gives loopback host i the ports base+10i..base+10i+4; 900+ is free.
    base = 20000 + subnet_index * 1000 + 900
    if base + 1 > 65535:
        raise LocalError(f"--subnet {subnet_index}: allowed 0..44 in loopback mode")
    return Ports(base, base + 1, http_port, base + 3, base + 4)  # base + 2: the Prometheus (prometheus.py)


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
    # Logical CPUs: the head's are the ingress's and one free for the prefix router's tree actor
    # (--routing prefix: Ray places an actor only where one CPU is free, though it holds none
    # once running; the production head advertises all its vCPUs); a worker's are its engine
    # ranks plus the replica actor, which Ray Serve LLM adds to bundle 0, plus one for the ingress
    # replica it takes when every node serves (every_node_serving; idle otherwise: logical CPUs
    # reserve nothing). A trainer host's CPUs are its train slots' (one Ray Train worker each).
    cpus = {"head": HEAD_CPUS, "trainer": TRAIN_SLOTS}.get(role, layout.ranks_per_host + 2)
    common = [
        "--num-cpus",
        str(cpus),
        "--object-store-memory",
        str(OBJECT_STORE_BYTES),
        "--temp-dir",
        temp_dir,
        *[f"--ray-arg={a}" for a in host.ray_port_args],
    ]
    if role == "head":
        # Dashboard on the head's own IP: only the local bridge/loopback reaches it, and
        # `local status` reads the cluster's nodes from it without joining as a driver.
        dash = [
            "--port",
            str(ports.gcs),
            "--dashboard-host",
            head.ip,
            "--dashboard-port",
            str(ports.dashboard),
        ]
        return [*contract.node_command(python), *contract.head_args(ip=host.ip, options=[*dash, *common])]
    trainer = role == "trainer"
    args = contract.worker_args(
        address=f"{head.ip}:{ports.gcs}",
        gpus=0,
        device="cpu",
        cpu_slots=0 if trainer else layout.ranks_per_host,
        train_slots=TRAIN_SLOTS if trainer else 0,
        ip=host.ip,
        options=["--wait", "120", *common],
    )
    return [*contract.node_command(python), *args]


def local_deploy_argv(
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


# The tiny model stands in for DeepSeek-R1 (its architecture, chat template and <think> tokens),
# so it is served with R1's catalog serving defaults: the reasoning parser and sampling.
STAND_IN_FOR = "deepseek-r1"
ROUTINGS = ("pow2", "prefix")


def check_routing(routing: str, layout: Layout) -> None:
    if routing not in ROUTINGS:
        raise LocalError(f"--routing {routing!r}: allowed {', '.join(ROUTINGS)}")
    if routing == "prefix" and layout.replicas < 2:
        raise LocalError(
            f"--routing prefix: needs 2 or more replicas (--hosts 3 or more; it is {layout.hosts})"
        )


def check_options(engine_args: dict, serve_options: dict, layout: Layout) -> None:
    """`local up -c llmfleet:engineArgs=... / serveOptions=...`: vLLM's and Ray's schemas, the
    local layout (--tp, --pp, one replica per worker host); LocalError with the one line."""

    try:
        check_local(engine_args, serve_options, layout.tp, layout.pp, layout.replicas)
    except OptionError as e:
        raise LocalError(str(e)) from None


# The local head's deploy watcher polls faster than production's 30 s: the fault suite measures
# recovery in seconds, and a poll is one small Ray driver connection on an idle head.
WATCH_INTERVAL_S = 5.0


def local_watch_argv(deploy_argv: list[str], interval: float = WATCH_INTERVAL_S) -> list[str]:
    """The head's deploy watcher (production's deploy unit runs the same `deploy --watch`): after
    the deploy, re-apply when the Serve config file changes, a worker (re)joins, or the app stays
    failed. A restarted head comes up with an empty GCS and its workers rejoin it, so this is what
    redeploys Serve there, as on a replaced production head."""
    return [*deploy_argv, "--watch", "--watch-interval", f"{interval:g}"]


def render_local_serve_config(
    model_id: str,
    model_dir: str,
    layout: Layout,
    head_ip: str,
    http_port: int,
    engine_args: dict | None = None,
    serve_options: dict | None = None,
    routing: str = "pow2",
    activity_file: str | None = None,
    lora: LoraSettings | None = None,
    every_node: bool = False,
    direct_streaming: bool = False,
) -> dict:
    """The production Serve config (serve_config.render_serve_config) on the CPU device, with the
    same llmfleet:engineArgs / serveOptions a stack takes (checked by `check_options`) and the
    same llmfleet:routing (`--routing`)."""

    check_routing(routing, layout)

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
            **serving_default_inputs(load_catalog().models[STAND_IN_FOR].serving_defaults),
            routing=routing,
            engine_args=dict(engine_args or {}),
            # autoscaling_config (auto or a map) over the same defaults as a stack's, with the
            # local engine's concurrency and no modeled reload (the floor delay)
            deployment_options=serve_autoscaling.resolve(
                llm_options(serve_options or {}),
                layout.replicas,
                serve_autoscaling.per_replica_concurrency(engine_args or {}, LOCAL_CONCURRENCY),
                None,
            ),
            ingress_options=ingress_options(serve_options or {}),
            # where the gate marks each completion served; the head's watcher logs the idle
            # seconds from it (`watch.log`), as production's idle stop reads them
            activity_file=activity_file,
            # `--lora`: llmfleet:lora's own model (infra.local.adapters.settings) and renderer
            **lora_inputs(lora),
            ingress_every_node=ingress_hosts(layout) if every_node else 0,
            # `-c llmfleet:directStreaming=true`: the engine replica's gated vLLM app is the ingress
            direct_streaming=direct_streaming,
        )
    )
    if doc["proxy_location"] == "HeadOnly":
        # The proxy binds the head's IP: loopback clusters share one port space.
        doc["http_options"]["host"] = head_ip
    validate_serve_config(doc)
    return doc
