"""GPU worker slots: one launch template, one Auto Scaling group per worker (min = max = desired = 1).

Why groups, not instances: EC2 auto-recovery and the CloudWatch `recover` action reject
instances with instance-store volumes, and every GPU type stages its weights on instance-store
NVMe. An Auto Scaling group with EC2 health checks instead *replaces* a worker whose status
check fails (or that a spot interruption or a retirement takes away): the new instance boots the
same launch template (AMI, type, placement group, security group, instance profile, IMDSv2,
encrypted root, user data = the boot contract), `llmfleet-apply` stages the weights onto its
NVMe and starts the node, the node joins the Ray head, and the head's deploy watcher re-applies
Serve (ray_cluster/watch.py). One group per slot keeps the slots apart (names, alarms, one
replacement at a time per slot) and matches the planner's fixed worker count.

Day 2: the launch template is the workers' hardware and boot contract only; everything that
changes day to day reaches the hosts through the node script in SSM (infra/components/
node_config.py), so a Serve config or image change leaves the template alone. Any change to the
template makes a new version; the group then replaces its instance (instance refresh), which is
what a type or AMI change needs. Which input does what: infra/components/host_updates.py.

EFA: the template's network interfaces are created per launch (`interface_type = efa`, one per
EFA network card), since pre-created interfaces cannot follow a replacement. With interfaces in
the template the security groups go on each interface and the subnet comes from the group.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.catalog import InstanceType
from infra.components import scaling
from infra.components.host_updates import GROUP_REPLACE_FIELDS
from infra.components.recovery import slot_alarm
from ray_cluster.schedule import CronAction

HEALTH_CHECK_GRACE_S = 300  # EC2 status checks: the instance, not the engine (that is readiness)
# `pulumi up` waits this long for a slot's instance to be InService (a GPU type may need minutes).
CAPACITY_TIMEOUT = "20m"
IMDS_HOP_LIMIT = 2

METADATA_OPTIONS: aws.ec2.LaunchTemplateMetadataOptionsArgsDict = {
    "http_endpoint": "enabled",
    "http_tokens": "required",  # IMDSv2 only
    "http_put_response_hop_limit": IMDS_HOP_LIMIT,  # containers reach IMDS through the docker bridge hop
    "instance_metadata_tags": "disabled",
}


def efa_cards(instance: InstanceType) -> int:
    return instance.efa_max_interfaces if instance.efa else 0


def spot_options() -> dict:
    """One-time, terminate: the only Spot request an Auto Scaling group uses (AWS: use one-time
    requests with a group; the group itself requests a new Spot Instance whenever it is below
    its desired capacity). On an interruption the worker is terminated and the group launches a
    replacement when Spot capacity allows; it stages the weights again and rejoins."""
    return {
        "market_type": "spot",
        "spot_options": {"spot_instance_type": "one-time", "instance_interruption_behavior": "terminate"},
    }


def network_interfaces(
    cards: int, sg_id: pulumi.Input[str]
) -> list[aws.ec2.LaunchTemplateNetworkInterfaceArgsDict]:
    """The template's interfaces: one EFA per network card (card 0 carries the primary,
    device index 0; the others device index 1), or one plain primary interface. No public IP;
    the subnet comes from the group (AWS ignores an interface subnet under a group)."""
    if not cards:
        return [
            {
                "device_index": 0,
                "security_groups": [sg_id],
                "associate_public_ip_address": "false",
                "delete_on_termination": "true",
            }
        ]
    out: list[aws.ec2.LaunchTemplateNetworkInterfaceArgsDict] = []
    for card in range(cards):
        nic: aws.ec2.LaunchTemplateNetworkInterfaceArgsDict = {
            "device_index": 0 if card == 0 else 1,
            "network_card_index": card,
            "interface_type": "efa",
            "security_groups": [sg_id],
            "delete_on_termination": "true",
        }
        if card == 0:
            nic["associate_public_ip_address"] = "false"
        out.append(nic)
    return out


@dataclass
class WorkerPoolArgs:
    name: str  # the cluster name
    region: str
    worker_type: InstanceType
    workers: int
    ami_id: pulumi.Input[str]
    root_device_name: pulumi.Input[str]
    root_volume_gb: int
    subnet_id: pulumi.Input[str]
    cluster_sg_id: pulumi.Input[str]
    instance_profile: pulumi.Input[str]
    user_data: str  # the boot contract (plain text; the template carries it base64)
    tags: dict[str, str]
    serving_tags: dict[str, str]
    placement_group: pulumi.Input[str] | None = None
    spot: bool = False
    capacity_reservation_id: str | None = None
    capacity_block_id: str | None = None
    depends_on: list[pulumi.Resource] = field(default_factory=list)
    # SNS topic ARNs each slot alarm notifies on ALARM and OK (infra/components/recovery.py)
    alarm_topics: list[str] = field(default_factory=list)
    # llmfleet:schedule's scale-up/down actions (infra/components/scaling.py); [] = always on
    schedule_actions: list[CronAction] = field(default_factory=list)
    # llmfleet:idleStopMinutes and where the watcher's idle metric is; None = never idle-stopped
    idle_stop_minutes: int | None = None
    idle_metric_namespace: str = ""
    # Whether anything scales the slots to zero (a schedule, idle stop): min size 0 and desired
    # left to the actions after creation
    scales_to_zero: bool = False
    # llmfleet:gcsRedis: the NLB's instance target group each slot's group registers its worker
    # with (infra/components/endpoint.py); None: the workers are no NLB target
    target_group_arn: pulumi.Input[str] | None = None


def _market_and_capacity(args: WorkerPoolArgs) -> dict:
    extra: dict = {}
    if args.spot:
        extra["instance_market_options"] = spot_options()
    reservation = args.capacity_block_id or args.capacity_reservation_id
    if reservation:
        extra["capacity_reservation_specification"] = {
            "capacity_reservation_target": {"capacity_reservation_id": reservation}
        }
    if args.capacity_block_id:
        # Both are needed: the market type says "Capacity Block", the target says which one.
        extra["instance_market_options"] = {"market_type": "capacity-block"}
    elif args.placement_group is not None:
        extra["placement"] = {"group_name": args.placement_group}
    return extra


def encrypted_root(
    device_name: pulumi.Input[str], size_gb: int
) -> aws.ec2.LaunchTemplateBlockDeviceMappingArgsDict:
    """The launch templates' one block device: the encrypted gp3 root (head and workers)."""
    return {
        "device_name": device_name,  # first: the root volume (infra/worker_groups.py)
        "ebs": {
            "volume_type": "gp3",
            "volume_size": size_gb,
            "encrypted": "true",
            "delete_on_termination": "true",
        },
    }


