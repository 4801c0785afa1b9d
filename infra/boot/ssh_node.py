"""The node of one existing host (llmfleet:provider = existing), as pure data: its NodeSpec (the
same one cloud-init renders the AWS hosts from), the container and `ray start` argv, what the
remote Command sends on stdin and how it stops the container. `ssh_bootstrap` renders the
script around them.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from infra.boot import cloud_init
from infra.boot.cloud_init import RAY_TOKEN_ENV, TOKEN_ENV, NodeSpec, ShellVar
from infra.catalog import load_catalog
from infra.rayconf.serving import serve_config_yaml
from infra.stack.config import OwnedStackConfig, StackConfig
from infra.stack.resolve import Stack
from ray_cluster.node import GCS_PORT
from ray_cluster.ray_start import head_start_command, worker_start_command

if TYPE_CHECKING:
    from infra.stack.host_spec import HostSpec


def host_index(cfg: StackConfig, host: HostSpec) -> int:
    """The host's entry in llmfleet:hosts (only an owned-hosts stack has them)."""
    if not isinstance(cfg, OwnedStackConfig):
        raise ValueError(f"llmfleet:provider = {cfg.provider!r}: no llmfleet:hosts; allowed: existing")
    return next(i for i, h in enumerate(cfg.hosts) if h.address == host.address)


def weights_gib(stack: Stack) -> float:
    """On-disk size the weights need: the catalog's checkpoint when served in its native
    precision, else the planner's total weight size for the chosen quantization."""

    cfg = stack.cfg
    model = load_catalog().models[cfg.model]
    if cfg.effective_quantization == model.native_dtype:
        return float(model.checkpoint_gib)
    return float(stack.plan.weights_gib_total)


def stdin_secrets(role: str, ray_token: str, api_token: str = "") -> str:
    """What the remote Command sends on stdin: the Ray token to every host, the endpoint token
    to the head too (one KEY=value a line; the script reads nothing else from stdin)."""
    lines = [f"{RAY_TOKEN_ENV}={ray_token}"]
    if role == "head":
        lines.append(f"{TOKEN_ENV}={api_token}")
    return "".join(f"{line}\n" for line in lines)


def node_spec(stack: Stack, host: HostSpec, head_ip: str, image_ref: str) -> NodeSpec:
    """The same NodeSpec the AWS hosts' cloud-init renders from, for this host."""
    cfg, plan = stack.cfg, stack.plan
    worker = host.role == "worker"
    serve: dict = {}
    if not worker:
        serve = dict(
            serve_config=serve_config_yaml(cfg, plan),
            tensor_parallel_size=plan.tensor_parallel_size,
            pipeline_parallel_size=plan.pipeline_parallel_size,
            replicas=cfg.replicas,
            deploy_gpu_model=cfg.gpu_model,
        )
    return NodeSpec(
        role=host.role,
        region=cfg.region,
        image_ref=image_ref,
        weights_s3_uri=cfg.weights_uri or "",
        model_path=cfg.model_path,
        weights_path=cfg.weights_path,
        head_ip=head_ip if worker else "",
        gpus=host.gpu_count if worker else 0,
        gpu_model=str(host.gpu_model) if worker else "",
        endpoint_port=cfg.endpoint_port,
        **serve,
    )


def container_argv(spec: NodeSpec) -> list[str]:
    """`docker run ... IMAGE <node args>` exactly as cloud-init starts the AWS hosts' node
    container (its name, options and `python -m ray_cluster.node` arguments); the node's IP
    stays the shell variable NODE_IP, which the script sets from the declared host."""
    return [*cloud_init.docker_run_argv(spec), spec.image_ref, *cloud_init.node_args(spec)]


def expand(argv: list[str], env: dict[str, str]) -> list[str]:
    """argv with its ShellVar elements replaced by their values (what the shell will run)."""
    return [env[a] if isinstance(a, ShellVar) else a for a in argv]


def ray_argv(host: HostSpec, head_ip: str) -> list[str]:
    """The `ray start` argv the node module runs in the container (ray_cluster.node's builders)."""
    if host.role == "head":
        return head_start_command(head_ip, block=True)
    return worker_start_command(
        f"{head_ip}:{GCS_PORT}",
        str(host.ray_ip),
        num_gpus=host.gpu_count,
        gpu_model=host.gpu_model,
        block=True,
    )


DEPLOY_UNIT = "llmfleet-deploy.service"  # the head's deploy watcher (ssh_bootstrap.deploy_unit)


def stop_command(container: str) -> str:
    """The remote Command's `delete`: stop and remove the node container, and stop and disable
    the head's deploy unit, which would otherwise retry against a container that is gone
    (idempotent; a worker has no such unit)."""
    name, unit = shlex.quote(container), f"systemctl disable --now {DEPLOY_UNIT}"
    return (
        f"docker rm -f {name} >/dev/null 2>&1 || sudo -n docker rm -f {name} >/dev/null 2>&1 || true; "
        f"{{ {unit} || sudo -n {unit}; }} >/dev/null 2>&1 || true"
    )
