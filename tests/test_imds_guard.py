"""The metadata-service guard, applied for real inside a network namespace.

A namespace holds 169.254.169.254 and fd00:ec2::254 on its loopback with an HTTP listener
on port 80 (the stand-in metadata service). The shell lines `imds_guard.install_lines` renders
(the ones the node script and the SSH bootstrap run) are applied there as they are; then root
must still reach the listener and the node container's uid must not. Without the lines the uid
does reach it, so the test fails if the rules stop matching.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from infra.boot import cloud_init, imds_guard
from ray_cluster import contract

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace and iptables"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("ip", "iptables", "ip6tables", "setpriv", "curl")),
        reason="needs iproute2, iptables (ip6tables), util-linux (setpriv) and curl",
    ),
]

NS = f"llmf-imds-{os.getpid() % 100000}"
URLS = {"v4": f"http://{imds_guard.IMDS_V4}/", "v6": f"http://[{imds_guard.IMDS_V6}]/"}


def _ns(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ip", "netns", "exec", NS, *argv], capture_output=True, text=True, check=check, **kw
    )


@pytest.fixture
def metadata_ns(tmp_path):
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    server = None
    try:
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            # On the namespace's loopback: no dummy module needed, and local traffic still
            # passes OUTPUT, where the rules sit.
            ["ip", "addr", "add", f"{imds_guard.IMDS_V4}/32", "dev", "lo"],
            ["ip", "addr", "add", f"{imds_guard.IMDS_V6}/128", "dev", "lo", "nodad"],
        ):
            _ns(*cmd)
        (tmp_path / "index.html").write_text("role-credentials\n")
        # `--bind ::` is dual-stack: one listener answers on both addresses.
        server = subprocess.Popen(
            ["ip", "netns", "exec", NS, sys.executable, "-m", "http.server", "80", "--bind", "::"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while _fetch("v4", 0) != 0 or _fetch("v6", 0) != 0:
            assert server.poll() is None and time.monotonic() < deadline, (
                "stand-in metadata service did not start"
            )
            time.sleep(0.1)
        yield
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def _fetch(family: str, uid: int) -> int:
    """curl's exit code for a GET of the stand-in metadata service as `uid` (0: reached)."""
    who = [] if uid == 0 else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    curl = ["curl", "-sS", "-o", "/dev/null", "--max-time", "3", URLS[family]]
    return _ns(*who, *curl, check=False).returncode


def _apply() -> None:
    _ns("bash", "-c", "\n".join(["set -euo pipefail", *imds_guard.install_lines()]))


def test_without_the_rules_the_container_uid_reaches_the_metadata_service(metadata_ns):
    assert _fetch("v4", contract.NODE_UID) == 0
    assert _fetch("v6", contract.NODE_UID) == 0


def test_the_rules_block_the_container_uid_and_leave_root_its_access(metadata_ns):
    _apply()
    _apply()  # every boot and rollout runs them again: still one rule per family
    for tool in ("iptables", "ip6tables"):
        listed = _ns(tool, "-S", "OUTPUT").stdout
        assert listed.count(f"--uid-owner {contract.NODE_UID}") == 1, listed
    for family in URLS:
        assert _fetch(family, 0) == 0, f"root lost the metadata service over {family}"
        # 7: connection refused (REJECT answers at once; a DROP would time out as 28)
        assert _fetch(family, contract.NODE_UID) == 7, (
            f"uid {contract.NODE_UID} still reaches it over {family}"
        )
    # Another unprivileged uid is not the guard's business (only the container's uid is matched).
    assert _fetch("v4", contract.NODE_UID + 1) == 0


