"""`llmfleet local sleep` / `local wake`: the local cluster's scale-to-zero, as a schedule or idle
stop does it on AWS (infra/components/scaling.py): the worker hosts stop, the head stays.

Sleep stops each worker host's supervisor and then its Ray processes (the engine replica dies
with them); the head keeps the GCS, the Serve controller, the proxy and the gated ingress, so a
request then gets the gate's 503 + Retry-After (ray_cluster/serve_app.py ServingGate), not a
hang. Wake starts the same supervised node on each worker host again (same argv, env and cores
as `local up`); the nodes rejoin with new Ray node ids and the Serve app's engine replicas are
placed again, by Serve's own replica restarts (and by the head's deploy watcher where it runs).
Wake returns once a real completion answers, as `local up` does; it never deploys itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from infra.local import cluster, hosts
from infra.local.layout import LocalError, node_argv, omp_threads_bind
from infra.local.processes import host_pids, pid_alive, raylet_running, start_node
from infra.local.state import DEFAULT_NAME, LocalState, load_state, read_token, save_state, state_dir
from ray_cluster.node import NodeError
from ray_cluster.readiness import probe_completion

WAKE_TIMEOUT_S = 600.0


def _state(name: str) -> LocalState:
    st = load_state(name)
    if st is None:
        raise LocalError(f"no local cluster {name!r} in {state_dir()}; start one with `llmfleet local up`")
    if st.image:
        raise LocalError(
            f"local cluster {name!r} runs the node image (--image); allowed: sleep/wake a venv cluster"
        )
    if st.gcs_redis is not None:
        raise LocalError(f"local cluster {name!r} runs --gcs-redis; allowed: sleep/wake a cluster without it")
    return st


def sleep(name: str = DEFAULT_NAME) -> dict:
    """Stop every worker host (supervisor first, so nothing restarts it); the head stays."""
    st = _state(name)
    prefix = hosts.prefix_for(name)
    hs = {h.name: h for h in st.hostset.hosts}
    stopped: list[str] = []
    for entry in st.hosts:
        if entry.role != "worker":
            continue
        sup = entry.supervisor_pid
        hosts.terminate(
            lambda sup=sup: {sup} if sup is not None and pid_alive(sup, prefix) else set(),
            grace=0.0,
            kill_wait=5.0,
        )
        host = hs[entry.name]
        hosts.terminate(lambda host=host: host_pids(host), grace=2.0, kill_wait=5.0)
        entry.supervisor_pid = None
        stopped.append(entry.name)
    st.asleep = True
    save_state(st, Path(st.state_dir))
    return {"name": name, "stopped": stopped, "state": "asleep"}


def _node_env(st: LocalState) -> dict[str, str]:
    return cluster._node_env(read_token(st), st)


def wake(
    name: str = DEFAULT_NAME,
    timeout: float = WAKE_TIMEOUT_S,
    on_stage: Callable[[str], None] = lambda s: None,
) -> dict:
    """Start the worker hosts again and wait for a real completion (no deploy of its own)."""

    st = _state(name)
    hs = st.hostset
    by_name = {h.name: h for h in hs.hosts}
    head = hs.hosts[0]
    layout = st.layout.layout()
    ports = st.ports
    env = _node_env(st)
    started: list[str] = []
    t0 = time.monotonic()
    for i, entry in enumerate(st.hosts):
        if entry.role != "worker":
            continue
        host = by_name[entry.name]
        if raylet_running(host):
            continue  # already up (a wake after a partial sleep)
        argv = node_argv("worker", host, head, ports, layout, st.temp_dir)
        host_env = dict(env)
        host_env["VLLM_CPU_OMP_THREADS_BIND"] = omp_threads_bind(layout.ranks_per_host, worker_index=i - 1)
        entry.supervisor_pid = start_node(host, argv, host_env, st.restart_delay_s, Path(entry.log))
        started.append(entry.name)
    st.asleep = False
    save_state(st, Path(st.state_dir))
    on_stage("workers started: " + (", ".join(started) or "none (already up)"))
    base = st.base_url
    last = ""
    while time.monotonic() - t0 < timeout:
        try:
            probe_completion(base, read_token(st), st.model, timeout=30)
            return {
                "name": name,
                "started": started,
                "state": "serving",
                "seconds": round(time.monotonic() - t0, 1),
            }
        except (NodeError, OSError) as e:
            last = str(e).splitlines()[0] if str(e) else type(e).__name__
        time.sleep(3)
    raise LocalError(f"local cluster {name!r} did not serve within {timeout:g} s after wake: {last}")
