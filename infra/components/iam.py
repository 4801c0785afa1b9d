"""IAM: the hosts' instance role and profile, least privilege.

The role holds three policies, all customer managed and all read by the policy pack:
- `ssm-agent`: what the SSM agent needs for Run Command (the rollout associations,
  infra/components/node_config.py, and the readiness check, infra/deploy.py), State Manager and
  Session Manager (`aws ssm start-session`, the port forwards): AWS's AmazonSSMManagedInstanceCore
  (its statements in infra/catalog/aws_managed_policies.yaml, with source and version) minus
  exactly `ssm:GetParameter` and `ssm:GetParameters`, which it grants on "*": attached as is, it let
  every host read every parameter of the account, a dev spot worker prod's tokens included.
- `node-policy`: ECR pull on this repository only, S3 read on the weights prefix only (and, with
  llmfleet:lora, on the adapters prefix only), SSM read
  on the endpoint token, the Ray cluster token and this stack's node scripts
  (/llmfleet/<stack>/node/*), and kms:Decrypt on the stack's own SecretsKey, only through SSM and
  only for this stack's parameters (/llmfleet/<stack>/*).
- the observability policy (infra/components/observability.py): AMP remote write, its log groups.

`Resource: "*"` is left only where AWS's own policy has it for the SSM agent (calls about the
instance itself, its messages and the documents it runs: no parameter, no secret) and for
ecr:GetAuthorizationToken, which has no resource-level permissions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.boot.node_apply import node_parameter_prefix
from infra.catalog.aws_managed import ssm_agent_statements
from infra.components.workers import group_prefix

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


# Sids of the SSM-agent statements, by the service of their actions.
_SSM_AGENT_SIDS = {
    "ssm": "SsmAgentWithoutParameterReads",
    "ssmmessages": "SessionManagerChannels",
    "ec2messages": "RunCommandMessages",
}


def ssm_agent_policy_document() -> dict[str, Any]:
    """AmazonSSMManagedInstanceCore without ssm:GetParameter/GetParameters (pure).

    What still works: the agent registers the instance (UpdateInstanceInformation), receives and
    answers Run Command and State Manager work (ec2messages:*, List/DescribeAssociation,
    GetDocument/DescribeDocument, Update(Instance)AssociationStatus), reports inventory, compliance
    and patch/package results, and opens Session Manager sessions and port forwards
    (ssmmessages:*). What was dropped: reading Parameter Store from the instance through this
    policy; the hosts read their own parameters through the node policy, nothing else. A document
    that reads a parameter outside /llmfleet/<stack>/ on the instance (e.g. a CloudWatch agent
    config in Parameter Store) now fails; llmfleet runs none.
    """
    statements = []
    for stmt in ssm_agent_statements():
        service = stmt["Action"][0].split(":", 1)[0]
        statements.append({"Sid": _SSM_AGENT_SIDS.get(service, f"SsmAgent{service.title()}"), **stmt})
    return {"Version": "2012-10-17", "Statement": statements}


def _arn_parts(arn: str) -> tuple[str, str] | None:
    """(partition, region) of an ARN, or None when it is not one."""
    parts = arn.split(":")
    return (parts[1], parts[3]) if len(parts) > 5 and parts[0] == "arn" else None


def ssm_service_principal(parameter_arn: str) -> str | None:
    """ssm.<region>.amazonaws.com (.com.cn in China): the kms:ViaService of a parameter's decrypt."""
    parts = _arn_parts(parameter_arn)
    if parts is None or not parts[1]:
        return None
    suffix = "amazonaws.com.cn" if parts[0] == "aws-cn" else "amazonaws.com"
    return f"ssm.{parts[1]}.{suffix}"


def _stack_of(token_parameter_arn: str) -> tuple[str, str] | None:
    """(arn:...:ssm:<region>:<account>, <stack>) of a parameter ARN under /llmfleet/<stack>/."""
    head, sep, path = token_parameter_arn.partition(":parameter/llmfleet/")
    stack = path.split("/", 1)[0]
    return (head, stack) if sep and stack else None


