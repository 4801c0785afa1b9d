"""infra.local.hosts: planning (pure), and real namespaces/loopback hosts with idempotent teardown."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from infra.local import hosts
from infra.local.hosts import HostsError
from tests.ray_fixtures import pick_subnet

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _name(tag: str) -> str:
    # Unique per run, so parallel runs and leftovers never collide.
    return f"h{tag}{os.getpid() % 100000}"


def _subnet(tag: str) -> int:
    return pick_subnet(100 + zlib.crc32(f"{tag}{os.getpid()}".encode()) % 150)


def test_plan_netns_names_addresses_and_link_lengths():
    hs = hosts.plan_hosts("demo", 3, "netns", subnet_index=7)
    assert [h.netns for h in hs.hosts] == ["llmf-demo-h0", "llmf-demo-h1", "llmf-demo-h2"]
    assert [h.ip for h in hs.hosts] == ["10.213.7.10", "10.213.7.11", "10.213.7.12"]
    assert hs.root_ip == "10.213.7.1" and hs.subnet == "10.213.7.0/24"
    links = [hs.bridge] + [h.veth for h in hs.hosts] + [h.veth + "p" for h in hs.hosts]
    assert all(len(n) <= 15 for n in links) and len(set(links)) == len(links)
    assert hosts.plan_hosts("other", 1, "netns").bridge != hs.bridge


def test_plan_loopback_hosts_get_distinct_ips_and_ports():
    hs = hosts.plan_hosts("demo", 3, "loopback", subnet_index=2)
    assert [h.ip for h in hs.hosts] == ["127.0.2.10", "127.0.2.11", "127.0.2.12"]
    assert all(h.netns is None and h.ifname == "lo" for h in hs.hosts)
    ports = [a for h in hs.hosts for a in h.ray_port_args]
    assert len(ports) == len(set(ports)) == 15


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cluster": "Bad_Name", "n": 2, "mode": "netns"}, "cluster name 'Bad_Name' must match"),
        ({"cluster": "ok", "n": 0, "mode": "netns"}, "host count 0 must be between 1 and 200"),
        ({"cluster": "ok", "n": 2, "mode": "vm"}, "mode 'vm' is not one of: netns, loopback"),
        ({"cluster": "ok", "n": 2, "mode": "netns", "subnet_index": 300}, "subnet index 300"),
    ],
)
def test_plan_rejects_bad_input_in_one_line(kwargs, match):
    with pytest.raises(HostsError, match=match):
        hosts.plan_hosts(**kwargs)


def test_teardown_is_safe_when_nothing_exists(tmp_path):
    assert hosts.teardown("llmf-never-created", cluster="never-created", state_dir=tmp_path) == []


def _serve_once(host: hosts.Host, port: int) -> subprocess.Popen:
    code = (
        "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
        f"s.bind(({host.ip!r},{port})); s.listen(); print('up', flush=True); c,_=s.accept(); c.sendall(b'pong')"
    )
    p = hosts.run_in_host(host, [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "up"
    return p


def _client_code(ip: str, port: int) -> str:
    return f"import socket; c=socket.create_connection(({ip!r},{port}),timeout=5); print(c.recv(4).decode())"


@needs_root
def test_namespaces_reach_each_other_and_root_and_teardown_removes_all(tmp_path):
    cluster = _name("n")
    hs = hosts.create(cluster, 2, state_dir=tmp_path, subnet_index=_subnet("n"))
    try:
        assert hs.mode == "netns"
        assert json.loads((tmp_path / f"hosts-{cluster}.json").read_text())["prefix"] == hs.prefix
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert all(h.netns in names for h in hs.hosts)
        h0, h1 = hs.hosts
        # host -> host
        srv = _serve_once(h1, 7001)
        cli = hosts.run_in_host(
            h0, [sys.executable, "-c", _client_code(h1.ip, 7001)], stdout=subprocess.PIPE, text=True
        )
        assert cli.communicate(timeout=20)[0].strip() == "pong"
        srv.wait(timeout=10)
        # root namespace -> host
        srv = _serve_once(h0, 7002)
        out = subprocess.run(
            [sys.executable, "-c", _client_code(h0.ip, 7002)], capture_output=True, text=True, timeout=20
        )
        assert out.stdout.strip() == "pong"
        srv.wait(timeout=10)
        # a long-lived process inside a host, as Ray daemons are
        sleeper = hosts.run_in_host(h1, ["sleep", "300"])
    finally:
        # A different process tears down from the state file alone, as `llmfleet local down` does.
        down = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from infra.local import hosts; print(hosts.teardown({hs.prefix!r}, state_dir={str(tmp_path)!r}))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert down.returncode == 0, down.stderr
    assert "netns " + hs.hosts[0].netns in down.stdout
    assert sleeper.wait(timeout=10) != 0  # killed
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(h.netns in names for h in hs.hosts)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert hs.bridge not in links and not any(h.veth in links for h in hs.hosts)
    if shutil.which("iptables"):  # the bridge's FORWARD rule (for a Docker-set DROP policy) went too
        rules = subprocess.run(["iptables", "-w", "-S", "FORWARD"], capture_output=True, text=True).stdout
        assert hs.bridge not in rules
    assert not (tmp_path / f"hosts-{cluster}.json").exists()
    assert hosts.teardown(hs.prefix, state_dir=tmp_path) == []  # idempotent


@needs_root
def test_hosts_reach_each_other_when_docker_set_forward_to_drop(tmp_path):
    """br_netfilter + Docker's FORWARD DROP policy would cut bridged host-to-host traffic; the
    hosts' own bridge rule keeps it open (as Docker leaves it on any machine that ran dockerd)."""
    if not shutil.which("iptables") or not Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
        pytest.skip("no iptables or br_netfilter here: bridged traffic never meets a FORWARD policy")
    policy = subprocess.run(["iptables", "-w", "-S", "FORWARD"], capture_output=True, text=True).stdout.split(
        "\n"
    )[0]
    nf = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    old_nf = nf.read_text().strip()
    subprocess.run(["iptables", "-w", "-P", "FORWARD", "DROP"], check=True)
    nf.write_text("1")
    cluster = _name("d")
    hs = hosts.create(cluster, 2, state_dir=tmp_path, subnet_index=_subnet("d"))
    try:
        h0, h1 = hs.hosts
        srv = _serve_once(h1, 7003)
        cli = hosts.run_in_host(
            h0, [sys.executable, "-c", _client_code(h1.ip, 7003)], stdout=subprocess.PIPE, text=True
        )
        assert cli.communicate(timeout=20)[0].strip() == "pong"
        srv.wait(timeout=10)
    finally:
        removed = hosts.teardown(hs.prefix, state_dir=tmp_path)
        subprocess.run(["iptables", "-w", *policy.split()[:1], "FORWARD", policy.split()[-1]], check=False)
        nf.write_text(old_nf)
    assert f"iptables FORWARD rule for {hs.bridge}" in removed


