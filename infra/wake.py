"""`llmfleet wake --stack S`: bring a stack's worker slots back from zero (a schedule's off-window
or idle stop, infra/components/scaling.py) and wait for readiness.

Each worker slot is an Auto Scaling group of one; waking sets its desired capacity to 1 (boto3
`set_desired_capacity`), within the group's own min/max (0..1 for a stack that scales to zero).
The new instances boot the launch template, stage the weights and join the head; the head's
watcher re-applies Serve when they are back (ray_cluster/watch.py), and readiness is a real
completion (infra/deploy.py), as after `up`. A schedule's next scale-down still applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class WakeError(RuntimeError):
    """One line: which group could not be woken and why."""


def wake_groups(asg: Any, groups: Sequence[str]) -> list[str]:
    """Set every named group that sits at zero to one instance; returns those it woke."""
    if not groups:
        raise WakeError("the stack exports no worker_groups: run `pulumi up` first")
    found: dict[str, dict] = {}
    for page in asg.get_paginator("describe_auto_scaling_groups").paginate(
        AutoScalingGroupNames=list(groups)
    ):
        for g in page.get("AutoScalingGroups", []):
            found[g["AutoScalingGroupName"]] = g
    missing = [g for g in groups if g not in found]
    if missing:
        raise WakeError(f"Auto Scaling group {missing[0]} not found (has `pulumi up` run in this region?)")
    woken = []
    for name in groups:
        g = found[name]
        if g["DesiredCapacity"] >= 1:
            continue
        if g["MaxSize"] < 1:
            raise WakeError(f"{name}: max size is {g['MaxSize']}; allowed: a group whose max size is 1")
        asg.set_desired_capacity(AutoScalingGroupName=name, DesiredCapacity=1, HonorCooldown=False)
        woken.append(name)
    return woken
