"""The running GPU workers of a deployed stack, looked up by their Auto Scaling groups' tag.

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


def with_running_workers(outputs: Mapping[str, Any], ec2: Any) -> dict[str, Any]:
    """Stack outputs with `worker_private_ips` / `worker_instance_ids` filled from EC2 when the
    stack names worker groups; other outputs unchanged."""
    out = dict(outputs)
    groups = out.get("worker_groups")
    if not groups:
        return out
    workers = running_workers(ec2, groups)
    out["worker_private_ips"] = [ip for ip, _ in workers]
    out["worker_instance_ids"] = [iid for _, iid in workers]
    return out
