"""Scaling the worker slots to zero and back: serving schedules and idle stop.

Schedules (`llmfleet:schedule`): per window and per worker group, two Auto Scaling scheduled
actions in the window's time zone (Auto Scaling applies its DST): one sets the group to one
instance the modeled cold start (rounded up to the minute) before the opening, so the first
token is ready at it; one sets it to zero at the closing. The head, the endpoint and the weights
bucket are not touched; the head's watcher redeploys Serve when the workers are back
(ray_cluster/watch.py) and the gate answers 503 + Retry-After while they are not
(ray_cluster/serve_app.py).

Idle stop (`llmfleet:idleStopMinutes`): the head's watcher logs one JSON line a poll,
`{"llmfleet_watch": "idle", "seconds": N}` (seconds since the gate last saw a request or the
workers joined, whichever is later; 0 while no worker is alive, so a wake or a scheduled
scale-up that is still booting is never stopped again), which the head's boot log already
carries to CloudWatch; a metric filter makes it a metric, and one alarm
per worker group runs a simple scaling policy of that group (ExactCapacity 0) when the idle
seconds reach the setting. Least privilege: the alarm invokes the policy as CloudWatch itself,
so no host, role or function gets autoscaling:SetDesiredCapacity; the head cannot scale anything.

Groups that scale to zero keep min size 0 and leave desired capacity to the actions
(`ignore_changes`): a `pulumi up` at night does not start the workers, and one in the morning
does not stop them.
"""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_aws as aws

from ray_cluster.schedule import CronAction

IDLE_METRIC = "IdleSeconds"
IDLE_PATTERN = '{ $.llmfleet_watch = "idle" }'
IDLE_PERIOD_S = 300


def scheduled_actions(
    name: str, *, group: pulumi.Input[str], actions: Sequence[CronAction], parent: pulumi.Resource
) -> list[aws.autoscaling.Schedule]:
    """The group's scheduled actions (one scale-up and one scale-down per window). Min/max are
    set with desired (the provider's default for an unset size is 0, not "unchanged")."""
    return [
        aws.autoscaling.Schedule(
            f"{name}-{a.name}",
            scheduled_action_name=f"llmfleet-{a.name}",
            autoscaling_group_name=group,
            recurrence=a.recurrence,
            time_zone=a.zone,
            min_size=0,
            max_size=1,
            desired_capacity=a.desired,
            opts=pulumi.ResourceOptions(parent=parent),
        )
        for a in actions
    ]


def idle_stop(
    name: str,
    *,
    group: pulumi.Input[str],
    minutes: int,
    namespace: str,
    tags: dict[str, str],
    parent: pulumi.Resource,
    notify: Sequence[str] = (),
) -> tuple[aws.autoscaling.Policy, aws.cloudwatch.MetricAlarm]:
    """A policy that sets the group to zero and the alarm that runs it after `minutes` idle."""
    policy = aws.autoscaling.Policy(
        f"{name}-idle-stop",
        name="llmfleet-idle-stop",
        autoscaling_group_name=group,
        policy_type="SimpleScaling",
        adjustment_type="ExactCapacity",
        scaling_adjustment=0,
        opts=pulumi.ResourceOptions(parent=parent),
    )
    alarm = aws.cloudwatch.MetricAlarm(
        f"{name}-idle-alarm",
        alarm_description=f"llmfleet: no request for {minutes} minutes; the worker slot scales to zero "
        "(llmfleet wake --stack S, or the next scheduled window, brings it back)",
        namespace=namespace,
        metric_name=IDLE_METRIC,
        statistic="Minimum",  # every watcher line in the period says idle that long
        period=IDLE_PERIOD_S,
        evaluation_periods=1,
        comparison_operator="GreaterThanOrEqualToThreshold",
        threshold=minutes * 60,
        # No line: no head or no watcher; nothing is known to be idle, so nothing is stopped.
        treat_missing_data="notBreaching",
        # The policy, and the alarm topic (llmfleet:alarmTopicArn): someone learns the workers slept.
        alarm_actions=[policy.arn, *notify],
        tags=tags,
        opts=pulumi.ResourceOptions(parent=parent),
    )
    return policy, alarm


def idle_metric_filter(
    name: str,
    *,
    boot_log_group: pulumi.Input[str],
    namespace: str,
    parent: pulumi.Resource,
    depends_on: Sequence[pulumi.Resource] = (),
) -> aws.cloudwatch.LogMetricFilter:
    return aws.cloudwatch.LogMetricFilter(
        f"{name}-idle",
        log_group_name=boot_log_group,
        pattern=IDLE_PATTERN,
        metric_transformation={"name": IDLE_METRIC, "namespace": namespace, "value": "$.seconds"},
        opts=pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on)),
    )
