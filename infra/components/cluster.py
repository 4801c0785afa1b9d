"""Cluster: one CPU head and N GPU workers in one AZ and one `cluster` placement group.

Every host: the Deep Learning Base AMI (NVIDIA driver, Docker, NVIDIA container toolkit),
IMDSv2 only with hop limit 2 (containers reach IMDS through the docker bridge hop), an
encrypted gp3 root volume, no public IP, the instance profile, user data from
infra/boot/node_apply.py (the boot contract). The head and each GPU worker are Auto Scaling
groups of one launching from a launch template, so a failed host is replaced without an
operator (infra/components/head.py: the head's fixed address; infra/components/workers.py:
EFA interfaces, spot). The workers' node script is built from the head's fixed private IP.

Day 2: an instance's user data is only its boot contract; its node script (image digest,
weights, Serve config) is an SSM parameter that the operator-side rollout (infra/rollout/)
re-applies in place, one host at a time (infra/components/node_config.py). Which input replaces a host and which
updates it is the explicit table in infra/components/host_updates.py (`replace_on_changes`).
Recovery: infra/components/recovery.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import pulumi
import pulumi_aws as aws

from infra.boot.ami import AMI_LOOKUP
from infra.boot.cloud_init import NodeSpec, render_user_data
from infra.boot.metrics import HostMetrics
from infra.boot.node_apply import launcher_user_data, node_parameter_name
from infra.catalog import InstanceType
from infra.components import recovery, scaling
from infra.components.head import Head, HeadArgs
from infra.components.node_config import node_script_parameter
from infra.components.workers import WorkerPool, WorkerPoolArgs, efa_cards
from ray_cluster.schedule import CronAction

BASE_ROOT_GB = 200  # OS + Docker + the vLLM image (~25 GB) + logs, with room for two image versions


def root_volume_gb(instance: InstanceType, checkpoint_gib: float, role: str, override: int | None) -> int:
    """Root volume size. Weights go to instance-store NVMe; a type without it holds them on root."""
    if override:
        return override
    if role == "worker" and instance.nvme_disks == 0:
        return BASE_ROOT_GB + int(math.ceil(checkpoint_gib * 1.1 / 50.0) * 50)
    return BASE_ROOT_GB


@dataclass
class ClusterArgs:
    name: str
    region: str
    model: str
    quantization: str
    max_model_len: int
    head_type: InstanceType
    worker_type: InstanceType
    workers: int
    checkpoint_gib: float
    subnet_id: pulumi.Input[str]
    head_ip: str  # the head's fixed private IP in subnet_id (infra/components/network.py head_ip)
    availability_zone: pulumi.Input[str]
    cluster_sg_id: pulumi.Input[str]
    instance_profile: pulumi.Input[str]
    image_ref: pulumi.Input[str]
    weights_s3_uri: pulumi.Input[str]
    weights_path: str
    model_path: str
    token_parameter: pulumi.Input[str]
    ray_token_parameter: pulumi.Input[str]  # every host reads it (the Ray cluster token)
    endpoint_port: int = 8000
    spot: bool = False
    capacity_reservation_id: str | None = None
    # An EC2 Capacity Block for ML (its reservation id): workers launch into it (market type
    # capacity-block) and take no placement group, since AWS places a block's instances together.
    capacity_block_id: str | None = None
    root_volume_gb: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # The head deploys this Serve config (YAML) once TP x PP GPUs have joined.
    serve_config: str = ""
    tensor_parallel_size: int = 0
    pipeline_parallel_size: int = 0
    replicas: int = 1
    # Metrics and logs of every host (infra/components/observability.py); None: none shipped
    host_metrics: pulumi.Input[HostMetrics] | None = None
    # llmfleet:alarmTopicArn: every alarm of the cluster notifies it; None: the alarms notify nobody
    alarm_topic_arn: str | None = None
    # llmfleet:gcsRedis (infra/components/gcs_redis.py): the store's rediss:// address and its
    # auth token's SSM name; None: the GCS keeps its state in the head's memory
    gcs_redis_address: pulumi.Input[str] | None = None
    gcs_redis_token_parameter: pulumi.Input[str] | None = None
    # llmfleet:schedule's actions and llmfleet:idleStopMinutes (infra/components/scaling.py)
    schedule_actions: list[CronAction] = field(default_factory=list)
    idle_stop_minutes: int | None = None
    # llmfleet:gcsRedis: the NLB's instance target group the head's and the workers' groups
    # register with (infra/components/endpoint.py); None: the NLB targets the head's address
    target_group_arn: pulumi.Input[str] | None = None

    @property
    def every_host_serves(self) -> bool:
        """Every host runs a Serve proxy and an ingress replica behind the NLB (llmfleet:gcsRedis):
        the workers then need the API token in their env file too."""
        return self.target_group_arn is not None

    @property
    def alarm_topics(self) -> list[str]:
        return [self.alarm_topic_arn] if self.alarm_topic_arn else []


def serving_tags(args: ClusterArgs) -> dict[str, str]:
    return {
        **args.tags,
        "llmfleet:model": args.model,
        "llmfleet:quantization": args.quantization,
        "llmfleet:maxModelLen": str(args.max_model_len),
        "llmfleet:replicas": str(args.replicas),
    }


def _dependency_list(
    deps: pulumi.Input[Sequence[pulumi.Input[pulumi.Resource]] | pulumi.Resource] | None,
) -> list[pulumi.Resource]:
    """ResourceOptions.depends_on as a list of resources (the program passes a list or one)."""
    items = [] if deps is None else [deps] if isinstance(deps, pulumi.Resource) else deps
    if not isinstance(items, Sequence) or not all(isinstance(d, pulumi.Resource) for d in items):
        raise TypeError("Cluster: depends_on must be resources, not Outputs")
    return [d for d in items if isinstance(d, pulumi.Resource)]


def _spec(
    args: ClusterArgs,
    role: Literal["head", "worker"],
    image_ref: str,
    weights_s3_uri: str,
    ray_token: str,
    metrics,
    **fields,
) -> NodeSpec:
    """What every node's boot contract carries; `fields` are the role's own."""
    return NodeSpec(
        role=role,
        region=args.region,
        image_ref=image_ref,
        weights_s3_uri=weights_s3_uri,
        model_path=args.model_path,
        weights_path=args.weights_path,
        ray_token_parameter=ray_token,
        endpoint_port=args.endpoint_port,
        metrics=metrics,
        **fields,
    )


def head_script(args: ClusterArgs, head_eni_id: pulumi.Input[str]) -> pulumi.Output[str]:
    return pulumi.Output.all(
        args.image_ref,
        args.weights_s3_uri,
        args.token_parameter,
        args.ray_token_parameter,
        args.host_metrics,
        head_eni_id,
        args.gcs_redis_address or "",
        args.gcs_redis_token_parameter or "",
    ).apply(
        lambda a: render_user_data(
            _spec(
                args,
                "head",
                a[0],
                a[1],
                a[3],
                a[4],
                token_parameter=a[2],
                head_ip=args.head_ip,
                head_eni_id=a[5],
                gcs_redis_address=a[6],
                gcs_redis_token_parameter=a[7],
                gcs_fault_tolerant=args.gcs_redis_address is not None,
                serve_config=args.serve_config,
                tensor_parallel_size=args.tensor_parallel_size,
                pipeline_parallel_size=args.pipeline_parallel_size,
                replicas=args.replicas,
                deploy_gpu_model=args.worker_type.gpu or "",
            )
        )
    )


def worker_script(args: ClusterArgs, head_ip: pulumi.Input[str]) -> pulumi.Output[str]:
    return pulumi.Output.all(
        head_ip,
        args.image_ref,
        args.weights_s3_uri,
        args.ray_token_parameter,
        args.host_metrics,
        # the worker's ingress replica checks the bearer token too (every_host_serves)
        args.token_parameter if args.every_host_serves else "",
    ).apply(
        lambda a: render_user_data(
            _spec(
                args,
                "worker",
                a[1],
                a[2],
                a[3],
                a[4],
                head_ip=a[0],
                token_parameter=a[5],
                gpus=args.worker_type.gpu_count,
                gpu_model=args.worker_type.gpu or "",
                nvme_disks=args.worker_type.nvme_disks,
                efa=efa_cards(args.worker_type) > 0,
                gcs_fault_tolerant=args.gcs_redis_address is not None,
            )
        )
    )


class Cluster(pulumi.ComponentResource):
    head: Head
    workers: WorkerPool

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llmfleet:components:Cluster", name, None, opts)
        # Children do not inherit the component's depends_on: the hosts themselves must wait for
        # what they read at boot (IAM grants, SSM parameters, VPC endpoints).
        self._boot_deps = _dependency_list(opts.depends_on if opts else None)
        self._ami = aws.ec2.get_ami_output(**AMI_LOOKUP, opts=pulumi.InvokeOutputOptions(parent=self))
        self._stack = pulumi.get_stack()
        self.placement_group = self._placement_group(name, args)
        self.head = self._head(name, args)
        self.worker_script_text = worker_script(args, self.head.private_ip)
        self.workers = self._workers(name, args)
        self.alarms = [
            # The head's group replaces a failed or terminated head itself; this tells someone
            # when it cannot (no instance in service for 30 minutes), as for a worker slot.
            recovery.slot_alarm(
                f"{name}-head",
                group=self.head.group.name,
                tags=args.tags,
                parent=self,
                notify=args.alarm_topics,
                what="the head",
            ),
            *self.workers.alarms,
            *self._app_alarm(name, args),
        ]
        self.notifications = recovery.group_notifications(
            name,
            groups=[self.head.group.name, *(g.name for g in self.workers.groups)],
            topic=args.alarm_topic_arn,
            parent=self,
        )
        self.register_outputs(
            {
                "head_private_ip": self.head.private_ip,
                "head_group": self.head.group_name,
                "worker_groups": self.workers.group_names,
            }
        )

    def _app_alarm(self, name: str, args: ClusterArgs) -> list[aws.cloudwatch.MetricAlarm]:
        """The Serve app's alarm, read from the boot log group (none without metrics and logs)."""
        if args.host_metrics is None:
            return []
        group = pulumi.Output.from_input(args.host_metrics).apply(lambda m: m.boot_log_group)
        return [
            recovery.app_alarm(
                f"{name}-head",
                cluster=args.name,
                boot_log_group=group,
                tags=args.tags,
                parent=self,
                depends_on=self._boot_deps,  # the log group (Observability) exists first
                notify=args.alarm_topics,
            )
        ]

    def _placement_group(self, name: str, args: ClusterArgs) -> aws.ec2.PlacementGroup | None:
        # A Capacity Block's instances already sit together in an UltraCluster, and EC2 rejects a
        # placement group for them (AWS ParallelCluster validates the same), so only other
        # workers get the cluster placement group.
        if args.capacity_block_id:
            return None
        return aws.ec2.PlacementGroup(
            f"{name}-workers-pg",
            name=f"{args.name}-workers",
            strategy="cluster",  # one rack/spine: lowest latency between pipeline stages
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _head(self, name: str, args: ClusterArgs) -> Head:
        param_name = node_parameter_name(self._stack, "head")
        head_args = HeadArgs(
            name=args.name,
            head_type=args.head_type,
            ami_id=self._ami.id,
            root_device_name=self._ami.root_device_name,
            root_volume_gb=root_volume_gb(args.head_type, args.checkpoint_gib, "head", args.root_volume_gb),
            subnet_id=args.subnet_id,
            cluster_sg_id=args.cluster_sg_id,
            instance_profile=args.instance_profile,
            private_ip=args.head_ip,
            user_data=launcher_user_data("head", args.region, param_name),
            tags=args.tags,
            serving_tags=serving_tags(args),
            target_group_arn=args.target_group_arn,
        )
        # The interface first: the head's node script names it (and attaches it at boot).
        head = Head(name, head_args, parent=self, interface_only=True)
        self.head_script_text = head_script(args, head.interface.id)
        self.head_script = node_script_parameter(
            name,
            parameter_name=param_name,
            role="head",
            script=self.head_script_text,
            tags=args.tags,
            parent=self,
        )
        head_args.depends_on = [*self._boot_deps, self.head_script, head.interface]
        head.launch(name, head_args, parent=self)
        return head

    def _workers(self, name: str, args: ClusterArgs) -> WorkerPool:
        param_name = node_parameter_name(self._stack, "worker")
        self.worker_script = node_script_parameter(
            name,
            parameter_name=param_name,
            role="worker",
            script=self.worker_script_text,
            tags=args.tags,
            parent=self,
        )
        pool = WorkerPoolArgs(
            name=args.name,
            region=args.region,
            worker_type=args.worker_type,
            workers=args.workers,
            ami_id=self._ami.id,
            root_device_name=self._ami.root_device_name,
            root_volume_gb=root_volume_gb(
                args.worker_type, args.checkpoint_gib, "worker", args.root_volume_gb
            ),
            subnet_id=args.subnet_id,
            cluster_sg_id=args.cluster_sg_id,
            instance_profile=args.instance_profile,
            user_data=launcher_user_data("worker", args.region, param_name),
            tags=args.tags,
            serving_tags=serving_tags(args),
            placement_group=self.placement_group.name if self.placement_group else None,
            spot=args.spot,
            capacity_reservation_id=args.capacity_reservation_id,
            capacity_block_id=args.capacity_block_id,
            depends_on=[*self._boot_deps, self.worker_script],
            alarm_topics=args.alarm_topics,
            schedule_actions=args.schedule_actions,
            # Idle stop reads the watcher's line from the head's boot log: none without logs.
            idle_stop_minutes=args.idle_stop_minutes if args.host_metrics is not None else None,
            idle_metric_namespace=recovery.app_metric_namespace(args.name),
            scales_to_zero=bool(args.schedule_actions or args.idle_stop_minutes),
            target_group_arn=args.target_group_arn,
        )
        if pool.idle_stop_minutes and args.host_metrics is not None:
            log_group = pulumi.Output.from_input(args.host_metrics).apply(lambda m: m.boot_log_group)
            self.idle_filter = scaling.idle_metric_filter(
                f"{name}-head",
                boot_log_group=log_group,
                namespace=pool.idle_metric_namespace,
                parent=self,
                depends_on=self._boot_deps,
            )
        return WorkerPool(name, pool, parent=self)
