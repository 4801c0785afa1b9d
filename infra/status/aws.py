"""`llmfleet status` for a deployed stack: the AWS side read with the operator's credentials, the
cluster side read ON the head over SSM Run Command (no open port), merged into ClusterStatus.

- hosts: the head group and each worker slot's group (EC2 Auto Scaling: instance, lifecycle
  state, health), their IPs from EC2;
- cluster: `python -m ray_cluster.node status --json` in the head container, whose `cluster`
  part is ray_cluster.cluster_status.gather (what `llmfleet local status` runs locally), plus
  the fingerprint of the Serve config the head deployed and saw answer;
- the last rollout: the node-script parameters' versions and labels, and the rollout lock
  (infra/rollout/ssm.py);
- live figures: the PromQL of infra.local.live against the stack's AMP workspace (SigV4).
Every client is injected; tests run them against a moto server.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from infra.boot.cloud_init import SERVE_CONFIG_PATH
from infra.boot.node_apply import node_parameter_name
from infra.rollout.ssm import GOOD_LABEL, ROLLBACK_MARK, SsmRunner, lock_name
from infra.rollout.stack import pulumi_stack_name
from infra.stack.outputs import StackOutputs
from infra.status.metrics import no_metrics, read_metrics
from infra.status.model import (
    ClusterSide,
    ClusterStatus,
    HostSlot,
    RoleRollout,
    Rollout,
    StatusError,
    classify,
    cluster_side,
    power_state,
)
from infra.worker_lookup import running_head

ROLES = ("head", "worker")
# A lifecycle state in which the instance serves (Auto Scaling's own names).
IN_SERVICE = "InService"


def aws_error(e: BaseException) -> str:
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return f"{err.get('Code')}: {err.get('Message', '')}".strip().rstrip(":")
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def stack_secret(
    outputs: StackOutputs,
    ssm: Any | None,
    *,
    output: str,
    parameter: str,
    what: str,
    show_secrets: str,
    error: type[Exception],
) -> str:
    """One of a stack's secrets: the secret output `output` (provider existing: Pulumi keeps it
    encrypted in the state) or the SSM SecureString named by the output `parameter` (provider
    aws: the hosts read it at boot; the operator's credentials read it here). Every failure is
    one line naming the output or the parameter, raised as `error`; `show_secrets` says how
    to read hidden outputs where the caller takes them."""
    if outputs.provider == "existing":
        value = getattr(outputs, output)
        if not value or value == "[secret]":
            raise error(f"stack output {output!r} is hidden: read the outputs with secrets ({show_secrets})")
        return value
    name = getattr(outputs, parameter)
    if not name:
        raise error(f"stack output {parameter!r} is missing: run `pulumi up` with this version")
    if ssm is None:
        raise error(f"reading the {what} needs an SSM client")
    try:
        return ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except (ClientError, BotoCoreError) as e:
        raise error(f"reading the {what} {name} from SSM: {aws_error(e)}") from None


# ---------------------------------------------------------------- hosts (EC2 Auto Scaling)


def _groups(asg: Any, names: Sequence[str]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for page in asg.get_paginator("describe_auto_scaling_groups").paginate(AutoScalingGroupNames=list(names)):
        for g in page.get("AutoScalingGroups", []):
            found[g["AutoScalingGroupName"]] = g
    return found


def _private_ips(ec2: Any, instance_ids: Sequence[str]) -> dict[str, str]:
    if not instance_ids:
        return {}
    out: dict[str, str] = {}
    for page in ec2.get_paginator("describe_instances").paginate(InstanceIds=list(instance_ids)):
        for res in page.get("Reservations", []):
            for inst in res.get("Instances", []):
                if inst.get("PrivateIpAddress"):
                    out[inst["InstanceId"]] = inst["PrivateIpAddress"]
    return out


def _pick(instances: list[dict]) -> dict | None:
    """The slot's instance: an InService one first (a group replacing its instance has two for a
    moment), else the first Auto Scaling lists."""
    serving = [i for i in instances if i.get("LifecycleState") == IN_SERVICE]
    return (serving or instances or [None])[0]


def group_slots(asg: Any, ec2: Any, outputs: StackOutputs) -> list[HostSlot]:
    """The head and every worker slot, from their Auto Scaling groups (one instance each)."""
    named = ([("head", "head", outputs.head_group)] if outputs.head_group else []) + [
        (f"worker-{i}", "worker", g) for i, g in enumerate(outputs.worker_groups or [])
    ]
    groups = _groups(asg, [g for _, _, g in named])
    picked = {g: _pick(groups.get(g, {}).get("Instances") or []) for _, _, g in named}
    ips = _private_ips(ec2, [i["InstanceId"] for i in picked.values() if i])
    slots = []
    for name, role, group in named:
        inst = picked[group]
        base: dict[str, Any] = {"name": name, "role": role, "group": group}
        if group not in groups:
            slots.append(
                HostSlot(**base, status="lost", reason="no such Auto Scaling group (has `pulumi up` run?)")
            )
            continue
        if inst is None and groups[group].get("DesiredCapacity", 1) == 0 and role == "worker":
            why = "scaled to zero (llmfleet:schedule, idle stop); `llmfleet wake --stack STACK` starts it"
            slots.append(HostSlot(**base, status="asleep", reason=why))
            continue
        if inst is None:
            why = "no instance: the group is replacing it or cannot launch one (see its activity history)"
            slots.append(HostSlot(**base, status="lost", reason=why))
            continue
        # The head serves on its fixed address (a pre-created interface it attaches at boot).
        ip = outputs.head_private_ip if role == "head" else ips.get(inst["InstanceId"])
        state, health = inst.get("LifecycleState"), inst.get("HealthStatus")
        slot = HostSlot(
            **base,
            ip=ip,
            instance_id=inst["InstanceId"],
            lifecycle_state=state,
            health=health,
            status="alive",
        )
        if state != IN_SERVICE:
            slot = slot.model_copy(update={"status": "lost", "reason": f"instance {state}"})
        elif health != "Healthy":
            slot = slot.model_copy(
                update={"status": "lost", "reason": f"{health}: its health agent or EC2 status check failed"}
            )
        slots.append(slot)
    return slots


# ---------------------------------------------------------------- the cluster side (on the head)


def head_status_command(container: str, serve_config: str = SERVE_CONFIG_PATH) -> list[str]:
    """What runs on the head: the node status (incl. ray_cluster.cluster_status.gather) as one
    JSON line; Ray's own log lines go to stderr, which SSM keeps apart."""
    q = shlex.quote
    return [
        f"docker exec {q(container)} python -m ray_cluster.node status --json --compact --cluster "
        f"--serve-config {q(serve_config)}"
    ]


