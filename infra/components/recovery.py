"""Bringing a failed host back: EC2 auto-recovery and a status-check alarm per instance.

EC2 recovers an instance (same id, IP and EBS volumes, new hardware) only when it has no
instance-store volumes: every GPU type in the catalog stages its weights on instance-store
NVMe, so EC2 rejects the recover action there. Those hosts get the reboot action on the
instance status check instead (a reboot keeps the NVMe data, and llmfleet-apply.service runs
the node script again at boot); a failed system check on them needs a stop/start or a new
instance (README, "Day-2 operations"). EBS-only types (the head) get simplified automatic
recovery (maintenance_options) and the recover alarm on the system status check.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra.catalog import InstanceType

RECOVER = "recover"
REBOOT = "reboot"


def supports_recovery(instance: InstanceType) -> bool:
    return instance.nvme_disks == 0


def alarm_action(instance: InstanceType) -> str:
    return RECOVER if supports_recovery(instance) else REBOOT


def status_metric(instance: InstanceType) -> str:
    # recover answers a failed *system* check (the host); reboot answers a failed *instance* check.
    return "StatusCheckFailed_System" if supports_recovery(instance) else "StatusCheckFailed_Instance"


def maintenance_options(instance: InstanceType) -> dict | None:
    return {"auto_recovery": "default"} if supports_recovery(instance) else None


def status_check_alarm(
    name: str,
    *,
    instance_id: pulumi.Input[str],
    instance: InstanceType,
    region: str,
    tags: dict[str, str],
    parent: pulumi.Resource,
) -> aws.cloudwatch.MetricAlarm:
    action = alarm_action(instance)
    return aws.cloudwatch.MetricAlarm(
        f"{name}-status-alarm",
        alarm_description=f"llmfleet: {action} the instance when {status_metric(instance)} fails for 2 minutes",
        namespace="AWS/EC2",
        metric_name=status_metric(instance),
        dimensions={"InstanceId": instance_id},
        statistic="Maximum",
        period=60,
        evaluation_periods=2,
        comparison_operator="GreaterThanOrEqualToThreshold",
        threshold=1,
        alarm_actions=[f"arn:aws:automate:{region}:ec2:{action}"],
        tags=tags,
        opts=pulumi.ResourceOptions(parent=parent),
    )
