"""The node scripts in SSM and the rollout associations that re-apply them in place.

One parameter per role holds that role's node script (infra/boot/cloud_init.py), packed
(infra/boot/node_apply.py). One State Manager association per role runs `llmfleet-apply` on
the role's instances when the script's digest changes (the head by its instance id; the workers
by the `aws:autoscaling:groupName` tag EC2 Auto Scaling puts on every instance it launches, so
the target holds before any worker exists and covers a replacement as soon as it registers): `max_concurrency` 1 and `max_errors` 0
make it a rolling update that stops at the first failed host (a worker's apply ends only
when it is back in the Ray cluster). State Manager runs an association when it is created or
its parameters change, so an unchanged script runs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_aws as aws

from infra.boot.node_apply import APPLY_TIMEOUT_S, apply_command, pack_script, script_digest

# Advanced: 8 KiB values (the packed script is ~3-4 KiB and grows with cloud-init).
PARAMETER_TIER = "Advanced"


def node_script_parameter(
    name: str,
    *,
    parameter_name: str,
    role: str,
    script: pulumi.Output[str],
    tags: dict[str, str],
    parent: pulumi.Resource,
) -> aws.ssm.Parameter:
    return aws.ssm.Parameter(
        f"{name}-node-{role}",
        name=parameter_name,
        type="String",  # no secret in it: the tokens stay in their own SecureStrings
        tier=PARAMETER_TIER,
        insecure_value=script.apply(pack_script),  # no secret in it: diffs show that it changed
        description=f"llmfleet {role} node script (gzip+base64), applied by llmfleet-apply",
        tags={**tags, "llmfleet:role": role},
        opts=pulumi.ResourceOptions(parent=parent),
    )


def rollout_association(
    name: str,
    *,
    cluster: str,
    role: str,
    parameter: aws.ssm.Parameter,
    script: pulumi.Output[str],
    targets: Sequence[dict],
    tags: dict[str, str],
    parent: pulumi.Resource,
) -> aws.ssm.Association:
    command = pulumi.Output.all(parameter.name, script).apply(
        lambda a: apply_command(a[0], script_digest(a[1]))
    )
    return aws.ssm.Association(
        f"{name}-rollout-{role}",
        association_name=f"{cluster}-{role}-rollout",
        name="AWS-RunShellScript",
        targets=list(targets),
        parameters={"commands": command, "executionTimeout": str(APPLY_TIMEOUT_S)},
        max_concurrency="1",
        max_errors="0",
        compliance_severity="HIGH",
        tags={**tags, "llmfleet:role": role},
        # The parameter must hold the new script before the hosts are told to apply it.
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[parameter]),
    )


def instance_targets(instance_ids: Sequence[pulumi.Input[str]]) -> list[dict]:
    return [{"key": "InstanceIds", "values": list(instance_ids)}]


def group_targets(group_names: Sequence[str]) -> list[dict]:
    """The instances of these Auto Scaling groups, by the tag EC2 Auto Scaling sets on them."""
    return [{"key": "tag:aws:autoscaling:groupName", "values": list(group_names)}]
