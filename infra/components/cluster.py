"""Cluster: one CPU head and N GPU workers in one AZ and one `cluster` placement group.

Every host: the Deep Learning Base AMI (NVIDIA driver, Docker, NVIDIA container toolkit),
IMDSv2 only with hop limit 2 (containers reach IMDS through the docker bridge hop), an
encrypted gp3 root volume, no public IP, the instance profile, user data from
infra/boot/cloud_init.py. Workers' user data is built from the head's private IP.

EFA: where the catalog marks the type EFA-capable, each worker launches with pre-created
EFA network interfaces (one per EFA network card, in the private subnet, with the cluster
security group). An EFA can only be attached at launch (or to a stopped instance), so they
go in the instance's `network_interfaces` at creation; the instance then takes no
top-level subnet/security groups/public-IP flag (the provider rejects the combination).
An interface we create never gets a public IP, and the subnet does not map one.

Day 2: an instance's user data is only its boot contract; its node script (image digest,
weights, Serve config) is an SSM parameter that a rollout association re-applies in place,
one host at a time (infra/components/node_config.py). Which input replaces a host and which
updates it is the explicit table in infra/components/host_updates.py (`replace_on_changes`).
Recovery: infra/components/recovery.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.boot.ami import AMI_LOOKUP
from infra.boot.cloud_init import NodeSpec, render_user_data
from infra.boot.metrics import HostMetrics
from infra.boot.node_apply import launcher_user_data, node_parameter_name
from infra.catalog import InstanceType
from infra.components import recovery
from infra.components.host_updates import REPLACE_FIELDS
from infra.components.node_config import node_script_parameter, rollout_association

BASE_ROOT_GB = 200  # OS + Docker + the vLLM image (~25 GB) + logs, with room for two image versions
IMDS_HOP_LIMIT = 2


def root_volume_gb(instance: InstanceType, checkpoint_gib: float, role: str, override: int | None) -> int:
    """Root volume size. Weights go to instance-store NVMe; a type without it holds them on root."""
    if override:
        return override
    if role == "worker" and instance.nvme_disks == 0:
        return BASE_ROOT_GB + int(math.ceil(checkpoint_gib * 1.1 / 50.0) * 50)
    return BASE_ROOT_GB


def efa_cards(instance: InstanceType) -> int:
    return instance.efa_max_interfaces if instance.efa else 0


def spot_options() -> dict:
    """A persistent request that stops on interruption: EC2 starts the same instance (same id,
    IP and root volume) again when capacity returns, and llmfleet-apply.service re-stages the
    instance-store weights at that boot. RunInstances takes persistent only with stop/hibernate."""
    return {
        "market_type": "spot",
        "spot_options": {"spot_instance_type": "persistent", "instance_interruption_behavior": "stop"},
    }


def _root_device(size: int) -> dict:
    return {"volume_type": "gp3", "volume_size": size, "encrypted": True, "delete_on_termination": True}


METADATA_OPTIONS = {
    "http_endpoint": "enabled",
    "http_tokens": "required",  # IMDSv2 only
    "http_put_response_hop_limit": IMDS_HOP_LIMIT,
    "instance_metadata_tags": "disabled",
}


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


class Cluster(pulumi.ComponentResource):
    head: aws.ec2.Instance
    workers: list[aws.ec2.Instance]

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llmfleet:components:Cluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # Children do not inherit the component's depends_on: the hosts themselves must wait for
        # what they read at boot (IAM grants, SSM parameters, VPC endpoints).
        boot = pulumi.ResourceOptions(parent=self, depends_on=(opts.depends_on if opts else None) or [])
        ami = aws.ec2.get_ami_output(**AMI_LOOKUP, opts=pulumi.InvokeOutputOptions(parent=self))
        serving_tags = {
            **args.tags,
            "llmfleet:model": args.model,
            "llmfleet:quantization": args.quantization,
            "llmfleet:maxModelLen": str(args.max_model_len),
            "llmfleet:replicas": str(args.replicas),
        }
        # A Capacity Block's instances already sit together in an UltraCluster, and EC2 rejects a
        # placement group for them (AWS ParallelCluster validates the same), so only other
        # workers get the cluster placement group.
        self.placement_group = (
            None
            if args.capacity_block_id
            else aws.ec2.PlacementGroup(
                f"{name}-workers-pg",
                name=f"{args.name}-workers",
                strategy="cluster",  # one rack/spine: lowest latency between pipeline stages
                tags=args.tags,
                opts=child,
            )
        )

        stack = pulumi.get_stack()
        host_opts = pulumi.ResourceOptions.merge(boot, pulumi.ResourceOptions(replace_on_changes=REPLACE_FIELDS))
        head_script = pulumi.Output.all(
            args.image_ref, args.weights_s3_uri, args.token_parameter, args.ray_token_parameter, args.host_metrics
        ).apply(
            lambda a: render_user_data(
                NodeSpec(
                    role="head",
                    region=args.region,
                    image_ref=a[0],
                    weights_s3_uri=a[1],
                    model_path=args.model_path,
                    weights_path=args.weights_path,
                    token_parameter=a[2],
                    ray_token_parameter=a[3],
                    endpoint_port=args.endpoint_port,
                    serve_config=args.serve_config,
                    tensor_parallel_size=args.tensor_parallel_size,
                    pipeline_parallel_size=args.pipeline_parallel_size,
                    replicas=args.replicas,
                    deploy_gpu_model=args.worker_type.gpu or "",
                    metrics=a[4],
                )
            )
        )
        head_param_name = node_parameter_name(stack, "head")
        self.head_script = node_script_parameter(
            name, parameter_name=head_param_name, role="head", script=head_script, tags=args.tags, parent=self
        )
        self.head = aws.ec2.Instance(
            f"{name}-head",
            ami=ami.id,
            instance_type=args.head_type.name,
            subnet_id=args.subnet_id,
            vpc_security_group_ids=[args.cluster_sg_id],
            associate_public_ip_address=False,
            iam_instance_profile=args.instance_profile,
            metadata_options=METADATA_OPTIONS,
            root_block_device=_root_device(
                root_volume_gb(args.head_type, args.checkpoint_gib, "head", args.root_volume_gb)
            ),
            maintenance_options=recovery.maintenance_options(args.head_type),
            user_data=launcher_user_data("head", args.region, head_param_name),
            user_data_replace_on_change=True,  # the boot contract; day-2 changes go through SSM
            tags={**serving_tags, "Name": f"{args.name}-head", "llmfleet:role": "head"},
            opts=pulumi.ResourceOptions.merge(host_opts, pulumi.ResourceOptions(depends_on=[self.head_script])),
        )

        cards = efa_cards(args.worker_type)
        worker_root = root_volume_gb(args.worker_type, args.checkpoint_gib, "worker", args.root_volume_gb)
        self.workers = []
        self.efa_interfaces: list[aws.ec2.NetworkInterface] = []
        worker_script = pulumi.Output.all(
                self.head.private_ip, args.image_ref, args.weights_s3_uri, args.ray_token_parameter, args.host_metrics
            ).apply(
                lambda a: render_user_data(
                    NodeSpec(
                        role="worker",
                        region=args.region,
                        image_ref=a[1],
                        weights_s3_uri=a[2],
                        model_path=args.model_path,
                        weights_path=args.weights_path,
                        head_ip=a[0],
                        ray_token_parameter=a[3],
                        gpus=args.worker_type.gpu_count,
                        gpu_model=args.worker_type.gpu or "",
                        nvme_disks=args.worker_type.nvme_disks,
                        efa=cards > 0,
                        endpoint_port=args.endpoint_port,
                        metrics=a[4],
                    )
                )
            )
        worker_param_name = node_parameter_name(stack, "worker")
        self.worker_script = node_script_parameter(
            name, parameter_name=worker_param_name, role="worker", script=worker_script, tags=args.tags, parent=self
        )
        worker_opts = pulumi.ResourceOptions.merge(host_opts, pulumi.ResourceOptions(depends_on=[self.worker_script]))
        for i in range(args.workers):
            wname = f"{name}-worker-{i}"
            net: dict = {}
            if cards:
                nics = []
                for card in range(cards):
                    eni = aws.ec2.NetworkInterface(
                        f"{wname}-efa-{card}",
                        subnet_id=args.subnet_id,
                        security_groups=[args.cluster_sg_id],
                        interface_type="efa",
                        description=f"{args.name} worker {i} EFA card {card}",
                        tags={**args.tags, "Name": f"{wname}-efa-{card}"},
                        opts=child,
                    )
                    self.efa_interfaces.append(eni)
                    # card 0 carries the primary interface; EFAs on the other cards use device index 1
                    nics.append(
                        {
                            "device_index": 0 if card == 0 else 1,
                            "network_card_index": card,
                            "network_interface_id": eni.id,
                        }
                    )
                net["network_interfaces"] = nics
            else:
                net.update(
                    subnet_id=args.subnet_id,
                    vpc_security_group_ids=[args.cluster_sg_id],
                    associate_public_ip_address=False,
                )
            extra: dict = {}
            if args.spot:
                extra["instance_market_options"] = spot_options()
            if recovery.maintenance_options(args.worker_type):
                extra["maintenance_options"] = recovery.maintenance_options(args.worker_type)
            if args.capacity_reservation_id:
                extra["capacity_reservation_specification"] = {
                    "capacity_reservation_target": {"capacity_reservation_id": args.capacity_reservation_id}
                }
            if args.capacity_block_id:
                # Both are needed: the market type says "Capacity Block", the target says which one.
                extra["instance_market_options"] = {"market_type": "capacity-block"}
                extra["capacity_reservation_specification"] = {
                    "capacity_reservation_target": {"capacity_reservation_id": args.capacity_block_id}
                }
            else:
                extra["placement_group"] = self.placement_group.name
            worker = aws.ec2.Instance(
                wname,
                ami=ami.id,
                instance_type=args.worker_type.name,
                availability_zone=args.availability_zone,
                iam_instance_profile=args.instance_profile,
                metadata_options=METADATA_OPTIONS,
                root_block_device=_root_device(worker_root),
                user_data=launcher_user_data("worker", args.region, worker_param_name),
                user_data_replace_on_change=True,
                tags={
                    **serving_tags,
                    "Name": f"{args.name}-worker-{i}",
                    "llmfleet:role": "worker",
                    "llmfleet:efa": "true" if cards else "false",
                    **({"llmfleet:spot": "true"} if args.spot else {}),
                    **({"llmfleet:capacityBlock": args.capacity_block_id} if args.capacity_block_id else {}),
                },
                opts=worker_opts,
                **net,
                **extra,
            )
            self.workers.append(worker)
        self.alarms = [
            recovery.status_check_alarm(
                inst_name, instance_id=inst.id, instance=itype, region=args.region, tags=args.tags, parent=self
            )
            for inst_name, inst, itype in [
                (f"{name}-head", self.head, args.head_type),
                *((f"{name}-worker-{i}", w, args.worker_type) for i, w in enumerate(self.workers)),
            ]
        ]
        self.rollouts = [
            rollout_association(
                name,
                cluster=args.name,
                role="head",
                parameter=self.head_script,
                script=head_script,
                instance_ids=[self.head.id],
                tags=args.tags,
                parent=self,
            ),
            rollout_association(
                name,
                cluster=args.name,
                role="worker",
                parameter=self.worker_script,
                script=worker_script,
                instance_ids=[w.id for w in self.workers],
                tags=args.tags,
                parent=self,
            ),
        ]
        self.register_outputs(
            {
                "head_private_ip": self.head.private_ip,
                "worker_private_ips": [w.private_ip for w in self.workers],
            }
        )
