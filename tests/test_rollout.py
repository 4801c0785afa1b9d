"""Rollouts that finish or roll back: the pure plan and state machine, then the SSM side against
moto_server.

moto records `send_command` and answers `get_command_invocation`, but runs nothing on any host
(every invocation is `Success` with empty output). `FakeFleet` is the host side: a small client
class wrapped around the real moto SSM client at the boto3 boundary. Every call goes to moto
(the commands are recorded there, the parameters, versions and labels live there); for each
command it reads the version the command names from moto, as llmfleet-apply does, and decides
the invocation's outcome: a host can be made to fail a given script, with a stderr.
"""

from __future__ import annotations

import json
import shlex
from functools import cache

import pytest

from infra import deploy as d
from infra.boot.node_apply import APPLY_BIN, rollout_command
from infra.rollout import plan as p
from infra.rollout import ssm as rs
from infra.rollout import stack as rstack
from infra.worker_lookup import HeadLookupError, head_instance_id
from tests.moto_fixtures import DUMMY_CREDS, MotoServer
from tests.test_deploy import COMPLETION, head_stdout

HEAD = p.Host("head", "i-0000000000000000h", "head")
WORKERS = p.workers_by_slot([(i, f"i-000000000000000w{i}") for i in range(4)], hosts_per_replica=2)
HOSTS = [HEAD, *WORKERS]
W = {h.name: h for h in WORKERS}


# ---------------------------------------------------------------- the plan (pure)


def test_workers_by_slot_is_replica_then_stage():
    assert [(h.name, h.replica, h.stage) for h in WORKERS] == [
        ("worker-0", 0, 0),
        ("worker-1", 0, 1),
        ("worker-2", 1, 0),
        ("worker-3", 1, 1),
    ]


def test_plan_rolls_one_replica_then_the_next_and_the_head_last():
    steps = p.plan_rollout(list(reversed(HOSTS)), {"head", "worker"})  # input order does not matter
    assert [(s.host.name, s.gate) for s in steps] == [
        ("worker-0", None),
        ("worker-1", "replica"),
        ("worker-2", None),
        ("worker-3", "replica"),
        ("head", "deployment"),
    ]


def test_plan_of_one_role():
    assert [(s.host.name, s.gate) for s in p.plan_rollout(HOSTS, {"head"})] == [("head", "deployment")]
    workers_only = p.plan_rollout(HOSTS, {"worker"})
    assert [s.gate for s in workers_only] == [None, "replica", None, "deployment"]
    assert p.plan_rollout(HOSTS, set()) == []


def test_plan_with_one_host_per_replica_gates_every_host():
    """dev's layout (PP 1, two replicas): each worker is a whole replica, so each is gated."""
    workers = p.workers_by_slot([(0, "i-a"), (1, "i-b")], hosts_per_replica=1)
    steps = p.plan_rollout([HEAD, *workers], {"head", "worker"})
    assert [(s.host.name, s.host.replica, s.gate) for s in steps] == [
        ("worker-0", 0, "replica"),
        ("worker-1", 1, "replica"),
        ("head", None, "deployment"),
    ]


@pytest.mark.parametrize(
    "hosts,changed,needle",
    [
        ([HEAD, HEAD], {"head"}, "instance i-0000000000000000h listed twice"),
        ([HEAD, p.Host("head", "i-2", "head-b")], {"head"}, "2 heads"),
        (
            [W["worker-0"], p.Host("worker", "i-9", "worker-9", 0, 0)],
            {"worker"},
            "both claim replica 0 stage 0",
        ),
        ([p.Host("worker", "i-9", "worker-9")], {"worker"}, "worker-9 i-9: a worker needs its replica index"),
        (WORKERS, {"head"}, "the head's node script changed but the stack has no head"),
        (HOSTS, {"gpu"}, "changed role 'gpu'"),
    ],
)
def test_plan_errors_are_one_line(hosts, changed, needle):
    with pytest.raises(p.PlanError) as e:
        p.plan_rollout(hosts, changed)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_tail_line_keeps_the_last_lines_on_one_line():
    assert p.tail_line("a\n\nboom: no space left\nexit 1\n") == "a | boom: no space left | exit 1"
    assert p.tail_line("x" * 50 + "\n" + "y" * 20, limit=30) == "y" * 20
    assert p.tail_line("") == ""


