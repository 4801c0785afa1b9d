"""The host bootstrap script over a real SSH connection.

An openssh-server in a network namespace plays the host (listening only on the namespace's
IP, host key pinned on the client side); the script goes through `ssh` exactly as the remote
Command sends it (`bash -c '<script>' llmfleet-bootstrap`). PATH is a directory of symlinks
to the tools a host has, plus fake `docker` / `nvidia-smi` that answer like the real ones and
record their argv. Weights go to tmpfs mounts whose size makes `df` report a chosen free space.
Each run gets a mount namespace with a temp dir bind-mounted on /run, so the secrets env file
(/run/llmfleet/node.env) lands there and never on this machine's /run; a real head run also
gets an overlay on /etc whose writes (/etc/llmfleet/serve.yaml) land in a temp dir.
Needs root (netns, mount, unshare) and /usr/sbin/sshd.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from infra.boot.cloud_init import head_deploy_argv
from infra.boot.ssh_bootstrap import (
    DEPLOY_UNIT_PATH,
    DRY_RUN_PREFIX,
    HOST_ENV_FILE,
    MESSAGE_PREFIX,
    remote_create_command,
    render_bootstrap,
)
from infra.boot.ssh_node import container_argv, expand, node_spec, stdin_secrets
from infra.stack.config import load_stack_config
from infra.stack.resolve import resolve
from tests.host_keys import keyed

SSHD = "/usr/sbin/sshd"
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace and tmpfs mounts"),
    pytest.mark.skipif(
        not (
            Path(SSHD).exists()
            and shutil.which("ssh")
            and shutil.which("ssh-keygen")
            and shutil.which("ip")
            and shutil.which("unshare")
        ),
        reason="needs openssh-server, openssh-client, iproute2 and util-linux (unshare)",
    ),
]

TAG = f"{os.getpid() % 10000}"
NS = f"llmf-ssh-{TAG}"
VETH = f"vsh{TAG}"
SUBNET = f"10.{230 + os.getpid() % 20}.{os.getpid() % 250}"
ROOT_IP, HOST_IP, HEAD_IP = f"{SUBNET}.1", f"{SUBNET}.2", f"{SUBNET}.9"
IMAGE = "registry.lab.example:5000/llmfleet/node@sha256:" + "ab" * 32
TOKEN = "tok-" + "x7" * 20
RAY_TOKEN = "ray" + "Q9" * 30
# What a host without Docker/NVIDIA has on PATH.
HOST_TOOLS = (
    "bash sh env head cut grep awk tr df du dirname id mkdir sleep printf cat wc sha256sum xargs chown sudo "
    "install"
).split()

DOCKER_SHIM = """#!/bin/bash
printf '%q ' docker "$@" >> {log}; echo >> {log}
case "$1 ${{2:-}}" in
  "info --format") echo '{{"nvidia":{{"path":"nvidia-container-runtime"}},"runc":{{"path":"runc"}}}}' ;;
  "info "*) echo "Server Version: 27.3.1" ;;
  "container inspect") exit 1 ;;
  "inspect -f") echo running ;;
