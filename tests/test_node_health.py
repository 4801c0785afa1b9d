"""The GPU worker's health agent: verdicts over recorded nvidia-smi / kernel log / DCGM / Ray
outputs (tests/data/health), and its SetInstanceHealth call against a moto server."""

import shlex
import shutil
import subprocess
from pathlib import Path

import botocore.session
import pytest
from botocore import xform_name

from infra.boot import health_agent
from infra.boot.cloud_init import render_user_data
from ray_cluster.node_health import (
    APP_XIDS,
    FATAL_XIDS,
    GPU_CONFIRM_S,
    AgentState,
    Observation,
    build_parser,
    decide,
    gpu_count,
    raylet_state,
    tick,
    xids,
)
from tests.moto_fixtures import MotoServer
from tests.test_cloud_init import HEAD, WORKER

DATA = Path(__file__).parent / "data" / "health"
ROOT = Path(__file__).parent.parent
BOOT = 1_000_000.0  # the observations are `at` seconds after this
GRACE = 900.0


def read(name: str) -> str:
    return (DATA / name).read_text()


def obs(at: float, **kw) -> Observation:
    """A healthy worker `at` seconds after boot, with `kw` changed."""
    base = dict(
        now=BOOT + at,
        gpu_listing=read("nvidia-smi-L-8.txt"),
        dcgm_metrics=read("dcgm-ok.prom"),
        raylet=raylet_state(read("ray-status-alive.json"), "10.42.0.23"),
    )
    return Observation(**{**base, **kw})


def run_seq(observations: list[Observation]) -> list:
    seen: dict[str, float] = {}
    out = []
    for o in observations:
        v, seen = decide(o, 8, GRACE, seen)
        out.append(v)
    return out


def test_parsers_read_the_recorded_outputs():
    assert gpu_count(read("nvidia-smi-L-8.txt")) == 8
    assert gpu_count(read("nvidia-smi-L-7.txt")) == 7
    assert gpu_count(read("nvidia-smi-L-error.txt")) == 0 and gpu_count(None) == 0
    assert xids(read("kernel-xid79.log"), "") == [("0000:9e:00", 79)]
    assert xids(read("kernel-xid48-old-driver.log"), "") == [("0000:b4:00", 48)]
    assert [c for _, c in xids(read("kernel-app-xids.log"), "")] == [13, 13, 31, 43]
    assert xids("", read("dcgm-ok.prom")) == []  # 0 = no XID; the temperature gauge is not one
    assert xids("", read("dcgm-xid95.prom")) == [("gpu 3 (DCGM)", 95), ("gpu 6 (DCGM)", 31)]
    assert raylet_state(read("ray-status-alive.json"), "10.42.0.23") == "alive"
    assert raylet_state(read("ray-status-dead.json"), "10.42.0.23") == "gone"
    assert raylet_state(read("ray-status-alive.json"), "10.42.0.99") == "gone"  # not in the table
    assert raylet_state("error: cannot reach the head\n", "10.42.0.23") == "unknown"


def test_the_xid_table_names_its_source_and_keeps_app_faults_apart():
    src = (ROOT / "ray_cluster" / "node_health.py").read_text()
    assert "https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html" in src
    assert {48, 63, 64, 74, 79, 95, 119, 120} <= set(FATAL_XIDS)
    assert {13, 31, 43} <= set(APP_XIDS) and not set(APP_XIDS) & set(FATAL_XIDS)


def test_a_healthy_worker_and_application_xids_stay_healthy():
    v = run_seq([obs(60)])[0]
    assert v.healthy and v.reason == "ok: 8 GPUs, container running, raylet alive"
    v = run_seq([obs(60, kernel_log=read("kernel-app-xids.log"))])[0]
    assert v.healthy and "application XIDs [13, 31, 43] ignored" in v.reason