# ---------------------------------------------------------------- the state machine (pure)


def drive(steps, outcomes: dict[tuple, bool]):
    """Run the machine; an action fails when `outcomes` says so. Returns (actions, state)."""
    st, seen = p.start(steps), []
    while not isinstance(a := p.next_action(st), p.Finished):
        seen.append(a)
        key = (type(a).__name__, getattr(a, "host", None) and a.host.name, getattr(a, "version", None))
        st = p.advance(st, outcomes.get(key, True), "boom" if not outcomes.get(key, True) else "")
    return seen, st


def names(actions):
    out = []
    for a in actions:
        if isinstance(a, p.Apply):
            out.append(f"{a.version}:{a.host.name}")
        elif isinstance(a, p.Check):
            out.append(f"check-{a.gate}:{a.host.name}")
        elif isinstance(a, p.Restore):
            out.append(f"restore:{a.role}")
        else:
            out.append(f"promote:{','.join(a.roles)}")
    return out


def test_machine_success_applies_checks_and_promotes():
    actions, st = drive(p.plan_rollout(HOSTS, {"head", "worker"}), {})
    assert names(actions) == [
        "target:worker-0",
        "target:worker-1",
        "check-replica:worker-1",
        "target:worker-2",
        "target:worker-3",
        "check-replica:worker-3",
        "target:head",
        "check-deployment:head",
        "promote:head,worker",
    ]
    assert st.outcome == "done" and st.failure is None


def test_machine_failed_apply_stops_restores_and_undoes_newest_first():
    actions, st = drive(p.plan_rollout(HOSTS, {"head", "worker"}), {("Apply", "worker-1", "target"): False})
    assert names(actions) == [
        "target:worker-0",
        "target:worker-1",
        "restore:head",
        "restore:worker",
        "previous:worker-1",
        "previous:worker-0",
    ]
    assert st.outcome == "rolled-back"
    assert st.failure.line() == "worker-1 i-000000000000000w1 replica 0: apply failed: boom"


def test_machine_failed_replica_check_rolls_that_replica_back():
    actions, st = drive(p.plan_rollout(HOSTS, {"worker"}), {("Check", "worker-1", None): False})
    assert names(actions)[-3:] == ["restore:worker", "previous:worker-1", "previous:worker-0"]
    assert "worker-2" not in " ".join(names(actions))
    assert st.failure.step == "replica check"


def test_machine_keeps_undoing_after_a_failed_reapply():
    outcomes = {("Apply", "worker-3", "target"): False, ("Apply", "worker-3", "previous"): False}
    actions, st = drive(p.plan_rollout(HOSTS, {"worker"}), outcomes)
    assert names(actions)[-4:] == [
        "previous:worker-3",
        "previous:worker-2",
        "previous:worker-1",
        "previous:worker-0",
    ]
    assert st.outcome == "rollback-incomplete"
    assert st.rollback_errors == ("re-apply on worker-3 i-000000000000000w3 replica 1: boom",)


# ---------------------------------------------------------------- against moto


@pytest.fixture(scope="module")
def moto():
    with pytest.MonkeyPatch.context() as mp:
        for k, v in DUMMY_CREDS.items():
            mp.setenv(k, v)
        with MotoServer() as server:
            yield server


