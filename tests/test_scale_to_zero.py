"""Scaling the workers to zero and back on AWS: the program's scheduled actions and idle stop
(offline capture), the cost of a schedule, the policies (offline runner), `wake` against moto's
Auto Scaling, the status power state and the watcher's idle line."""

from __future__ import annotations

import json
import os
from decimal import Decimal

import pytest

from infra.commands.preview import up_lead_minutes
from infra.stack.resolve import resolve
from infra.status.model import HostSlot, power_state
from infra.wake import WakeError, wake_groups
from policy.runner import run_policies
from ray_cluster.schedule import parse_schedule
from ray_cluster.watch import activity_file_of, idle_line, watch
from tests.captures import capture
from tests.moto_fixtures import MotoServer

BERLIN = "llmfleet:schedule=mon-fri 08:00-20:00 Europe/Berlin"
SCHEDULE = "aws:autoscaling/schedule:Schedule"
GROUP = "aws:autoscaling/group:Group"


@pytest.fixture(scope="module")
def scheduled():
    return capture("prod", [BERLIN, "llmfleet:idleStopMinutes=45"])


@pytest.fixture(scope="module")
def always_on():
    return capture("prod")


def _of(cap, rtype):
    return [r for r in cap.resources if r["type"] == rtype]


def test_every_worker_group_gets_actions_whose_scale_up_leads_by_the_cold_start(scheduled):
    cold = resolve(scheduled.config).plan.cold_start_s
    groups = {g["inputs"]["name"]: g["inputs"] for g in _of(scheduled, GROUP) if "worker" in g["name"]}
    assert len(groups) == 3
    actions = _of(scheduled, SCHEDULE)
    assert {a["inputs"]["autoscalingGroupName"] for a in actions} == set(groups)  # head untouched
    sched = scheduled.config.serving_schedule
    for a in actions:
        i = a["inputs"]
        assert i["timeZone"] == "Europe/Berlin" and (i["minSize"], i["maxSize"]) == (0, 1)
        if i["scheduledActionName"] == "llmfleet-up-0":
            assert i["desiredCapacity"] == 1
            assert up_lead_minutes(i["scheduledActionName"], i["recurrence"], sched) * 60 >= cold
        else:
            assert (i["scheduledActionName"], i["recurrence"], i["desiredCapacity"]) == (
                "llmfleet-down-0",
                "0 20 * * 1,2,3,4,5",
                0,
            )
    # the actions own the desired capacity: min 0, and `pulumi up` leaves desired alone
    assert all(g["minSize"] == 0 and g["maxSize"] == 1 for g in groups.values())
    head = next(g for g in _of(scheduled, GROUP) if "head" in g["name"])
    assert head["inputs"]["minSize"] == 1


def test_idle_stop_is_an_alarm_on_the_watchers_line_running_a_zero_capacity_policy(scheduled):
    policies = {p["name"]: p["inputs"] for p in _of(scheduled, "aws:autoscaling/policy:Policy")}
    assert len(policies) == 3
    assert all(
        (p["adjustmentType"], p["scalingAdjustment"]) == ("ExactCapacity", 0) for p in policies.values()
    )
    alarms = [
        a["inputs"] for a in _of(scheduled, "aws:cloudwatch/metricAlarm:MetricAlarm") if "idle" in a["name"]
    ]
    assert len(alarms) == 3 and all(
        a["threshold"] == 45 * 60 and a["metricName"] == "IdleSeconds" for a in alarms
    )
    [flt] = [
        f["inputs"]
        for f in _of(scheduled, "aws:cloudwatch/logMetricFilter:LogMetricFilter")
        if "idle" in f["name"]
    ]
    assert (
        flt["pattern"] == '{ $.llmfleet_watch = "idle" }'
        and flt["metricTransformation"]["value"] == "$.seconds"
    )


def test_an_always_on_stack_has_none_of_it(always_on):
    assert _of(always_on, SCHEDULE) == [] and _of(always_on, "aws:autoscaling/policy:Policy") == []
    assert all(g["inputs"]["minSize"] == 1 for g in _of(always_on, GROUP))


