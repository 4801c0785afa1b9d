"""The node scripts in SSM and the rollout associations that re-apply them in place.

One parameter per role holds that role's node script (infra/boot/cloud_init.py), packed
(infra/boot/node_apply.py). One State Manager association per role runs `llmfleet-apply` on
the role's instances when the script's digest changes: `max_concurrency` 1 and `max_errors` 0
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
    instance_ids: Sequence[pulumi.Input[str]],
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
        targets=[{"key": "InstanceIds", "values": list(instance_ids)}],
        parameters={"commands": command, "executionTimeout": str(APPLY_TIMEOUT_S)},
        max_concurrency="1",
        max_errors="0",
        compliance_severity="HIGH",
        tags={**tags, "llmfleet:role": role},
        # The parameter must hold the new script before the hosts are told to apply it.
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[parameter]),
    )
