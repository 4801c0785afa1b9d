"""Keep the node container away from the instance's credentials (pure renderers).

The node container uses the host network (Ray and NCCL bind the host's private IP), so nothing
in the network stack separates it from the metadata service at 169.254.169.254 (and IPv6's
fd00:ec2::254), which hands out the instance role's credentials to any local caller. The engine
runs model code (a checkpoint's Python with trust_remote_code, a tokenizer's, a plugin's), so
it must not hold the role that reads the stack's SSM secrets, S3 weights and ECR.

What separates them is the uid: the container runs as contract.NODE_UID (the image's USER,
pinned again in the run options with no-new-privileges), and there are no user namespaces, so
the host kernel sees the container's processes as that uid, the very one iptables' owner match
tests on OUTPUT. Root (the node script, llmfleet-apply, dockerd, the SSM agent) keeps the
metadata service: the boot reads the private IP and uses the role for SSM, S3 and ECR.
REJECT rather than DROP: an SDK's credential chain in the container then fails at once instead
of waiting out its metadata timeouts.
"""

from __future__ import annotations

import shlex

from ray_cluster.contract import NODE_UID

IMDS_V4 = "169.254.169.254"
IMDS_V6 = "fd00:ec2::254"
GUARD_BIN = "/usr/local/sbin/llmfleet-imds-guard"
GUARD_UNIT = "llmfleet-imds-guard.service"


def rules(uid: int = NODE_UID) -> list[tuple[str, list[str]]]:
    """(tool, rule after the chain name) for each address family: the OUTPUT rules that reject
    the uid's packets to the metadata service."""
    if isinstance(uid, bool) or not isinstance(uid, int) or not 0 < uid < 2**32 - 1:
        raise ValueError(f"uid = {uid!r}: allowed a non-root uid, 1 .. 4294967294")
    owner = ["-m", "owner", "--uid-owner", str(uid), "-j", "REJECT"]
    return [("iptables", ["-d", f"{IMDS_V4}/32", *owner]), ("ip6tables", ["-d", f"{IMDS_V6}/128", *owner])]


def install_lines(uid: int = NODE_UID, prefix: str = "") -> list[str]:
    """Shell lines that install the rules once: `-C` first, so a re-run (every boot, every
    rollout) never stacks a duplicate, and `-I OUTPUT 1`, so an ACCEPT already in the chain
    cannot let the packets through first. `-w`: dockerd edits the tables at boot too. IPv6 only
    where the host has an IPv6 stack and a working ip6tables: without the stack the v6 address is
    unreachable anyway, and the v6 endpoint answers only where http_protocol_ipv6 is enabled,
    which the stacks' launch templates leave off. `prefix`: e.g. `"${SUDO[@]}"` when the script is not root."""
    pre = f"{prefix} " if prefix else ""
    out = []
    for tool, rule in rules(uid):
        spec = " ".join(shlex.quote(a) for a in rule)
        line = f"{pre}{tool} -w -C OUTPUT {spec} 2>/dev/null || {pre}{tool} -w -I OUTPUT 1 {spec}"
        if tool == "ip6tables":
            probe = f"{pre}ip6tables -w -L OUTPUT -n >/dev/null 2>&1"
            line = f"if [ -e /proc/net/if_inet6 ] && {probe}; then {line}; fi"
        out.append(line)
    return out


def guard_script(uid: int = NODE_UID) -> str:
    """GUARD_BIN: the rules as a script of their own, for the unit to run at every boot."""
    return "\n".join(["#!/bin/bash", "set -euo pipefail", *install_lines(uid)]) + "\n"


def guard_unit() -> str:
    """A oneshot unit that docker.service requires and starts after: on a reboot (which drops
    every rule) the container that docker's restart policy brings back never runs a moment
    without the rules. Fails closed: if they cannot be installed, docker does not start."""
    return f"""[Unit]
Description=llmfleet: the node container's uid may not reach the instance metadata service
Before=docker.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={GUARD_BIN}

[Install]
RequiredBy=docker.service
"""


def node_script_section(uid: int = NODE_UID) -> str:
    """The EC2 node script's step 0: the unit (for every later boot) and the rules now."""
    return f"""
# 0. The node container (uid {uid}, host network) must not reach the metadata service and the
#    instance role's credentials; root keeps it (infra/boot/imds_guard.py says why this holds).
cat > {GUARD_BIN} <<'LLMFLEET_GUARD_EOF'
{guard_script(uid).rstrip()}
LLMFLEET_GUARD_EOF
chmod 0755 {GUARD_BIN}
cat > /etc/systemd/system/{GUARD_UNIT} <<'LLMFLEET_GUARD_EOF'
{guard_unit().rstrip()}
LLMFLEET_GUARD_EOF
systemctl daemon-reload
systemctl enable {GUARD_UNIT} >/dev/null 2>&1
{GUARD_BIN} || die "cannot install the metadata-service guard (iptables)"
"""


def bootstrap_lines(uid: int = NODE_UID) -> list[str]:
    """The SSH bootstrap's lines (an owned host, maybe on EC2 or another cloud with the same
    metadata address): the rules now, and under systemd the same unit as the EC2 hosts for
    every later boot. Uses the script's SUDO, DRY_RUN and HOST. Skipped with a warning when the
    SSH user is the container's uid itself: the rule would cut the bootstrap's own `aws` calls
    off the host's role on the next run."""
    q = shlex.quote
    tools = [tool for tool, _ in rules(uid)]
    shown = "; ".join(install_lines(uid))
    sudo = '"${SUDO[@]}"'
    return [
        "",
        "# The node container's uid may not reach a cloud metadata service (169.254.169.254) and",
        "# whatever role the host holds; see infra/boot/imds_guard.py.",
        f'if [ "$(id -u)" = {uid} ]; then',
        f"  echo \"llmfleet-bootstrap: warning: $(id -un) is uid {uid}, the node container's: the "
        'metadata-service guard is skipped (it would block this user too); bootstrap as another user" >&2',
        f"elif ! {sudo} {tools[0]} -w -L OUTPUT -n >/dev/null 2>&1; then",
        f'  echo "llmfleet-bootstrap: warning: no usable {tools[0]} on $HOST: the node container '
        'can reach a metadata service there; install iptables and re-run" >&2',
        'elif [ "$DRY_RUN" = 1 ]; then',
        f"  printf 'dry-run: %s\\n' {q(shown)}",
        "else",
        *(f"  {line}" for line in install_lines(uid, prefix=sudo)),
        "  if [ -d /run/systemd/system ]; then  # systemd runs this host: the unit for later boots",
        f"    printf '%s' {q(guard_script(uid))} | {sudo} install -D -m 0755 /dev/stdin {GUARD_BIN}",
        f"    printf '%s' {q(guard_unit())} | {sudo} install -D -m 0644 /dev/stdin /etc/systemd/system/{GUARD_UNIT}",
        f"    {sudo} systemctl daemon-reload && {sudo} systemctl enable {GUARD_UNIT} >/dev/null 2>&1",
        "  fi",
        "fi",
    ]
