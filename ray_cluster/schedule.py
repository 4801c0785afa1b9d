"""Serving schedules (`llmfleet:schedule`): the weekly windows in which a stack serves.

Syntax, one window: `DAYS HH:MM-HH:MM ZONE`, e.g. `mon-fri 08:00-20:00 Europe/Berlin`.
- DAYS: a day (`mon`), a range (`mon-fri`, `fri-mon` wraps), a list (`mon,wed,fri`) or `daily`;
- HH:MM-HH:MM: opening and closing in the zone's local time; a closing at or before the opening
  ends the next day (`22:00-06:00`); `24:00` is allowed as a closing;
- ZONE: an IANA time zone (zoneinfo), e.g. `UTC`, `America/New_York`.
Several windows: separated by `;` (or a YAML list in the stack file). Windows may overlap; the
stack serves in their union.

This module is stdlib only and lives on the host side: the head's gate says when the endpoint
serves again (`next_open`), and the operator side (config, scheduled actions, cost, policy)
parses the same text here. Every error is one line that says what is allowed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Auto Scaling's recurrence is Unix cron: 0 = Sunday.
CRON_DOW = {d: (i + 1) % 7 for i, d in enumerate(DAYS)}
WEEK_MIN = 7 * 24 * 60
ALLOWED = (
    "allowed: windows 'DAYS HH:MM-HH:MM ZONE' separated by ';', DAYS a day, a range (mon-fri) "
    "or a list (mon,wed,fri) of mon..sun or 'daily', ZONE an IANA time zone "
    "(e.g. 'mon-fri 08:00-20:00 Europe/Berlin')"
)
_WINDOW_RE = re.compile(r"^(?P<days>\S+)\s+(?P<open>\d{1,2}:\d{2})-(?P<close>\d{1,2}:\d{2})\s+(?P<zone>\S+)$")
_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})$")
# An IANA zone name: letters, digits, '_', '+', '-' in '/'-separated parts (checked before
# zoneinfo sees it: zoneinfo reads a file by that name).
_ZONE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$")


class ScheduleError(ValueError):
    """One line: what is wrong with the schedule and what is allowed."""


@dataclass(frozen=True)
class Window:
    days: tuple[int, ...]  # 0 = Monday, in opening order
    open_min: int  # minutes after local midnight
    close_min: int  # minutes after the opening day's midnight; > open_min (may pass 24:00)
    zone: str
    text: str

    @property
    def minutes(self) -> int:
        """Length of one window (one opening), in minutes."""
        return self.close_min - self.open_min

    def intervals(self, week_start: datetime) -> list[tuple[datetime, datetime]]:
        """[open, close) as aware datetimes, for each opening day of the local week that starts
        at `week_start`'s Monday (wall clock in the zone, so DST shifts the UTC instant)."""
        tz = ZoneInfo(self.zone)
        local = week_start.astimezone(tz)
        monday = (local - timedelta(days=local.weekday())).date()
        out: list[tuple[datetime, datetime]] = []
        for d in self.days:
            day = monday + timedelta(days=d)
            base = datetime(day.year, day.month, day.day, tzinfo=tz)
            out.append((_wall(base, self.open_min), _wall(base, self.close_min)))
        return out


