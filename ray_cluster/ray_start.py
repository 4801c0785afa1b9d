"""The exact `ray start` argv of a head and a worker (pure).

`ray_cluster.node head|worker` runs these in the container; the SSH bootstrap and the
cluster.yaml renderer show or run the same lists, so every place starts Ray the same way.
"""

from __future__ import annotations

import json
import shlex

from ray_cluster import contract
from ray_cluster.contract import (
    DASHBOARD_PORT,
    GCS_PORT,
)
from ray_cluster.driver import NodeError


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
    labels: dict[str, str] | None = None,
    train_slots: int = 0,
) -> list[str]:
    """argv of `ray start --address=HEAD:6379` for a worker.

    GPU: num_gpus GPUs and `gpu_model:<X>` = num_gpus. CPU: 0 GPUs and the CPU-worker resource
    = cpu_slots (engine ranks this host takes); the contract's bundles ask for exactly these.
    `labels`: Ray node labels (`--labels k=v,...`), e.g. the staged weights' fingerprint.
    `train_slots`: `llmfleet_train` units, the fine-tune workers this host takes (a trainer host)."""
    if num_gpus < 0:
        raise NodeError(f"num_gpus {num_gpus} must be >= 0")
    if device == "cpu" and (num_gpus or (cpu_slots < 1 and train_slots < 1)):
        raise NodeError(f"a cpu worker has 0 GPUs and cpu_slots >= 1 (got {num_gpus}, {cpu_slots})")
    if train_slots < 0:
        raise NodeError(f"train_slots {train_slots} must be >= 0")
    slots = num_gpus if device == "gpu" else cpu_slots
    argv = [ray_bin, "start", f"--address={head_address}", f"--num-gpus={num_gpus}"]
    # a trainer host (cpu_slots 0) advertises no engine resource: no replica can land on it
    resources = contract.worker_resources(device, gpu_model, slots) if slots else {}
    if train_slots:
        resources[contract.TRAIN_RESOURCE] = train_slots
    if resources:
        argv.append("--resources=" + json.dumps(resources, separators=(",", ":")))
    if labels:
        argv.append("--labels=" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())))
    return argv + _common_args(ip, num_cpus, object_store_memory, temp_dir, block, extra)


def shell_command(argv: list[str], env: dict[str, str] | None = None) -> str:
    """One shell line (env assignments first) for systemd units, cloud-init and cluster.yaml."""
    prefix = [f"{k}={shlex.quote(v)}" for k, v in sorted((env or {}).items())]
    return " ".join(prefix + [shlex.join(argv)])