class FakeFleet:
    """The host side of Run Command over a real moto SSM client (see the module docstring)."""

    def __init__(self, ssm, fail: dict[str, tuple[str, str]] | None = None):
        self._ssm = ssm
        self.fail = fail or {}  # instance id -> (script value it fails on, stderr)
        self.runs: dict[str, str] = {}  # instance id -> the script it runs now
        self.sent: list[tuple[str, str]] = []  # (instance id, selector), in order
        self._result: dict[str, dict] = {}
        self.placements: list[list[str]] = []  # what the head reports (none: nothing deployed)
        self.readiness_sent: list[str] = []  # the status line of each readiness script
        self._polls: dict[str, int] = {}

    def __getattr__(self, name):
        return getattr(self._ssm, name)

    def send_command(self, **kw):
        out = self._ssm.send_command(**kw)
        iid = kw["InstanceIds"][0]
        if kw["Parameters"]["commands"][0] == "echo LLMFLEET_STATUS_BEGIN":  # the readiness script
            self.readiness_sent.append(kw["Parameters"]["commands"][1])
            self._result[out["Command"]["CommandId"]] = self.readiness(iid)
            return out
        if kw["Parameters"]["commands"][0].startswith("docker exec llmfleet-head"):  # the head's status
            doc = json.dumps({"nodes": [], "serve": {"llm": "RUNNING"}, "placements": self.placements})
            self._result[out["Command"]["CommandId"]] = {"Status": "Success", "StandardOutputContent": doc}
            return out
        argv = shlex.split(kw["Parameters"]["commands"][0])
        assert argv[0] == APPLY_BIN and argv[2] == "rollout"
        value = self._ssm.get_parameter(Name=argv[1])["Parameter"]["Value"]  # what llmfleet-apply reads
        self.sent.append((iid, argv[1]))
        bad, stderr = self.fail.get(iid, (None, ""))
        if value == bad:
            inv = {"Status": "Failed", "ResponseCode": 1, "StandardErrorContent": stderr}
        else:
            inv = {"Status": "Success", "ResponseCode": 0, "StandardErrorContent": ""}
        self.runs[iid] = value
        self._result[out["Command"]["CommandId"]] = inv
        return out

    def readiness(self, iid: str) -> dict:
        """The head answers a completion; it reports as deployed the Serve config of the node
        script it runs (its deploy watcher applied it) and every app RUNNING."""
        status = {
            "serve": {"llm": "RUNNING"},
            "deployed_serve_config": d.serve_config_fingerprint(self.runs.get(iid, "head-old")),
        }
        return {
            "Status": "Success",
            "ResponseCode": 0,
            "StandardOutputContent": head_stdout(status, "200", COMPLETION),
        }

    def get_command_invocation(self, CommandId, InstanceId):
        # moto knows the invocation (a real call); the first poll sees it still running.
        self._ssm.get_command_invocation(CommandId=CommandId, InstanceId=InstanceId)
        self._polls[CommandId] = self._polls.get(CommandId, 0) + 1
        if self._polls[CommandId] == 1:
            return {"Status": "InProgress"}
        return self._result[CommandId]


class Clock:
    def __init__(self):
        self.t = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


STACK = "t"
MOTO_AMI = "ami-03cf127a"  # one of moto's built-in images
NAMES = {"head": "/llmfleet/t/node/head", "worker": "/llmfleet/t/node/worker"}


def seed(ssm, label: bool = True):
    """v1 (running everywhere, labelled good) and v2 (what `pulumi up` just wrote) per role."""
    for role, name in NAMES.items():
        ssm.put_parameter(Name=name, Value=f"{role}-old", Type="String", Tier="Advanced")
        if label:
            ssm.label_parameter_version(Name=name, ParameterVersion=1, Labels=[rs.GOOD_LABEL])
        ssm.put_parameter(Name=name, Value=f"{role}-new", Type="String", Overwrite=True)


def run(moto, fleet, checks=None, clock=None):
    clock = clock or Clock()
    versions = {r: rs.role_versions(fleet, r, n) for r, n in NAMES.items()}
    calls = []

    def check(gate, host):
        calls.append((gate, host.name))
        return (checks or {}).get((gate, host.name), (True, ""))

    runner = rs.SsmRunner(fleet, poll_s=5, clock=clock, sleep=clock.sleep)
    return rs.run_rollout(runner, HOSTS, versions, check), calls


def current(ssm, name):
    par = ssm.get_parameter(Name=name)["Parameter"]
    labels = {h["Version"]: h.get("Labels") or [] for h in ssm.get_parameter_history(Name=name)["Parameters"]}
    return par["Value"], par["Version"], [v for v, ls in labels.items() if rs.GOOD_LABEL in ls]