@pytest.mark.parametrize(
    "kw, reason",
    [
        ({"kernel_log": "kernel-xid79.log"}, "XID 79 (GPU has fallen off the bus) on 0000:9e:00"),
        ({"kernel_log": "kernel-xid48-old-driver.log"}, "XID 48 (double bit ECC error (DBE)) on 0000:b4:00"),
        ({"dcgm_metrics": "dcgm-xid95.prom"}, "XID 95 (uncontained ECC error) on gpu 3 (DCGM)"),
    ],
)
def test_a_fatal_xid_is_unhealthy_at_once(kw, reason):
    v = run_seq([obs(30, **{k: read(f) for k, f in kw.items()})])[0]
    assert not v.healthy and v.reason == reason


def test_a_missing_gpu_is_confirmed_before_it_counts():
    seven = read("nvidia-smi-L-7.txt")
    vs = run_seq(
        [
            obs(600, gpu_listing=seven),
            obs(660, gpu_listing=seven),
            obs(600 + GPU_CONFIRM_S, gpu_listing=seven),
        ]
    )
    assert [v.healthy for v in vs] == [True, True, False]
    assert vs[0].reason == "waiting: nvidia-smi lists 7 of 8 GPUs"
    assert vs[2].reason == f"nvidia-smi lists 7 of 8 GPUs for {GPU_CONFIRM_S:.0f} s"
    # one flaky listing in between starts the count again
    vs = run_seq(
        [obs(600, gpu_listing=seven), obs(660), obs(720, gpu_listing=None), obs(800, gpu_listing=None)]
    )
    assert all(v.healthy for v in vs)
    vs = run_seq([obs(600, gpu_listing=read("nvidia-smi-L-error.txt")), obs(720, gpu_listing="")])
    assert not vs[1].healthy and vs[1].reason.startswith("nvidia-smi lists 0 of 8 GPUs")


def test_a_down_container_is_replaced_only_past_the_grace_period():
    vs = run_seq([obs(3600, container="exited"), obs(3600 + GRACE - 1, container="exited")])
    assert [v.healthy for v in vs] == [True, True]
    assert vs[1].reason == "waiting: node container exited"
    vs = run_seq([obs(3600, container="restarting"), obs(3600 + GRACE, container="missing")])
    assert not vs[1].healthy and vs[1].reason == f"node container missing for {GRACE:.0f} s"
    # back up in between: the count starts again
    vs = run_seq([obs(3600, container="exited"), obs(3700), obs(3600 + GRACE, container="exited")])
    assert all(v.healthy for v in vs)


def test_a_raylet_out_of_the_cluster_is_replaced_past_the_grace_period():
    gone = raylet_state(read("ray-status-dead.json"), "10.42.0.23")
    vs = run_seq([obs(3600, raylet=gone), obs(3600 + GRACE, raylet=gone)])
    assert vs[0].healthy and vs[0].reason == "waiting: raylet not alive in the cluster"
    assert not vs[1].healthy and vs[1].reason.startswith("raylet not alive in the cluster for")
    # a status that could not be read is no evidence either way
    assert all(
        v.healthy for v in run_seq([obs(3600, raylet="unknown"), obs(3600 + 2 * GRACE, raylet="unknown")])
    )


def test_a_head_outage_judges_no_worker():
    """Every raylet stops when the head does; replacing the workers would not bring it back."""
    down = dict(container="restarting", raylet="unknown", head_reachable=False)
    vs = run_seq([obs(3600, **down), obs(3600 + 3 * GRACE, **down)])
    assert all(v.healthy for v in vs)
    assert vs[1].reason.endswith("(head unreachable: container and raylet not judged)")
    # the head back: the worker gets a whole grace period to rejoin
    vs = run_seq(
        [
            obs(3600, **down),
            obs(3600 + GRACE, container="restarting"),
            obs(3600 + 2 * GRACE - 1, container="exited"),
        ]
    )
    assert all(v.healthy for v in vs)
    # GPUs are still judged
    v = run_seq([obs(3600, kernel_log=read("kernel-xid79.log"), **down)])[0]
    assert not v.healthy