def parse_head_report(stdout: str) -> dict[str, Any]:
    """The head's status document; StatusError in one line when it is not one."""
    start = stdout.find("{")
    if start < 0:
        raise StatusError(f"the head's status is not JSON: {stdout.strip()[-200:] or '(no output)'}")
    try:
        doc = json.loads(stdout[start:])
    except ValueError as e:
        # SSM keeps the first 24,000 characters of a command's output.
        cut = " (cut at 24,000 characters by SSM?)" if len(stdout) >= 24000 else ""
        raise StatusError(f"the head's status is not JSON{cut}: {e}") from None
    if not isinstance(doc, dict):
        raise StatusError(f"the head's status is a JSON {type(doc).__name__}, not an object")
    if "cluster" not in doc:
        raise StatusError(
            "the head's image predates the cluster report (`ray_cluster.node status` has no 'cluster'): "
            "roll the new image out (`llmfleet up`)"
        )
    return doc


def head_report(runner: SsmRunner, head_instance: str, container: str, timeout_s: float) -> dict[str, Any]:
    ok, detail, stdout = runner.run(
        head_instance, head_status_command(container), "llmfleet status: cluster report", timeout_s
    )
    if not ok:
        if "unrecognized arguments" in detail:
            raise StatusError(
                f"the head's image predates the cluster report ({detail}): roll the new image out (`llmfleet up`)"
            )
        raise StatusError(f"status on the head {head_instance}: {detail}")
    return parse_head_report(stdout)


# ---------------------------------------------------------------- the last rollout (SSM)


def _history(ssm: Any, name: str) -> list[dict]:
    out: list[dict] = []
    for page in ssm.get_paginator("get_parameter_history").paginate(Name=name):
        out.extend(page.get("Parameters", []))
    return sorted(out, key=lambda h: h["Version"])