def _wall(midnight: datetime, minutes: int) -> datetime:
    """Local wall-clock time `minutes` after `midnight` (days roll over on the calendar)."""
    days, rest = divmod(minutes, 24 * 60)
    d = midnight + timedelta(days=days)
    return d.replace(hour=rest // 60, minute=rest % 60)


@dataclass(frozen=True)
class Schedule:
    windows: tuple[Window, ...]
    text: str

    @property
    def weekly_minutes(self) -> int:
        """Minutes per week inside a window (their union: an overlap counts once), by wall clock."""
        ref = datetime(2024, 1, 8, 12, tzinfo=UTC)  # a week without DST changes in either hemisphere
        spans = sorted(
            (a.astimezone(UTC), b.astimezone(UTC)) for w in self.windows for a, b in w.intervals(ref)
        )
        if not spans:
            return 0
        total, (cur_a, cur_b) = 0.0, spans[0]
        for a, b in spans[1:]:
            if a > cur_b:
                total += (cur_b - cur_a).total_seconds()
                cur_a, cur_b = a, b
            else:
                cur_b = max(cur_b, b)
        total += (cur_b - cur_a).total_seconds()
        return min(WEEK_MIN, round(total / 60))

    @property
    def weekly_hours(self) -> float:
        return self.weekly_minutes / 60

    @property
    def openings_per_week(self) -> int:
        """How many times a week the workers start: one per window opening (each pays a cold start)."""
        return sum(len(w.days) for w in self.windows)

    @property
    def shortest_window_minutes(self) -> int:
        return min(w.minutes for w in self.windows)

    @property
    def always(self) -> bool:
        return self.weekly_minutes >= WEEK_MIN

    def short_gap(self, lead_s: float) -> tuple[str, str, int] | None:
        """The first closing followed by an opening less than `lead_s` later (the warm-up for
        the next window would start before this one's scale-down stops the workers), as
        (closing window, opening window, gap minutes); None when every gap is long enough."""
        if self.always:
            return None
        ref = datetime(2024, 1, 8, 12, tzinfo=UTC)
        spans: list[tuple[datetime, datetime, str]] = []
        for delta in (0, 7):
            for w in self.windows:
                spans.extend((a, b, w.text) for a, b in w.intervals(ref + timedelta(days=delta)))
        spans.sort(key=lambda s: s[0].astimezone(UTC))
        for (_, b1, t1), (a2, _, t2) in zip(spans, spans[1:], strict=False):
            gap = (a2.astimezone(UTC) - b1.astimezone(UTC)).total_seconds()
            if gap < lead_s:
                return t1, t2, int(gap // 60)
        return None

    def _spans_around(self, now: datetime) -> list[tuple[datetime, datetime]]:
        spans: list[tuple[datetime, datetime]] = []
        for delta in (-7, 0, 7):
            ref = now + timedelta(days=delta)
            for w in self.windows:
                spans.extend(w.intervals(ref))
        return sorted((a.astimezone(UTC), b.astimezone(UTC)) for a, b in spans)

    def is_open(self, now: datetime) -> bool:
        now = now.astimezone(UTC)
        return any(a <= now < b for a, b in self._spans_around(now))

    def next_open(self, now: datetime) -> datetime | None:
        """The next opening after `now` (aware, UTC), or None while a window is open."""
        now = now.astimezone(UTC)
        if self.is_open(now):
            return None
        return min(a for a, _ in self._spans_around(now) if a > now)


def _days(text: str) -> tuple[int, ...]:
    t = text.lower()
    if t == "daily":
        return tuple(range(7))
    out: list[int] = []
    for part in t.split(","):
        a, sep, b = part.partition("-")
        if a not in DAYS or (sep and b not in DAYS):
            raise ScheduleError(f"days {text!r}: {ALLOWED}")
        i, j = DAYS.index(a), DAYS.index(b) if sep else DAYS.index(a)
        span = [(i + k) % 7 for k in range((j - i) % 7 + 1)]
        for d in span:
            if d in out:
                raise ScheduleError(f"days {text!r}: {DAYS[d]} twice; {ALLOWED}")
            out.append(d)
    return tuple(out)


def _minutes(text: str, *, closing: bool) -> int:
    m = _TIME_RE.fullmatch(text)
    h, mi = (int(m.group(1)), int(m.group(2))) if m else (-1, -1)
    if (h, mi) == (24, 0) and closing:
        return 24 * 60
    if not (0 <= h <= 23 and 0 <= mi <= 59):
        raise ScheduleError(f"time {text!r}: allowed: HH:MM from 00:00 to 23:59 (24:00 as a closing)")
    return h * 60 + mi


def check_zone(zone: str) -> str:
    if not _ZONE_RE.fullmatch(zone) or zone.lower() == "localtime":
        raise ScheduleError(f"time zone {zone!r}: allowed: an IANA time zone such as UTC or Europe/Berlin")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        near = sorted(z for z in available_timezones() if z.lower() == zone.lower())
        hint = f"did you mean {near[0]}? " if near else ""
        raise ScheduleError(
            f"time zone {zone!r}: {hint}allowed: an IANA time zone such as UTC or Europe/Berlin"
        ) from None
    return zone


def parse_window(text: str) -> Window:
    m = _WINDOW_RE.fullmatch(text.strip())
    if not m:
        raise ScheduleError(f"window {text.strip()!r}: {ALLOWED}")
    days = _days(m.group("days"))
    open_min = _minutes(m.group("open"), closing=False)
    close_min = _minutes(m.group("close"), closing=True)
    if close_min == open_min:
        raise ScheduleError(
            f"window {text.strip()!r}: opens and closes at {m.group('open')}; allowed: a closing "
            "after the opening (one earlier ends the next day), or 'daily 00:00-24:00' for always"
        )
    if close_min < open_min:
        close_min += 24 * 60
    return Window(days, open_min, close_min, check_zone(m.group("zone")), " ".join(text.split()))


def parse_schedule(value: str | list[Any] | tuple[Any, ...]) -> Schedule:
    """`llmfleet:schedule`'s value (text with ';' between windows, or a list) -> Schedule."""
    parts = list(value) if isinstance(value, list | tuple) else str(value).split(";")
    if not all(isinstance(p, str) for p in parts):
        raise ScheduleError(f"{value!r}: {ALLOWED}")
    parts = [p for p in (p.strip() for p in parts) if p]
    if not parts:
        raise ScheduleError(f"no window: {ALLOWED}; unset the key to serve around the clock")
    windows = tuple(parse_window(p) for p in parts)
    sched = Schedule(windows, "; ".join(w.text for w in windows))
    _check_disjoint(sched)
    return sched


def _check_disjoint(sched: Schedule) -> None:
    """Overlapping windows would give one window's scale-down inside another's serving hours."""
    ref = datetime(2024, 1, 8, 12, tzinfo=UTC)
    spans: list[tuple[datetime, datetime, str]] = []
    for delta in (-7, 0, 7):
        for w in sched.windows:
            spans.extend(
                (a.astimezone(UTC), b.astimezone(UTC), w.text)
                for a, b in w.intervals(ref + timedelta(days=delta))
            )
    spans.sort()
    for (_, b1, t1), (a2, _, t2) in zip(spans, spans[1:], strict=False):
        if a2 < b1:
            raise ScheduleError(
                f"windows {t1!r} and {t2!r} overlap; allowed: disjoint windows (write the union as one)"
            )


# ---------------------------------------------------------------- scheduled actions (cron)


@dataclass(frozen=True)
class CronAction:
    """One Auto Scaling scheduled action: `recurrence` (Unix cron) in `zone`, to `desired`."""

    name: str  # a short, stable suffix: up-0, down-0, ...
    recurrence: str
    zone: str
    desired: int


def _cron(minutes_from_monday: int, days: list[int]) -> str:
    """Cron at one local time of day on the given days (0 = Monday) shifted by whole days."""
    m = minutes_from_monday % (24 * 60)
    dows = sorted({CRON_DOW[DAYS[d % 7]] for d in days})
    return f"{m % 60} {m // 60} * * {','.join(map(str, dows))}"


def cron_actions(schedule: Schedule, lead_s: float) -> list[CronAction]:
    """Per window: scale up `lead_s` (the modeled cold start, rounded up to the minute) before
    the opening, so serving starts at it, and scale down at the closing. Both in the window's
    zone (Auto Scaling applies the zone's DST); the lead or the closing may cross midnight, which
    moves that action to the previous or next day."""
    lead = math.ceil(max(0.0, lead_s) / 60)
    out: list[CronAction] = []
    if schedule.always:
        return out  # serving around the clock: nothing to scale
    for i, w in enumerate(schedule.windows):
        up_at = w.open_min - lead
        up_shift, down_shift = math.floor(up_at / (24 * 60)), w.close_min // (24 * 60)
        up_days = [d + up_shift for d in w.days]
        down_days = [d + down_shift for d in w.days]
        out.append(CronAction(f"up-{i}", _cron(up_at, up_days), w.zone, 1))
        out.append(CronAction(f"down-{i}", _cron(w.close_min, down_days), w.zone, 0))
    return out


def retry_after_s(schedule: Schedule | None, now: datetime, default_s: int) -> tuple[int, datetime | None]:
    """(Retry-After seconds, when it serves again or None) for a 503 at `now`."""
    nxt = schedule.next_open(now) if schedule else None
    if nxt is None:
        return default_s, None
    return max(1, math.ceil((nxt - now.astimezone(UTC)).total_seconds())), nxt
