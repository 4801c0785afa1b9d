"""Alarm policies: a CloudWatch alarm that fires tells someone.

An alarm whose `alarmActions` hold no SNS topic changes state in the CloudWatch console and
nowhere else: the worker slot alarms (a slot that cannot get its instance back) only act
through a person, and the head's recover action is worth knowing about too. Advisory: the
stack works without it, and the topic (with its subscribers) is the user's to make;
`llmfleet:alarmTopicArn` points every alarm of the stack at it.
"""

from __future__ import annotations

import re
from typing import Any

from pulumi_policy import EnforcementLevel, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy

from ._props import as_list, is_unknown, plain

METRIC_ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
# Any partition; what follows the service does not matter here (config_values checks the key).
SNS_ARN = re.compile(r"^arn:aws[a-z-]*:sns:")


def notifies(actions: list[Any]) -> bool | None:
    """Whether some action is an SNS topic; None when an action is unknown (a topic created in
    the same stack has no ARN during a preview: checked at `up`)."""
    if any(is_unknown(a) for a in actions):
        return None
    return any(isinstance(a, str) and SNS_ARN.match(a) for a in actions)


def _alarm_notifies(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != METRIC_ALARM:
        return
    actions = as_list(plain(args.props).get("alarmActions"))
    if notifies(actions) is not False:
        return
    acts = f"alarmActions: {', '.join(map(str, actions))}, no SNS topic" if actions else "no alarmActions"
    report(
        f"nobody is notified when this alarm fires ({acts}); set llmfleet:alarmTopicArn "
        "(an SNS topic you subscribe to)",
        None,
    )


ALARM_POLICIES: list[ResourceValidationPolicy] = [
    ResourceValidationPolicy(
        name="alarm-notifies",
        description="Every CloudWatch metric alarm notifies an SNS topic when it fires (llmfleet:alarmTopicArn).",
        enforcement_level=EnforcementLevel.ADVISORY,
        validate=_alarm_notifies,
    ),
]
