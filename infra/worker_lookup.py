"""The running hosts of a deployed stack, looked up by their Auto Scaling groups' tag.

The head is an Auto Scaling group of one too (infra/components/head.py): the stack exports its
group (`head_group`) and its fixed address, never its instance id, which changes whenever the
group replaces the head; `head_instance_id` finds the running one.

Worker instances are not in the stack's outputs: each worker slot is an Auto Scaling group
that replaces its instance when it fails (infra/components/workers.py), so ids and IPs change
without a `pulumi up`. The stack exports the group names (`worker_groups`); consumers that need
the instances (`llmfleet render cluster-yaml`) ask EC2 at the time they run, by the
`aws:autoscaling:groupName` tag EC2 Auto Scaling puts on every instance it launches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

GROUP_TAG = "aws:autoscaling:groupName"


def running_worker_slots(ec2: Any, group_names: Sequence[str]) -> list[tuple[int, str, str]]:
    """(slot index, private IP, instance id) of the running instances of these groups, in
    slot order; the slot is the group's index in `group_names` (a slot without a running
    instance is missing, not renumbered)."""
    if not group_names:
        return []
    order = {g: i for i, g in enumerate(group_names)}
    found: list[tuple[int, str, str]] = []
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[
            {"Name": f"tag:{GROUP_TAG}", "Values": list(group_names)},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
    )
    for page in pages:
        for reservation in page.get("Reservations", []):
            for inst in reservation.get("Instances", []):
                tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                group = tags.get(GROUP_TAG)
                if group in order and inst.get("PrivateIpAddress"):
                    found.append((order[group], inst["PrivateIpAddress"], inst["InstanceId"]))
    return sorted(found, key=lambda f: (f[0], f[2]))


def running_workers(ec2: Any, group_names: Sequence[str]) -> list[tuple[str, str]]:
    """(private IP, instance id) of the running instances of these groups, in group order."""
    return [(ip, iid) for _, ip, iid in running_worker_slots(ec2, group_names)]


class HeadLookupError(LookupError):
    """One line: no running head instance in the head's group."""


def running_head(ec2: Any, group: str) -> str | None:
    """The instance id of the head group's running instance (the newest, were there two for a
    moment while the group replaces it), or None."""
    found: list[tuple[Any, str]] = []
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[
            {"Name": f"tag:{GROUP_TAG}", "Values": [group]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
    )
    for page in pages:
        for reservation in page.get("Reservations", []):
            for inst in reservation.get("Instances", []):
                found.append((inst.get("LaunchTime") or "", inst["InstanceId"]))
    return max(found)[1] if found else None


def head_instance_id(outputs: Mapping[str, Any], ec2: Any) -> str:
    """The head's instance id: the output of a stack from before the head group, else the running
    instance of `head_group`. HeadLookupError (one line) when neither names one."""
    if outputs.get("head_instance_id"):
        return str(outputs["head_instance_id"])
    group = outputs.get("head_group")
    if not group:
        raise HeadLookupError(
            "stack outputs 'head_group' and 'head_instance_id' are missing: run `pulumi up`"
        )
    iid = running_head(ec2, str(group))
    if iid is None:
        raise HeadLookupError(
            f"head group {group!r} has no running instance: its Auto Scaling group is replacing the head "
            "(retry in a few minutes) or cannot launch one (its activity history says why)"
        )
    return iid


def with_running_workers(outputs: Mapping[str, Any], ec2: Any) -> dict[str, Any]:
    """Stack outputs with `worker_private_ips` / `worker_instance_ids` (and `head_instance_id`,
    when the stack names a head group) filled from EC2 when the stack names worker groups;
    other outputs unchanged."""
    out = dict(outputs)
    if out.get("head_group") and not out.get("head_instance_id"):
        out["head_instance_id"] = running_head(ec2, str(out["head_group"]))
    groups = out.get("worker_groups")
    if not groups:
        return out
    workers = running_workers(ec2, groups)
    out["worker_private_ips"] = [ip for ip, _ in workers]
    out["worker_instance_ids"] = [iid for _, iid in workers]
    return out
