"""IAM: the hosts' instance role and profile, least privilege.

SSM core (managed policy: Session Manager + Run Command), ECR pull on this repository only,
S3 read on the weights prefix only, SSM read on the endpoint token, the Ray cluster token and
this stack's node scripts (/llmfleet/<stack>/node/*). The only
`Resource: "*"` is ecr:GetAuthorizationToken, which has no resource-level permissions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.boot.node_apply import node_parameter_prefix
from infra.components.workers import group_prefix

SSM_CORE_POLICY = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
ECR_PULL_ACTIONS = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]


def assume_role_policy() -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
            ],
        }
    )


def node_scripts_arn(token_parameter_arn: str) -> str | None:
    """arn:...:parameter/llmfleet/<stack>/node/* beside the endpoint token's ARN (same account,
    region and stack), or None when that ARN is not /llmfleet/<stack>/..."""
    head, sep, path = token_parameter_arn.partition(":parameter/llmfleet/")
    stack = path.split("/", 1)[0]
    if not sep or not stack:
        return None
    return f"{head}:parameter{node_parameter_prefix(stack)}*"


def node_policy_document(
    repository_arn: str,
    token_parameter_arn: str,
    ray_token_parameter_arn: str,
    weights_bucket: str | None,
    weights_prefix: str,
) -> dict[str, Any]:
    """The hosts' inline permissions (pure, so tests read the exact statements)."""
    stmts: list[dict[str, Any]] = [
        {"Sid": "EcrAuth", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": "*"},
        {"Sid": "EcrPullThisRepo", "Effect": "Allow", "Action": ECR_PULL_ACTIONS, "Resource": repository_arn},
        {
            "Sid": "ReadEndpointToken",
            "Effect": "Allow",
            "Action": ["ssm:GetParameter"],
            "Resource": token_parameter_arn,
        },
        {
            "Sid": "ReadRayToken",
            "Effect": "Allow",
            "Action": ["ssm:GetParameter"],
            "Resource": ray_token_parameter_arn,
        },
    ]
    node_scripts = node_scripts_arn(token_parameter_arn)
    if node_scripts:
        # The node scripts (infra/boot/node_apply.py): read at boot and on every rollout.
        stmts.append(
            {
                "Sid": "ReadNodeScripts",
                "Effect": "Allow",
                "Action": ["ssm:GetParameter"],
                "Resource": node_scripts,
            }
        )
    if weights_bucket:
        prefix = weights_prefix.lstrip("/")
        stmts += [
            {
                "Sid": "ListWeightsPrefix",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": f"arn:aws:s3:::{weights_bucket}",
                "Condition": {"StringLike": {"s3:prefix": [prefix, f"{prefix}*"]}},
            },
            {
                "Sid": "ReadWeights",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": f"arn:aws:s3:::{weights_bucket}/{prefix}*",
            },
        ]
    return {"Version": "2012-10-17", "Statement": stmts}


def worker_health_statement(repository_arn: str, cluster: str, stack: str) -> dict[str, Any]:
    """The workers' health agent (ray_cluster/node_health.py) marks its own instance Unhealthy:
    SetInstanceHealth on this cluster's worker groups only (by name in this account and region,
    and by the stack tag the groups carry). The role is the head's too, which is trusted.
    Auto Scaling's own tag key (autoscaling:ResourceTag/...) is the one its docs give for group
    actions: https://docs.aws.amazon.com/autoscaling/ec2/userguide/tag-security.html"""
    partition, region, account = repository_arn.split(":")[1:2] + repository_arn.split(":")[3:5]
    groups = f"autoScalingGroup:*:autoScalingGroupName/{group_prefix(cluster)}*"
    return {
        "Sid": "MarkOwnWorkersUnhealthy",
        "Effect": "Allow",
        "Action": ["autoscaling:SetInstanceHealth"],
        "Resource": f"arn:{partition}:autoscaling:{region}:{account}:{groups}",
        "Condition": {"StringEquals": {"autoscaling:ResourceTag/llmfleet:stack": stack}},
    }


@dataclass
class IamArgs:
    name: str
    repository_arn: pulumi.Input[str]
    token_parameter_arn: pulumi.Input[str]
    ray_token_parameter_arn: pulumi.Input[str]
    weights_bucket: pulumi.Input[str] | None
    weights_prefix: str
    tags: dict[str, str] = field(default_factory=dict)
    # cluster name and stack: the workers' health agent may mark this cluster's workers Unhealthy
    worker_health: tuple[str, str] | None = None


def _with_health(doc: dict[str, Any], repository_arn: str, args: IamArgs) -> dict[str, Any]:
    if args.worker_health:
        doc["Statement"].append(worker_health_statement(repository_arn, *args.worker_health))
    return doc


class NodeIam(pulumi.ComponentResource):
    def __init__(self, name: str, args: IamArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llmfleet:components:NodeIam", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=assume_role_policy(),
            description=f"{args.name} hosts",
            tags=args.tags,
            opts=child,
        )
        aws.iam.RolePolicyAttachment(
            f"{name}-ssm-core", role=self.role.name, policy_arn=SSM_CORE_POLICY, opts=child
        )
        document = pulumi.Output.all(
            args.repository_arn, args.token_parameter_arn, args.ray_token_parameter_arn, args.weights_bucket
        ).apply(
            lambda a: json.dumps(
                _with_health(node_policy_document(a[0], a[1], a[2], a[3], args.weights_prefix), a[0], args)
            )
        )
        self.policy = aws.iam.Policy(
            f"{name}-node-policy",
            description=f"{args.name}: ECR pull, weights read, endpoint token read",  # editing it replaces the policy
            policy=document,
            tags=args.tags,
            opts=child,
        )
        aws.iam.RolePolicyAttachment(
            f"{name}-node-policy-attach", role=self.role.name, policy_arn=self.policy.arn, opts=child
        )
        self.profile = aws.iam.InstanceProfile(
            f"{name}-profile", role=self.role.name, tags=args.tags, opts=child
        )
        self.register_outputs({"role_arn": self.role.arn, "profile_name": self.profile.name})