# ---------------------------------------------------------------- the AWS call, against moto


def aws_cli_against(moto: MotoServer):
    """Runs an `aws <service> <operation> --opt value ...` argv as the AWS CLI does: names
    resolved through botocore's service model (the CLI is generated from the same model;
    booleans are bare flags), the call made against the moto server."""

    def run(argv, capture_output=True, text=True):
        assert argv[:1] == ["aws"], argv
        service, op_cli, rest = argv[1], argv[2], argv[3:]
        model = botocore.session.get_session().get_service_model(service)
        ops = {xform_name(o, "-"): o for o in model.operation_names}
        op = model.operation_model(ops[op_cli])
        members = {xform_name(m, "-"): (m, s) for m, s in op.input_shape.members.items()}
        params, region, i = {}, None, 0
        while i < len(rest):
            opt = rest[i].removeprefix("--")
            if opt == "region":
                region, i = rest[i + 1], i + 2
                continue
            name, shape = members[opt]  # KeyError: an option the CLI does not have
            if shape.type_name == "boolean":
                params[name], i = True, i + 1
            else:
                params[name], i = rest[i + 1], i + 2
        missing = set(op.input_shape.required_members) - set(params)
        assert not missing, f"required by {op.name}: {missing}"
        getattr(moto.client(service, region=region), xform_name(op.name))(**params)
        return subprocess.CompletedProcess(argv, 0, "", "")

    return run


def test_an_unhealthy_verdict_marks_the_instance_in_its_group():
    with MotoServer() as moto:
        ec2, asg = moto.client("ec2"), moto.client("autoscaling")
        ec2.create_launch_template(
            LaunchTemplateName="workers",
            LaunchTemplateData={"ImageId": "ami-0123456789abcdef0", "InstanceType": "g6e.48xlarge"},
        )
        asg.create_auto_scaling_group(
            AutoScalingGroupName="prod-worker-0",
            LaunchTemplate={"LaunchTemplateName": "workers", "Version": "$Latest"},
            MinSize=1,
            MaxSize=1,
            DesiredCapacity=1,
            AvailabilityZones=["us-east-1a"],
            HealthCheckType="EC2",
            HealthCheckGracePeriod=0,
        )
        (inst,) = asg.describe_auto_scaling_groups()["AutoScalingGroups"][0]["Instances"]
        iid = inst["InstanceId"]
        lines: list[str] = []
        st = AgentState(iid, "us-east-1")
        run = aws_cli_against(moto)

        def health():
            return asg.describe_auto_scaling_instances(InstanceIds=[iid])["AutoScalingInstances"][0][
                "HealthStatus"
            ]

        assert tick(obs(60), 8, GRACE, st, run=run, log=lambda s, _b: lines.append(s)).healthy
        assert health().upper() == "HEALTHY" and not st.marked
        v = tick(
            obs(120, kernel_log=read("kernel-xid79.log")),
            8,
            GRACE,
            st,
            run=run,
            log=lambda s, _b: lines.append(s),
        )
        assert not v.healthy and st.marked
        assert health().upper() == "UNHEALTHY"
        assert (
            lines[-2].startswith("UNHEALTHY: XID 79")
            and lines[-1] == f"marked {iid} Unhealthy: its Auto Scaling group replaces it"
        )


def test_a_failed_call_is_logged_and_tried_again():
    calls, lines = [], []

    def run(argv, capture_output=True, text=True):
        calls.append(argv)
        return subprocess.CompletedProcess(
            argv, 254, "", "An error occurred (AccessDenied) when calling ...\n"
        )

    st = AgentState("i-0abc", "us-east-1")
    for at in (60, 120):
        tick(
            obs(at, kernel_log=read("kernel-xid79.log")),
            8,
            GRACE,
            st,
            run=run,
            log=lambda s, _b: lines.append(s),
        )
    assert len(calls) == 2 and not st.marked
    assert lines[1] == "set-instance-health failed: An error occurred (AccessDenied) when calling ..."


# ---------------------------------------------------------------- the install on the host


