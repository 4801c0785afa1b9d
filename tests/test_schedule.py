"""Serving schedules: the parser, the windows' arithmetic, the scheduled actions' cron, the
config key's one-line errors (ray_cluster/schedule.py, infra/stack/config_values.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.stack.config import ConfigError, load_stack_config
from ray_cluster.schedule import DAYS, ScheduleError, cron_actions, parse_schedule, retry_after_s

BERLIN = "mon-fri 08:00-20:00 Europe/Berlin"


def test_working_hours_in_berlin():
    s = parse_schedule(BERLIN)
    assert (s.weekly_hours, s.openings_per_week, s.shortest_window_minutes) == (60, 5, 720)
    # Sunday 2026-12-06 22:00 UTC: closed; Monday opens at 08:00 CET = 07:00 UTC
    assert s.next_open(datetime(2026, 12, 6, 22, tzinfo=UTC)) == datetime(2026, 12, 7, 7, tzinfo=UTC)
    assert s.is_open(datetime(2026, 12, 7, 7, 30, tzinfo=UTC))
    assert s.next_open(datetime(2026, 12, 7, 7, 30, tzinfo=UTC)) is None
    # Summer time: 08:00 CEST = 06:00 UTC (the wall clock, not a fixed offset)
    assert s.next_open(datetime(2026, 7, 6, 5, tzinfo=UTC)) == datetime(2026, 7, 6, 6, tzinfo=UTC)
    # Friday 20:00 CET closes until Monday
    fri_close = datetime(2026, 12, 11, 19, tzinfo=UTC)
    assert not s.is_open(fri_close) and s.is_open(fri_close - timedelta(seconds=1))


def test_scale_up_leads_the_opening_by_the_cold_start_rounded_up_to_the_minute():
    up, down = cron_actions(parse_schedule(BERLIN), 642.0)  # 10.7 min -> 11
    assert (up.recurrence, up.zone, up.desired) == ("49 7 * * 1,2,3,4,5", "Europe/Berlin", 1)
    assert (down.recurrence, down.desired) == ("0 20 * * 1,2,3,4,5", 0)


def test_a_lead_or_a_closing_across_midnight_moves_to_the_other_day():
    # opens Monday 00:05: the warm-up starts Sunday 23:54 (cron 0 = Sunday)
    up, down = cron_actions(parse_schedule("mon 00:05-02:00 UTC"), 660)
    assert up.recurrence == "54 23 * * 0" and down.recurrence == "0 2 * * 1"
    # Sunday 22:00 to Monday 06:00: the scale-down is Monday's
    up, down = cron_actions(parse_schedule("sun 22:00-06:00 Asia/Tokyo"), 60)
    assert up.recurrence == "59 21 * * 0" and down.recurrence == "0 6 * * 1"


def test_around_the_clock_needs_no_actions():
    s = parse_schedule("daily 00:00-24:00 UTC")
    assert s.always and s.weekly_hours == 168 and cron_actions(s, 600) == []


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("mon-fri 08:00-20:00", "allowed: windows 'DAYS HH:MM-HH:MM ZONE'"),
        ("mon-fry 08:00-20:00 UTC", "days 'mon-fry'"),
        ("mon 8-20 UTC", "window 'mon 8-20 UTC'"),
        ("mon 25:00-26:00 UTC", "time '25:00': allowed: HH:MM from 00:00 to 23:59"),
        ("mon 08:60-09:00 UTC", "time '08:60'"),
        ("mon 08:00-24:30 UTC", "time '24:30'"),  # past midnight: write 00:30 (the next day)
        ("mon 24:00-06:00 UTC", "time '24:00': allowed: HH:MM from 00:00 to 23:59 (24:00 as a closing)"),
        ("mon 08:00-08:00 UTC", "opens and closes at 08:00"),
        ("mon 08:00-20:00 Mars/Olympus", "time zone 'Mars/Olympus': allowed: an IANA time zone"),
        ("mon 08:00-20:00 europe/berlin", "did you mean Europe/Berlin?"),
        ("mon 08:00-20:00 ../../etc/passwd", "time zone '../../etc/passwd'"),
        # the machine's own zone (zoneinfo may find a 'localtime' file): each host would differ
        ("mon 08:00-20:00 localtime", "time zone 'localtime': allowed: an IANA time zone"),
        ('["mon 08:00-20:00 UTC", 5]', "allowed: windows"),  # a YAML list of text only
        ("mon,mon 08:00-09:00 UTC", "mon twice"),
        (" ; ", "no window"),
        ("mon 08:00-20:00 UTC; mon 10:00-11:00 UTC", "overlap"),
    ],
)
def test_bad_schedules_are_one_line_naming_the_key_and_value(text, says):
    with pytest.raises(ScheduleError, match="allowed|overlap|twice|no window|opens and closes"):
        parse_schedule(text)
    with pytest.raises(ConfigError) as e:
        load_stack_config({"llmfleet:schedule": text})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"llmfleet:schedule = {text!r}: ") and says in msg


def test_a_map_is_not_a_schedule():
    with pytest.raises(ConfigError) as e:
        load_stack_config({"llmfleet:schedule": {"mon": "08:00-20:00"}})
    assert str(e.value) == (
        'llmfleet:schedule = {"mon": "08:00-20:00"}: allowed: text such as \'mon-fri 08:00-20:00 '
        "Europe/Berlin' or a list of such windows"
    )


def test_the_key_takes_text_or_a_yaml_list_and_idle_stop_is_bounded():
    cfg = load_stack_config({"llmfleet:schedule": '["mon-fri 08:00-12:00 UTC", "mon-fri 13:00-17:00 UTC"]'})
    assert cfg.schedule == "mon-fri 08:00-12:00 UTC; mon-fri 13:00-17:00 UTC" and cfg.scales_to_zero
    assert load_stack_config({"llmfleet:schedule": ""}).schedule is None
    assert load_stack_config({"llmfleet:idleStopMinutes": "30"}).idle_stop_minutes == 30
    for bad in ("5", "2000", "soon", "1.5"):
        with pytest.raises(ConfigError, match=rf"^llmfleet:idleStopMinutes = '?{bad}'?: allowed: 0 or unset"):
            load_stack_config({"llmfleet:idleStopMinutes": bad})


def test_owned_hosts_have_no_groups_to_scale():
    from tests.test_config import HOSTS_OK, hosts

    with pytest.raises(ConfigError, match="^llmfleet:schedule = .*allowed with provider aws$"):
        load_stack_config({**hosts(*HOSTS_OK), "llmfleet:schedule": BERLIN})


def test_retry_after_counts_to_the_next_opening():
    s = parse_schedule(BERLIN)
    now = datetime(2026, 12, 6, 22, tzinfo=UTC)
    assert retry_after_s(s, now, 600) == (9 * 3600, datetime(2026, 12, 7, 7, tzinfo=UTC))
    assert retry_after_s(None, now, 600) == (600, None)


# --- properties --------------------------------------------------------------------------------

_time = st.tuples(st.integers(0, 23), st.integers(0, 59))


@settings(max_examples=60, deadline=None)
@given(
    days=st.lists(st.sampled_from(DAYS), min_size=1, max_size=7, unique=True),
    start=_time,
    length=st.integers(1, 23 * 60),
    lead=st.integers(0, 3 * 3600),
    zone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
)
def test_any_valid_window_round_trips_and_its_scale_up_leads_by_the_cold_start(
    days, start, length, lead, zone
):
    open_min = start[0] * 60 + start[1]
    close = (open_min + length) % (24 * 60)
    text = f"{','.join(days)} {start[0]:02d}:{start[1]:02d}-{close // 60:02d}:{close % 60:02d} {zone}"
    s = parse_schedule(text)
    assert parse_schedule(s.text) == s  # the canonical text parses to the same schedule
    assert s.openings_per_week == len(days)
    assert abs(s.weekly_minutes - len(days) * length) <= 60  # a DST change within the week
    up, down = cron_actions(s, lead)
    minute, hour, *_ = up.recurrence.split()
    led = (open_min - (int(hour) * 60 + int(minute))) % (24 * 60)
    assert led == -(-lead // 60) % (24 * 60)  # the cold start, rounded up to the minute
    assert len(up.recurrence.split()[4].split(",")) == len(days) == len(down.recurrence.split()[4].split(","))
