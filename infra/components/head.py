"""The head: an Auto Scaling group of one behind a fixed private IP.

Why a group: EC2 auto-recovery (the head's recover alarm before) answers only a failed *system*
status check; a head that fails its *instance* check, or is terminated, needed a `pulumi up`. A
group of one with EC2 health checks replaces its instance in every one of those cases, with no
operator: the new instance boots the launch template (the same boot contract as before), its
`llmfleet-apply` runs the head's node script from SSM, which writes serve.yaml and starts the
deploy watcher, and the watcher deploys Serve once the workers are back (ray_cluster/watch.py).

Why a fixed IP, and how: the workers join the head at an address rendered into their node
script and the NLB forwards to the head, so the head's address must outlive its instance. A
pre-created network interface (`aws.ec2.NetworkInterface`, a pinned address of the private
subnet: infra/components/network.py `head_ip`) holds it. It is *not* named in the launch
template (`network_interface_id`, device 0). The Auto Scaling guide's launch template pages
(https://docs.aws.amazon.com/autoscaling/ec2/userguide/create-launch-template.html and the CLI
examples, https://docs.aws.amazon.com/autoscaling/ec2/userguide/examples-launch-templates-aws-cli.html)
are read as rejecting, or at most tolerating for a single instance, a template that names an
existing interface; this could not be checked against AWS here. The boot attach below works
either way, and it also survives the race a template interface would lose: a replacement's
launch while the old instance still holds the interface fails (InUse) and is retried by the
group with backoff, whereas the node script simply waits for the detach. So the template
gives the instance an ordinary primary interface (device 0, any address of the subnet), and the
head's node script attaches the fixed interface as device index 1 at every boot (`aws ec2
attach-network-interface`, the instance id from IMDSv2; infra/boot/cloud_init.py
`_head_interface`), gives it its address with a source-based route (replies leave by the
interface they arrived on), and starts Ray on that address (`--node-ip-address`). The node role
may attach only interfaces tagged as this stack's head, to instances tagged as this stack's
head (infra/components/iam.py `head_interface_statement`).

A replacement: the group terminates the failed instance (the interface detaches with it; it is
kept: delete_on_termination false), then launches a new one, whose node script retries the
attach until the interface is free. The NLB targets the interface's IP (target type ip), so it
needs no change either; with llmfleet:gcsRedis the NLB's target group is an instance one that
the group itself registers each new head with (and every worker group its worker), since then
every host's Serve proxy serves (infra/components/endpoint.py).

Security groups: the interface carries the cluster group (Ray among the hosts, the serving port
from the NLB's group: infra/components/network.py); the NLB's own group is the endpoint group,
which a target does not need.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.catalog import InstanceType
from infra.components.host_updates import GROUP_REPLACE_FIELDS
from infra.components.workers import (
    CAPACITY_TIMEOUT,
    HEALTH_CHECK_GRACE_S,
    METADATA_OPTIONS,
    encrypted_root,
    instance_refresh,
    network_interfaces,
)

HEAD_ROLE_TAG = "llmfleet:role"
HEAD_ROLE = "head"


def head_group_name(cluster: str) -> str:
    return f"{cluster}-head"


@dataclass
class HeadArgs:
    name: str  # the cluster name
    head_type: InstanceType
    ami_id: pulumi.Input[str]
    root_device_name: pulumi.Input[str]
    root_volume_gb: int
    subnet_id: pulumi.Input[str]
    cluster_sg_id: pulumi.Input[str]
    instance_profile: pulumi.Input[str]
    private_ip: str  # the fixed address (infra/components/network.py head_ip)
    user_data: str  # the boot contract (plain text; the template carries it base64)
    tags: dict[str, str]
    serving_tags: dict[str, str]
    depends_on: list[pulumi.Resource] = field(default_factory=list)
    # llmfleet:gcsRedis: the NLB's instance target group the group registers the head with
    # (infra/components/endpoint.py); None: the NLB targets the fixed address instead
    target_group_arn: pulumi.Input[str] | None = None


def head_interface(name: str, args: HeadArgs, parent: pulumi.Resource) -> aws.ec2.NetworkInterface:
    """The interface that holds the head's address across replacements."""
    return aws.ec2.NetworkInterface(
        f"{name}-head-eni",
        subnet_id=args.subnet_id,
        private_ips=[args.private_ip],
        security_groups=[args.cluster_sg_id],
        description=f"{args.name} head: the fixed address workers and the NLB use",
        # The IAM grant to attach it is by these tags (this stack's head only).
        tags={**args.tags, "Name": f"{args.name}-head", HEAD_ROLE_TAG: HEAD_ROLE},
        opts=pulumi.ResourceOptions(parent=parent),
    )


