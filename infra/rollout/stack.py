"""A deployed stack's rollout: its hosts (EC2), its node-script versions (SSM), its gates (the
head's readiness over SSM), wired to infra/rollout/ssm.py's runner. Clients are injected."""

from __future__ import annotations

import getpass
import json
import shlex
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from infra.boot.node_apply import node_parameter_name
from infra.deploy import readiness_commands, wait_head_ready
from infra.rollout import plan as p
from infra.rollout.ssm import (
    RoleVersions,
    RolloutResult,
    SsmRunner,
    role_versions,
    rollout_lock,
    run_rollout,
)
from infra.worker_lookup import HeadLookupError, head_instance_id, running_worker_slots


def pulumi_stack_name(stack: str) -> str:
    """`org/project/prod` -> `prod`: the name the program's parameters carry (pulumi.get_stack())."""
    return stack.rsplit("/", 1)[-1]


def stack_hosts(
    ec2: Any, outputs: Mapping[str, Any], placements: Sequence[Sequence[str]] | None = None
) -> list[p.Host]:
    """The head (the running instance of its group; an older stack's head_instance_id output)
    and the running worker of each slot (looked up
    by its Auto Scaling group's tag).

    Each worker's replica and stage come from `placements` (each engine replica's host IPs in
    stage order, as the head reports them: Ray chose them at deploy time); without them, or for
    a worker in no placement (a replacement not placed yet), from the slot order (slot i is
    stage i % PP of replica i // PP; an unplaced worker is its own replica after the placed ones)."""
    hosts: list[p.Host] = []
    if outputs.get("head_instance_id") or outputs.get("head_group"):
        try:
            hosts.append(p.Host("head", head_instance_id(outputs, ec2), "head"))
        except HeadLookupError as e:
            raise p.PlanError(str(e)) from None
    pp = int(outputs.get("pipeline_parallel_size") or 1)
    where = {ip: (r, stage) for r, ips in enumerate(placements or []) for stage, ip in enumerate(ips)}
    seen: set[int] = set()
    extra = len(placements or [])
    for slot, ip, iid in running_worker_slots(ec2, list(outputs.get("worker_groups") or [])):
        if slot in seen:
            # A slot mid-replacement runs two instances for a moment: roll only the first; the
            # new one boots the newest script anyway.
            continue
        seen.add(slot)
        if not placements:
            hosts.extend(p.workers_by_slot([(slot, iid)], pp))
        elif ip in where:
            hosts.append(p.Host("worker", iid, f"worker-{slot}", *where[ip]))
        else:
            hosts.append(p.Host("worker", iid, f"worker-{slot}", extra, 0))
            extra += 1
    return hosts


def head_placements(
    runner: SsmRunner, head_instance_id: str, container: str, timeout_s: float = 300.0
) -> tuple[list[list[str]] | None, str]:
    """Each engine replica's host IPs from the head's `ray_cluster.node status --json`, or None
    with why (the head or its Serve app is down: the rollout then goes by slot order)."""
    ok, detail, stdout = runner.run(
        head_instance_id,
        [f"docker exec {shlex.quote(container)} python -m ray_cluster.node status --json"],
        "llmfleet rollout: engine placements",
        timeout_s,
    )
    if not ok:
        return None, f"head status: {detail}"
    try:
        doc = json.loads(stdout[stdout.find("{") :])
    except ValueError:
        return None, f"head status is not JSON: {p.tail_line(stdout, 120)}"
    placements = doc.get("placements")
    if not placements:
        return None, "the head reports no engine placement (nothing deployed yet)"
    return [list(ips) for ips in placements], ""


def stack_versions(ssm: Any, stack: str) -> dict[str, RoleVersions]:
    name = pulumi_stack_name(stack)
    return {role: role_versions(ssm, role, node_parameter_name(name, role)) for role in p.ROLES}


def readiness_gate(
    ssm: Any,
    *,
    head_instance_id: str,
    container: str,
    port: int,
    model: str,
    token_parameter: str,
    region: str,
    fingerprint: str,
    timeout_s: float = 1800.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Callable[[str, p.Host], tuple[bool, str]]:
    """The rollout's gates, run on the head over SSM (infra/deploy.py's readiness):

    - replica: every Serve app RUNNING (Serve reports that only when every replica of every
      deployment is healthy, so the rolled replica is back) and a real completion;
    - deployment: the same, and the head reports the new Serve config's fingerprint as the one
      it deployed and saw answer."""
    common = {"container": container, "port": port, "model": model, "token_parameter": token_parameter}
    # A replica gate runs before the head is rolled, maybe on the head's previous image, whose
    # `status` may not know --serve-config yet: it asks only what every image answers.
    commands = {
        p.GATE_REPLICA: readiness_commands(**common, region=region, serve_config=None),
        p.GATE_DEPLOYMENT: readiness_commands(**common, region=region),
    }

    def check(gate: str, host: p.Host) -> tuple[bool, str]:
        try:
            return _check(gate)
        except (ClientError, BotoCoreError) as e:  # a failed gate, not a crash: roll back
            return False, f"readiness on the head: {str(e).splitlines()[0] if str(e) else type(e).__name__}"

    def _check(gate: str) -> tuple[bool, str]:
        r = wait_head_ready(
            ssm,
            head_instance_id,
            commands[gate],
            timeout_s=timeout_s,
            clock=clock,
            sleep=sleep,
            expect_fingerprint=fingerprint if gate == p.GATE_DEPLOYMENT else None,
            require_serve_running=True,
        )
        return r.ready, r.reason

    return check


def rollout_stack(
    ssm: Any,
    ec2: Any,
    stack: str,
    outputs: Mapping[str, Any],
    *,
    container: str,
    port: int,
    model: str,
    token_parameter: str,
    region: str,
    fingerprint: str,
    timeout_s: float = 1800.0,
    log: Callable[[str], None] = lambda line: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    apply_timeout_s: float | None = None,
    owner: str = "",
) -> RolloutResult:
    """Roll the stack's changed node scripts out (what `llmfleet up` runs after `pulumi up`)."""
    try:
        head = head_instance_id(outputs, ec2)  # the head group's running instance
    except HeadLookupError as e:
        raise p.PlanError(f"the rollout needs the head: {e}") from None
    outputs = {**outputs, "head_instance_id": head}  # one lookup: the hosts below use the same
    gate = readiness_gate(
        ssm,
        head_instance_id=head,
        container=container,
        port=port,
        model=model,
        token_parameter=token_parameter,
        region=region,
        fingerprint=fingerprint,
        timeout_s=timeout_s,
        clock=clock,
        sleep=sleep,
    )
    extra = {"apply_timeout_s": apply_timeout_s} if apply_timeout_s else {}
    runner = SsmRunner(ssm, clock=clock, sleep=sleep, **extra)
    with rollout_lock(ssm, pulumi_stack_name(stack), owner or _whoami()):
        placements, why = head_placements(runner, head, container)
        if placements is None:
            log(f"replicas by slot order ({why})")
        else:
            log(
                "replicas as placed: "
                + "; ".join(f"{r}: {', '.join(ips)}" for r, ips in enumerate(placements))
            )
        hosts = stack_hosts(ec2, outputs, placements)
        return run_rollout(runner, hosts, stack_versions(ssm, stack), gate, log=log)


def _whoami() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