@needs_root
def test_create_refuses_a_subnet_already_routed(tmp_path):
    a, b = _name("sa"), _name("sb")
    sub = _subnet("s")
    try:
        hosts.create(a, 1, state_dir=tmp_path, subnet_index=sub)
        with pytest.raises(
            HostsError, match=rf"subnet 10.213.{sub}.0/24 is already routed via {hosts.bridge_name(a)}"
        ):
            hosts.create(b, 1, state_dir=tmp_path, subnet_index=sub)
        assert not (tmp_path / f"hosts-{b}.json").exists()
    finally:
        hosts.teardown(hosts.prefix_for(a), state_dir=tmp_path)
        hosts.teardown(hosts.prefix_for(b), state_dir=tmp_path)


@needs_root
def test_create_replaces_leftovers_of_a_crashed_run(tmp_path):
    cluster = _name("l")
    sub = _subnet("l")
    try:
        hosts.create(cluster, 1, state_dir=tmp_path, subnet_index=sub)
        hs = hosts.create(cluster, 1, state_dir=tmp_path, subnet_index=sub)  # would fail on "File exists"
        assert (
            hs.hosts[0].netns
            in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        )
    finally:
        hosts.teardown(hosts.prefix_for(cluster), state_dir=tmp_path)


def test_loopback_hosts_tag_processes_and_teardown_kills_them(tmp_path):
    cluster = _name("lo")
    hs = hosts.create(cluster, 2, state_dir=tmp_path, mode="loopback", subnet_index=3)
    try:
        h1 = hs.hosts[1]
        srv = _serve_once(h1, 7003)  # a distinct loopback IP per host
        out = subprocess.run(
            [sys.executable, "-c", _client_code(h1.ip, 7003)], capture_output=True, text=True, timeout=20
        )
        assert out.stdout.strip() == "pong"
        srv.wait(timeout=10)
        # A detached grandchild (like a Ray daemon after `ray start` returns) is still found by its tag.
        starter = hosts.run_in_host(
            hs.hosts[0],
            ["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"],
            stdout=subprocess.PIPE,
            text=True,
        )
        orphan = int(starter.communicate(timeout=10)[0])
    finally:
        removed = hosts.teardown(hs.prefix, state_dir=tmp_path)
    assert any(r.startswith("state ") for r in removed)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{orphan}/stat").read().split()[2]
        except FileNotFoundError:
            break
        if state == "Z":  # dead, waiting for init to reap it
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"orphan {orphan} survived teardown")


def test_terminate_escalates_to_sigkill_for_a_process_that_ignores_sigterm():
    """The one stop helper (teardown and the local cluster's supervisors both use it)."""
    polite = subprocess.Popen(["sleep", "30"])
    stubborn = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert stubborn.stdout.readline() == "ready\n"  # the trap is set before the first signal
    procs = {p.pid: p for p in (polite, stubborn)}

    def alive() -> set[int]:
        return {pid for pid, p in procs.items() if p.poll() is None}

    t0 = time.monotonic()
    hosts.terminate(alive, grace=0.5, kill_wait=5.0)
    assert alive() == set()
    assert polite.returncode == -15 and stubborn.returncode == -9
    assert 0.5 <= time.monotonic() - t0 < 5.0  # the grace was given, and SIGKILL ended the wait
