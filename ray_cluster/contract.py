"""The node contract: names and shapes that every side of a cluster must agree on.

The Serve config renderer, the preflight, the node start commands and the local cluster all
read these, so the placement group the preflight reserves is exactly the one the engine asks
for, and a worker advertises exactly the resources those bundles name. Stdlib only: this module
runs in the image and on the operator's machine alike.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import cast

GCS_PORT = 6379
DASHBOARD_PORT = 8265
HTTP_PORT = 8000
# llmfleet:idleStopMinutes: the gate touches this file (inside the head's container) on each
# OpenAI API request; the head's deploy watcher logs the seconds since its mtime (the idle line
# the idle-stop alarm reads, infra/components/scaling.py). Both read its path from the Serve config.
ACTIVITY_FILE = "/tmp/ray/llmfleet-last-request"
# The form the gate accepts for that path (an absolute path; ".." refused beside it), and the
# local cluster checks its own against before it names one.
ACTIVITY_PATH_RE = re.compile(r"^/[A-Za-z0-9._/-]{1,255}$")
TOKEN_ENV = "LLMFLEET_API_TOKEN"  # the endpoint token's env var on the head (never the value)
APP_NAME = "llm"
SERVE_IMPORT_PATH = "ray_cluster.serve_app:build_app"
# The engine callback the Serve config names (serve_app.StagedWeights: the staged weights
# checked before vLLM loads them), and the form of an env var name the config may name.
STAGED_WEIGHTS_CALLBACK = "ray_cluster.serve_app:StagedWeights"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# The LLM deployment's server class (ray_cluster.serve_app: Ray Serve LLM's LLMServer plus an
# engine-core liveness round trip), rendered as server_cls.
LIVE_SERVER_CLS = "ray_cluster.serve_app:LLMServer"


def is_direct(args: object) -> bool:
    """A Serve app's args ask for direct streaming (`direct_streaming: true`: serve_app's gated
    LLMServer is the ingress). Here, not in serve_app, so the local cluster reads a config's
    shape without importing the app module."""
    return isinstance(args, dict) and cast("dict[str, object]", args).get("direct_streaming") is True


# How long the replica's health check waits for the engine core to answer one utility call.
# Below the LLM deployment's health_check_timeout_s: Ray Serve LLM's default is 10 s (its
# RAY_SERVE_LLM_DEFAULT_HEALTH_CHECK_TIMEOUT_S; the rendered deployment sets no other, and
# infra.rayconf.serve_config refuses a serveOptions timeout at or under this one), so a hung core
# fails the check with a message naming the engine instead of Serve's bare timeout. At 10 s the
# two raced in the 2026-12-07 fault run (two failures ours, the third Serve's timeout). Well
# above one engine step: the core answers a utility call between steps, and a chunked-prefill
# step takes well under a second on GPUs (a few on a loaded CPU host); Serve acts only after
# 3 failures in a row, so one slow step does not replace a replica.
ENGINE_LIVENESS_TIMEOUT_S = 5.0
# Every host's env file (cloud-init writes it from SSM at boot, the existing-hosts bootstrap from
# its stdin): the Ray cluster token (RAY_AUTH_TOKEN, RAY_AUTH_MODE=token) on every node, plus the
# endpoint token on the head. Every node container gets it as --env-file; never in a rendered file.
HOST_ENV_FILE = "/run/llmfleet/node.env"
# llmfleet:gcsRedis: the external GCS store's auth token, in the env file only (the head's node
# passes it to `ray start --redis-password`: Ray 2.60's CLI reads it from no env var).
GCS_REDIS_PASSWORD_ENV = "LLMFLEET_GCS_REDIS_PASSWORD"
# The head host directory holding the Serve config its deploy unit applies (mounted read-only).
HOST_CONFIG_DIR = "/etc/llmfleet"
MODEL_PATH_ENV = "LLMFLEET_MODEL_PATH"  # where the checkpoint sits inside the node container
# The ready marker in the model directory: the identity of the checkpoint staged there (its
# weights URI and the sha256 of its manifest.json, else of its S3 listing), written by the node
# script once the files are verified. Each worker advertises its fingerprint as a Ray node label;
# the head's deploy refuses a cluster whose workers hold different checkpoints.
READY_MARKER = ".llmfleet-ready"
WEIGHTS_LABEL = "llmfleet-weights"
NODE_MODULE = "ray_cluster.node"
# The image's ENTRYPOINT, spelled out (vLLM images have python3, no `python`).
IMAGE_ENTRYPOINT = ("python3", "-m", NODE_MODULE)
SHM_SIZE = "16g"  # moot under --ipc=host, but stops launchers sizing it
# The node container's uid (images/Dockerfile's ARG NODE_UID; a test keeps them equal). Pinned in
# the run options too, because the hosts' metadata-service guard (infra/boot/imds_guard.py)
# blocks exactly this uid: the guard holds only while the engine runs as it.
NODE_UID = 1000

# Device kinds a cluster's workers can be. "gpu": the production hosts. "cpu": vLLM's CPU build
# (the local cluster); vLLM's Ray executor refuses CPU, so one replica's ranks stay on one host.
DEVICES = ("gpu", "cpu")
GPU_MODEL_PREFIX = "gpu_model:"
# Ray's accelerator list lacks the L20, so the GPU model is pinned through a custom resource
# that GPU workers advertise (quantity = their GPU count). CPU workers advertise this one
# instead (quantity = their engine slots); the head has neither, so engine bundles never land
# on the head, where the ingress must still find a CPU.
CPU_WORKER_RESOURCE = "llmfleet_cpu_worker"
# What a trainer host advertises (quantity = the fine-tune workers it takes) and each Ray Train
# worker of `llmfleet finetune` asks for (ray_cluster/finetune.py): engine bundles never name it
# and a trainer host advertises no engine resource, so training and serving never share a slot.
TRAIN_RESOURCE = "llmfleet_train"
# Ray's head-node resource: pins the OpenAI ingress to the head, where the env file with the
# token is mounted and the load balancer sends traffic.
HEAD_RESOURCE = "node:__internal_head__"


def weights_fingerprint(marker_text: str) -> str:
    """A short, label-safe fingerprint of a ready marker's content (Ray label values: <= 63
    alphanumerics, `-_.` inside)."""
    return hashlib.sha256(marker_text.encode()).hexdigest()[:16]


def read_weights_fingerprint(model_path: str | None) -> str | None:
    """The fingerprint of the checkpoint staged at `model_path`, or None when no marker is there
    (the local cluster, owned hosts, a host still staging)."""
    if not model_path:
        return None
    try:
        with open(f"{model_path}/{READY_MARKER}") as f:
            text = f.read()
    except OSError:
        return None
    return weights_fingerprint(text) if text.strip() else None


class ContractError(ValueError):
    """One line: which value breaks the contract and what is allowed."""


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ContractError(f"device = {device!r}: allowed: {', '.join(DEVICES)}")
    return device


def gpu_model_resource(model: str) -> str:
    return f"{GPU_MODEL_PREFIX}{model}"


def worker_resource(device: str, gpu_model: str | None) -> str | None:
    """The custom resource only worker hosts advertise, one unit per engine rank."""
    if check_device(device) == "cpu":
        return CPU_WORKER_RESOURCE
    return gpu_model_resource(gpu_model) if gpu_model else None


def worker_resources(device: str, gpu_model: str | None, slots: int) -> dict[str, float]:
    """What a worker's `ray start --resources` advertises besides CPU/GPU."""
    key = worker_resource(device, gpu_model)
    return {key: slots} if key else {}