def stack_parameters_arn(token_parameter_arn: str) -> str | None:
    """arn:...:parameter/llmfleet/<stack>/* beside the endpoint token's ARN, or None when that ARN
    is not /llmfleet/<stack>/..."""
    found = _stack_of(token_parameter_arn)
    return f"{found[0]}:parameter/llmfleet/{found[1]}/*" if found else None


def decrypt_statement(
    secrets_key_arn: str, token_parameter_arn: str, ray_token_parameter_arn: str
) -> dict[str, Any]:
    """kms:Decrypt on the stack's key, only as SSM asks for it, only for this stack's parameters.

    SSM decrypts a SecureString with the encryption context {"PARAMETER_ARN": <the parameter's
    ARN>} and calls KMS on the caller's behalf (kms:ViaService), so the grant cannot be used on
    the key directly nor for a parameter outside /llmfleet/<stack>/. Source:
    https://docs.aws.amazon.com/systems-manager/latest/userguide/secure-string-parameter-kms-encryption.html
    """
    own = stack_parameters_arn(token_parameter_arn)
    # An ARN not under /llmfleet/<stack>/ (never from this program): the two tokens, exactly.
    context: str | list[str] = own or [token_parameter_arn, ray_token_parameter_arn]
    condition: dict[str, Any] = {"StringLike": {"kms:EncryptionContext:PARAMETER_ARN": context}}
    via = ssm_service_principal(token_parameter_arn)
    if via:
        condition["StringEquals"] = {"kms:ViaService": via}
    return {
        "Sid": "DecryptStackSecureStrings",
        "Effect": "Allow",
        "Action": ["kms:Decrypt"],
        "Resource": secrets_key_arn,
        "Condition": condition,
    }


def node_scripts_arn(token_parameter_arn: str) -> str | None:
    """arn:...:parameter/llmfleet/<stack>/node/* beside the endpoint token's ARN (same account,
    region and stack), or None when that ARN is not /llmfleet/<stack>/..."""
    found = _stack_of(token_parameter_arn)
    return f"{found[0]}:parameter{node_parameter_prefix(found[1])}*" if found else None