def test_rollout_in_order_then_promoted(moto):
    moto.reset()
    ssm = moto.client("ssm")
    seed(ssm)
    fleet = FakeFleet(ssm)
    clock = Clock()
    result, checks = run(moto, fleet, clock=clock)
    assert result.ok, result.line()
    # The order sent at the boto3 boundary: replica 0's hosts, replica 1's, then the head, each
    # told the new version. (moto records the commands, but its ListCommands neither keeps their
    # order nor, once EC2 instances exist, their instance ids: it lists every instance.)
    assert fleet.sent == [
        (W["worker-0"].instance_id, f"{NAMES['worker']}:2"),
        (W["worker-1"].instance_id, f"{NAMES['worker']}:2"),
        (W["worker-2"].instance_id, f"{NAMES['worker']}:2"),
        (W["worker-3"].instance_id, f"{NAMES['worker']}:2"),
        (HEAD.instance_id, f"{NAMES['head']}:2"),
    ]
    recorded = sorted(c["Parameters"]["commands"][0] for c in ssm.list_commands()["Commands"])
    assert recorded == sorted([rollout_command(NAMES["worker"], 2)] * 4 + [rollout_command(NAMES["head"], 2)])
    assert checks == [("replica", "worker-1"), ("replica", "worker-3"), ("deployment", "head")]
    assert set(fleet.runs.values()) == {"worker-new", "head-new"}
    # The good label moved to what every host now runs; each apply was polled with the clock.
    assert current(ssm, NAMES["worker"]) == ("worker-new", 2, [2])
    assert current(ssm, NAMES["head"]) == ("head-new", 2, [2])
    assert clock.sleeps == [5] * 5
    # A second run finds nothing to roll.
    again, _ = run(moto, FakeFleet(ssm))
    assert again.ok and again.steps == () and again.line() == "rollout: nothing to roll"


def test_second_host_fails_stops_restores_and_reapplies(moto):
    moto.reset()
    ssm = moto.client("ssm")
    seed(ssm)
    w1 = W["worker-1"].instance_id
    stderr = (
        "pulling image\nError response from daemon: manifest unknown\nllmfleet-apply: docker pull failed\n"
    )
    fleet = FakeFleet(ssm, fail={w1: ("worker-new", stderr)})
    result, checks = run(moto, fleet)
    assert result.outcome == "rolled-back"
    assert result.line() == (
        "rollout stopped at worker-1 i-000000000000000w1 replica 0: apply failed: Failed (exit 1): "
        "pulling image | Error response from daemon: manifest unknown | llmfleet-apply: docker pull failed; "
        "rolled back to the previous node scripts (the previous deployment answers again)"
    )
    # No gate ran during the rollout (the failed host's replica never reached its gate); one ran
    # after the rollback: does the previous deployment answer again?
    assert checks == [("replica", "worker-1")]
    w0 = W["worker-0"].instance_id
    assert fleet.sent == [
        (w0, f"{NAMES['worker']}:2"),
        (w1, f"{NAMES['worker']}:2"),
        (w1, f"{NAMES['worker']}:1"),  # the rollback: the failed host first, then the one before
        (w0, f"{NAMES['worker']}:1"),
    ]
    # The other replica and the head were never touched; the rolled hosts run the old script.
    assert fleet.runs == {w0: "worker-old", w1: "worker-old"}
    # Both parameters are back at the previous script as their newest version (what a host
    # that boots now reads), labelled good; the failed version is kept in the history.
    assert current(ssm, NAMES["worker"]) == ("worker-old", 3, [3])
    assert current(ssm, NAMES["head"]) == ("head-old", 3, [3])
    hist = ssm.get_parameter_history(Name=NAMES["worker"])["Parameters"]
    assert [h["Value"] for h in hist] == ["worker-old", "worker-new", "worker-old"]
    assert [h["Tier"] for h in hist] == ["Advanced"] * 3
    # After the rollback there is nothing to roll until `pulumi up` writes the target again.
    assert not rs.role_versions(ssm, "worker", NAMES["worker"]).changed


def test_failed_replica_gate_rolls_back_and_never_reaches_the_next_replica(moto):
    moto.reset()
    ssm = moto.client("ssm")
    seed(ssm)
    fleet = FakeFleet(ssm)
    result, checks = run(moto, fleet, checks={("replica", "worker-1"): (False, "completion: HTTP 503")})
    assert result.outcome == "rolled-back"
    assert (
        result.failure.line()
        == "worker-1 i-000000000000000w1 replica 0: replica check failed: completion: HTTP 503"
    )
    assert checks == [("replica", "worker-1")] * 2  # the gate, then the check after the rollback
    assert result.after_rollback == "the previous deployment does not answer: completion: HTTP 503"
    touched = {iid for iid, _ in fleet.sent}
    assert touched == {W["worker-0"].instance_id, W["worker-1"].instance_id}
    assert current(ssm, NAMES["worker"])[0] == "worker-old"


