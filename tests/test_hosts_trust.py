"""`llmfleet hosts trust`: host keys from a real sshd into the stack file, the rest untouched.

An openssh-server listens on two loopback addresses (port 22, as the hosts' sshd does); the
command scans them, and the stack file it writes loads with those keys. The text edit itself
(infra/stack/host_keys.py) is checked on the shipped onprem-l20 file and on flow-style entries.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.constants import REPO_ROOT
from infra.stack.host_keys import HostKeysEditError, set_host_keys
from tests.host_keys import HOST_KEY

SSHD = "/usr/sbin/sshd"
ONPREM = REPO_ROOT / "stacks" / "Pulumi.onprem-l20.yaml"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMsT8MDZaYKYsPe+MCUllDTwF8AMic+sKDpxW56sKyyh"


def test_keys_replace_only_the_hostkey_values_of_the_shipped_stack():
    text = ONPREM.read_text()
    out = set_host_keys(text, {0: HOST_KEY, 2: HOST_KEY})
    changed = [(a, b) for a, b in zip(text.splitlines(), out.splitlines(), strict=True) if a != b]
    assert len(changed) == 2 and all("hostKey:" in a and HOST_KEY in b for a, b in changed)


def test_missing_keys_are_inserted_as_lines_of_their_entry():
    text = "".join(ln for ln in ONPREM.read_text().splitlines(keepends=True) if "hostKey:" not in ln)
    out = set_host_keys(text, {i: HOST_KEY for i in range(4)})
    added = [ln for ln in out.splitlines() if ln not in text.splitlines()]
    assert added == [f'      hostKey: "{HOST_KEY}"'] * 4
    # every original line is still there, in order
    assert [ln for ln in out.splitlines() if ln not in added] == text.splitlines()


def test_flow_entries_and_a_layout_it_cannot_edit():
    flow = "config:\n  llmfleet:hosts:\n    - {address: a, role: head}  # the head\n    - {address: b}\n"
    out = set_host_keys(flow, {0: HOST_KEY, 1: OTHER_KEY})
    assert "# the head" in out and out.count("hostKey:") == 2
    with pytest.raises(HostKeysEditError):
        set_host_keys("config:\n  llmfleet:provider: existing\n", {0: HOST_KEY})


def test_trust_refuses_a_stack_without_hosts_in_one_line():
    from infra.cli import app

    result = CliRunner().invoke(app, ["hosts", "trust", "--stack", "prod", "--yes"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: Pulumi.prod.yaml: the stack file has no llmfleet:hosts"
    )


# ---------------------------------------------------------------- against a real sshd

TAG = os.getpid() % 200
ADDRESSES = [f"127.77.{TAG}.1", f"127.77.{TAG}.2"]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if os.geteuid() != 0 or not Path(SSHD).exists() or not shutil.which("ssh-keyscan"):
        pytest.skip("needs root (port 22), openssh-server and openssh-client")
    d = tmp_path_factory.mktemp("sshd")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(d / "hk")], check=True)
    (d / "hk").chmod(0o600)
    listen = "".join(f"ListenAddress {a}:22\n" for a in ADDRESSES)
    (d / "sshd_config").write_text(
        f"{listen}HostKey {d / 'hk'}\nPidFile {d / 'sshd.pid'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nAuthorizedKeysFile none\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=open(d / "log", "w"))  # noqa: SIM115
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((ADDRESSES[1], 22), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.skip(f"sshd did not listen: {(d / 'log').read_text()[-200:]}")
                time.sleep(0.1)
        yield " ".join((d / "hk.pub").read_text().split()[:2])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _project(tmp_path: Path, with_keys: bool) -> Path:
    """A project whose owned stack's hosts are the two sshd addresses (a copy of onprem-l20)."""
    (tmp_path / "stacks").mkdir()
    (tmp_path / "Pulumi.yaml").write_text((REPO_ROOT / "Pulumi.yaml").read_text())
    hosts = [
        {"address": ADDRESSES[0], "sshUser": "llmfleet", "role": "head", "gpuCount": 0},
        {"address": ADDRESSES[1], "sshUser": "llmfleet", "role": "worker", "gpuModel": "L20", "gpuCount": 8},
    ]
    if with_keys:
        hosts[1]["hostKey"] = OTHER_KEY  # a stale key: trust must replace it
    lines = [
        "# owned hosts (a comment that must survive)",
        "config:",
        "  llmfleet:provider: existing",
        "  llmfleet:sshPrivateKey:",
        "    secure: v1:abc",
        "  llmfleet:hosts:",
    ]
    for h in hosts:
        first, *rest = h.items()
        lines.append(f"    - {first[0]}: {json.dumps(first[1])}  # entry comment")
        lines += [f"      {k}: {json.dumps(v)}" for k, v in rest]
    lines.append('  llmfleet:hostHourlyUsd: "3.80"')
    (tmp_path / "stacks" / "Pulumi.mine.yaml").write_text("\n".join(lines) + "\n")
    return tmp_path / "stacks" / "Pulumi.mine.yaml"


@pytest.mark.parametrize("with_keys", [False, True])
def test_trust_writes_the_hosts_real_keys_and_the_stack_then_loads(sshd, tmp_path, with_keys):
    from infra.commands.hosts import trust
    from infra.stack.files import load_config

    path = _project(tmp_path, with_keys)
    before = path.read_text()
    assert trust(path, yes=True) == 2
    after = path.read_text()
    assert [ln for ln in after.splitlines() if "hostKey" not in ln] == [
        ln for ln in before.splitlines() if "hostKey" not in ln
    ]
    cfg = load_config("mine", project_dir=tmp_path)
    assert [h.host_key for h in cfg.hosts] == [sshd, sshd]
    assert trust(path, yes=True) == 0  # the same keys again: nothing to write


def test_trust_writes_nothing_when_the_user_says_no(sshd, tmp_path, monkeypatch):
    import typer

    from infra.commands import hosts

    path = _project(tmp_path, with_keys=False)
    before = path.read_text()
    monkeypatch.setattr(typer, "confirm", lambda *a, **k: False)
    with pytest.raises(typer.Exit):
        hosts.trust(path, yes=False)
    assert path.read_text() == before


def test_a_host_without_sshd_is_one_line_and_nothing_is_written(sshd, tmp_path):
    import typer

    from infra.commands import hosts

    path = _project(tmp_path, with_keys=False)
    path.write_text(path.read_text().replace(ADDRESSES[1], f"127.77.{TAG}.3"))
    before = path.read_text()
    with pytest.raises(typer.Exit) as e:
        hosts.trust(path, yes=True, timeout_s=2)
    assert e.value.exit_code == 2 and path.read_text() == before
