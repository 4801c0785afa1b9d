"""Bringing a failed host back, and telling someone when it cannot come back by itself.

Every host is an Auto Scaling group of one with EC2 health checks: the head
(infra/components/head.py, behind its fixed address) and each GPU worker
(infra/components/workers.py). A group *replaces* an instance whose status check (system or
instance) fails or that is terminated (a spot interruption, a retirement, a person), with no
`pulumi up`. (The head was an instance with EC2 auto-recovery before: recovery answers only a
failed *system* check, and nothing brought back a terminated head.)

`slot_alarm` watches a group: it fires when the group has had no instance in service for 30
minutes (a replacement that cannot get capacity, a spot market without capacity, a launch that
keeps failing), which no automatic action can fix. `group_notifications` sends the groups'
launch and terminate events (each replacement, as it happens) to the same topic.

Who is told: with llmfleet:alarmTopicArn set, every alarm here notifies that SNS topic on ALARM
and on OK (`notify`), and the groups' launches and terminations go to it; without it the alarms
only change state in CloudWatch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import pulumi
import pulumi_aws as aws

# What a group tells the topic: each launch and termination, and each that failed.
GROUP_EVENTS = [
    "autoscaling:EC2_INSTANCE_LAUNCH",
    "autoscaling:EC2_INSTANCE_LAUNCH_ERROR",
    "autoscaling:EC2_INSTANCE_TERMINATE",
    "autoscaling:EC2_INSTANCE_TERMINATE_ERROR",
]


def group_notifications(
    name: str, *, groups: Sequence[pulumi.Input[str]], topic: str | None, parent: pulumi.Resource
) -> aws.autoscaling.Notification | None:
    """The groups' launch/terminate events to the alarm topic (none without a topic)."""
    if not topic:
        return None
    return aws.autoscaling.Notification(
        f"{name}-group-events",
        group_names=list(groups),
        # the SDK's enum (a str) by value: named at run time, not at import (provider_modules.py)
        notifications=[aws.autoscaling.NotificationType(e) for e in GROUP_EVENTS],
        topic_arn=topic,
        opts=pulumi.ResourceOptions(parent=parent),
    )


SLOT_EMPTY_PERIODS = 6  # x 5 minutes: longer than a replacement takes to reach InService


class AlarmActions(TypedDict, total=False):
    alarm_actions: list[str]
    ok_actions: list[str]


def notifications(notify: Sequence[str]) -> AlarmActions:
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
    what: str = "a worker slot",
) -> aws.cloudwatch.MetricAlarm:
    """ALARM when a host's group (a worker slot's, the head's) has had no instance in service
    for 30 minutes."""
    return aws.cloudwatch.MetricAlarm(
        f"{name}-status-alarm",
        alarm_description=f"llmfleet: {what} has had no instance in service for 30 minutes "
        "(its Auto Scaling group cannot replace the host: capacity, spot, or a failing launch)",
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
    the head group's alarm covers)."""
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