def test_unlabelled_history_takes_the_last_other_script_as_good(moto):
    moto.reset()
    ssm = moto.client("ssm")
    seed(ssm, label=False)
    v = rs.role_versions(ssm, "worker", NAMES["worker"])
    assert (v.target, v.good, v.changed, v.tier) == (2, 1, True, "Advanced")
    ssm.put_parameter(Name="/llmfleet/t/node/fresh", Value="x", Type="String")
    fresh = rs.role_versions(ssm, "worker", "/llmfleet/t/node/fresh")
    assert (fresh.target, fresh.good, fresh.changed) == (1, None, False)


def test_apply_that_never_ends_times_out_on_the_injected_clock(moto):
    moto.reset()
    ssm = moto.client("ssm")
    seed(ssm)

    class Stuck(FakeFleet):
        def get_command_invocation(self, CommandId, InstanceId):
            return {"Status": "InProgress"}

    clock = Clock()
    runner = rs.SsmRunner(Stuck(ssm), apply_timeout_s=60, poll_s=10, clock=clock, sleep=clock.sleep)
    ok, detail = runner.apply(W["worker-0"], NAMES["worker"], 2)
    assert (ok, detail) == (False, "still InProgress after 60 s")
    assert clock.t == 60


def test_rollout_command_names_the_version():
    assert (
        rollout_command("/llmfleet/prod/node/worker", 7)
        == f"{APPLY_BIN} /llmfleet/prod/node/worker:7 rollout"
    )
    with pytest.raises(ValueError, match="allowed a parameter version >= 1"):
        rollout_command("/x", 0)


def moto_stack(moto, stack: str = "t", slots: int = 4, pp: int = 2) -> dict:
    """A head group of one and one Auto Scaling group of one per worker slot, in moto; the outputs
    the rollout reads. moto's groups launch their instances and tag them as EC2 Auto Scaling does."""
    ec2, asg = moto.client("ec2"), moto.client("autoscaling")
    image = ec2.describe_images(ImageIds=[MOTO_AMI])["Images"][0]["ImageId"]  # not all 1300: 3 s
    ec2.create_launch_template(
        LaunchTemplateName=f"{stack}-worker",
        LaunchTemplateData={"ImageId": image, "InstanceType": "g6e.xlarge"},
    )
    groups = [f"llmfleet-{stack}-worker-{i}" for i in range(slots)]
    for g in groups:
        asg.create_auto_scaling_group(
            AutoScalingGroupName=g,
            LaunchTemplate={"LaunchTemplateName": f"{stack}-worker"},
            MinSize=1,
            MaxSize=1,
            DesiredCapacity=1,
            AvailabilityZones=["us-east-1a"],
        )
    # The head is a group of one too (infra/components/head.py): the stack names the group and
    # the rollout finds its running instance by the group's tag.
    ec2.create_launch_template(
        LaunchTemplateName=f"{stack}-head",
        LaunchTemplateData={"ImageId": image, "InstanceType": "m7i.2xlarge"},
    )
    asg.create_auto_scaling_group(
        AutoScalingGroupName=f"llmfleet-{stack}-head",
        LaunchTemplate={"LaunchTemplateName": f"{stack}-head"},
        MinSize=1,
        MaxSize=1,
        DesiredCapacity=1,
        AvailabilityZones=["us-east-1a"],
    )
    return {"head_group": f"llmfleet-{stack}-head", "worker_groups": groups, "pipeline_parallel_size": pp}


