"""The node image's HEALTHCHECK: is this node's raylet up and in the cluster, and on the head,
does the GCS answer? `python3 -m ray_cluster.healthcheck` (also `ray_cluster.node healthcheck`).

Docker runs it every interval inside the node container, so it stays cheap: stdlib only, no
`import ray` (0.8-1.2 s in the project's venv on this machine class, ~3 s in the CPU image on a
busy host; this module's whole run is ~0.05 s in the venv, 0.2-0.4 s in the image before its
bytecode was precompiled). It asks Ray's own answer rather than guessing from processes:

- the `ray start` process of this container (the entrypoint execs into it, so it is PID 1)
  gives the role (`--head`), the node IP, the dashboard agent's port and the head's address;
- Ray's dashboard agent on this node answers `GET /api/healthz` (public under token auth):
  `raylet: success` when the GCS reports this node alive (registered, not dead), and on the
  head `gcs: success` when the GCS answers (a worker's agent says `success (no local gcs)`);
- a worker also reaches the head's GCS port: the agent calls a worker's raylet alive while the
  GCS is unreachable (the raylet exits after Ray's reconnect timeout), and a node that cannot
  reach its head is not in the cluster.

Exit 0 when healthy, 1 otherwise (Docker's codes), with one line saying what was seen.
"""

from __future__ import annotations

import http.client
import os
import socket
import sys
from dataclasses import dataclass

# Ray's default dashboard agent HTTP port (ray._private.ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT).
DEFAULT_AGENT_PORT = 52365
HEALTHZ_PATH = "/api/healthz"
TIMEOUT_S = 5.0


class Unhealthy(Exception):
    """One line: what was asked and what was seen."""


@dataclass(frozen=True)
class Target:
    head: bool
    node_ip: str
    agent_port: int
    gcs: tuple[str, int] | None  # a worker's head GCS address; None on the head


def ray_start_argv(cmdline: list[str]) -> list[str] | None:
    """The arguments after `ray start` if this command line is one (any interpreter prefix)."""
    for i, arg in enumerate(cmdline[:-1]):
        if os.path.basename(arg) == "ray" and cmdline[i + 1] == "start":
            return cmdline[i + 2 :]
    return None


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def target(argv: list[str]) -> Target:
    """Where to ask, from the `ray start` arguments (pure)."""
    head = "--head" in argv
    port = _option(argv, "--dashboard-agent-listen-port")
    gcs = None
    if not head:
        address = _option(argv, "--address")
        if not address or ":" not in address:
            raise Unhealthy(f"`ray start` has neither --head nor --address=HOST:PORT: {argv}")
        host, _, p = address.rpartition(":")
        gcs = (host, int(p))
    return Target(
        head=head,
        node_ip=_option(argv, "--node-ip-address") or "127.0.0.1",
        agent_port=int(port) if port else DEFAULT_AGENT_PORT,
        gcs=gcs,
    )


def verdict(head: bool, status: int, body: str) -> str:
    """The agent's /api/healthz answer -> a one-line summary, or Unhealthy (pure)."""
    checks: dict[str, str] = {}
    for line in body.splitlines():
        name, sep, result = line.partition(":")
        if sep:
            checks[name.strip()] = result.strip()
    raylet, gcs = checks.get("raylet", ""), checks.get("gcs", "")
    seen = f"HTTP {status}, raylet: {raylet or '-'}, gcs: {gcs or '-'}"
    if not raylet.startswith("success"):
        raise Unhealthy(f"raylet not alive in the cluster ({seen})")
    if head and gcs != "success":
        raise Unhealthy(f"head: the GCS does not answer ({seen})")
    if status != 200 or not gcs.startswith("success"):
        raise Unhealthy(f"the agent's health check failed ({seen})")
    return f"healthy: {'head' if head else 'worker'} ({seen})"


def find_ray_start(proc: str = "/proc") -> list[str]:
    """The `ray start` arguments of this container's node: PID 1 first, then any process."""
    pids = sorted((int(p) for p in os.listdir(proc) if p.isdigit()), key=lambda p: (p != 1, p))
    for pid in pids:
        try:
            with open(f"{proc}/{pid}/cmdline", "rb") as f:
                cmdline = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        argv = ray_start_argv(cmdline)
        if argv is not None:
            return argv
    raise Unhealthy("no `ray start` process in this container (the node is not running)")


def ask_agent(t: Target, timeout: float = TIMEOUT_S) -> tuple[int, str]:
    conn = http.client.HTTPConnection(t.node_ip, t.agent_port, timeout=timeout)
    try:
        conn.request("GET", HEALTHZ_PATH)
        r = conn.getresponse()
        return r.status, r.read(4096).decode(errors="replace")
    except OSError as e:
        raise Unhealthy(f"dashboard agent {t.node_ip}:{t.agent_port} does not answer: {e}") from None
    finally:
        conn.close()


def reach(addr: tuple[str, int], timeout: float = TIMEOUT_S) -> None:
    try:
        socket.create_connection(addr, timeout).close()
    except OSError as e:
        raise Unhealthy(f"head GCS {addr[0]}:{addr[1]} unreachable: {e}") from None


def check(proc: str = "/proc", timeout: float = TIMEOUT_S) -> str:
    t = target(find_ray_start(proc))
    status, body = ask_agent(t, timeout)
    line = verdict(t.head, status, body)
    if t.gcs is not None:
        reach(t.gcs, timeout)
    return line


def main(argv: list[str] | None = None) -> int:
    del argv
    try:
        print(check())
        return 0
    except Unhealthy as e:
        print(f"unhealthy: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