def node_policy_document(
    repository_arn: str,
    token_parameter_arn: str,
    ray_token_parameter_arn: str,
    weights_bucket: str | None,
    weights_prefix: str,
    *,
    secrets_key_arn: str,
    adapters_uri: str | None = None,
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
        decrypt_statement(secrets_key_arn, token_parameter_arn, ray_token_parameter_arn),
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
    if adapters_uri:
        stmts += adapters_statements(adapters_uri)
    return {"Version": "2012-10-17", "Statement": stmts}


def adapters_statements(adapters_uri: str) -> list[dict[str, Any]]:
    """Read of the stack's LoRA adapters (llmfleet:lora.adapters, s3://BUCKET/PREFIX/): list that
    prefix and get its objects, nothing else in the bucket, no write (the fine-tune job writes
    them with its own credentials). Ray Serve LLM lists `PREFIX` for /v1/models and downloads
    `PREFIX/NAME/*` on a request naming NAME. The prefix keeps its '/' (infra/stack/config_values
    s3_uri adds it), so `adapters/*` never covers a sibling `adapters-prod/`."""
    bucket, _, prefix = adapters_uri.removeprefix("s3://").partition("/")
    if not adapters_uri.startswith("s3://") or not bucket or (prefix and not prefix.endswith("/")):
        raise ValueError(f"adapters_uri {adapters_uri!r}: allowed: s3://BUCKET/PREFIX/ (with its '/')")
    return [
        {
            "Sid": "ListAdaptersPrefix",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": f"arn:aws:s3:::{bucket}",
            "Condition": {"StringLike": {"s3:prefix": [prefix, f"{prefix}*"]}},
        },
        {
            "Sid": "ReadAdapters",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": f"arn:aws:s3:::{bucket}/{prefix}*",
        },
    ]


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


def head_interface_statements(repository_arn: str, stack: str) -> list[dict[str, Any]]:
    """A new head attaches the head's fixed interface to itself at boot (infra/components/head.py):
    AttachNetworkInterface only where *both* resources it names, the interface and the instance,
    carry this stack's tag and the head role (EC2 checks a resource-tag condition against each
    resource of the request: the fixed interface and the head group's instances are tagged so;
    a worker's instance is not, so a worker cannot take the address). Describe calls take no
    resource scope in EC2 (https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonec2.html)."""
    partition, region, account = repository_arn.split(":")[1:2] + repository_arn.split(":")[3:5]
    arn = f"arn:{partition}:ec2:{region}:{account}"
    return [
        {
            "Sid": "AttachHeadInterface",
            "Effect": "Allow",
            "Action": ["ec2:AttachNetworkInterface"],
            "Resource": [f"{arn}:network-interface/*", f"{arn}:instance/*"],
            "Condition": {
                "StringEquals": {
                    "aws:ResourceTag/llmfleet:stack": stack,
                    "aws:ResourceTag/llmfleet:role": "head",
                }
            },
        },
        {
            "Sid": "DescribeHeadInterface",
            "Effect": "Allow",
            "Action": ["ec2:DescribeNetworkInterfaces"],
            "Resource": "*",
        },
    ]


@dataclass
class IamArgs:
    name: str
    repository_arn: pulumi.Input[str]
    token_parameter_arn: pulumi.Input[str]
    ray_token_parameter_arn: pulumi.Input[str]
    secrets_key_arn: pulumi.Input[str]
    weights_bucket: pulumi.Input[str] | None
    weights_prefix: str
    tags: dict[str, str] = field(default_factory=dict)
    # cluster name and stack: the workers' health agent may mark this cluster's workers Unhealthy
    worker_health: tuple[str, str] | None = None
    # llmfleet:gcsRedis: the head reads the GCS store's auth token at boot
    gcs_redis_token_parameter_arn: pulumi.Input[str] | None = None
    # llmfleet:lora.adapters: the serving hosts read the stack's adapters prefix
    adapters_uri: str | None = None


def _with_health(doc: dict[str, Any], repository_arn: str, args: IamArgs) -> dict[str, Any]:
    if args.worker_health:
        doc["Statement"].append(worker_health_statement(repository_arn, *args.worker_health))
        doc["Statement"].extend(head_interface_statements(repository_arn, args.worker_health[1]))
    return doc


def _with_gcs_redis(doc: dict[str, Any], token_parameter_arn: str | None) -> dict[str, Any]:
    """The GCS store's auth token (infra/components/gcs_redis.py): one parameter, decrypted with
    the stack's key, which DecryptStackSecureStrings already scopes to /llmfleet/<stack>/*."""
    if token_parameter_arn:
        doc["Statement"].append(
            {
                "Sid": "ReadGcsRedisToken",
                "Effect": "Allow",
                "Action": ["ssm:GetParameter"],
                "Resource": token_parameter_arn,
            }
        )
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
        # AmazonSSMManagedInstanceCore, scoped: the managed policy reads every parameter of the account.
        self.ssm_agent_policy = aws.iam.Policy(
            f"{name}-ssm-agent-policy",
            description=f"{args.name}: SSM agent (Run Command, State Manager, Session Manager), no parameter reads",
            policy=json.dumps(ssm_agent_policy_document()),
            tags=args.tags,
            opts=child,
        )
        aws.iam.RolePolicyAttachment(
            f"{name}-ssm-agent-attach", role=self.role.name, policy_arn=self.ssm_agent_policy.arn, opts=child
        )
        document = pulumi.Output.all(
            args.repository_arn,
            args.token_parameter_arn,
            args.ray_token_parameter_arn,
            args.weights_bucket,
            args.secrets_key_arn,
            args.gcs_redis_token_parameter_arn,
        ).apply(
            lambda a: json.dumps(
                _with_gcs_redis(
                    _with_health(
                        node_policy_document(
                            a[0],
                            a[1],
                            a[2],
                            a[3],
                            args.weights_prefix,
                            secrets_key_arn=a[4],
                            adapters_uri=args.adapters_uri,
                        ),
                        a[0],
                        args,
                    ),
                    a[5],
                )
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