def rank_bundle(device: str, gpu_model: str | None) -> dict[str, float]:
    """One engine rank's placement bundle."""
    b: dict[str, float] = {"GPU": 1} if check_device(device) == "gpu" else {"CPU": 1}
    key = worker_resource(device, gpu_model)
    if key:
        b[key] = 1
    return b


def placement_bundles(
    tp: int, pp: int, device: str = "gpu", gpu_model: str | None = None
) -> list[dict[str, float]]:
    """TP x PP one-rank bundles; rank r = pp_stage * TP + tp_rank."""
    if tp < 1 or pp < 1:
        raise ContractError(f"tp={tp} pp={pp}: both must be >= 1")
    return [rank_bundle(device, gpu_model) for _ in range(tp * pp)]


def placement_strategy(device: str) -> str:
    # GPU: PACK fills a host's GPUs first and spills PP stages to the next host. CPU: vLLM's
    # multiprocessing executor runs every rank as a child of the replica, so all of a replica's
    # bundles must sit on its host.
    return "PACK" if check_device(device) == "gpu" else "STRICT_PACK"


def node_deploy_argv(
    python: str,
    serve_config: str,
    tp: int,
    pp: int,
    *,
    replicas: int = 1,
    device: str = "gpu",
    gpu_model: str | None = None,
    timeout: float,
    token_env: str = TOKEN_ENV,
    endpoint: str,
    address: str | None = None,
    dashboard: str | None = None,
    expect_workers: list[str] | None = None,
    model: str | None = None,
) -> list[str]:
    """`python -m ray_cluster.node deploy ...`: wait for every replica's slots -> preflight ->
    serve deploy -> ready after a real completion. The one builder of this argv (cloud-init on
    the head, the on-prem bootstrap and the local cluster all call it)."""
    argv = [python, "-m", "ray_cluster.node", "deploy", "--serve-config", serve_config]
    argv += ["--tp", str(tp), "--pp", str(pp), "--replicas", str(replicas), "--device", check_device(device)]
    if gpu_model and device == "gpu":
        argv += ["--gpu-model", gpu_model]
    if address:
        argv += ["--address", address]
    if expect_workers:
        argv += ["--expect-workers", ",".join(expect_workers)]
    if dashboard:
        argv += ["--dashboard", dashboard]
    argv += ["--endpoint", endpoint, "--token-env", token_env]
    if model:
        argv += ["--model", model]
    return argv + ["--timeout", f"{timeout:g}"]