def test_stack_rollout_end_to_end_with_the_readiness_gates(moto):
    """A 2-replica stack (2 hosts per replica + head) from moto's EC2 and Auto Scaling: the
    hosts come from the groups' tag, the versions from SSM, the gates are the head's readiness
    over SSM with the new Serve config's fingerprint; the head reports the old one until it runs
    the new script."""
    moto.reset()
    ssm, ec2 = moto.client("ssm"), moto.client("ec2")
    outputs = moto_stack(moto)
    seed(ssm)
    hosts = rstack.stack_hosts(ec2, outputs)
    assert [(h.role, h.name, h.replica, h.stage) for h in hosts] == [
        ("head", "head", None, 0),
        ("worker", "worker-0", 0, 0),
        ("worker", "worker-1", 0, 1),
        ("worker", "worker-2", 1, 0),
        ("worker", "worker-3", 1, 1),
    ]
    fleet, clock, lines = FakeFleet(ssm), Clock(), []
    result = rstack.rollout_stack(
        fleet,
        ec2,
        "org/llmfleet/t",  # the parameters carry the bare stack name, as pulumi.get_stack() gives it
        outputs,
        container="llmfleet-head",
        port=8000,
        model="m",
        token_parameter="/t/token",
        region="us-east-1",
        fingerprint=d.serve_config_fingerprint("head-new"),
        timeout_s=60,
        log=lines.append,
        clock=clock,
        sleep=clock.sleep,
    )
    assert result.ok, result.line()
    # Only the deployment gate (the head rolled) asks the head for the deployed fingerprint: the
    # replica gates may meet the head's previous image, whose status may not know the flag.
    assert ["--serve-config" in line for line in fleet.readiness_sent] == [False, False, True]
    assert [ln for ln in lines if ln.startswith("check")] == [
        "check replica: after worker-1 " + hosts[2].instance_id + " replica 0",
        "check replica: after worker-3 " + hosts[4].instance_id + " replica 1",
        "check deployment: after head " + hosts[0].instance_id,
    ]
    assert lines[:2] == [
        "replicas by slot order (the head reports no engine placement (nothing deployed yet))",
        f"plan: 1. worker-0 {hosts[1].instance_id} replica 0",
    ]
    assert [iid for iid, _ in fleet.sent] == [h.instance_id for h in hosts[1:]] + [hosts[0].instance_id]
    assert set(fleet.runs.values()) == {"worker-new", "head-new"}


def test_deployment_gate_refuses_the_old_fingerprint(moto):
    """The head answers completions but still reports the previous Serve config: not ready, and
    the rollout rolls back with that reason."""
    moto.reset()
    ssm, ec2 = moto.client("ssm"), moto.client("ec2")
    outputs = moto_stack(moto)
    seed(ssm)

    class StaleHead(FakeFleet):
        def readiness(self, iid):
            status = {
                "serve": {"llm": "RUNNING"},
                "deployed_serve_config": d.serve_config_fingerprint("head-old"),
            }
            return {"Status": "Success", "StandardOutputContent": head_stdout(status, "200", COMPLETION)}

    fleet, clock = StaleHead(ssm), Clock()
    gate = rstack.readiness_gate(
        fleet,
        head_instance_id=head_instance_id(outputs, ec2),
        container="llmfleet-head",
        port=8000,
        model="m",
        token_parameter="/t/token",
        region="us-east-1",
        fingerprint=d.serve_config_fingerprint("head-new"),
        timeout_s=30,
        clock=clock,
        sleep=clock.sleep,
    )
    runner = rs.SsmRunner(fleet, poll_s=5, clock=clock, sleep=clock.sleep)
    result = rs.run_rollout(runner, rstack.stack_hosts(ec2, outputs), rstack.stack_versions(fleet, "t"), gate)
    assert result.outcome == "rolled-back"
    assert result.failure.step == "deployment check" and result.failure.host.role == "head"
    assert "the app answers with Serve config" in result.failure.detail
    assert current(ssm, NAMES["head"])[0] == "head-old"


@cache
def dev_capture():
    """The dev stack under the offline engine: a real config and the outputs `up` gets."""
    from infra.program.offline import capture

    return capture("dev")


