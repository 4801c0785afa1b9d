"""GcsRedis: Ray GCS fault tolerance with an external Redis (llmfleet:gcsRedis, default off).

Without it the GCS keeps the cluster's state (actors, placement groups, Serve's applications,
the node table) in the head's memory, and a replaced head (infra/components/head.py) starts an
empty cluster: the workers' raylets exit, rejoin the new GCS, and the deploy watcher deploys
Serve again from serve.yaml. With it the head starts Ray with `RAY_REDIS_ADDRESS` (Ray 2.60 reads
it in ray/_private/node.py; `rediss://` turns TLS on, ray/_private/services.py get_address) and
the GCS persists its tables there, so a new head at the same address resumes them: the workers'
raylets reconnect within `RAY_gcs_rpc_server_reconnect_timeout_s` (raised on every host:
infra/boot/cloud_init.py) instead of exiting, and Serve's controller recovers its apps.
What it does not keep: requests in flight through the head's HTTP proxy (it runs on the head).

The store: an ElastiCache Redis OSS replication group of one node in the cluster subnet,
encryption in transit (TLS) and at rest, an auth token (a SecretToken: random, alphanumeric,
an SSM SecureString under /llmfleet/<stack>/ encrypted with the stack's key, read by the head at
boot into the node container's env file, never into user data or a `docker run` line), and its
own security group admitting only the cluster's security group on 6379. (The head's GCS also
listens on 6379, on the head: another host.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.components.secret_token import SecretToken, SecretTokenArgs

REDIS_PORT = 6379
NODE_TYPE = "cache.t4g.medium"  # the GCS tables of one cluster are small; priced in the catalog
ENGINE_VERSION = "7.1"
# ElastiCache auth tokens: 16-128 printable characters without @ " / (alphanumerics here)
TOKEN_LENGTH = 64


def gcs_redis_token_parameter_name(stack: str) -> str:
    return f"/llmfleet/{stack}/gcs-redis-token"


def redis_address(host: str) -> str:
    """What the head's RAY_REDIS_ADDRESS holds: TLS (rediss://) to the primary endpoint."""
    return f"rediss://{host}:{REDIS_PORT}"


@dataclass
class GcsRedisArgs:
    name: str  # the cluster name
    stack: str
    vpc_id: pulumi.Input[str]
    subnet_id: pulumi.Input[str]
    cluster_sg_id: pulumi.Input[str]
    kms_key_id: pulumi.Input[str]  # the stack's SecretsKey (the token's SecureString)
    tags: dict[str, str] = field(default_factory=dict)


class GcsRedis(pulumi.ComponentResource):
    def __init__(self, name: str, args: GcsRedisArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llmfleet:components:GcsRedis", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.token = SecretToken(
            f"{name}-token",
            SecretTokenArgs(
                parameter_name=gcs_redis_token_parameter_name(args.stack),
                description="llmfleet GCS Redis auth token (read by the head at boot)",
                length=TOKEN_LENGTH,
                kms_key_id=args.kms_key_id,
                tags=args.tags,
            ),
            opts=child,
        )
        self.security_group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=args.vpc_id,
            description=f"{args.name} GCS Redis: the cluster's hosts only",
            tags={**args.tags, "llmfleet:sg": "gcs-redis"},
            opts=child,
        )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-from-cluster",
            security_group_id=self.security_group.id,
            referenced_security_group_id=args.cluster_sg_id,
            ip_protocol="tcp",
            from_port=REDIS_PORT,
            to_port=REDIS_PORT,
            description="Redis (TLS) from the cluster's hosts (the head's GCS)",
            tags=args.tags,
            opts=child,
        )
        subnets = aws.elasticache.SubnetGroup(
            f"{name}-subnets",
            name=f"{args.name}-gcs",
            subnet_ids=[args.subnet_id],
            description=f"{args.name} GCS Redis: the cluster subnet",
            tags=args.tags,
            opts=child,
        )
        self.group = aws.elasticache.ReplicationGroup(
            f"{name}-rg",
            replication_group_id=f"{args.name}-gcs"[:40],
            description=f"{args.name} Ray GCS fault tolerance",
            engine="redis",
            engine_version=ENGINE_VERSION,
            node_type=NODE_TYPE,
            num_cache_clusters=1,
            port=REDIS_PORT,
            subnet_group_name=subnets.name,
            security_group_ids=[self.security_group.id],
            transit_encryption_enabled=True,
            at_rest_encryption_enabled=True,
            auth_token=self.token.token.result,
            tags=args.tags,
            opts=child,
        )
        self.address = self.group.primary_endpoint_address.apply(redis_address)
        self.register_outputs({"address": self.address, "token_parameter": self.token.parameter.name})
