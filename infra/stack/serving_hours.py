"""What a serving schedule means for one stack: its scheduled actions and its billed hours.

The schedule itself (syntax, windows, cron) is ray_cluster/schedule.py, shared with the head's
gate. Here it meets the plan: the scale-up leads each opening by the modeled cold start
(infra/stack/coldstart.py), and the workers are billed for the windows plus that warm-up, once
per opening (cost, plan, policy read the same figures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ray_cluster.schedule import CronAction, Schedule, cron_actions

if TYPE_CHECKING:
    from infra.stack.config import StackConfig
    from infra.stack.planner import Plan

HOURS_PER_MONTH = 730  # Infracost's month
HOURS_PER_WEEK = 168


def cold_start_lead_s(plan: Plan) -> float:
    """The modeled cold start (boot -> first token), 0 when the plan has none."""
    return plan.cold_start_s or 0.0


def schedule_actions(cfg: StackConfig, plan: Plan) -> list[CronAction]:
    sched = cfg.serving_schedule
    return cron_actions(sched, cold_start_lead_s(plan)) if sched else []


@dataclass(frozen=True)
class WorkerHours:
    """Billed worker hours per month under a schedule (per worker)."""

    schedule: str
    window_hours_per_week: float
    openings_per_week: int
    cold_start_s: float

    @property
    def warmup_hours_per_week(self) -> float:
        # The scale-up starts at the cold start rounded up to the minute (cron has minutes).
        return self.openings_per_week * math.ceil(self.cold_start_s / 60) / 60

    @property
    def hours_per_week(self) -> float:
        return min(HOURS_PER_WEEK, self.window_hours_per_week + self.warmup_hours_per_week)

    @property
    def hours_per_month(self) -> float:
        return self.hours_per_week * HOURS_PER_MONTH / HOURS_PER_WEEK

    @property
    def fraction(self) -> float:
        """Billed share of an always-on month."""
        return self.hours_per_week / HOURS_PER_WEEK

    def describe(self) -> str:
        return (
            f"schedule {self.schedule}: {self.window_hours_per_week:g} h/week serving + "
            f"{self.openings_per_week} cold starts x {math.ceil(self.cold_start_s / 60)} min "
            f"= {self.hours_per_week:.1f} of 168 h ({self.hours_per_month:.0f} h/month)"
        )


def worker_hours(schedule: Schedule | None, plan: Plan) -> WorkerHours | None:
    if schedule is None or schedule.always:
        return None
    return WorkerHours(
        schedule=schedule.text,
        window_hours_per_week=schedule.weekly_hours,
        openings_per_week=schedule.openings_per_week,
        cold_start_s=cold_start_lead_s(plan),
    )
