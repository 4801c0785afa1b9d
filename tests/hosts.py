"""The hosts of an offline capture: the instances the head's and the workers' groups run.

The head and the GPU workers are Auto Scaling groups launching from launch templates;
infra/worker_groups.py gives each group's instance the inputs an `aws:ec2/instance:Instance`
would have, so tests read head and workers alike.
"""

from __future__ import annotations

from infra.worker_groups import GROUP, INSTANCE, LAUNCH_TEMPLATE, group_instances, group_tags


def hosts(c, role: str | None = None) -> list[dict]:
    out = [*c.of_type(INSTANCE), *group_instances(c.resources)]
    return [h for h in out if role is None or h["inputs"]["tags"].get("llmfleet:role") == role]


def _role(group: dict) -> str | None:
    return group_tags(group["inputs"]).get("llmfleet:role")


def groups(c) -> list[dict]:
    """The worker slots' groups."""
    return [g for g in c.of_type(GROUP) if _role(g) == "worker"]


def head_group(c) -> dict:
    [g] = [g for g in c.of_type(GROUP) if _role(g) == "head"]
    return g


def template(c, role: str = "worker") -> dict:
    [lt] = [t for t in c.of_type(LAUNCH_TEMPLATE) if str(t["inputs"]["name"]).endswith(f"-{role}")]
    return lt