def test_cost_prices_the_workers_for_the_windows_plus_one_cold_start_each(scheduled, always_on):
    from infra.commands._cost_stack import price_stack

    on = price_stack("prod", [])
    sched = price_stack("prod", [BERLIN])
    worker = [r for r in on.estimate.resources if r.metadata.get("role") == "worker"]
    s_worker = [r for r in sched.estimate.resources if r.metadata.get("role") == "worker"]
    cold_min = -(-resolve(scheduled.config).plan.cold_start_s // 60)
    hours = Decimal(str((60 + 5 * cold_min / 60) * 730 / 168))
    for a, b in zip(worker, s_worker, strict=True):
        full, part = a.components[0], b.components[0]
        assert full.monthly_quantity == 730 and abs(part.monthly_quantity - hours) < Decimal("0.01")
        assert float(part.monthly_cost / full.monthly_cost) == pytest.approx(float(hours / 730), rel=1e-4)
        assert "scheduled" in part.name
    assert "mon-fri 08:00-20:00 Europe/Berlin" in sched.estimate.schedule_note
    # tokens come only in the windows: 60 h a week
    assert float(sched.estimate.serving_hours) == pytest.approx(60 * 730 / 168, rel=1e-4)


def test_policy_advises_on_a_short_window_and_refuses_one_that_never_serves():
    short = capture("prod", ["llmfleet:schedule=mon-fri 08:00-08:05 UTC"])
    rep = run_policies(short.resources, {}, stack=short.config)
    [adv] = [v for v in rep.violations if v.policy == "schedule-window-cold-start"]
    assert adv.enforcement == "advisory" and "serves 5 min, less than the modeled cold start" in adv.message
    assert not [v for v in rep.violations if v.policy == "schedule-serves"]
    tight = capture("prod", ["llmfleet:schedule=mon-fri 08:00-12:00 UTC; mon-fri 12:05-20:00 UTC"])
    [v] = [
        v
        for v in run_policies(tight.resources, {}, stack=tight.config).violations
        if v.policy == "schedule-serves"
    ]
    assert v.enforcement == "mandatory" and "never serves" in v.message
    # an action set that only scales to zero (edited by hand) never serves either
    down_only = [r for r in short.resources if not (r["type"] == SCHEDULE and "up" in r["name"])]
    found = [
        v for v in run_policies(down_only, {}, stack=short.config).violations if v.policy == "schedule-serves"
    ]
    assert len(found) == 3 and all("only scale it to zero" in v.message for v in found)


# --- wake against moto's Auto Scaling ------------------------------------------------------------


@pytest.fixture(scope="module")
def moto():
    with MotoServer() as server:
        yield server


def test_wake_sets_the_sleeping_groups_to_one_and_leaves_the_others(moto):
    moto.reset()
    ec2, asg = moto.client("ec2"), moto.client("autoscaling")
    lt = ec2.create_launch_template(
        LaunchTemplateName="w",
        LaunchTemplateData={"ImageId": "ami-0123456789abcdef0", "InstanceType": "m7i.large"},
    )
    names = ["llmfleet-prod-worker-0", "llmfleet-prod-worker-1"]
    for n, desired in zip(names, (0, 1), strict=True):
        asg.create_auto_scaling_group(
            AutoScalingGroupName=n,
            LaunchTemplate={
                "LaunchTemplateId": lt["LaunchTemplate"]["LaunchTemplateId"],
                "Version": "$Latest",
            },
            MinSize=0,
            MaxSize=1,
            DesiredCapacity=desired,
            AvailabilityZones=["us-east-1a"],
        )
    assert wake_groups(asg, names) == ["llmfleet-prod-worker-0"]
    groups = asg.describe_auto_scaling_groups(AutoScalingGroupNames=names)["AutoScalingGroups"]
    assert {g["AutoScalingGroupName"]: g["DesiredCapacity"] for g in groups} == dict.fromkeys(names, 1)
    assert wake_groups(asg, names) == []  # all up: nothing to do
    with pytest.raises(WakeError, match="^Auto Scaling group llmfleet-prod-worker-9 not found"):
        wake_groups(asg, [*names, "llmfleet-prod-worker-9"])
    with pytest.raises(WakeError, match="exports no worker_groups"):
        wake_groups(asg, [])


# --- status and the watcher ----------------------------------------------------------------------


def _slot(status):
    return HostSlot(name="w", role="worker", status=status)


def test_power_state():
    assert power_state([_slot("asleep"), _slot("asleep")], None, {}) == "asleep"
    assert power_state([_slot("alive"), _slot("asleep")], None, {"llm": "RUNNING"}) == "waking"
    assert power_state([_slot("alive")], False, {"llm": "RUNNING"}) == "waking"
    assert power_state([_slot("alive")], None, {"llm": "DEPLOYING"}) == "waking"
    assert power_state([_slot("alive")], True, {}) == "serving"
    assert power_state([_slot("alive")], None, {"llm": "RUNNING"}) == "serving"


def test_the_watcher_logs_seconds_since_the_gates_last_request(tmp_path):
    f = tmp_path / "last-request"
    assert json.loads(idle_line(str(f), 1000.0, 400.0)) == {"llmfleet_watch": "idle", "seconds": 600}
    f.touch()
    os.utime(f, (900.0, 900.0))
    assert json.loads(idle_line(str(f), 1000.0, 400.0))["seconds"] == 100
    # the workers joined after the last request (a wake, a scheduled scale-up): idle counts from then
    assert json.loads(idle_line(str(f), 1000.0, 950.0))["seconds"] == 50
    # no worker alive: nothing is idle, so the alarm cannot stop a wake that is still booting
    assert json.loads(idle_line(str(f), 1000.0, None))["seconds"] == 0
    assert activity_file_of({"applications": [{"args": {"activity_file": str(f)}}]}) == str(f)
    assert activity_file_of({"applications": [{"args": {}}]}) is None
    lines: list[str] = []
    view = lambda: __import__("ray_cluster.watch", fromlist=["WatchView"]).WatchView("d")  # noqa: E731
    watch(
        view, lambda r: None, interval=0, polls=3, sleep=lambda s: None, log=lines.append, idle=lambda: "IDLE"
    )
    assert lines == ["IDLE"] * 3


def test_the_serve_config_names_the_activity_file_only_with_idle_stop():
    from infra.rayconf.serving import render_for_plan
    from infra.stack.config import load_stack_config
    from ray_cluster import contract, serve_app

    on = load_stack_config({"llmfleet:idleStopMinutes": "30"}, "prod")
    doc = render_for_plan(on, resolve(on).plan)
    assert activity_file_of(doc) == contract.ACTIVITY_FILE
    _, args = serve_app.parse_args(doc["applications"][0]["args"])
    assert args["ingress_cls_config"]["ingress_extra_kwargs"]["activity_file"] == contract.ACTIVITY_FILE
    off = load_stack_config({}, "prod")
    assert activity_file_of(render_for_plan(off, resolve(off).plan)) is None
    with pytest.raises(serve_app.AppArgsError, match="activity_file = '../x'"):
        serve_app.parse_args({"api_token_env": "T", "activity_file": "../x"})


def test_the_gate_touches_the_activity_file_at_most_every_ten_seconds(tmp_path):
    from ray_cluster.serve_app import activity_toucher

    f = tmp_path / "a"
    t = [100.0]
    touch = activity_toucher(str(f), monotonic=lambda: t[0])
    touch()
    assert f.exists()
    os.utime(f, (1.0, 1.0))
    t[0] = 105.0
    touch()
    assert f.stat().st_mtime == 1.0  # within 10 s: no write
    t[0] = 111.0
    touch()
    assert f.stat().st_mtime > 1.0


def test_schedule_text_round_trips_through_the_capture(scheduled):
    assert parse_schedule(scheduled.config.schedule).weekly_hours == 60


def test_schedule_policies_messages_in_full_and_how_actions_are_grouped():
    import copy

    from infra.stack.serving_hours import cold_start_lead_s

    short = capture("prod", ["llmfleet:schedule=mon-fri 08:00-08:05 UTC"])
    lead = f"{cold_start_lead_s(resolve(short.config).plan) / 60:.1f} min"

    def found(resources, stack=None):
        rep = run_policies(resources, {}, stack=stack)
        return [(v.policy, v.resource, v.message) for v in rep.violations if v.policy.startswith("schedule")]

    advice = (
        "schedule-window-cold-start",
        None,
        f"llmfleet:schedule: window 'mon-fri 08:00-08:05 UTC' serves 5 min, less than the modeled cold start "
        f"({lead}, llmfleet plan): each opening bills more warm-up than serving",
    )
    assert found(short.resources, short.config) == [advice]
    tight = capture("prod", ["llmfleet:schedule=mon-fri 08:00-12:00 UTC; mon-fri 12:05-20:00 UTC"])
    assert found(tight.resources, tight.config) == [
        (
            "schedule-serves",
            None,
            f"llmfleet:schedule: 'mon-fri 12:05-20:00 UTC' opens 5 min after 'mon-fri 08:00-12:00 UTC' closes, less "
            f"than the modeled cold start ({lead}): that closing's scale-down stops the workers warming for it and "
            "it never serves; merge the two windows or leave a longer gap",
        )
    ]

    def never(group, action, n=1):
        return (
            "schedule-serves",
            action,
            f"{group}: its scheduled actions only scale it to zero ({n} actions, none with desired capacity >= 1); "
            "the workers would never serve",
        )

    actions = [r for r in short.resources if r["type"] == SCHEDULE]
    down_only = [r for r in short.resources if r not in actions or "up" not in r["name"]]
    assert found(down_only) == [
        never(f"llmfleet-prod-worker-{i}", f"cluster-worker-{i}-down-0") for i in range(3)
    ]
    # per group: worker-0 keeps its scale-up; worker-1 gets one more action whose capacity is unknown
    # at preview; worker-2 a second scale-down; and an action for a group unknown at preview
    # stands for a group of its own, named after it
    up0 = next(r for r in actions if r["name"] == "cluster-worker-0-up-0")
    extra = copy.deepcopy(up0)
    extra.update(name="w1-later", urn=up0["urn"].replace("cluster-worker-0-up-0", "w1-later"))
    for props in (extra["inputs"], extra["outputs"]):
        props.update(autoscalingGroupName="llmfleet-prod-worker-1", desiredCapacity="[unknown]")
    second = copy.deepcopy(extra)
    second.update(name="w2-again", urn=up0["urn"].replace("cluster-worker-0-up-0", "w2-again"))
    for props in (second["inputs"], second["outputs"]):
        props.update(autoscalingGroupName="llmfleet-prod-worker-2", desiredCapacity=0)
    lost = copy.deepcopy(second)
    lost.update(name="lost", urn=up0["urn"].replace("cluster-worker-0-up-0", "lost"))
    for props in (lost["inputs"], lost["outputs"]):
        props.update(autoscalingGroupName="[unknown]")
    nameless = copy.deepcopy(lost)  # no group at all: a group of its own too, not one named "None"
    nameless.update(name="nameless", urn=up0["urn"].replace("cluster-worker-0-up-0", "nameless"))
    for props in (nameless["inputs"], nameless["outputs"]):
        del props["autoscalingGroupName"]
    assert found([*down_only, up0, extra, second, lost, nameless]) == [
        never("llmfleet-prod-worker-2", "cluster-worker-2-down-0", 2),
        never("lost", "lost"),
        never("nameless", "nameless"),
    ]


def test_a_window_is_advised_on_only_when_shorter_than_the_cold_start(monkeypatch):
    import policy.schedule

    ten = capture("prod", ["llmfleet:schedule=mon-fri 08:00-08:10 UTC"])

    def advised(lead_s: float) -> list[str]:
        monkeypatch.setattr(policy.schedule, "_plan_cold_start_s", lambda cfg: lead_s)
        rep = run_policies(ten.resources, {}, stack=ten.config)
        return [v.message for v in rep.violations if v.policy == "schedule-window-cold-start"]

    assert advised(600.0) == []  # a 10-min window against exactly 10 min of cold start
    assert advised(605.0) == [
        "llmfleet:schedule: window 'mon-fri 08:00-08:10 UTC' serves 10 min, less than the modeled cold "
        "start (10.1 min, llmfleet plan): each opening bills more warm-up than serving"
    ]


def test_schedule_policies_pass_over_a_stack_config_that_does_not_load():
    import pulumi

    # no StackConfig handed over, and the one the Pulumi CLI would hand is not valid: the program
    # itself stops on it, with the one-line reason
    pulumi.runtime.set_all_config({"llmfleet:workerCount": "many"}, [])
    try:
        rep = run_policies([], {})
    finally:
        pulumi.runtime.set_all_config({}, [])
    assert [v for v in rep.violations if v.policy.startswith("schedule")] == []