def test_up_prints_the_failing_host_and_exits_1(monkeypatch, capsys):
    """`llmfleet up`'s rollout step: the expected fingerprint is the stack's rendered Serve
    config's; a rolled-back rollout prints one error line naming the host, and up stops."""
    from infra.commands import deploy as cmd

    c = dev_capture()
    seen = {}
    failure = p.Failure(W["worker-1"], "apply", "Failed (exit 1): docker pull failed")

    def fake(ssm, ec2, stack, outputs, **kw):
        seen.update(kw, stack=stack)
        return rs.RolloutResult("rolled-back", (), failure, (), ())

    monkeypatch.setattr(rstack, "rollout_stack", fake)
    assert cmd._rollout(c.config, "dev", dict(c.outputs), timeout=5) is False
    assert seen["fingerprint"] == d.expected_fingerprint(c.config) and seen["stack"] == "dev"
    assert seen["model"] == c.outputs["served_model"] and seen["timeout_s"] == 5
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: rollout stopped at worker-1 i-000000000000000w1 replica 0: apply failed: "
        "Failed (exit 1): docker pull failed; rolled back to the previous node scripts"
    ]


def test_replicas_follow_the_placement_the_head_reports(moto):
    """Ray chose the hosts of each replica at deploy time (here slots 0+2 and 3+1): the rollout
    rolls the hosts of one real replica together, in their stage order, not the slot order."""
    from ray_cluster.readiness import engine_placements

    moto.reset()
    ssm, ec2 = moto.client("ssm"), moto.client("ec2")
    outputs = moto_stack(moto)
    seed(ssm)
    slots = {slot: (ip, iid) for slot, ip, iid in rstack.running_worker_slots(ec2, outputs["worker_groups"])}
    node = {f"n{slot}": ip for slot, (ip, _) in slots.items()}
    gpu = {"GPU": 1.0, "gpu_model:L40S": 1.0}
    table = {  # Ray's placement_group_table() shape: bundle index -> node id (TP 1 here)
        "pg-a": {"state": "CREATED", "bundles": {0: gpu, 1: gpu}, "bundles_to_node_id": {0: "n3", 1: "n1"}},
        "pg-b": {"state": "CREATED", "bundles": {0: gpu, 1: gpu}, "bundles_to_node_id": {0: "n0", 1: "n2"}},
        "preflight": {"state": "REMOVED", "bundles": {0: gpu}, "bundles_to_node_id": {0: "n1"}},
        "other": {"state": "CREATED", "bundles": {0: {"CPU": 1.0}}, "bundles_to_node_id": {0: "n0"}},
    }
    placements = engine_placements(table, node)
    assert sorted(placements) == sorted([[slots[3][0], slots[1][0]], [slots[0][0], slots[2][0]]])
    fleet, clock = FakeFleet(ssm), Clock()
    fleet.placements = placements
    result = rstack.rollout_stack(
        fleet,
        ec2,
        "t",
        outputs,
        container="llmfleet-head",
        port=8000,
        model="m",
        token_parameter="/t/token",
        region="us-east-1",
        fingerprint=d.serve_config_fingerprint("head-new"),
        timeout_s=60,
        clock=clock,
        sleep=clock.sleep,
    )
    assert result.ok, result.line()
    order = [s.host.name for s in result.steps]
    first, second = ("worker-0", "worker-2"), ("worker-3", "worker-1")
    if placements[0] != [slots[0][0], slots[2][0]]:
        first, second = second, first
    assert order == [*first, *second, "head"]
    assert [s.gate for s in result.steps] == [None, "replica", None, "replica", "deployment"]


def test_up_rolls_out_after_pulumi_up_and_stops_before_the_wait_when_it_failed(monkeypatch, tmp_path):
    """`llmfleet up`: pulumi up (refreshed), render, then the rollout; a rolled-back rollout is
    exit 1 and no readiness wait; a finished one goes on to the wait. The Pulumi CLI is stubbed at
    the Automation API boundary (it is not installed here)."""
    from typer.testing import CliRunner

    from infra import deploy as dep
    from infra.cli import app
    from infra.commands import deploy as cmd

    c = dev_capture()
    calls = []
    monkeypatch.setattr(cmd, "_cli_or_fail", lambda: None)
    monkeypatch.setattr(cmd, "_preview_and_confirm", lambda *a: calls.append("preview"))
    monkeypatch.setattr(dep, "open_stack", lambda args, create=True: "stack")

    def up(stack, **kw):
        calls.append(("up", kw.get("refresh", True)))
        return dict(c.outputs)

    monkeypatch.setattr(dep, "stack_up", up)
    monkeypatch.setattr(dep, "render_artifacts", lambda *a: [])
    rolled = {"ok": False}
    monkeypatch.setattr(
        cmd, "_rollout", lambda cfg, stack, outputs, timeout, *out: calls.append("rollout") or rolled["ok"]
    )
    monkeypatch.setattr(cmd, "wait_ready", lambda cfg, outputs, timeout, *out: calls.append("wait") or True)
    argv = ["up", "--stack", "dev", "--yes", "--skip-preflight", "--out", str(tmp_path)]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 1 and calls == ["preview", ("up", True), "rollout"]
    calls.clear()
    rolled["ok"] = True
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 0, res.output
    assert calls == ["preview", ("up", True), "rollout", "wait"]


