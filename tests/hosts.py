"""The hosts of an offline capture: the head instance and the instances the worker groups run.

GPU workers are Auto Scaling groups launching from a launch template; infra/worker_groups.py
gives each group's instance the inputs an `aws:ec2/instance:Instance` would have, so tests read
head and workers alike.
"""

from __future__ import annotations

from infra.worker_groups import GROUP, INSTANCE, LAUNCH_TEMPLATE, group_instances


def hosts(c, role: str | None = None) -> list[dict]:
    out = [*c.of_type(INSTANCE), *group_instances(c.resources)]
    return [h for h in out if role is None or h["inputs"]["tags"].get("llmfleet:role") == role]


def groups(c) -> list[dict]:
    return c.of_type(GROUP)


def template(c) -> dict:
    [lt] = c.of_type(LAUNCH_TEMPLATE)
    return lt
