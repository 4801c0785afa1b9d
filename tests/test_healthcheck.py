"""ray_cluster.healthcheck, the node image's HEALTHCHECK: which process it reads, where it asks,
how it judges Ray's answer. No Ray is started: a fake /proc and a stand-in agent speaking the
installed Ray's /api/healthz format (checked against Ray's own source below)."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest

from infra.local import hosts
from ray_cluster import healthcheck as hc
from ray_cluster import node, ray_start
from ray_cluster.healthcheck import Unhealthy
from tests.json_http import JsonServer

HEAD_OK = "raylet: success\ngcs: success"
WORKER_OK = "raylet: success\ngcs: success (no local gcs)"


def write_proc(root: Path, procs: dict[int, list[str]]) -> str:
    for pid, argv in procs.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (root / "self").mkdir()  # not a pid: skipped
    return str(root)


# ---------------------------------------------------------------- which process, where to ask


def test_target_reads_the_argv_the_node_runs():
    head = ray_start.head_start_command("10.0.1.5", block=True, ray_bin="/opt/venv/bin/ray")
    t = hc.target(hc.ray_start_argv(["/usr/bin/python3", *head]))
    assert t == hc.Target(head=True, node_ip="10.0.1.5", agent_port=hc.DEFAULT_AGENT_PORT, gcs=None)
    # loopback hosts move the agent's port (infra.local.hosts): the check follows it
    ports = hosts.plan_hosts("t", 2, mode="loopback", subnet_index=3).hosts[1].ray_port_args
    worker = ray_start.worker_start_command("10.0.1.5:6379", "10.0.1.12", 8, "L20", block=True, extra=ports)
    t = hc.target(hc.ray_start_argv(worker))
    agent = int(next(a for a in ports if a.startswith("--dashboard-agent-listen-port=")).split("=")[1])
    assert t == hc.Target(head=False, node_ip="10.0.1.12", agent_port=agent, gcs=("10.0.1.5", 6379))
    assert agent != hc.DEFAULT_AGENT_PORT
    # two-token spelling too
    argv = ["--address", "10.0.0.1:7000", "--dashboard-agent-listen-port", "9"]
    assert hc.target(argv) == hc.Target(False, "127.0.0.1", 9, ("10.0.0.1", 7000))
    with pytest.raises(Unhealthy, match="neither --head nor --address"):
        hc.target(["--block"])


def test_ray_start_argv_only_matches_ray_start():
    assert hc.ray_start_argv(["python3", "/opt/venv/bin/ray", "start", "--head"]) == ["--head"]
    assert hc.ray_start_argv(["ray", "stop"]) is None
    assert hc.ray_start_argv(["python3", "-m", "ray_cluster.node", "head"]) is None
    assert hc.ray_start_argv(["/opt/venv/bin/ray"]) is None


def test_find_ray_start_prefers_pid_1_and_fails_without_one(tmp_path):
    proc = write_proc(
        tmp_path / "a",
        {
            1: ["python3", "/opt/venv/bin/ray", "start", "--head", "--node-ip-address=10.0.0.2"],
            7: ["python3", "/x/ray", "start", "--address=1.2.3.4:6379"],
            30: ["/bin/sh", "-c", "sleep 1"],
        },
    )
    assert hc.find_ray_start(proc) == ["--head", "--node-ip-address=10.0.0.2"]
    proc = write_proc(tmp_path / "b", {1: ["tini", "--", "sh"], 12: ["python3", "/x/ray", "start", "--head"]})
    assert hc.find_ray_start(proc) == ["--head"]
    proc = write_proc(tmp_path / "c", {1: ["python3", "-m", "ray_cluster.node", "worker"]})
    with pytest.raises(Unhealthy, match="no `ray start` process"):
        hc.find_ray_start(proc)


# ---------------------------------------------------------------- the verdict


@pytest.mark.parametrize(
    ("head", "status", "body", "why"),
    [
        (True, 200, HEAD_OK, None),
        (False, 200, WORKER_OK, None),
        # the GCS does not know this raylet (not registered, or marked dead)
        (False, 503, "raylet: Local Raylet failed\ngcs: success (no local gcs)", "raylet not alive"),
        (True, 503, "raylet: success\ngcs: Timed out while waiting for GCS", "GCS does not answer"),
        # a head whose agent thinks it is not the head has no GCS of its own
        (True, 200, WORKER_OK, "GCS does not answer"),
        (False, 503, "raylet: success\ngcs: boom", "health check failed"),
        (False, 500, "", "raylet not alive"),
        (True, 404, "404: Not Found", "raylet not alive"),
    ],
)
def test_verdict(head, status, body, why):
    if why is None:
        assert hc.verdict(head, status, body).startswith("healthy:")
    else:
        with pytest.raises(Unhealthy, match=why):
            hc.verdict(head, status, body)


def test_the_answer_format_is_the_installed_rays():
    """The bodies above are what Ray's own agent module writes; a Ray upgrade that changes them
    fails here rather than in a cluster."""
    spec = importlib.util.find_spec("ray.dashboard.modules.reporter.healthz_agent")
    src = Path(spec.origin).read_text()
    assert '@routes.get("/api/healthz")' in src
    assert 'checks = {"raylet": raylet_check, "gcs": gcs_check}' in src
    assert 'text="\\n".join([f"{name}: {result}" for name, result in checks.items()])' in src
    assert 'return "success (no local gcs)"' in src and 'return "success"' in src
    agent = Path(spec.origin).parents[2] / "http_server_agent.py"
    assert '"/api/healthz",' in agent.read_text().split("PUBLIC_EXACT_PATHS", 1)[1][:200]  # no token
    from ray._private import ray_constants

    assert ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT == hc.DEFAULT_AGENT_PORT


# ---------------------------------------------------------------- the whole check


class Agent:
    """A stand-in dashboard agent on 127.0.0.1 (tests/json_http.py's server) answering
    /api/healthz with a given status and text body."""

    def __init__(self, status: int, body: str):
        self.status, self.body = status, body
        self.server = JsonServer(lambda req: (self.status, self.body.encode()))
        self.port = self.server.server.server_port

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.server.requests]

    def close(self):
        self.server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_argv(role: str, agent_port: int, gcs_port: int = 6379) -> list[str]:
    extra = [f"--dashboard-agent-listen-port={agent_port}"]
    if role == "head":
        return ray_start.head_start_command("127.0.0.1", block=True, extra=extra)
    return ray_start.worker_start_command(f"127.0.0.1:{gcs_port}", "127.0.0.1", 0, block=True, extra=extra)


def test_check_head_asks_its_agent(tmp_path):
    agent = Agent(200, HEAD_OK)
    try:
        proc = write_proc(tmp_path, {1: ["python3", *ray_argv("head", agent.port)]})
        assert hc.check(proc, timeout=2) == "healthy: head (HTTP 200, raylet: success, gcs: success)"
        assert agent.paths == ["/api/healthz"]
        agent.body = WORKER_OK  # the head's agent must report its own GCS
        with pytest.raises(Unhealthy, match="GCS does not answer"):
            hc.check(proc, timeout=2)
    finally:
        agent.close()
    with pytest.raises(Unhealthy, match=f"dashboard agent 127.0.0.1:{agent.port} does not answer"):
        hc.check(proc, timeout=2)


def test_check_worker_needs_its_agent_and_the_heads_gcs(tmp_path):
    agent = Agent(200, WORKER_OK)
    gcs = socket.socket()
    gcs.bind(("127.0.0.1", 0))
    gcs.listen()
    try:
        up = write_proc(
            tmp_path / "up", {1: ["python3", *ray_argv("worker", agent.port, gcs.getsockname()[1])]}
        )
        assert hc.check(up, timeout=2).startswith("healthy: worker")
        # the agent still calls the raylet alive, but the head is gone: not in the cluster
        down = write_proc(tmp_path / "down", {1: ["python3", *ray_argv("worker", agent.port, free_port())]})
        with pytest.raises(Unhealthy, match="head GCS 127.0.0.1:.* unreachable"):
            hc.check(down, timeout=2)
    finally:
        agent.close()
        gcs.close()


def test_main_exit_codes_follow_docker(monkeypatch, capsys):
    def sick():
        raise Unhealthy("no `ray start` process in this container")

    monkeypatch.setattr(hc, "check", sick)
    assert hc.main() == 1
    assert capsys.readouterr().out == "unhealthy: no `ray start` process in this container\n"
    monkeypatch.setattr(hc, "check", lambda: "healthy: head (...)")
    assert hc.main() == 0 and capsys.readouterr().out == "healthy: head (...)\n"
    monkeypatch.setattr(hc, "check", sick)
    # the node CLI's subcommand is the same check
    assert node.main(["healthcheck"]) == 1