def test_the_worker_script_installs_the_agent_from_the_image():
    script = render_user_data(WORKER)
    assert "llmfleet-health" not in render_user_data(HEAD)
    # copied out of the very image the worker runs, from where the Dockerfile puts ray_cluster/
    assert (
        f"--log-driver none --entrypoint cat {shlex.quote(WORKER.image_ref)} {health_agent.IMAGE_AGENT_PATH} > "
        in script
    )
    assert "COPY ray_cluster/ /opt/llmfleet/ray_cluster/" in (ROOT / "images" / "Dockerfile").read_text()
    # the agent's unit (the IMDS guard's unit has an ExecStart too)
    exec_start = next(
        line
        for line in script.splitlines()
        if line.startswith("ExecStart=") and health_agent.AGENT_PATH in line
    )
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[:2] == ["/usr/bin/python3", health_agent.AGENT_PATH]
    a = build_parser().parse_args(argv[2:])
    assert (a.container, a.gpus, a.head, a.region) == ("llmfleet-worker", 8, "10.42.0.10", "us-east-1")
    assert "Restart=always" in script and "systemctl enable llmfleet-health.service" in script


def test_a_marked_instance_still_here_is_marked_again_after_a_while():
    """A call inside the group's health check grace period changes nothing: marked and still
    running REMARK_S later, the agent asks again; in between it does not."""
    from ray_cluster.node_health import REMARK_S

    calls = []

    def run(argv, capture_output=True, text=True):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    st = AgentState("i-0abc", "us-east-1")
    for at in (60, 120, 60 + REMARK_S - 1, 60 + REMARK_S):
        tick(obs(at, kernel_log=read("kernel-xid79.log")), 8, GRACE, st, run=run, log=lambda s, _b: None)
    assert len(calls) == 2 and st.marked_at == BOOT + 60 + REMARK_S
    assert calls[0][:3] == ["aws", "autoscaling", "set-instance-health"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_the_agent_unit_passes_systemd_analyze(tmp_path):
    unit = tmp_path / f"{health_agent.UNIT}.service"
    unit.write_text(health_agent.unit_text(WORKER))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    # unknown keys and bad values are only warnings: none at all is the bar
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stderr


def test_observe_reads_the_tools_it_runs(tmp_path, monkeypatch):
    """The observation wiring on this machine: a recorded `nvidia-smi -L` on PATH, the real
    docker and journalctl, a DCGM exporter answering with a recorded page, a head port that
    listens and then does not."""
    import os
    import socket

    from ray_cluster.node_health import observe
    from tests.json_http import JsonServer

    (tmp_path / "nvidia-smi").write_text(f"#!/bin/sh\ncat {shlex.quote(str(DATA / 'nvidia-smi-L-8.txt'))}\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    page = read("dcgm-xid95.prom").encode()

    server = JsonServer(lambda req: (200, page))  # DCGM's exporter: Prometheus text
    head = socket.socket()
    head.bind(("127.0.0.1", 0))
    head.listen()
    port = head.getsockname()[1]
    try:
        o = observe(
            "llmfleet-no-such-container",
            "127.0.0.1",
            "127.0.0.1",
            None,
            port,
            f"{server.base}/metrics",
        )
    finally:
        server.close()
        head.close()
    assert gpu_count(o.gpu_listing) == 8
    assert o.container == "missing" and o.raylet == "unknown" and o.head_reachable
    assert "NVRM" not in o.kernel_log or "Xid" in o.kernel_log  # only Xid lines are kept
    v, _ = decide(o, 8, GRACE, {})
    assert not v.healthy and v.reason == "XID 95 (uncontained ECC error) on gpu 3 (DCGM)"
    o = observe(
        "llmfleet-no-such-container", "127.0.0.1", "127.0.0.1", "alive", port, "http://127.0.0.1:1/metrics"
    )
    assert not o.head_reachable and o.dcgm_metrics == "" and o.raylet == "unknown"  # nothing listens now