def worker_launch_template(
    name: str, args: WorkerPoolArgs, parent: pulumi.Resource
) -> aws.ec2.LaunchTemplate:
    return aws.ec2.LaunchTemplate(
        f"{name}-worker",
        name=f"{args.name}-worker",
        description=f"{args.name} GPU worker: hardware and boot contract only",
        image_id=args.ami_id,
        instance_type=args.worker_type.name,
        iam_instance_profile={"name": args.instance_profile},
        metadata_options=METADATA_OPTIONS,
        block_device_mappings=[encrypted_root(args.root_device_name, args.root_volume_gb)],
        network_interfaces=network_interfaces(efa_cards(args.worker_type), args.cluster_sg_id),
        user_data=base64.b64encode(args.user_data.encode()).decode(),
        update_default_version=True,
        tags=args.tags,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=args.depends_on),
        **_market_and_capacity(args),
    )


def instance_refresh() -> aws.autoscaling.GroupInstanceRefreshArgsDict:
    """A new template version replaces a group's one instance: terminate, then launch (never a
    second host at once, which a GPU slot could not get and the head's interface could not join)."""
    return {
        "strategy": "Rolling",
        "preferences": {"min_healthy_percentage": 0, "max_healthy_percentage": 100, "skip_matching": True},
    }


