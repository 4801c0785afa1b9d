"""Observability: where every host's metrics and logs go, with no new inbound port.

Choice: Amazon Managed Service for Prometheus (AMP) as the store, written to by a Prometheus in
agent mode on the head (an image mirrored into the stack's ECR), over an `aps-workspaces`
interface endpoint. Why AMP rather than a Prometheus server on the head:
- the metrics outlive the head (a replaced head, a `pulumi destroy` of the GPUs, a spot loss
  of a worker keep their history), and the store needs no disk sizing, compaction or backup;
- the user reaches it through AWS APIs with their own IAM identity (SigV4), from a laptop
  Grafana or `awscurl`, so nothing listens for them inside the VPC;
- the head stays a small CPU box: an agent keeps only a write-ahead log.

What is collected (infra/boot/metrics.py renders the host side):
- Ray's and vLLM's metrics from every node's metrics agent (Ray Serve LLM exports vLLM's
  `vllm:*` as `ray_vllm_*`; Ray's `ray_node_*` are the node metrics: CPU, memory, disk,
  network, GPU utilization and memory per node), discovered through Ray's own
  service-discovery file on the head;
- NVIDIA DCGM exporter on every GPU worker (:9400, reachable only inside the cluster SG);
- boot logs and every container's logs into two CloudWatch log groups with a retention, over
  the existing `logs` interface endpoint.
IAM: aps:RemoteWrite on this workspace only; logs:CreateLogStream/PutLogEvents/
DescribeLogStreams on these two groups only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

from infra.boot.metrics import HostMetrics
from infra.catalog.images import image_ref
from infra.rayconf.dashboards import grafana_command as docker_cmd

# Upstream images the hosts run, mirrored into the stack's ECR (the hosts have no internet
# route). Pinned by digest in infra/catalog/images.yaml: a bump is a deliberate edit there.
PROMETHEUS_IMAGE = image_ref("prometheus")  # LTS; agent mode + SigV4 remote write
DCGM_EXPORTER_IMAGE = image_ref("dcgm-exporter")
MIRRORS = {"prometheus": PROMETHEUS_IMAGE, "dcgm-exporter": DCGM_EXPORTER_IMAGE}
# Pushed once and pulled by every boot: no lifecycle rule selects this prefix (registry.py).
MIRROR_TAG_PREFIX = "mirror-"


def mirror_tag(upstream: str) -> str:
    """ECR tag of a mirrored image: stable per upstream ref (the repository's tags are immutable),
    so it carries the digest's first 12 hex digits: a new digest for the same tag is a new tag."""
    ref, _, digest = upstream.partition("@")
    name, _, version = ref.rpartition("/")[2].partition(":")
    return f"{MIRROR_TAG_PREFIX}{name}-{version}" + (
        f"-{digest.removeprefix('sha256:')[:12]}" if digest else ""
    )


def log_group_names(cluster: str) -> dict[str, str]:
    return {"boot": f"/llmfleet/{cluster}/boot", "containers": f"/llmfleet/{cluster}/containers"}


def policy_document(workspace_arn: str, log_group_arns: list[str]) -> dict[str, Any]:
    """The hosts' metrics and logs permissions (pure, so tests read the exact statements)."""
    # A group's `arn` output has no `:*`; IAM matches group-level actions on `group` or
    # `group:*` and stream-level ones on `group:log-stream:NAME`, which `group:*` also covers.
    streams = [f"{arn}:*" for arn in log_group_arns]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "RemoteWriteThisWorkspace",
                "Effect": "Allow",
                "Action": ["aps:RemoteWrite"],
                "Resource": workspace_arn,
            },  # fmt: skip
            {
                "Sid": "DescribeOwnLogStreams",
                "Effect": "Allow",
                "Action": ["logs:DescribeLogStreams"],
                "Resource": log_group_arns,
            },  # fmt: skip
            {
                "Sid": "WriteOwnLogGroups",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": log_group_arns + streams,
            },  # fmt: skip
        ],
    }


def grafana_command(query_url: str, region: str, out_dir: str = "./grafana") -> str:
    """What the operator runs to open the dashboards (Grafana on their machine, AMP over SigV4)."""

    return (
        f"llmfleet dashboards --out {out_dir} --prometheus-url {query_url} --sigv4-region {region} && "
        + docker_cmd(out_dir, aws_region=region)
    )


def observability_outputs(obs: Observability, region: str) -> dict[str, Any]:
    """The stack outputs (StackOutputs) that say where the metrics and logs are and how to open them."""
    groups = [g.name for g in obs.log_groups.values()]
    return {
        "metrics_workspace_id": obs.workspace.id,
        "metrics_query_url": obs.query_url,
        "grafana_command": obs.query_url.apply(lambda u: grafana_command(u, region)),
        "log_groups": pulumi.Output.all(*groups),
        "logs_tail_command": obs.log_groups["containers"].name.apply(
            lambda g: f"aws logs tail {g} --follow --region {region}"
        ),
    }