# ----------------------------------------------------------------------------- node argv
# The one home of `python -m ray_cluster.node head|worker` arguments: the EC2 units
# (cloud-init), the SSH bootstrap, cluster.yaml and the local cluster all build them here.


def node_command(python: str) -> list[str]:
    return [python, "-m", NODE_MODULE]


def head_args(*, ip: str | None, block: bool = True, options: Sequence[str] = ()) -> list[str]:
    """Arguments after the node entrypoint for a head. `options`: launcher-specific extras
    (ports, --num-cpus, ...), which the node CLI validates."""
    argv = ["head"] + (["--ip", ip] if ip is not None else [])
    return argv + list(options) + (["--block"] if block else [])


def worker_args(
    *,
    address: str,
    gpus: int,
    gpu_model: str | None = None,
    device: str = "gpu",
    cpu_slots: int | None = None,
    ip: str | None = None,
    block: bool = True,
    train_slots: int = 0,
    options: Sequence[str] = (),
) -> list[str]:
    """Arguments after the node entrypoint for a worker. ip=None: the node takes its source IP
    towards the head (one argv serves every worker)."""
    argv = ["worker", "--address", address, "--num-gpus", str(gpus)]
    if gpu_model:
        argv += ["--gpu-model", gpu_model]
    if train_slots < 0:
        raise ContractError(f"train_slots = {train_slots!r}: allowed >= 0")
    if check_device(device) == "cpu":
        # a trainer host (train_slots) takes no engine rank: no engine resource at all
        if (not cpu_slots or cpu_slots < 1) and not train_slots:
            raise ContractError(f"cpu_slots = {cpu_slots!r}: a CPU worker needs cpu_slots >= 1")
        argv += ["--device", "cpu", "--cpu-slots", str(cpu_slots or 0)]
    if train_slots:
        argv += ["--train-slots", str(train_slots)]
    argv += ["--ip", ip] if ip is not None else []
    return argv + list(options) + (["--block"] if block else [])


# ----------------------------------------------------------------------------- docker run
def docker_run_options(
    role: str,
    model_path: str,
    *,
    device: str = "gpu",
    config_dir: str | None = None,
    env_file: str = HOST_ENV_FILE,
) -> list[tuple[str, str]]:
    """The node container's `docker run` options as (flag, value) pairs, after its name and
    restart policy: the EC2 units and SSH bootstrap render them as argv, cluster.yaml as
    `--flag=value` run_options, the local cluster's image mode as argv. Host network: Ray and
    NCCL bind the host's private IP. The checkpoint is mounted read-only; the env file holds
    the tokens (never in argv)."""
    opts = [
        ("--network", "host"),
        ("--ipc", "host"),
        ("--shm-size", SHM_SIZE),
        ("--ulimit", "memlock=-1"),
        ("--user", str(NODE_UID)),  # as the image's USER: its primary group comes from its passwd entry
        # No setuid way back to root inside the container: root there is root on the host's
        # network, which the metadata-service guard lets through.
        ("--security-opt", "no-new-privileges"),
        ("--volume", f"{model_path}:{model_path}:ro"),
        ("--env", f"{MODEL_PATH_ENV}={model_path}"),
        ("--env-file", env_file),
    ]
    if role == "head":
        if config_dir:  # the Serve config the head's deploy unit reads
            opts.append(("--volume", f"{config_dir}:{config_dir}:ro"))
    elif role == "worker":
        if check_device(device) == "gpu":
            opts.append(("--gpus", "all"))
    else:
        raise ContractError(f"role = {role!r}: allowed: head, worker")
    return opts


def docker_argv(options: list[tuple[str, str]]) -> list[str]:
    return [x for pair in options for x in pair]


# The node agents' ports, fixed. With Ray's default (0: the agent picks one and writes it to a
# port file) the raylet's constructor waits for those files, 15 s each, fixed in Ray 2.60
# (NodeManager::WaitForDashboardAgentPorts; RAY_agent_register_timeout_ms does not govern it),
# and aborts ("Timed out waiting for file .../metrics_agent_port_<node id>"); `ray start` then
# fails its own 30 s wait for the node to register (a literal in ray/_private/node.py). On the
# shared 2-core machine at load 10-26 the dashboard agent spends 20-30 s importing its modules,
# so a restarted worker crash-looped (benchmarks/RESULTS.md, faults); a GPU host staging weights
# or with a cold page cache is as slow. Given ports, the raylet waits for no file and registers
# while the agent is still starting. Every host is a machine of its own (or a network namespace
# locally), so the same ports serve every node; the cluster's security group is open within
# itself. 52365 is Ray's own default for the listen port (ray_cluster/healthcheck.py reads it).
AGENT_PORTS = (
    ("--dashboard-agent-listen-port", 52365),
    ("--dashboard-agent-grpc-port", 52366),
    ("--runtime-env-agent-port", 52367),
    ("--metrics-export-port", 52368),
)