def group_prefix(cluster: str) -> str:
    return f"{cluster}-worker-"


def group_name(cluster: str, slot: int) -> str:
    return f"{group_prefix(cluster)}{slot}"


def slot_tags(args: WorkerPoolArgs, slot: int) -> dict[str, str]:
    cards = efa_cards(args.worker_type)
    return {
        **args.serving_tags,
        "Name": group_name(args.name, slot),
        "llmfleet:role": "worker",
        "llmfleet:efa": "true" if cards else "false",
        **({"llmfleet:spot": "true"} if args.spot else {}),
        **({"llmfleet:capacityBlock": args.capacity_block_id} if args.capacity_block_id else {}),
    }


def worker_group(
    name: str, slot: int, args: WorkerPoolArgs, template: aws.ec2.LaunchTemplate, parent: pulumi.Resource
) -> aws.autoscaling.Group:
    return aws.autoscaling.Group(
        f"{name}-worker-{slot}",
        name=group_name(args.name, slot),
        min_size=0 if args.scales_to_zero else 1,
        max_size=1,
        desired_capacity=1,
        vpc_zone_identifiers=[args.subnet_id],
        # By name: known in a preview before the template exists (the cost and policy views match it).
        launch_template={"name": template.name, "version": template.latest_version.apply(str)},
        health_check_type="EC2",
        health_check_grace_period=HEALTH_CHECK_GRACE_S,
        # A new template version (type, AMI, volume, ...) replaces the slot's instance.
        instance_refresh=instance_refresh(),
        enabled_metrics=[aws.autoscaling.Metric.GROUP_IN_SERVICE_INSTANCES],  # the slot alarm reads it
        wait_for_capacity_timeout=CAPACITY_TIMEOUT,
        target_group_arns=[args.target_group_arn] if args.target_group_arn is not None else None,
        # Tags reach the instance at launch (the role, Name and serving tags the policy pack and
        # the SSM targets read); changing one updates the group in place.
        tags=[{"key": k, "value": v, "propagate_at_launch": True} for k, v in slot_tags(args, slot).items()],
        opts=pulumi.ResourceOptions(
            parent=parent,
            depends_on=args.depends_on,
            replace_on_changes=GROUP_REPLACE_FIELDS,
            delete_before_replace=True,  # the group's name is fixed (the SSM targets use it)
            # Scheduled actions, idle stop and `llmfleet wake` own the desired capacity.
            ignore_changes=["desired_capacity"] if args.scales_to_zero else None,
        ),
    )


class WorkerPool:
    """The launch template, the slots' groups and one alarm per slot (not a component: the
    resources stay children of the Cluster, as the instances were)."""

    def __init__(self, name: str, args: WorkerPoolArgs, parent: pulumi.Resource):
        self.template = worker_launch_template(name, args, parent)
        self.groups = [worker_group(name, i, args, self.template, parent) for i in range(args.workers)]
        self.group_names = [group_name(args.name, i) for i in range(args.workers)]
        self.alarms = [
            slot_alarm(
                f"{name}-worker-{i}", group=g.name, tags=args.tags, parent=parent, notify=args.alarm_topics
            )
            for i, g in enumerate(self.groups)
        ]
        self.schedules = [
            s
            for i, g in enumerate(self.groups)
            for s in scaling.scheduled_actions(
                f"{name}-worker-{i}", group=g.name, actions=args.schedule_actions, parent=parent
            )
        ]
        self.idle_stops = (
            [
                scaling.idle_stop(
                    f"{name}-worker-{i}",
                    group=g.name,
                    minutes=args.idle_stop_minutes,
                    namespace=args.idle_metric_namespace,
                    tags=args.tags,
                    parent=parent,
                    notify=args.alarm_topics,
                )
                for i, g in enumerate(self.groups)
            ]
            if args.idle_stop_minutes
            else []
        )
