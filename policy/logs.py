"""Log policies: every CloudWatch log group keeps its events for a bounded, valid time.

A log group without `retentionInDays` keeps every event forever (CloudWatch's default "Never
expire"): boot and container logs of GPU fleets then grow, and are billed, without end.
"""

from __future__ import annotations

from pulumi_policy import EnforcementLevel, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy

from infra.stack.config_values import LOG_RETENTION_DAYS as RETENTION_DAYS

from ._props import is_unknown, plain

LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"


def _log_group_retention(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != LOG_GROUP:
        return
    days = plain(args.props).get("retentionInDays")
    if is_unknown(days):
        return  # computed from another resource: checked at `up`
    if not days:
        report("retentionInDays is not set: the log group would keep every event forever; set it", None)
    elif days not in RETENTION_DAYS:
        report(
            f"retentionInDays {days} is not a CloudWatch value; allowed: {', '.join(map(str, RETENTION_DAYS))}",
            None,
        )


LOG_POLICIES: list[ResourceValidationPolicy] = [
    ResourceValidationPolicy(
        name="log-group-retention",
        description="CloudWatch log groups set a retention (retentionInDays), so logs do not grow forever.",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_log_group_retention,
    ),
]