@dataclass
class ObservabilityArgs:
    name: str
    region: str
    vpc_id: pulumi.Input[str]
    subnet_id: pulumi.Input[str]
    vpce_sg_id: pulumi.Input[str]
    role_name: pulumi.Input[str]
    repository_url: pulumi.Input[str]
    registry_id: pulumi.Input[str]
    log_retention_days: int = 30
    platform: str = "linux/amd64"
    tags: dict[str, str] = field(default_factory=dict)


class Observability(pulumi.ComponentResource):
    def __init__(self, name: str, args: ObservabilityArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llmfleet:components:Observability", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.workspace = aws.amp.Workspace(f"{name}-amp", alias=args.name, tags=args.tags, opts=child)
        # Remote write stays inside the VPC: the agent's SigV4 POSTs go to this endpoint.
        self.aps_endpoint = aws.ec2.VpcEndpoint(
            f"{name}-aps-workspaces",
            vpc_id=args.vpc_id,
            service_name=f"com.amazonaws.{args.region}.aps-workspaces",
            vpc_endpoint_type="Interface",
            subnet_ids=[args.subnet_id],
            security_group_ids=[args.vpce_sg_id],
            private_dns_enabled=True,
            tags={**args.tags, "Name": f"{args.name}-aps-workspaces"},
            opts=child,
        )
        groups = log_group_names(args.name)
        self.log_groups = {
            key: aws.cloudwatch.LogGroup(
                f"{name}-{key}-logs",
                name=group,
                retention_in_days=args.log_retention_days,
                tags=args.tags,
                opts=child,
            )
            for key, group in groups.items()
        }
        document = pulumi.Output.all(self.workspace.arn, *[g.arn for g in self.log_groups.values()]).apply(
            lambda a: json.dumps(policy_document(a[0], list(a[1:])))
        )
        self.policy = aws.iam.Policy(
            f"{name}-policy",
            description=f"{args.name}: remote write to its AMP workspace, write to its log groups",
            policy=document,
            tags=args.tags,
            opts=child,
        )
        self.attachment = aws.iam.RolePolicyAttachment(
            f"{name}-policy-attach", role=args.role_name, policy_arn=self.policy.arn, opts=child
        )
        self.images = self._mirrors(name, args)
        self.remote_write_url = self.workspace.prometheus_endpoint.apply(
            lambda e: e.rstrip("/") + "/api/v1/remote_write"
        )
        self.query_url = self.workspace.prometheus_endpoint.apply(lambda e: e.rstrip("/"))
        self.host_metrics = pulumi.Output.all(
            self.remote_write_url, self.images["prometheus"], self.images["dcgm-exporter"]
        ).apply(
            lambda a: HostMetrics(
                boot_log_group=groups["boot"],
                container_log_group=groups["containers"],
                remote_write_url=a[0],
                prometheus_image=a[1],
                dcgm_image=a[2],
                cluster=args.name,
            )
        )
        self.register_outputs(
            {
                "workspace_id": self.workspace.id,
                "query_url": self.query_url,
                "log_groups": list(groups.values()),
                **{f"{k}_image": v for k, v in self.images.items()},
            }
        )

    def _mirrors(self, name: str, args: ObservabilityArgs) -> dict[str, pulumi.Output[str]]:
        """Each upstream image rebuilt FROM itself and pushed to the stack's ECR; hosts pull by digest."""
        auth = aws.ecr.get_authorization_token_output(
            registry_id=args.registry_id, opts=pulumi.InvokeOutputOptions(parent=self)
        )
        repo = pulumi.Output.from_input(args.repository_url)
        refs: dict[str, pulumi.Output[str]] = {}
        for key, upstream in MIRRORS.items():
            tag = mirror_tag(upstream)
            image = docker_build.Image(
                f"{name}-mirror-{key}",
                dockerfile={"inline": f"FROM {upstream}\n"},
                platforms=[docker_build.Platform(args.platform)],
                push=True,
                tags=[repo.apply(lambda r, t=tag: f"{r}:{t}")],
                registries=[
                    {
                        "address": repo.apply(lambda r: r.split("/", 1)[0]),
                        "username": auth.user_name,
                        "password": pulumi.Output.secret(auth.password),
                    }
                ],
                labels={
                    "org.opencontainers.image.title": f"llmfleet-mirror-{key}",
                    "llmfleet.upstream": upstream,
                },
                opts=pulumi.ResourceOptions(parent=self),
            )
            refs[key] = image.ref
        return refs