def test_an_aws_error_mid_rollout_is_a_failed_step_that_rolls_back(moto):
    """SSM refusing to report on the second host (here AccessDenied) must not crash the rollout
    half-applied: that host's step fails and the rollback runs."""
    from botocore.exceptions import ClientError

    moto.reset()
    ssm = moto.client("ssm")
    seed(ssm)
    w1 = W["worker-1"].instance_id

    class Denied(FakeFleet):
        def get_command_invocation(self, CommandId, InstanceId):
            if InstanceId == w1 and self.runs.get(w1) == "worker-new":
                raise ClientError(
                    {"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}},
                    "GetCommandInvocation",
                )
            return super().get_command_invocation(CommandId, InstanceId)

    fleet = Denied(ssm)
    result, _ = run(moto, fleet)
    assert result.outcome == "rolled-back"
    assert result.failure.line() == (
        "worker-1 i-000000000000000w1 replica 0: apply failed: "
        "get_command_invocation: AccessDeniedException: not authorized"
    )
    assert fleet.runs == {W["worker-0"].instance_id: "worker-old", w1: "worker-old"}


def test_one_rollout_per_stack_at_a_time(moto):
    """A second rollout of the same stack is refused in one line naming the holder; the lock
    goes away when the first ends, even when it raised."""
    moto.reset()
    ssm = moto.client("ssm")
    with rs.rollout_lock(ssm, "t", "ana@laptop", now=lambda: 0.0):
        with pytest.raises(rs.RolloutBusy) as e, rs.rollout_lock(ssm, "t", "bo@ci"):
            pass
        assert str(e.value) == (
            "stack t: another rollout holds /llmfleet/t/rollout-lock (ana@laptop since 1970-01-01T00:00:00Z); "
            "if it died, `aws ssm delete-parameter --name /llmfleet/t/rollout-lock` and retry"
        )
        with rs.rollout_lock(ssm, "other", "bo@ci"):  # another stack is not held
            pass
    with pytest.raises(RuntimeError), rs.rollout_lock(ssm, "t", "bo@ci"):
        raise RuntimeError("boom")
    with rs.rollout_lock(ssm, "t", "cy@ci"):  # released both times
        pass


def test_the_head_is_found_by_its_group_and_a_missing_one_is_one_line(moto):
    """The head's instance id is not an output (its group replaces it): the rollout and the
    readiness wait look it up by the group's tag; a group with no running instance (the head
    being replaced) is a one-line error naming the group, and a stack from before the head group
    still names its instance."""
    moto.reset()
    ec2, asg = moto.client("ec2"), moto.client("autoscaling")
    outputs = moto_stack(moto, slots=1, pp=1)
    [inst] = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[outputs["head_group"]])[
        "AutoScalingGroups"
    ][0]["Instances"]
    assert head_instance_id(outputs, ec2) == inst["InstanceId"]
    assert rstack.stack_hosts(ec2, outputs)[0] == p.Host("head", inst["InstanceId"], "head")
    assert head_instance_id({"head_instance_id": "i-0123456789abcdef0"}, ec2) == "i-0123456789abcdef0"
    asg.update_auto_scaling_group(AutoScalingGroupName=outputs["head_group"], MinSize=0, DesiredCapacity=0)
    ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
    with pytest.raises(HeadLookupError, match="head group 'llmfleet-t-head' has no running instance"):
        head_instance_id(outputs, ec2)
    with pytest.raises(p.PlanError, match="no running instance"):
        rstack.stack_hosts(ec2, outputs)
    with pytest.raises(HeadLookupError, match="'head_group' and 'head_instance_id' are missing"):
        head_instance_id({"worker_groups": []}, ec2)
