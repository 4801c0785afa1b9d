"""A real multi-host Ray cluster for tests: head (0 GPUs) + workers with logical GPUs.

As root the hosts are network namespaces (infra.local.hosts); otherwise loopback addresses.
Import `ray_hosts_cluster` into a test module to get the cluster; the modules that import it
share one, which conftest.py tears down after the last test that uses it (and at the end of the
session, whatever failed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass

import pytest

from infra.local import hosts

WORKER_GPUS = 2
GPU_MODEL = "L20"
OBJECT_STORE = str(80 * 1024 * 1024)


@dataclass
class TestCluster:
    hostset: hosts.HostSet
    head: hosts.Host
    workers: list[hosts.Host]
    address: str
    temp_dir: str
    env: dict[str, str]


def _node(host: hosts.Host, args: list[str], env: dict[str, str], timeout: float) -> None:
    # Output to a file: daemons started by `ray start` may keep a pipe open.
    with tempfile.TemporaryFile("w+") as f:
        proc = hosts.run_in_host(
            host,
            [sys.executable, "-m", "ray_cluster.node", *args],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
        proc.wait(timeout=timeout)
        f.seek(0)
        out = f.read()
    if proc.returncode != 0:
        raise RuntimeError(
            f"node {' '.join(args[:1])} on {host.name} failed: {out.strip().splitlines()[-3:]}"
        )


def worker_args(w: hosts.Host, address: str, common: list[str]) -> list[str]:
    return [
        "worker",
        "--address",
        address,
        "--ip",
        w.ip,
        "--num-gpus",
        str(WORKER_GPUS),
        "--gpu-model",
        GPU_MODEL,
        "--wait",
        "60",
        *common,
        *[f"--ray-arg={a}" for a in w.ray_port_args],
    ]


def start_cluster(
    cluster: str, n_workers: int, subnet_index: int, state_dir: str, mode: str | None = None
) -> TestCluster:
    hs = hosts.create(cluster, 1 + n_workers, state_dir=state_dir, subnet_index=subnet_index, mode=mode)
    head, workers = hs.hosts[0], hs.hosts[1:]
    # Own temp dir: other Ray users on this machine share /tmp/ray.
    temp_dir = f"/tmp/llmf-{cluster}"
    env = {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": os.getcwd()}
    common = ["--num-cpus", "1", "--object-store-memory", OBJECT_STORE, "--temp-dir", temp_dir]
    _node(
        head,
        ["head", "--ip", head.ip, "--no-dashboard", *common, *[f"--ray-arg={a}" for a in head.ray_port_args]],
        env,
        120,
    )
    address = f"{head.ip}:6379"
    # Workers join in parallel: each `ray start` spends most of its time waiting.
    errors: list[BaseException] = []

    def join(w: hosts.Host) -> None:
        try:
            _node(w, worker_args(w, address, common), env, 180)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=join, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return TestCluster(hs, head, workers, address, temp_dir, env)


def wait_gpus(address: str, want: float, timeout: float = 60) -> None:
    import ray

    from ray_cluster.node import connect

    connect(address)
    try:
        deadline = time.monotonic() + timeout
        while ray.cluster_resources().get("GPU", 0) < want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster has {ray.cluster_resources().get('GPU', 0)} of {want} GPUs")
            time.sleep(0.5)
    finally:
        ray.shutdown()


def stop_cluster(tc: TestCluster | None, cluster: str, state_dir: str) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    hosts.teardown(hosts.prefix_for(cluster), cluster=cluster, state_dir=state_dir)
    if tc is not None:
        subprocess.run(["rm", "-rf", tc.temp_dir], check=False)


def pick_subnet(start: int) -> int:
    """A free 10.213.<k>.0/24 (others may run clusters on this machine at the same time)."""
    if not hosts.is_root():
        return start % 256
    for k in range(start, start + 100):
        if not hosts.subnet_in_use(f"{hosts.DEFAULT_SUBNET_BASE}.{k % 256}.0/24"):
            return k % 256
    raise RuntimeError("no free 10.213.k.0/24 subnet")


def local_subnet(name: str, netns: bool) -> int:
    """A `llmfleet local up --subnet` for a test module's cluster: 30..89 in netns mode (clear
    of pick_subnet's shared clusters), 3..42 in loopback; seeded by the name and the time, so two
    runs on this machine at once rarely collide."""
    seed = zlib.crc32(f"{name}{time.time()}".encode())
    return 30 + seed % 60 if netns else 3 + seed % 40


class _Shared:
    """The one netns cluster test_node and test_placement share (see ray_hosts_cluster)."""

    tc: TestCluster | None = None
    name = ""
    state_dir = ""
    saved_auth_mode: str | None = None


_shared = _Shared()


def shared_cluster(tmp_path_factory) -> TestCluster:
    if _shared.tc is None:
        # Short unique name: namespaces/links of parallel runs must not clash.
        _shared.name = f"t{os.getpid() % 100000}sh"
        subnet_index = pick_subnet(100 + os.getpid() % 150)
        _shared.state_dir = str(tmp_path_factory.mktemp("hosts"))
        _shared.saved_auth_mode = os.environ.get("RAY_AUTH_MODE")
        try:
            _shared.tc = start_cluster(_shared.name, 2, subnet_index, _shared.state_dir)
            wait_gpus(_shared.tc.address, 2 * WORKER_GPUS)
        except BaseException:
            tc, _shared.tc = _shared.tc, None
            _stop_shared(tc)
            raise
    return _shared.tc


def close_shared_cluster() -> None:
    """Stop the shared cluster (conftest.py calls this after the last test that uses it)."""
    tc, _shared.tc = _shared.tc, None
    if tc is not None:
        _stop_shared(tc)


def _stop_shared(tc: TestCluster | None) -> None:
    stop_cluster(tc, _shared.name, _shared.state_dir)
    if _shared.saved_auth_mode is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = _shared.saved_auth_mode


@pytest.fixture(scope="module")
def ray_hosts_cluster(tmp_path_factory):
    """Head + 2 workers x 2 logical GPUs (gpu_model:L20). One cluster serves every module that
    asks (test_node, then test_placement: ~40 s of start-up each); none of their tests changes
    it (test_node's failing deploy stops at the GPU wait, before Serve; the preflight removes its
    placement group). conftest.py stops it after the last test that uses it."""
    return shared_cluster(tmp_path_factory)
