"""ray_cluster.node / ray_cluster.nic: start commands, NIC choice, waits, readiness, and a real cluster."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from infra.local import hosts
from ray_cluster import nic, node, ray_start, readiness, serve_rest
from ray_cluster.nic import Iface, NicError
from ray_cluster.node import NodeError
from ray_cluster.readiness import NodeState
from tests.json_http import JsonServer, Request
from tests.ray_fixtures import ray_hosts_cluster  # noqa: F401  (module-scoped fixture)

# ---------------------------------------------------------------- start commands


def test_head_command_advertises_zero_gpus():
    argv = ray_start.head_start_command(
        "10.0.1.5", num_cpus=4, object_store_memory=10**9, dashboard=False, block=True
    )
    assert argv[:3] == ["ray", "start", "--head"]
    assert "--num-gpus=0" in argv and "--port=6379" in argv
    assert "--node-ip-address=10.0.1.5" in argv and "--block" in argv
    assert "--include-dashboard=false" in argv
    with_dash = ray_start.head_start_command("10.0.1.5", dashboard_host="10.0.1.5", dashboard_port=9000)
    assert "--dashboard-host=10.0.1.5" in with_dash and "--dashboard-port=9000" in with_dash


def test_worker_command_pins_gpu_model_as_custom_resource():
    argv = ray_start.worker_start_command("10.0.1.5:6379", "10.0.1.12", num_gpus=8, gpu_model="L20")
    assert "--address=10.0.1.5:6379" in argv and "--num-gpus=8" in argv
    res = [a for a in argv if a.startswith("--resources=")]
    assert len(res) == 1 and json.loads(res[0].split("=", 1)[1]) == {"gpu_model:L20": 8}
    assert not any("accelerator_type" in a for a in argv)
    assert not any(
        a.startswith("--resources") for a in ray_start.worker_start_command("h:6379", "10.0.0.2", 2)
    )
    with pytest.raises(NodeError, match="num_gpus -1"):
        ray_start.worker_start_command("h:6379", "10.0.0.2", -1)


def test_shell_command_quotes_for_units_and_cluster_yaml():
    argv = ray_start.worker_start_command("10.0.1.5:6379", "10.0.1.12", num_gpus=2, gpu_model="L20")
    line = ray_start.shell_command(argv, {"VLLM_HOST_IP": "10.0.1.12", "NCCL_SOCKET_IFNAME": "ens5"})
    assert line.startswith("NCCL_SOCKET_IFNAME=ens5 VLLM_HOST_IP=10.0.1.12 ray start")
    assert "'--resources={\"gpu_model:L20\":2}'" in line


def test_auth_mode_is_made_explicit():
    assert node.auth_env({}) == {"RAY_AUTH_MODE": "disabled"}
    assert node.auth_env({"RAY_AUTH_TOKEN": "x"}) == {"RAY_AUTH_MODE": "token"}
    assert node.auth_env({"RAY_AUTH_MODE": "token"}) == {"RAY_AUTH_MODE": "token"}


def test_split_address():
    assert node.split_address("10.0.0.1:6380") == ("10.0.0.1", 6380)
    assert node.split_address("10.0.0.1") == ("10.0.0.1", 6379)
    with pytest.raises(NodeError, match="'h:x' is not HOST:PORT"):
        node.split_address("h:x")


# ---------------------------------------------------------------- NIC choice (pure)

IFACES = [
    Iface("lo", "127.0.0.1", 8),
    Iface("ens5", "10.0.1.12", 24, "veth"),
    Iface("docker0", "172.17.0.1", 16),
]


def test_nic_choice_by_ip_explicit_and_default():
    assert nic.choose_nic(IFACES, ip="10.0.1.12") == nic.NicChoice("ens5", "10.0.1.12")
    assert nic.choose_nic(IFACES, ifname="docker0") == nic.NicChoice("docker0", "172.17.0.1")
    assert nic.choose_nic(IFACES) == nic.NicChoice("ens5", "10.0.1.12")
    # Loopback only in the single-machine fallback, when the IP itself is loopback.
    assert nic.choose_nic(IFACES, ip="127.0.0.1").ifname == "lo"
    assert nic.choose_nic(IFACES, ip="127.0.5.10") == nic.NicChoice("lo", "127.0.5.10")
    env = nic.node_env(nic.NicChoice("ens5", "10.0.1.12"))
    assert env == {"NCCL_SOCKET_IFNAME": "ens5", "GLOO_SOCKET_IFNAME": "ens5", "VLLM_HOST_IP": "10.0.1.12"}


def test_nic_choice_errors_are_one_line():
    with pytest.raises(NicError, match="no interface holds IP 10.9.9.9; seen: lo=127.0.0.1, ens5=10.0.1.12"):
        nic.choose_nic(IFACES, ip="10.9.9.9")
    with pytest.raises(NicError, match="--ifname 'eth7' has no IPv4"):
        nic.choose_nic(IFACES, ifname="eth7")
    with pytest.raises(NicError, match="no non-loopback"):
        nic.choose_nic([Iface("lo", "127.0.0.1", 8)])
    # A routable IP that only lo carries (odd, but possible) must not yield lo.
    with pytest.raises(NicError, match="no interface holds IP 10.1.1.1"):
        nic.choose_nic([Iface("lo", "10.1.1.1", 32)], ip="10.1.1.1")


def test_parse_ip_addr_json_reads_real_iproute2_output():
    text = subprocess.run(
        ["ip", "-j", "-d", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    ifaces = nic.parse_ip_addr_json(text)
    assert any(i.ifname == "lo" and i.ip == "127.0.0.1" for i in ifaces)


# ---------------------------------------------------------------- waiting for GPUs (fake cluster state)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def _state(ips_gpus: dict[str, int], model: str = "L20") -> list[NodeState]:
    head = NodeState("10.0.1.5", True, 0, is_head=True)
    return [head] + [NodeState(ip, True, g, {model: g}) for ip, g in ips_gpus.items()]


def test_wait_for_gpus_names_the_missing_worker():
    clock = FakeClock()
    state = _state({"10.0.1.10": 8, "10.0.1.11": 8})
    with pytest.raises(NodeError) as e:
        readiness.wait_for_gpus(
            lambda: state,
            24,
            600,
            expect_workers=["10.0.1.10", "10.0.1.11", "10.0.1.12"],
            clock=clock,
            sleep=clock.sleep,
        )
    assert str(e.value) == "cluster has 16 of 24 GPUs after 600 s: workers 10.0.1.12 missing"
    assert 600 <= clock.now <= 602


def test_wait_for_gpus_returns_once_enough_and_checks_gpu_model():
    clock = FakeClock()
    seq = iter([_state({"10.0.1.10": 8}), _state({"10.0.1.10": 8, "10.0.1.11": 8})])
    nodes = readiness.wait_for_gpus(
        lambda: next(seq), 16, 60, gpu_model="L20", clock=clock, sleep=clock.sleep
    )
    assert len(nodes) == 3 and clock.now == 2.0
    wrong = _state({"10.0.1.10": 8, "10.0.1.11": 8}, model="L40S")
    with pytest.raises(NodeError, match=r"cluster has 16 of 16 GPUs \(gpu_model:L20 0 of 16\) after 10 s"):
        readiness.wait_for_gpus(lambda: wrong, 16, 10, gpu_model="L20", clock=clock, sleep=clock.sleep)


def test_wait_for_tcp_fails_in_bounded_time_with_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: refused
        with pytest.raises(
            NodeError, match=rf"head 127.0.0.1:{port} did not answer within 1 s \(last error: "
        ):
            node.wait_for_tcp("127.0.0.1", port, 1, interval=0.2)


def test_worker_cli_head_never_answers():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "ray_cluster.node", "worker", "--address", f"127.0.0.1:{port}"]
            + ["--ip", "127.0.0.1", "--num-gpus", "2", "--wait", "1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: head 127.0.0.1:{port} did not answer within 1 s (last error: Connection refused)"
    ]


# ---------------------------------------------------------------- readiness = a real completion


class _Endpoint:
    """An OpenAI endpoint (tests/json_http.py's server) in one of three modes: "ok" answers a
    completion with tokens, "empty" with none, "health-only" answers /health but 404 elsewhere."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.server = JsonServer(self._answer)

    def _answer(self, req: Request) -> tuple[int, dict]:
        if req.method == "GET":
            if req.path == "/health":
                return 200, {"status": "ok"}
            if req.path == "/v1/models" and self.mode != "health-only":
                return 200, {"data": [{"id": "tiny-dsv3"}]}
            return 404, {"error": "not found"}
        if req.headers.get("Authorization") != "Bearer s3cret":
            return 401, {"error": "bad token"}
        if self.mode == "health-only":
            return 404, {"error": "not found"}
        ok = self.mode == "ok"
        return 200, {
            "choices": [{"text": "Hi there" if ok else "", "index": 0}],
            "usage": {"completion_tokens": 3 if ok else 0},
        }

    @property
    def seen(self) -> list[tuple[str, str | None, dict]]:
        return [
            (r.path, r.headers.get("Authorization"), r.json())
            for r in self.server.requests
            if r.method == "POST"
        ]


@pytest.fixture
def http_server():
    endpoint = _Endpoint()
    with endpoint.server:
        yield endpoint, endpoint.server.base


def test_ready_only_after_a_completion_returns_tokens(http_server):
    endpoint, url = http_server
    assert readiness.probe_completion(url, "s3cret", None) == "Hi there"
    path, auth, body = endpoint.seen[-1]
    assert path == "/v1/completions" and auth == "Bearer s3cret"
    assert body["model"] == "tiny-dsv3" and body["max_tokens"] <= 8
    with pytest.raises(NodeError, match="HTTP 401"):
        readiness.probe_completion(url, "wrong", "tiny-dsv3")


def test_health_alone_or_empty_completion_is_not_ready(http_server):
    endpoint, url = http_server
    clock = FakeClock()
    endpoint.mode = "empty"
    with pytest.raises(
        NodeError,
        match=r"no completion within 10 s; last: POST .*/v1/completions gave HTTP 200 without tokens",
    ):
        readiness.wait_for_completion(url, "s3cret", "tiny-dsv3", 10, clock=clock, sleep=clock.sleep)
    endpoint.mode = "health-only"
    with pytest.raises(NodeError, match=r"/v1/models gave HTTP 404"):
        readiness.probe_completion(url, "s3cret", None)


def test_completion_tokens_reads_chat_and_completion_shapes():
    assert readiness.completion_tokens({"choices": [{"message": {"content": "yo"}}]}) == "yo"
    assert readiness.completion_tokens({"choices": [{"text": ""}], "usage": {"completion_tokens": 0}}) is None
    assert readiness.completion_tokens("<html>") is None


def test_serve_config_validated_by_rays_schema(tmp_path):
    good = tmp_path / "serve.yaml"
    good.write_text("applications:\n- name: llm\n  import_path: ray_cluster.app:build\n  route_prefix: /\n")
    cfg = serve_rest.load_serve_config(str(good))
    assert cfg["applications"][0]["import_path"] == "ray_cluster.app:build"
    bad = tmp_path / "bad.yaml"
    bad.write_text("applications:\n- name: llm\n")
    with pytest.raises(
        NodeError, match=r"--serve-config .*bad.yaml: applications.0.import_path: Field required"
    ):
        serve_rest.load_serve_config(str(bad))


# ---------------------------------------------------------------- real cluster


def _raylet_env(host: hosts.Host) -> dict[str, str]:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"/raylet") and f"{hosts.HOST_ENV}={host.name}".encode() in env:
            return dict(v.decode().split("=", 1) for v in env if b"=" in v)
    raise AssertionError(f"no raylet found for {host.name}")


