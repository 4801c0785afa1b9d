"""The processes of a local host: finding them (/proc, namespaces, the host tag), stopping them,
and the supervisor that restarts a host's node like the production unit's restart policy
(`python -m infra.local.processes supervise -- <node argv>`)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from infra.local import hosts
from infra.local.hosts import Host
from infra.local.state import LocalState

RESTART_DELAY_S = 5.0  # like systemd RestartSec=5: a lost host stays visible for a moment
# A node in a PID namespace of its own, as the production node container is (Docker gives each
# container one; `ray start --block` is its PID 1). Without it the hosts share this machine's
# PID namespace, and a restarted head refused to start: `ray start --head` reads the temp dir's
# `ray_current_cluster` (HEAD:6379) and refuses when any raylet on "this machine" carries
# `--gcs-address=HEAD:6379` (ray._private.services.find_gcs_addresses scans every process's
# command line), which the worker hosts' raylets do until they give up on the old GCS (60 s;
# 120 s with --gcs-redis, and then the workers restart too). Each node gets its own namespace,
# not the whole host: the check reads raylets only, and the head's other supervised processes
# (deploy watcher, redis, Prometheus) are separate containers/units in production too.
# --mount-proc: psutil reads /proc, which must be the namespace's; --kill-child: when `unshare`
# dies (SIGKILL by `down`), the kernel takes the namespace's init and with it every process of
# the node, as when a container's PID 1 exits.
PID_NAMESPACE = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "--")


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


def ray_pids(st: LocalState, host_name: str) -> set[int]:
    """The host's Ray processes: everything in it except its supervisor (for fault tests)."""
    host = next(h for h in st.hostset.hosts if h.name == host_name)
    sup = {h.supervisor_pid for h in st.hosts if h.name == host_name and h.supervisor_pid is not None}
    return host_pids(host) - sup


def pid_alive(pid: int | None, prefix: str) -> bool:
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


def own_pid_namespace(host: Host) -> bool:
    """A node gets a PID namespace of its own when its host is a network namespace (root): a
    loopback host runs as this user, who cannot create one."""
    return bool(host.netns) and hosts.is_root()


def start_supervisor(
    host: Host, argv: list[str], env: dict, restart: float | None, log: Path, pid_namespace: bool = False
) -> int:
    """Start argv under a supervisor inside the host; returns the supervisor's pid.
    pid_namespace: each run of argv in a PID namespace of its own (a node: PID_NAMESPACE)."""
    cmd = [sys.executable, "-m", "infra.local.processes", "supervise"]
    cmd += ["--restart-delay", f"{restart:g}"] if restart is not None else ["--no-restart"]
    cmd += ["--pid-namespace"] if pid_namespace else []
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


def start_node(host: Host, argv: list[str], env: dict, restart: float | None, log: Path) -> int:
    """A host's Ray node under its supervisor, in a PID namespace of its own when it can be."""
    return start_supervisor(host, argv, env, restart, log, pid_namespace=own_pid_namespace(host))


def last_lines(path: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def stop_processes(st: LocalState, prefix: str, grace: float = 2.0) -> None:
    # Supervisors first, so nothing restarts a node while it is being stopped. Ray's own graceful
    # stop takes 10-20 s per node here; the cluster is being destroyed, so a short grace will do
    # (as `ray stop --force`).
    sups = {h.supervisor_pid for h in st.hosts}
    sups.add(st.gcs_redis and st.gcs_redis.supervisor_pid)  # `up --gcs-redis`
    sups.add(st.watcher and st.watcher.supervisor_pid)  # the head's deploy watcher
    sups.add(st.lora and st.lora.supervisor_pid)  # `up --lora`: the adapters store
    pids = {p for p in sups if p}
    hosts.terminate(lambda: {p for p in pids if pid_alive(p, prefix)}, grace=0.0, kill_wait=5.0)
    hs = st.hostset
    hosts.terminate(lambda: set().union(*(host_pids(h) for h in hs.hosts)), grace=grace, kill_wait=5.0)


def namespace_init(unshare_pid: int) -> int | None:
    """The PID (as this namespace sees it) of the process `unshare --fork` started: its only child."""
    try:
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def supervise(argv: list[str], restart_delay: float | None, pid_namespace: bool = False) -> int:
    """Run argv; when it exits, start it again after restart_delay s (None: do not). SIGTERM stops.
    pid_namespace: each run in a new PID namespace (PID_NAMESPACE says why)."""
    child: subprocess.Popen | None = None
    stopping = False
    cmd = [*PID_NAMESPACE, *argv] if pid_namespace else argv

    def on_term(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            # `unshare` blocks SIGTERM while it waits: the namespace's init, `ray start --block`,
            # gets it (as `docker stop` sends it to a container's PID 1) and stops its processes.
            target = namespace_init(child.pid) if pid_namespace else child.pid
            try:
                os.kill(target or child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while True:
        child = subprocess.Popen(cmd)
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
    p = argparse.ArgumentParser(prog="python -m infra.local.processes")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("supervise", help="run a node command, restarting it when it exits")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--restart-delay", type=float, default=RESTART_DELAY_S)
    g.add_argument("--no-restart", action="store_true")
    s.add_argument("--pid-namespace", action="store_true", help="each run in a PID namespace of its own")
    s.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        p.error("supervise: no command given after --")
    return supervise(cmd, None if a.no_restart else a.restart_delay, a.pid_namespace)


if __name__ == "__main__":
    sys.exit(main())
