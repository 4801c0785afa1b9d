"""`llmfleet hosts trust`: pin the SSH host key of every host you own (provider existing).

The bootstrap sends the Ray and endpoint tokens over SSH, so `llmfleet:hosts[*].hostKey` is
required (infra/stack/config_rules.py). This asks each host for its key with `ssh-keyscan`,
shows the fingerprints (`ssh-keygen -lf`) for you to compare with the host's own
(`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on its console), and on confirmation writes
them into stacks/Pulumi.<stack>.yaml, leaving the rest of the file as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from infra import yaml_files
from infra.commands._common import StackOpt, console, fail
from infra.commands._fit import Col, fitted_table
from infra.stack.config import ConfigError
from infra.stack.files import available_stacks, stack_file
from infra.stack.host_keys import HostKeysEditError, hosts_node, set_host_keys
from infra.stack.host_spec import HOST_RE, parse_host_key

KEY_TYPES = ("ed25519", "ecdsa", "rsa")


def scan(address: str, key_type: str, timeout_s: int) -> str:
    """The host's `TYPE BASE64` key of `key_type`, from ssh-keyscan (an argv, no shell)."""

    if not HOST_RE.match(address):  # never an option to ssh-keyscan, never a shell word
        raise ValueError(f"address {address!r}: allowed an IPv4 address or a DNS name")
    proc = subprocess.run(
        ["ssh-keyscan", "-T", str(timeout_s), "-t", key_type, address],
        capture_output=True,
        text=True,
        timeout=timeout_s + 10,
    )
    keys = [
        ln.split(None, 1)[1] for ln in proc.stdout.splitlines() if ln and not ln.startswith("#") and " " in ln
    ]
    if not keys:
        seen = (proc.stderr.strip().splitlines() or ["no answer"])[-1][:160]
        raise ValueError(f"{address} gave no {key_type} host key ({seen}); is sshd listening on port 22?")
    return parse_host_key(keys[0])


def fingerprint(key: str) -> str:
    proc = subprocess.run(["ssh-keygen", "-l", "-f", "-"], input=key + "\n", capture_output=True, text=True)
    parts = proc.stdout.split()
    return parts[1] if proc.returncode == 0 and len(parts) > 1 else "?"


def write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    shutil.copymode(path, tmp)
    os.replace(tmp, path)


def trust(path: Path, yes: bool, key_type: str = "ed25519", timeout_s: int = 5) -> int:
    """Scan, show, confirm and write; returns how many keys were written."""

    text = path.read_text()
    try:
        hosts_key, _ = hosts_node(text)
    except HostKeysEditError as e:
        fail(f"{path.name}: {e}; allowed: a stack with llmfleet:provider existing and its hosts")
    hosts = yaml_files.safe_load(text)["config"][hosts_key]
    found: dict[int, str] = {}
    # the fingerprint is what the operator compares, character by character: whole, under its
    # address (side by side they do not fit 80 columns)
    rows: list[list[str]] = []
    for i, h in enumerate(hosts):
        address = str(h.get("address", ""))
        try:
            found[i] = scan(address, key_type, timeout_s)
        except (ValueError, subprocess.TimeoutExpired) as e:
            fail(f"llmfleet:hosts[{i}].address = {address!r}: {e}")
        old = h.get("hostKey")
        state = "new" if not old else ("same" if str(old).split()[:2] == found[i].split() else "CHANGED")
        rows.append([str(i), f"{address}\n{fingerprint(found[i])}", str(h.get("role", "")), state])

    cols = [
        Col("entry", whole=True, drop=1),
        Col("address / fingerprint", whole=True),
        Col("role", whole=True),
        Col("hostKey", whole=True),
    ]
    console.print(fitted_table(console, cols, rows, title=f"{path.name}: SSH host keys ({key_type})"))
    changes = {i: k for i, k in found.items() if str(hosts[i].get("hostKey") or "").split()[:2] != k.split()}
    if not changes:
        console.print("every hostKey already matches: nothing to write")
        return 0
    console.print(
        "Compare each fingerprint with the host's own (on its console: "
        f"ssh-keygen -lf /etc/ssh/ssh_host_{key_type}_key.pub) before trusting it."
    )
    if not yes and not typer.confirm(f"write {len(changes)} hostKey value(s) into {path}?", default=False):
        fail("nothing written", code=1)
    try:
        write_atomically(path, set_host_keys(text, changes))
    except HostKeysEditError as e:
        fail(f"{path.name}: {e}")
    console.print(f"wrote {len(changes)} hostKey value(s) into {path}")
    return len(changes)


def trust_cmd(
    stack: StackOpt,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Write without asking (after showing the keys).")
    ] = False,
    key_type: Annotated[
        str, typer.Option("--type", "-t", help=f"Host key type to pin: {', '.join(KEY_TYPES)}.")
    ] = "ed25519",
    timeout: Annotated[int, typer.Option("--timeout", min=1, max=120, help="Seconds per host.")] = 5,
) -> None:
    """Pin each owned host's SSH key: ssh-keyscan, show fingerprints, confirm, write hostKey."""

    if key_type not in KEY_TYPES:
        fail(f"--type {key_type!r}: allowed: {', '.join(KEY_TYPES)}")
    try:
        path = stack_file(stack)
    except ConfigError as e:  # not inside a project
        fail(str(e))
    if not path.exists():
        fail(f"--stack {stack!r}: no file {path.name}; allowed: {', '.join(available_stacks())}")
    trust(path, yes, key_type, timeout)


def register(app: typer.Typer) -> None:
    hosts_app = typer.Typer(help="Hosts you own (llmfleet:provider existing).", no_args_is_help=True)
    hosts_app.command("trust")(trust_cmd)
    app.add_typer(hosts_app, name="hosts")
