"""The node scripts in SSM: one parameter per role, applied by `llmfleet-apply` on the hosts.

One parameter per role holds that role's node script (infra/boot/cloud_init.py), packed
(infra/boot/node_apply.py). A host applies the newest version when it boots (its user data);
on day 2 `pulumi up` only writes a new version, and the operator-side rollout
(infra/rollout/, run by `llmfleet up` and `llmfleet rollout`) applies it host by host: replica
by replica, the head last, each host gated on its health, rolled back on the first failure.

Why no State Manager association re-applies the scripts any more: an association runs when its
parameters change, for each role on its own (head and workers at the same time), stops at the
first failed host without undoing the hosts it already changed (a replica's pipeline stages left
on two images or models), and `pulumi up` cannot wait for it.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra.boot.node_apply import pack_script

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