def head_launch_template(name: str, args: HeadArgs, parent: pulumi.Resource) -> aws.ec2.LaunchTemplate:
    return aws.ec2.LaunchTemplate(
        f"{name}-head",
        name=f"{args.name}-head",
        description=f"{args.name} head: hardware and boot contract only",
        image_id=args.ami_id,
        instance_type=args.head_type.name,
        iam_instance_profile={"name": args.instance_profile},
        metadata_options=METADATA_OPTIONS,
        block_device_mappings=[encrypted_root(args.root_device_name, args.root_volume_gb)],
        network_interfaces=network_interfaces(0, args.cluster_sg_id),
        user_data=base64.b64encode(args.user_data.encode()).decode(),
        update_default_version=True,
        tags=args.tags,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=args.depends_on),
    )


def head_tags(args: HeadArgs) -> dict[str, str]:
    return {**args.serving_tags, "Name": f"{args.name}-head", HEAD_ROLE_TAG: HEAD_ROLE}


def head_group(
    name: str, args: HeadArgs, template: aws.ec2.LaunchTemplate, parent: pulumi.Resource
) -> aws.autoscaling.Group:
    return aws.autoscaling.Group(
        f"{name}-head",
        name=head_group_name(args.name),
        min_size=1,
        max_size=1,
        desired_capacity=1,
        vpc_zone_identifiers=[args.subnet_id],  # the interface's subnet: an interface stays in its AZ
        launch_template={"name": template.name, "version": template.latest_version.apply(str)},
        # EC2 status checks (system and instance) and a terminated instance: the group replaces
        # it. Not ELB health: the serving port is down for as long as the engine loads, which
        # is readiness, not a broken host.
        health_check_type="EC2",
        health_check_grace_period=HEALTH_CHECK_GRACE_S,
        instance_refresh=instance_refresh(),
        enabled_metrics=[aws.autoscaling.Metric.GROUP_IN_SERVICE_INSTANCES],  # the head's slot alarm reads it
        wait_for_capacity_timeout=CAPACITY_TIMEOUT,
        target_group_arns=[args.target_group_arn] if args.target_group_arn is not None else None,
        tags=[{"key": k, "value": v, "propagate_at_launch": True} for k, v in head_tags(args).items()],
        opts=pulumi.ResourceOptions(
            parent=parent,
            depends_on=args.depends_on,
            replace_on_changes=GROUP_REPLACE_FIELDS,
            delete_before_replace=True,  # the group's name is fixed (the head lookup uses it)
        ),
    )


class Head:
    """The fixed interface, the template and the group of one (not a component: the resources
    stay children of the Cluster, as the instance was). Two steps: the interface, whose id the
    head's node script names, then (`launch`) the template and the group, which wait for it."""

    def __init__(self, name: str, args: HeadArgs, parent: pulumi.Resource, interface_only: bool = False):
        self.interface = head_interface(name, args, parent)
        self.private_ip = self.interface.private_ip
        self.group_name = head_group_name(args.name)
        if not interface_only:
            self.launch(name, args, parent)

    def launch(self, name: str, args: HeadArgs, parent: pulumi.Resource) -> None:
        self.template = head_launch_template(name, args, parent)
        self.group = head_group(name, args, self.template, parent)
