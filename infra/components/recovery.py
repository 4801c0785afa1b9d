"""Bringing a failed host back.

The head (an instance): EC2 recovers an instance (same id, IP and EBS volumes, new hardware)
only when it has no instance-store volumes. An EBS-only head type gets simplified automatic
recovery (maintenance_options) and the recover alarm on the system status check; a head type
with instance store would get the reboot action on the instance status check instead (a reboot
keeps the NVMe data, and llmfleet-apply.service runs the node script again at boot).

The GPU workers (instance-store NVMe, so no EC2 recovery): each is an Auto Scaling group of
one with EC2 health checks (infra/components/workers.py), which *replaces* a worker whose
status check fails. `slot_alarm` watches the group: it fires when the slot has had no
instance in service for 30 minutes (a replacement that cannot get capacity, a spot market
without capacity), which no automatic action can fix.

Who is told: with llmfleet:alarmTopicArn set, every alarm here also notifies that SNS topic on
ALARM and on OK (`notify`); the head's EC2 action stays first. Without it the head's alarm only
acts and the slot alarms only change state in CloudWatch.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    notify: Sequence[str] = (),
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
        alarm_actions=[f"arn:aws:automate:{region}:ec2:{action}", *notify],
        **({"ok_actions": list(notify)} if notify else {}),
        tags=tags,
        opts=pulumi.ResourceOptions(parent=parent),
    )


SLOT_EMPTY_PERIODS = 6  # x 5 minutes: longer than a replacement takes to reach InService


def notifications(notify: Sequence[str]) -> dict[str, list[str]]:
    """The actions of an alarm whose only job is to tell someone: ALARM and back to OK; nothing
    without a topic (the inputs stay absent, as before the setting existed)."""
    return {"alarm_actions": list(notify), "ok_actions": list(notify)} if notify else {}


def slot_alarm(
    name: str,
    *,
    group: pulumi.Input[str],
    tags: dict[str, str],
    parent: pulumi.Resource,
    notify: Sequence[str] = (),
) -> aws.cloudwatch.MetricAlarm:
    """ALARM when a worker slot's group has had no instance in service for 30 minutes."""
    return aws.cloudwatch.MetricAlarm(
        f"{name}-status-alarm",
        alarm_description="llmfleet: a worker slot has had no instance in service for 30 minutes "
        "(its Auto Scaling group cannot replace the worker: capacity, spot, or a failing launch)",
        namespace="AWS/AutoScaling",
        metric_name="GroupInServiceInstances",
        dimensions={"AutoScalingGroupName": group},
        statistic="Minimum",
        period=300,
        evaluation_periods=SLOT_EMPTY_PERIODS,
        comparison_operator="LessThanThreshold",
        threshold=1,
        treat_missing_data="breaching",  # no data points: the group reports nothing in service
        **notifications(notify),
        tags=tags,
        opts=pulumi.ResourceOptions(parent=parent),
    )


# The head's deploy watcher (ray_cluster/watch.py) logs this JSON line each poll while a Serve
# app is DEPLOY_FAILED or UNHEALTHY (seconds since first seen so), and seconds 0 once it is
# back; a follower on the head copies the deploy unit's journal into the boot log, which reaches
# CloudWatch (infra/boot/health_agent.py).
APP_METRIC = "ServeAppUnhealthySeconds"
APP_PATTERN = '{ $.llmfleet_watch = "app_unhealthy" }'
APP_ALARM_AFTER_S = 1800  # the watcher re-applies with backoff before anyone is told


def app_metric_namespace(cluster: str) -> str:
    return f"llmfleet/{cluster}"


def app_alarm(
    name: str,
    *,
    cluster: str,
    boot_log_group: pulumi.Input[str],
    tags: dict[str, str],
    parent: pulumi.Resource,
    depends_on: Sequence[pulumi.Resource] = (),
    notify: Sequence[str] = (),
) -> aws.cloudwatch.MetricAlarm:
    """ALARM when a Serve app has stayed failed for 30 minutes in spite of the watcher's
    re-applies; OK again when the watcher logs it back (or logs nothing: no head, no app, which
    the head's own alarm covers)."""
    opts = pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on))
    aws.cloudwatch.LogMetricFilter(
        f"{name}-app-unhealthy",
        log_group_name=boot_log_group,
        pattern=APP_PATTERN,
        metric_transformation={
            "name": APP_METRIC,
            "namespace": app_metric_namespace(cluster),
            "value": "$.seconds",
        },
        opts=opts,
    )
    return aws.cloudwatch.MetricAlarm(
        f"{name}-app-alarm",
        alarm_description="llmfleet: a Serve application has stayed DEPLOY_FAILED or UNHEALTHY for 30 minutes "
        "although the head's deploy watcher re-applied it (journal: the boot log on the head)",
        namespace=app_metric_namespace(cluster),
        metric_name=APP_METRIC,
        statistic="Maximum",
        period=300,
        evaluation_periods=1,
        comparison_operator="GreaterThanOrEqualToThreshold",
        threshold=APP_ALARM_AFTER_S,
        treat_missing_data="notBreaching",
        **notifications(notify),
        tags=tags,
        opts=opts,
    )
