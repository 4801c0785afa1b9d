"""Stack policies on serving schedules (llmfleet:schedule, infra/components/scaling.py).

schedule-serves (mandatory): a schedule must serve. Two ways it would not:
- a worker group with scheduled actions of which none brings it back up (every action sets
  desired capacity 0): read from the resources, so a hand-written action is caught too;
- a window that opens less than the modeled cold start after the previous one closes: its
  scale-up fires while the previous window is still open, and that window's scale-down at its
  closing then stops the workers warming for it, so the window never serves.
schedule-window-cold-start (advisory): a window shorter than the modeled cold start pays more
warm-up than it serves (each opening bills the cold start at the full cluster rate).
"""

from __future__ import annotations

from collections import defaultdict

from pulumi_policy import EnforcementLevel, ReportViolation, StackValidationArgs, StackValidationPolicy

from infra.stack.config import ConfigError
from infra.stack.resolve import resolve
from infra.stack.serving_hours import cold_start_lead_s

from . import _config
from ._props import is_unknown
from ._stackview import StackView

SCHEDULE = "aws:autoscaling/schedule:Schedule"


def _plan_cold_start_s(cfg) -> float | None:

    try:
        return cold_start_lead_s(resolve(cfg).plan)
    except ConfigError:
        return None  # the program itself stops on it, with the one-line reason


def _serves(args: StackValidationArgs, report: ReportViolation) -> None:
    by_group: dict[str, list] = defaultdict(list)
    for res in StackView.of(args.resources).of_type(SCHEDULE):
        group = res.props.get("autoscalingGroupName")
        by_group[str(group) if group and not is_unknown(group) else res.name].append(res)
    for group, actions in sorted(by_group.items()):
        desired = [a.props.get("desiredCapacity") for a in actions]
        if all(isinstance(d, int | float) and d < 1 for d in desired):
            report(
                f"{group}: its scheduled actions only scale it to zero ({len(actions)} actions, none with "
                "desired capacity >= 1); the workers would never serve",
                actions[0].urn,
            )
    cfg = _config.stack_model()
    sched = cfg.serving_schedule if cfg is not None else None
    if sched is None:
        return
    lead = _plan_cold_start_s(cfg)
    if lead is None:
        return
    if gap := sched.short_gap(lead):
        closing, opening, minutes = gap
        report(
            f"llmfleet:schedule: {opening!r} opens {minutes} min after {closing!r} closes, less than the "
            f"modeled cold start ({lead / 60:.1f} min): that closing's scale-down stops the workers warming "
            "for it and it never serves; merge the two windows or leave a longer gap",
            None,
        )


def _window_vs_cold_start(args: StackValidationArgs, report: ReportViolation) -> None:
    cfg = _config.stack_model()
    sched = cfg.serving_schedule if cfg is not None else None
    if sched is None or sched.always:
        return
    lead = _plan_cold_start_s(cfg)
    if not lead:
        return
    for w in sched.windows:
        if w.minutes * 60 < lead:
            report(
                f"llmfleet:schedule: window {w.text!r} serves {w.minutes} min, less than the modeled cold start "
                f"({lead / 60:.1f} min, llmfleet plan): each opening bills more warm-up than serving",
                None,
            )


SCHEDULE_POLICIES: list[StackValidationPolicy] = [
    StackValidationPolicy(
        name="schedule-serves",
        description="A serving schedule brings the workers up and every window serves (llmfleet:schedule); mandatory.",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_serves,
    ),
    StackValidationPolicy(
        name="schedule-window-cold-start",
        description="No schedule window is shorter than the modeled cold start (llmfleet:schedule); advisory.",
        enforcement_level=EnforcementLevel.ADVISORY,
        validate=_window_vs_cold_start,
    ),
]