def role_rollout(role: str, name: str, hist: list[dict]) -> tuple[RoleRollout, str, str]:
    """(versions, outcome, one line) of one role's node-script parameter history."""
    newest = hist[-1]
    good = next((h for h in reversed(hist) if GOOD_LABEL in (h.get("Labels") or [])), None)
    rr = RoleRollout(
        role=role, parameter=name, newest=newest["Version"], good=good["Version"] if good else None
    )
    if good is None:
        if len(hist) == 1:
            return rr, "done", f"{role}: version 1 (every host booted from it; nothing rolled out yet)"
        return (
            rr,
            "pending",
            f"{role}: version {newest['Version']} not rolled out yet (no {GOOD_LABEL} label)",
        )
    if good["Version"] != newest["Version"]:
        return (
            rr,
            "pending",
            (
                f"{role}: version {newest['Version']} written by `pulumi up`, the hosts run version "
                f"{good['Version']}: run `llmfleet rollout`"
            ),
        )
    desc = newest.get("Description") or ""
    # A rollback writes the good script back as the version right after the failed target; a
    # later put that does not pass a description keeps this one, and is not a rollback.
    if desc.startswith(ROLLBACK_MARK) and f"version {newest['Version'] - 1} failed" in desc:
        return rr, "rolled-back", f"{role}: {desc.removeprefix(ROLLBACK_MARK).strip()}"
    return rr, "done", f"{role}: version {newest['Version']} rolled out"


_WORST = ("in-progress", "rolled-back", "pending", "unknown", "done")


def last_rollout(ssm: Any, stack: str) -> Rollout:
    """The last rollout's result: the lock (one running now), else each role's versions/labels."""
    name = pulumi_stack_name(stack)
    try:
        held = ssm.get_parameter(Name=lock_name(name))["Parameter"]["Value"]
        return Rollout(outcome="in-progress", detail=f"a rollout holds {lock_name(name)} ({held})")
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") != "ParameterNotFound":
            return Rollout(outcome="unknown", detail=f"rollout lock: {aws_error(e)}")
    roles, outcomes, lines = [], [], []
    for role in ROLES:
        param = node_parameter_name(name, role)
        try:
            hist = _history(ssm, param)
        except ClientError as e:
            outcomes.append("unknown")
            lines.append(f"{role}: {aws_error(e)}")
            continue
        if not hist:
            outcomes.append("unknown")
            lines.append(f"{role}: parameter {param} has no versions")
            continue
        rr, outcome, line = role_rollout(role, param, hist)
        roles.append(rr)
        outcomes.append(outcome)
        lines.append(line)
    worst = min(outcomes, key=_WORST.index)
    return Rollout(outcome=worst, detail="; ".join(lines), roles=roles)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the whole status


@dataclass
class AwsClients:
    ec2: Any
    autoscaling: Any
    ssm: Any


def deployed_status(
    stack: str,
    outputs: StackOutputs,
    clients: AwsClients,
    *,
    runner: SsmRunner | None = None,
    metrics_fetch: Callable[[str, float], Any] | None = None,
    price_stack: str | None = None,
    timeout_s: float = 120.0,
) -> ClusterStatus:
    """Every part of a deployed stack's status; a part that cannot be read says why in its place."""
    if outputs.provider != "aws":
        raise StatusError(
            f"stack {stack} runs on hosts you own (provider existing): no Auto Scaling groups or SSM; "
            "use `ray status` on the head"
        )
    slots = group_slots(clients.autoscaling, clients.ec2, outputs)
    runner = runner or SsmRunner(clients.ssm, poll_s=2.0)
    head = next((s.instance_id for s in slots if s.role == "head" and s.instance_id), None)
    if head is None and outputs.head_group:
        head = running_head(clients.ec2, outputs.head_group)
    head = head or outputs.head_instance_id
    report: dict[str, Any] = {}
    if head is None:
        why = "no running head instance: nothing to ask Ray and Serve"
        side = ClusterSide(nodes_error=why, serve_error=why)
    else:
        try:
            report = head_report(runner, head, outputs.head_container, timeout_s)
            side = cluster_side(report["cluster"], f"head {head}")
        except StatusError as e:
            side = ClusterSide(nodes_error=str(e), serve_error=str(e))
    hosts = [s if s.status == "asleep" else classify(s, side.nodes, side.nodes_error) for s in slots]
    if outputs.metrics_query_url and metrics_fetch is not None:
        metrics = read_metrics(
            outputs.metrics_query_url,
            outputs.served_model,
            source="amp",
            fetch=metrics_fetch,
            with_targets=False,  # AMP has the query API, not Prometheus' targets API
            price_stack=price_stack,
        )
    else:
        metrics = no_metrics("the stack exports no metrics workspace (metrics_query_url)")
    return ClusterStatus(
        target="aws",
        name=stack,
        endpoint=outputs.endpoint_url,
        model=outputs.served_model,
        hosts=hosts,
        **side.model_dump(),
        deployed_serve_config=report.get("deployed_serve_config"),
        serve_config=report.get("serve_config"),
        rollout=last_rollout(clients.ssm, stack),
        metrics=metrics,
        details={"region": outputs.region, "head_instance_id": head},
        power=power_state(
            [h for h in hosts if h.role == "worker"], None, {a.name: a.status for a in side.applications}
        ),
    )