def test_the_node_script_installs_the_rules_before_any_container_runs():
    spec = cloud_init.NodeSpec(
        role="worker",
        region="us-east-1",
        image_ref="1.dkr.ecr.us-east-1.amazonaws.com/n@sha256:" + "a" * 64,
        weights_s3_uri="s3://b/p/",
        model_path="/opt/m",
        weights_path="/opt",
        ray_token_parameter="/t",
        head_ip="10.0.0.1",
        gpus=8,
    )
    script = cloud_init.render_user_data(spec)
    guard = script.index(imds_guard.GUARD_BIN + " || die")
    assert all(line in script for line in imds_guard.install_lines())
    assert guard < script.index("docker pull") and guard < script.index("systemctl start docker")
    assert "RequiredBy=docker.service" in script and "Before=docker.service" in script


def test_the_container_runs_as_the_guarded_uid_and_cannot_regain_root():
    opts = contract.docker_run_options("worker", "/opt/m")
    assert ("--user", str(contract.NODE_UID)) in opts
    assert ("--security-opt", "no-new-privileges") in opts
    dockerfile = (cloud_init.__file__.rsplit("/infra/", 1)[0]) + "/images/Dockerfile"
    with open(dockerfile) as f:
        assert f"ARG NODE_UID={contract.NODE_UID}\n" in f.read()


@pytest.mark.parametrize("uid", [0, -1, True, "1000", 2**32])
def test_a_root_or_malformed_uid_is_refused_in_one_line(uid):
    with pytest.raises(ValueError, match=r"^uid = .*: allowed a non-root uid"):
        imds_guard.rules(uid)


def test_the_ssh_bootstraps_lines_install_the_same_rules(metadata_ns):
    """An owned host: the bootstrap's own lines (root, so SUDO is empty) guard it the same way."""
    run = _ns(
        "bash",
        "-c",
        "\n".join(["set -euo pipefail", "SUDO=(); DRY_RUN=0; HOST=h", *imds_guard.bootstrap_lines()]),
    )
    assert run.stderr == ""
    assert _fetch("v4", 0) == 0 and _fetch("v4", contract.NODE_UID) == 7
    assert _fetch("v6", contract.NODE_UID) == 7


def test_the_ssh_bootstrap_warns_instead_of_cutting_off_its_own_user(metadata_ns):
    lines = ["SUDO=(); DRY_RUN=0; HOST=h", *imds_guard.bootstrap_lines()]
    who = ["setpriv", f"--reuid={contract.NODE_UID}", f"--regid={contract.NODE_UID}", "--clear-groups"]
    run = _ns(*who, "bash", "-c", "\n".join(lines))
    assert run.returncode == 0 and "guard is skipped" in run.stderr
    assert _fetch("v4", contract.NODE_UID) == 0


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs util-linux (unshare)")
def test_the_ssh_bootstrap_leaves_the_unit_for_later_boots_under_systemd(metadata_ns, tmp_path):
    """Under systemd the owned host also gets the guard script and unit (a reboot drops the
    rules, and docker brings the container back). A private mount namespace with tmpfs over
    /run, /usr/local/sbin and /etc/systemd/system keeps this machine's own untouched."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/systemctl.log\n')
    (fake / "systemctl").chmod(0o755)
    unit = f"/etc/systemd/system/{imds_guard.GUARD_UNIT}"
    script = "\n".join(
        [
            "set -euo pipefail",
            "for d in /run /usr/local/sbin /etc/systemd/system; do mount -t tmpfs none $d; done",
            "mkdir -p /run/systemd/system",
            f"PATH={fake}:$PATH; SUDO=(); DRY_RUN=0; HOST=h",
            *imds_guard.bootstrap_lines(),
            f"cp {imds_guard.GUARD_BIN} {unit} {tmp_path}/",
            f"test -x {imds_guard.GUARD_BIN}",
        ]
    )
    run = _ns("unshare", "--mount", "--propagation", "private", "bash", "-c", script, check=False)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "llmfleet-imds-guard").read_text() == imds_guard.guard_script()
    assert (tmp_path / imds_guard.GUARD_UNIT).read_text() == imds_guard.guard_unit()
    assert (tmp_path / "systemctl.log").read_text().splitlines() == [
        "daemon-reload",
        f"enable {imds_guard.GUARD_UNIT}",
    ]
    assert _fetch("v4", contract.NODE_UID) == 7