esac
exit 0
"""
SYSTEMCTL_SHIM = """#!/bin/bash
printf '%q ' systemctl "$@" >> {log}; echo >> {log}
"""
NVIDIA_SMI_SHIM = """#!/bin/bash
printf '%q ' nvidia-smi "$@" >> {log}; echo >> {log}
for ((i = 0; i < {gpus}; i++)); do echo "GPU $i: NVIDIA L20 (UUID: GPU-0000000$i)"; done
"""


def _run(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=60, **kw)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A root sshd at HOST_IP:22 inside NS; yields (ssh argv prefix, work dir)."""
    d = tmp_path_factory.mktemp("sshd")
    proc = None
    made_ns = False
    try:
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key"))
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key"))
        (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
        host_pub = (d / "host_key.pub").read_text().split()
        (d / "known_hosts").write_text(f"{HOST_IP} {host_pub[0]} {host_pub[1]}\n")
        for p in (d, d / "authorized_keys", d / "host_key"):
            p.chmod(0o700 if p.is_dir() else 0o600)
        (d / "sshd_config").write_text(
            f"ListenAddress {HOST_IP}\nPort 22\nHostKey {d / 'host_key'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        )
        _run("ip", "netns", "add", NS)
        made_ns = True
        _run("ip", "link", "add", VETH, "type", "veth", "peer", "name", "eth0", "netns", NS)
        _run("ip", "addr", "add", f"{ROOT_IP}/24", "dev", VETH)
        _run("ip", "link", "set", VETH, "up")
        for cmd in (
            ["addr", "add", f"{HOST_IP}/24", "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["link", "set", "lo", "up"],
        ):
            _run("ip", "netns", "exec", NS, "ip", *cmd)
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        proc = subprocess.Popen(
            # nsenter joins the network namespace only (`ip netns exec` would also give sshd a
            # mount namespace of its own, hiding the tmpfs mounts the tests make later).
            ["nsenter", f"--net=/run/netns/{NS}", SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
            stdout=subprocess.DEVNULL,
            stderr=open(d / "sshd.log", "w"),  # noqa: SIM115 - closed with the process
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((HOST_IP, 22), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"sshd did not listen on {HOST_IP}:22: {(d / 'sshd.log').read_text()[-300:]}")
                time.sleep(0.2)
        ssh = [
            "ssh", "-i", str(d / "client_key"), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={d / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=5", f"root@{HOST_IP}",
        ]  # fmt: skip
        yield ssh, d
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if made_ns:
            _run("ip", "netns", "delete", NS, check=False)  # removes the veth pair too
        _run("ip", "link", "delete", VETH, check=False)


@pytest.fixture
def host(sshd, tmp_path):
    """PATH dirs (bare host / with shims), tmpfs mounts for the weights; unmounted after."""
    ssh, _ = sshd
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    for tool in HOST_TOOLS:
        if found := shutil.which(tool):
            (bare / tool).symlink_to(found)
    log = tmp_path / "calls.log"
    log.touch()
    mounts: list[Path] = []

    def shims(gpus: int | None = 8, docker: bool = True, systemd: bool = True) -> Path:
        d = tmp_path / f"shims-{gpus}-{docker}-{systemd}"
        d.mkdir(exist_ok=True)
        if docker:
            (d / "docker").write_text(DOCKER_SHIM.format(log=shlex.quote(str(log))))
        if systemd:
            (d / "systemctl").write_text(SYSTEMCTL_SHIM.format(log=shlex.quote(str(log))))
        if gpus is not None:
            (d / "nvidia-smi").write_text(NVIDIA_SMI_SHIM.format(log=shlex.quote(str(log)), gpus=gpus))
        for f in d.iterdir():
            f.chmod(0o755)
        return d

    def tmpfs(size: str) -> Path:
        m = tmp_path / f"weights-{size}"
        m.mkdir()
        _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(m))
        mounts.append(m)
        return m

    def calls() -> list[list[str]]:
        return [shlex.split(line) for line in log.read_text().splitlines() if line.strip()]

    run_dir = tmp_path / "run"  # seen by the script as /run
    run_dir.mkdir()

    def run(cfg, entry, *path_dirs: Path, dry_run=True, stdin=None, etc=False) -> subprocess.CompletedProcess:
        script = render_bootstrap(
            resolve(cfg), entry, HEAD_IP if entry.role == "worker" else entry.ray_ip, IMAGE
        )
        env = [f"PATH={':'.join(str(p) for p in (*path_dirs, bare))}"] + (
            ["LLMFLEET_DRY_RUN=1"] if dry_run else []
        )
        etc_upper = ""
        if etc:  # writes to /etc go to an overlay's upper dir, never to this machine's /etc
            etc_upper = str(tmp_path / "etc-upper")
            (tmp_path / "etc-upper").mkdir(exist_ok=True)
            (tmp_path / "etc-work").mkdir(exist_ok=True)
        private = (
            'mount --bind "$1" /run && { [ -z "$2" ] || mount -t overlay overlay '
            '-o "lowerdir=/etc,upperdir=$2,workdir=$2/../etc-work" /etc; } && shift 2 && exec "$@"'
        )
        prefix = ["unshare", "--mount", "sh", "-c", private, "_", str(run_dir), etc_upper, "env", *env]
        remote = shlex.join(prefix) + " " + remote_create_command(script)
        return subprocess.run([*ssh, remote], input=stdin or "", capture_output=True, text=True, timeout=90)

    def env_file() -> Path:
        return run_dir / Path(HOST_ENV_FILE).relative_to("/run")

    try:
        yield type(
            "Host",
            (),
            {
                "shims": staticmethod(shims),
                "tmpfs": staticmethod(tmpfs),
                "calls": staticmethod(calls),
                "run": staticmethod(run),
                "env_file": staticmethod(env_file),
                "bare": bare,
            },
        )
    finally:
        for m in mounts:
            _run("umount", "-l", str(m), check=False)


def stack(weights_path: Path, model="deepseek-r1", role="worker"):
    me = {"address": HOST_IP, "role": role, "gpuModel": "L20", "gpuCount": 8 if role == "worker" else 0}
    other = (
        {"address": HEAD_IP, "role": "head", "gpuCount": 0}
        if role == "worker"
        else {"address": f"{SUBNET}.3", "role": "worker"}
    )
    raw = {
        "llmfleet:provider": "existing",
        "llmfleet:sshPrivateKey": "[secret]",
        "llmfleet:model": model,
        "llmfleet:weightsPath": str(weights_path),
        "llmfleet:hosts": json.dumps(keyed(other, me) if role == "worker" else keyed(me, other)),
    }
    cfg = load_stack_config(raw, "sshtest")
    entry = next(h for h in cfg.hosts if h.address == HOST_IP)
    # No weightsUri: the checkpoint is expected in place (a config.json is the marker).
    (weights_path / model).mkdir(parents=True, exist_ok=True)
    (weights_path / model / "config.json").write_text("{}")
    return cfg, entry


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert DRY_RUN_PREFIX not in proc.stdout  # stopped before any side effect
    return lines[0]


def test_missing_docker_fails_cleanly(host, tmp_path):
    cfg, entry = stack(tmp_path / "w")
    line = one_error_line(host.run(cfg, entry))
    assert line.startswith(f"{MESSAGE_PREFIX} docker failed on {HOST_IP}: docker not found in PATH")
    assert line.endswith("install Docker Engine: https://docs.docker.com/engine/install/")


def test_missing_nvidia_smi_fails_cleanly(host, tmp_path):
    cfg, entry = stack(tmp_path / "w")
    line = one_error_line(host.run(cfg, entry, host.shims(gpus=None)))
    assert line == (
        f"{MESSAGE_PREFIX} gpu-count failed on {HOST_IP}: nvidia-smi not found in PATH; install the NVIDIA driver"
    )
    assert [c[:2] for c in host.calls()] == [["docker", "info"], ["docker", "info"]]


def test_gpu_count_differing_from_the_declaration_names_the_entry(host, tmp_path):
    cfg, entry = stack(tmp_path / "w")
    line = one_error_line(host.run(cfg, entry, host.shims(gpus=4)))
    assert line == (
        f"{MESSAGE_PREFIX} gpu-count failed on {HOST_IP}: nvidia-smi -L lists 4 GPUs, declared 8; "
        "set llmfleet:hosts[1].gpuCount to 4, or fix the host"
    )
    assert ["nvidia-smi", "-L"] in host.calls()


def test_too_little_disk_for_the_weights(host):
    cfg, entry = stack(host.tmpfs("1g"))
    line = one_error_line(host.run(cfg, entry, host.shims()))
    assert line.startswith(f"{MESSAGE_PREFIX} disk failed on {HOST_IP}: 1 GiB free at ")
    assert "the weights need 642 GiB; free space, or set llmfleet:weightsPath" in line


def test_dry_run_prints_the_container_start_command(host):
    weights = host.tmpfs("700g")  # tmpfs reserves nothing: df reports 700 GiB free
    cfg, entry = stack(weights)
    # A worker too takes the Ray token on stdin; without it nothing happens.
    line = one_error_line(host.run(cfg, entry, host.shims()))
    assert line.startswith(
        f"{MESSAGE_PREFIX} ray-token failed on {HOST_IP}: no RAY_AUTH_TOKEN=... line on stdin"
    )
    proc = host.run(cfg, entry, host.shims(), stdin=stdin_secrets("worker", RAY_TOKEN))
    assert proc.returncode == 0, proc.stderr
    assert RAY_TOKEN not in proc.stdout + proc.stderr
    assert (
        f"{DRY_RUN_PREFIX} write RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<ray token> to {HOST_ENV_FILE} (0600)"
        in proc.stdout.splitlines()
    )
    assert not host.env_file().exists()  # a dry run writes nothing
    dry = [
        shlex.split(ln[len(DRY_RUN_PREFIX) :])
        for ln in proc.stdout.splitlines()
        if ln.startswith(DRY_RUN_PREFIX)
    ]
    expected = expand(container_argv(node_spec(resolve(cfg), entry, HEAD_IP, IMAGE)), {"NODE_IP": HOST_IP})
    assert dry[-1] == expected
    assert ["docker", "pull", "--quiet", IMAGE] in dry
    assert expected[-10:] == [
        "worker", "--address", f"{HEAD_IP}:6379", "--num-gpus", "8", "--gpu-model", "L20", "--ip", HOST_IP, "--block",
    ]  # fmt: skip
    # Dry run: docker was only asked questions, never told to pull or run.
    assert {c[1] for c in host.calls() if c[0] == "docker"} <= {"info", "container"}


def test_real_run_starts_exactly_that_container(host):
    weights = host.tmpfs("700g")
    cfg, entry = stack(weights)
    proc = host.run(cfg, entry, host.shims(), dry_run=False, stdin=stdin_secrets("worker", RAY_TOKEN))
    assert proc.returncode == 0, proc.stderr
    assert RAY_TOKEN not in proc.stdout + proc.stderr + "".join(map(str, host.calls()))
    # The container's --env-file holds the Ray token, root-only; the worker has no endpoint token.
    env_file = host.env_file()
    assert env_file.read_text() == f"RAY_AUTH_MODE=token\nRAY_AUTH_TOKEN={RAY_TOKEN}\n"
    assert (env_file.stat().st_mode & 0o777, env_file.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert proc.stdout.strip().endswith(
        f"{MESSAGE_PREFIX} worker {HOST_IP} ready (container llmfleet-worker)"
    )
    runs = [c for c in host.calls() if c[:2] == ["docker", "run"]]
    assert runs == [
        expand(container_argv(node_spec(resolve(cfg), entry, HEAD_IP, IMAGE)), {"NODE_IP": HOST_IP})
    ]
    assert ["docker", "pull", "--quiet", IMAGE] in host.calls()


def test_head_takes_the_token_on_stdin_and_never_shows_it(host, tmp_path):
    cfg, entry = stack(tmp_path / "h", role="head")
    line = one_error_line(host.run(cfg, entry, host.shims(gpus=None), stdin=f"RAY_AUTH_TOKEN={RAY_TOKEN}\n"))
    assert line.startswith(f"{MESSAGE_PREFIX} api-token failed on {HOST_IP}: no LLMFLEET_API_TOKEN=... line")
    line = one_error_line(host.run(cfg, entry, host.shims(gpus=None), stdin=f"LLMFLEET_API_TOKEN={TOKEN}\n"))
    assert line.startswith(f"{MESSAGE_PREFIX} ray-token failed on {HOST_IP}: no RAY_AUTH_TOKEN=... line")
    # The last line without a newline still counts.
    stdin = stdin_secrets("head", RAY_TOKEN, TOKEN).rstrip("\n")
    proc = host.run(cfg, entry, host.shims(gpus=None), stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr and RAY_TOKEN not in proc.stdout + proc.stderr
    assert (
        f"{DRY_RUN_PREFIX} write RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<ray token> LLMFLEET_API_TOKEN=<token> "
        f"to {HOST_ENV_FILE} (0600)" in proc.stdout.splitlines()
    )
    dry = [
        shlex.split(ln[len(DRY_RUN_PREFIX) :])
        for ln in proc.stdout.splitlines()
        if ln.startswith(DRY_RUN_PREFIX)
    ]
    expected = expand(container_argv(node_spec(resolve(cfg), entry, HOST_IP, IMAGE)), {"NODE_IP": HOST_IP})
    assert dry[-5] == expected and "--gpus" not in expected
    # Then the head's deploy watcher goes under systemd (it outlives a container restart and a
    # reboot): the unit is written, enabled and (re)started against the new container.
    assert dry[-4:] == [
        ["write", DEPLOY_UNIT_PATH],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "llmfleet-deploy.service"],
        ["systemctl", "restart", "llmfleet-deploy.service"],
    ]
    assert ["--env-file", "/run/llmfleet/node.env"] == expected[expected.index("--env-file") :][:2]
    assert not any(c[0] == "nvidia-smi" for c in host.calls())  # a CPU head: no GPU checks


def test_head_real_run_writes_both_tokens_to_the_env_file(host, tmp_path):
    cfg, entry = stack(tmp_path / "h", role="head")
    proc = host.run(
        cfg,
        entry,
        host.shims(gpus=None),
        dry_run=False,
        stdin=stdin_secrets("head", RAY_TOKEN, TOKEN),
        etc=True,
    )
    assert proc.returncode == 0, proc.stderr
    calls = "".join(map(str, host.calls()))
    assert (
        TOKEN not in proc.stdout + proc.stderr + calls and RAY_TOKEN not in proc.stdout + proc.stderr + calls
    )
    env_file = host.env_file()
    assert env_file.read_text() == (
        f"RAY_AUTH_MODE=token\nRAY_AUTH_TOKEN={RAY_TOKEN}\nLLMFLEET_API_TOKEN={TOKEN}\n"
    )
    assert env_file.stat().st_mode & 0o777 == 0o600
    [run] = [c for c in host.calls() if c[:2] == ["docker", "run"]]
    assert run[run.index("--env-file") + 1] == HOST_ENV_FILE
    # The deploy watcher's unit, written to /etc (the overlay), enabled and restarted.
    unit = (tmp_path / "etc-upper" / Path(DEPLOY_UNIT_PATH).relative_to("/etc")).read_text()
    spec = node_spec(resolve(cfg), entry, HOST_IP, IMAGE)
    assert (
        f"ExecStart={shlex.join(['/usr/bin/env', 'docker', 'exec', 'llmfleet-head', *head_deploy_argv(spec), '--watch'])}\n"
        in unit
    )
    assert "Restart=always" in unit and "WantedBy=multi-user.target" in unit
    assert [c for c in host.calls() if c[0] == "systemctl"] == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "llmfleet-deploy.service"],
        ["systemctl", "restart", "llmfleet-deploy.service"],
    ]
    assert not any(c[:2] == ["docker", "exec"] for c in host.calls())  # nothing one-shot any more


def test_head_without_systemd_fails_before_any_side_effect(host, tmp_path):
    cfg, entry = stack(tmp_path / "h", role="head")
    proc = host.run(
        cfg, entry, host.shims(gpus=None, systemd=False), stdin=stdin_secrets("head", RAY_TOKEN, TOKEN)
    )
    line = one_error_line(proc)
    assert line.startswith(f"{MESSAGE_PREFIX} systemd failed on {HOST_IP}: systemctl not found in PATH")