@pytest.mark.ray
def test_nic_choice_inside_a_host_picks_its_veth_and_ray_inherits_it(ray_hosts_cluster):  # noqa: F811
    w = ray_hosts_cluster.workers[0]
    code = (
        "import json; from ray_cluster import nic;"
        f"c = nic.choose_nic(nic.read_interfaces(), ip={w.ip!r});"
        "kinds = {i.ifname: i.kind for i in nic.read_interfaces()};"
        "print(json.dumps([c.ifname, c.ip, kinds[c.ifname]]))"
    )
    out = hosts.run_in_host(w, [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True).communicate(
        timeout=30
    )[0]
    ifname, ip, kind = json.loads(out)
    assert ip == w.ip and ifname != "lo"
    if ray_hosts_cluster.hostset.mode == "netns":
        assert (ifname, kind) == ("eth0", "veth")
    env = _raylet_env(w)
    assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == w.ifname
    assert env["VLLM_HOST_IP"] == w.ip
    assert _raylet_env(ray_hosts_cluster.workers[1])["VLLM_HOST_IP"] == ray_hosts_cluster.workers[1].ip


def _node_cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "ray_cluster.node", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.ray
def test_status_json_lists_nodes_gpus_and_models(ray_hosts_cluster):  # noqa: F811
    proc = _node_cli(
        ["status", "--address", ray_hosts_cluster.address, "--json", "--dashboard", "http://127.0.0.1:9"]
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    doc = json.loads(proc.stdout)
    assert doc["gpus_total"] == 4 and doc["serve"] == {}
    by_ip = {n["ip"]: n for n in doc["nodes"] if n["alive"]}
    assert by_ip[ray_hosts_cluster.head.ip]["gpus"] == 0 and by_ip[ray_hosts_cluster.head.ip]["is_head"]
    for w in ray_hosts_cluster.workers:
        assert by_ip[w.ip]["gpus"] == 2 and by_ip[w.ip]["gpu_model"] == {"L20": 2}


@pytest.mark.ray
def test_connect_leaves_another_cluster_this_process_was_attached_to(ray_hosts_cluster):  # noqa: F811
    import ray

    from ray_cluster.driver import connect

    # a local instance in this process, as Ray Serve LLM's build_openai_app starts one
    ray.init(num_cpus=1, num_gpus=0, include_dashboard=False, logging_level="ERROR")
    try:
        connect(ray_hosts_cluster.address)
        assert ray.get_runtime_context().gcs_address == ray_hosts_cluster.address
        assert ray.cluster_resources().get("GPU") == 2 * len(ray_hosts_cluster.workers)
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_deploy_wait_failure_names_the_missing_worker(ray_hosts_cluster, tmp_path):  # noqa: F811
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("applications:\n- name: llm\n  import_path: ray_cluster.app:build\n  route_prefix: /\n")
    missing = ray_hosts_cluster.workers[-1].ip.rsplit(".", 1)[0] + ".99"
    expect = ",".join([w.ip for w in ray_hosts_cluster.workers] + [missing])
    proc = _node_cli(
        ["deploy", "--address", ray_hosts_cluster.address, "--serve-config", str(cfg)]
        + ["--tp", "2", "--pp", "3", "--gpu-model", "L20", "--timeout", "3", "--expect-workers", expect]
    )
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [
        f"error: cluster has 4 of 6 GPUs (gpu_model:L20 4 of 6) after 3 s: workers {missing} missing"
    ]
    assert "Traceback" not in proc.stderr


def test_status_output_for_people(capsys):
    doc = {
        "nodes": [
            {"ip": "10.0.1.11", "alive": True, "is_head": False, "gpus": 8.0, "gpu_model": {"L20": 8.0}},
            {"ip": "10.0.1.5", "alive": True, "is_head": True, "gpus": 0.0, "gpu_model": {}},
        ],
        "gpus_total": 8.0,
        "gpus_available": 2.0,
        "serve": {"llm": "RUNNING"},
    }
    node.print_status(doc)
    out = capsys.readouterr().out
    assert "10.0.1.11" in out and "L20:8" in out
    assert "GPUs: 2 available of 8" in out and "serve: llm=RUNNING" in out


def test_last_error_line_prefers_the_error():
    text = "INFO Local node IP: 10.0.0.2\nRuntimeError: Failed to connect to GCS\nINFO bye\n"
    assert node.last_error_line(text) == "RuntimeError: Failed to connect to GCS"
    assert node.last_error_line("a\nb\n") == "b"


def test_a_failed_deploy_says_serves_own_reason():
    """wait_serve_running's error carries Serve's message (the last line of its traceback): the
    container that ran the deploy may be gone before anyone reads its logs."""
    apps = {
        "llm": {"status": "DEPLOY_FAILED", "message": "Traceback (most recent call last):\n  ...\n"
                "ValueError: Repo id must be in the form 'repo_name': '/root/m'\n"},
        "other": {"status": "RUNNING", "message": "fine"},
        "app2": {"status": "DEPLOY_FAILED", "message": "Failed to update the deployments ['S'].",
                 "deployments": {"S": {"status": "DEPLOY_FAILED", "message": "x\nOSError: no model"},
                                 "T": {"status": "HEALTHY", "message": "ok"}}},
    }  # fmt: skip
    assert serve_rest.failure_messages(apps) == (
        "llm: ValueError: Repo id must be in the form 'repo_name': '/root/m'; "
        "app2: Failed to update the deployments ['S'].; app2/S: OSError: no model"
    )
    assert serve_rest.failure_messages({"x": {"status": "RUNNING", "message": "m"}}) == ""


def test_waiting_for_serve_gives_up_early_on_a_deploy_that_never_appears(monkeypatch):
    """An applied config Serve never lists (the head that took it restarted) fails after
    APPEAR_WITHIN_S, not the whole timeout, so the watcher applies it again; an app that appears
    is waited for up to the timeout."""
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    seen: list[dict] = []
    monkeypatch.setattr(
        serve_rest, "_serve_applications", lambda d, t: seen[min(int(now[0] // 5), len(seen) - 1)]
    )
    seen[:] = [{}]
    with pytest.raises(
        NodeError, match=r"after 60 s: no applications \(the deploy was lost; apply it again\)"
    ):
        serve_rest.wait_serve_running("http://h:8265", 600, clock=lambda: now[0], sleep=sleep)
    # listed (DEPLOYING) from the second look on, RUNNING at 100 s: waited for, past APPEAR_WITHIN_S
    now[0] = 0.0
    seen[:] = [{}] + [{"llm": {"status": "DEPLOYING"}}] * 19 + [{"llm": {"status": "RUNNING"}}]
    serve_rest.wait_serve_running("http://h:8265", 600, clock=lambda: now[0], sleep=sleep)
    assert now[0] == 100
    # never RUNNING: the whole timeout, naming what it saw
    now[0] = 0.0
    seen[:] = [{"llm": {"status": "DEPLOYING"}}]
    with pytest.raises(NodeError, match=r"after 600 s: llm=DEPLOYING$"):
        serve_rest.wait_serve_running("http://h:8265", 600, clock=lambda: now[0], sleep=sleep)


def test_every_ray_start_fixes_the_agent_ports_unless_the_host_sets_its_own():
    """node.AGENT_PORTS: with ports given, the raylet waits for no port file (15 s, fixed in Ray)."""
    got = node.agent_port_args(["--object-store-memory=104857600"])
    assert got == [
        "--object-store-memory=104857600",
        "--dashboard-agent-listen-port=52365",
        "--dashboard-agent-grpc-port=52366",
        "--runtime-env-agent-port=52367",
        "--metrics-export-port=52368",
    ]
    # a loopback host's own ports (infra.local.hosts) win, the rest are still fixed
    own = node.agent_port_args(["--dashboard-agent-listen-port=20000", "--metrics-export-port=20003"])
    assert own == [
        "--dashboard-agent-listen-port=20000",
        "--metrics-export-port=20003",
        "--dashboard-agent-grpc-port=52366",
        "--runtime-env-agent-port=52367",
    ]
    # and Ray's own parser takes them (a typo in a flag would fail `ray start`)
    from click.testing import CliRunner
    from ray.scripts.scripts import start

    r = CliRunner().invoke(start, ["--help"])
    for flag, _ in node.AGENT_PORTS:
        assert flag in r.output
