"""`llmfleet status`, `logs`, `endpoint`, `chat` for a deployed stack, and the ClusterStatus model
`local status` shares (issue #27 point 3).

The AWS side runs against a real moto server (Auto Scaling groups and their instances, SSM
parameters with their versions and labels, the rollout lock, SecureString tokens, CloudWatch
Logs). The cluster side is the head's report: Ray 2.60's own answers (NodeState from the state
API, ServeInstanceDetails from Serve's REST API, built with Ray's own schema classes so their
field names are Ray's), turned into the report by ray_cluster.cluster_status (the code the head
and `local status` run), and handed back as the SSM command's output: moto records
send_command but runs nothing, so the invocation's stdout is the recorded report. The metrics
workspace is an HTTP server that answers only SigV4-signed `aps` queries. The live cluster side
(`local status` on a 2-replica cluster) is in tests/test_local.py (Ray-marked).
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.parse
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from infra.cli import app
from infra.commands._status_view import render
from infra.local import live
from infra.rollout import ssm as rs
from infra.stack.outputs import StackOutputs
from infra.status import aws as st_aws
from infra.status import logs as st_logs
from infra.status.amp import sigv4_fetch
from infra.status.model import StatusError
from ray_cluster import cluster_status, node
from tests.json_http import JsonServer, chat_completion
from tests.moto_fixtures import DUMMY_CREDS, REGION, MotoServer

DATA = Path(__file__).parent / "data"
MOTO_AMI = "ami-03cf127a"  # one of moto's built-in images
MODEL = "deepseek-ai/DeepSeek-R1"
WEIGHTS = "sha256:9f2c1e0b7a65"
RUNNER = CliRunner()


# ---------------------------------------------------------------- recorded Ray 2.60 answers


def ray_nodes(head_ip: str, worker_ips: list[str]) -> list[dict]:
    """`ray.util.state.list_nodes` records, through Ray's own NodeState (its field names)."""
    from ray.util.state.common import NodeState

    def one(i: int, ip: str, head: bool, alive: bool = True) -> dict:
        res = {"CPU": 8.0, "memory": 3.2e10, "node:" + ip: 1.0}
        if head:
            res["node:__internal_head__"] = 1.0
        else:
            res.update({"GPU": 8.0, "gpu_model:L40S": 8.0})
        labels = {"ray.io/node-id": f"{i:056x}"} | ({} if head else {"llmfleet-weights": WEIGHTS})
        n = NodeState(
            node_id=f"{i:056x}", node_ip=ip, is_head_node=head, state="ALIVE" if alive else "DEAD",
            state_message=None if alive else "health check failed", node_name=ip, resources_total=res,
            labels=labels, start_time_ms=1_765_000_000_000, end_time_ms=None,
        )  # fmt: skip
        return dataclasses.asdict(n)

    return [one(0, head_ip, True)] + [one(i + 1, ip, False) for i, ip in enumerate(worker_ips)]


def serve_doc(replicas: list[tuple[str, str]]) -> dict:
    """Serve's `GET /api/serve/applications/`, through Ray's ServeInstanceDetails: the LLM
    deployment's replicas on (node IP, node id), the ingress on the head."""
    from ray.serve.schema import ApplicationDetails, DeploymentDetails, ReplicaDetails, ServeInstanceDetails

    def rep(i: int, ip: str, nid: str, dep: str) -> ReplicaDetails:
        return ReplicaDetails(
            replica_id=f"{dep}#{i:04d}", state="RUNNING", start_time_s=1.765e9, node_id=nid, node_ip=ip,
            actor_id=f"{i:032x}", actor_name=f"SERVE_REPLICA::llm#{dep}#{i:04d}", pid=100 + i,
        )  # fmt: skip

    def dep(name: str, reps: list[ReplicaDetails]) -> DeploymentDetails:
        return DeploymentDetails(
            name=name, status="HEALTHY", status_trigger="CONFIG_UPDATE_COMPLETED", message="",
            deployment_config={"name": name}, target_num_replicas=len(reps), required_resources={},
            replicas=reps,
        )  # fmt: skip

    llm = "LLMServer:deepseek-ai--DeepSeek-R1"
    deps = {
        llm: dep(llm, [rep(i, ip, nid, "llm") for i, (ip, nid) in enumerate(replicas)]),
        "BearerOpenAiIngress": dep("BearerOpenAiIngress", [rep(9, "10.42.0.10", f"{0:056x}", "ingress")]),
    }
    app_ = ApplicationDetails(
        name="llm", route_prefix="/", docs_path=None, status="RUNNING", message="",
        last_deployed_time_s=1.765e9, source="declarative", deployments=deps, external_scaler_enabled=False,
    )  # fmt: skip
    return ServeInstanceDetails(proxies={}, applications={"llm": app_}).model_dump(
        mode="json", exclude_unset=True
    )


def head_stdout(head_ip: str, worker_ips: list[str], monkeypatch) -> str:
    """What `python -m ray_cluster.node status --json --compact` prints on the head: its
    `cluster` part is cluster_status.gather over the recorded Ray and Serve answers."""
    nodes = ray_nodes(head_ip, worker_ips)
    monkeypatch.setattr(cluster_status, "_list_nodes", lambda dashboard, timeout: nodes)
    by_ip = {n["node_ip"]: n["node_id"] for n in nodes}
    doc = serve_doc([(ip, by_ip[ip]) for ip in worker_ips])
    monkeypatch.setattr(cluster_status, "serve_document", lambda dashboard, timeout: doc)
    report = {
        "nodes": [],
        "serve": {"llm": "RUNNING"},
        "placements": [[ip] for ip in worker_ips],
        "gpus_total": 8.0 * len(worker_ips),
        "gpus_available": 0.0,
        "cluster": cluster_status.gather("http://127.0.0.1:8265"),
        "deployed_serve_config": "ab" * 32,
        "serve_config": "ab" * 32,
    }
    return json.dumps(report, separators=(",", ":"))


def test_cluster_report_from_rays_answers():
    nodes = cluster_status.node_rows(ray_nodes("10.42.0.10", ["10.42.1.5", "10.42.1.6"]))
    assert [(n["ip"], n["is_head"], n["gpus"], n["weights"]) for n in nodes] == [
        ("10.42.0.10", True, 0.0, None),
        ("10.42.1.5", False, 8.0, WEIGHTS),
        ("10.42.1.6", False, 8.0, WEIGHTS),
    ]
    assert nodes[1]["gpu_model"] == {"L40S": 8.0} and all(n["alive"] for n in nodes)
    apps = cluster_status.serve_rows(serve_doc([("10.42.1.5", "n1"), ("10.42.1.6", "n2")]))
    llm = apps[0]["deployments"][1]
    assert apps[0]["status"] == "RUNNING" and llm["name"].startswith("LLMServer:")
    assert [(r["state"], r["node_ip"], r["node_id"]) for r in llm["replicas"]] == [
        ("RUNNING", "10.42.1.5", "n1"),
        ("RUNNING", "10.42.1.6", "n2"),
    ]
    assert llm["target_replicas"] == 2


def test_gather_reports_an_unreachable_dashboard_in_place_of_raising():
    # A closed port: the state API and Serve's REST API both fail, each as one line.
    doc = cluster_status.gather("http://127.0.0.1:9", timeout=1)
    assert doc["nodes"] == [] and doc["applications"] == []
    assert (
        doc["nodes_error"].startswith("Ray state API at http://127.0.0.1:9")
        and "\n" not in doc["nodes_error"]
    )
    assert doc["serve_error"].startswith("Serve REST API at http://127.0.0.1:9")


def test_the_head_command_is_one_the_node_cli_parses():
    [line] = st_aws.head_status_command("llmfleet-head")
    argv = line.split()
    assert argv[:4] == ["docker", "exec", "llmfleet-head", "python"]
    a = node.build_parser().parse_args(argv[6:])
    assert a.cmd == "status" and a.json and a.compact and a.cluster and a.serve_config.endswith("serve.yaml")


def test_parse_head_report_errors_are_one_line():
    for stdout, needle in (
        ("", "not JSON: (no output)"),
        ('{"nodes": [', "not JSON"),
        ('{"nodes": [], "serve": {}}', "predates the cluster report"),
    ):
        with pytest.raises(StatusError) as e:
            st_aws.parse_head_report(stdout)
        assert needle in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- moto: the AWS side


@pytest.fixture(scope="module")
def moto():
    with pytest.MonkeyPatch.context() as mp:
        for k, v in DUMMY_CREDS.items():
            mp.setenv(k, v)
        with MotoServer() as server:
            yield server


def moto_stack(moto, slots: int = 2) -> dict:
    """The head group and one group per worker slot in moto (which launches and tags their
    instances as EC2 Auto Scaling does); the stack outputs that name them."""
    ec2, asg = moto.client("ec2"), moto.client("autoscaling")
    for role, itype in (("head", "m7i.2xlarge"), ("worker", "g6e.xlarge")):
        ec2.create_launch_template(
            LaunchTemplateName=f"t-{role}", LaunchTemplateData={"ImageId": MOTO_AMI, "InstanceType": itype}
        )
    groups = ["llmfleet-t-head"] + [f"llmfleet-t-worker-{i}" for i in range(slots)]
    for g in groups:
        asg.create_auto_scaling_group(
            AutoScalingGroupName=g,
            LaunchTemplate={"LaunchTemplateName": "t-head" if g.endswith("head") else "t-worker"},
            MinSize=1, MaxSize=1, DesiredCapacity=1, AvailabilityZones=[f"{REGION}a"],
        )  # fmt: skip
    raw = json.loads((DATA / "stack_outputs_prod.json").read_text())
    raw.pop("head_instance_id")
    raw.update(
        head_group=groups[0], worker_groups=groups[1:], cluster_name="llmfleet-t",
        log_groups=["/llmfleet/llmfleet-t/boot", "/llmfleet/llmfleet-t/containers"],
    )  # fmt: skip
    return raw


def instances(moto, group: str) -> list[dict]:
    g = moto.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[group])
    ids = [i["InstanceId"] for i in g["AutoScalingGroups"][0]["Instances"]]
    if not ids:
        return []
    res = moto.client("ec2").describe_instances(InstanceIds=ids)["Reservations"]
    return [i for r in res for i in r["Instances"]]


class HeadSsm:
    """moto's SSM client; the head's Run Command output is the recorded report (moto runs nothing)."""

    def __init__(self, ssm, stdout: str):
        self._ssm, self.stdout, self.sent = ssm, stdout, []

    def __getattr__(self, name):
        return getattr(self._ssm, name)

    def send_command(self, **kw):
        self.sent.append((kw["InstanceIds"], kw["Parameters"]["commands"]))
        return self._ssm.send_command(**kw)

    def get_command_invocation(self, CommandId, InstanceId):
        self._ssm.get_command_invocation(CommandId=CommandId, InstanceId=InstanceId)  # a real call
        return {"Status": "Success", "ResponseCode": 0, "StandardOutputContent": self.stdout}


class Amp(JsonServer):
    """An AMP-like query API on 127.0.0.1: answers only SigV4-signed `aps` requests (403 else),
    with recorded Prometheus answers for the figures the status asks for."""

    def __init__(self, answers: dict[str, float]):
        self.answers = answers
        super().__init__(self._answer)
        self.url = f"{self.base}/workspaces/ws-test"

    @property
    def auth(self) -> list[str]:
        return [r.headers.get("Authorization", "") for r in self.requests]

    def _answer(self, req) -> tuple[int, dict]:
        auth = req.headers.get("Authorization", "")
        url = urllib.parse.urlparse(req.path)
        scope = f"/{REGION}/aps/aws4_request"
        if not (auth.startswith("AWS4-HMAC-SHA256 Credential=testing/") and scope in auth
                and req.headers.get("X-Amz-Date")):  # fmt: skip
            return 403, {"message": "Missing Authentication Token"}
        if not url.path.endswith("/api/v1/query"):
            return 404, {"message": "not found"}
        v = self.answers.get(urllib.parse.parse_qs(url.query)["query"][0])
        result = [] if v is None else [{"metric": {}, "value": [time.time(), str(v)]}]
        return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}


@pytest.fixture
def amp():
    q = live.queries(MODEL)
    server = Amp(
        {q["generation_tokens_per_s"]: 41.5, q["measured_tokens_per_s"]: 52.0, q["requests_finished"]: 120}
    )
    yield server
    server.close()


def seed_node_scripts(ssm, stack: str = "t") -> dict[str, str]:
    names = {r: f"/llmfleet/{stack}/node/{r}" for r in ("head", "worker")}
    for role, name in names.items():
        ssm.put_parameter(Name=name, Value=f"{role}-v1", Type="String", Tier="Advanced")
        ssm.label_parameter_version(Name=name, ParameterVersion=1, Labels=[rs.GOOD_LABEL])
        ssm.put_parameter(Name=name, Value=f"{role}-v2", Type="String", Overwrite=True)
    return names


def test_deployed_status_from_moto_and_the_heads_recorded_report(moto, amp, monkeypatch):
    moto.reset()
    raw = moto_stack(moto)
    raw["metrics_query_url"] = amp.url
    outputs = StackOutputs.parse(raw)
    workers = [instances(moto, g)[0] for g in outputs.worker_groups]
    worker_ips = [w["PrivateIpAddress"] for w in workers]
    head = instances(moto, outputs.head_group)[0]
    ssm = HeadSsm(moto.client("ssm"), head_stdout(outputs.head_private_ip, worker_ips, monkeypatch))
    seed_node_scripts(ssm)
    # worker-1's health agent marked its instance Unhealthy (Auto Scaling will replace it)
    moto.client("autoscaling").set_instance_health(
        InstanceId=workers[1]["InstanceId"], HealthStatus="Unhealthy"
    )
    clients = st_aws.AwsClients(moto.client("ec2"), moto.client("autoscaling"), ssm)
    runner = rs.SsmRunner(ssm, poll_s=0, sleep=lambda s: None)
    rep = st_aws.deployed_status(
        "t", outputs, clients, runner=runner, metrics_fetch=sigv4_fetch(_creds(), REGION), price_stack="prod"
    )
    # the head's report was asked of the head group's running instance, with the node CLI
    assert ssm.sent == [([head["InstanceId"]], st_aws.head_status_command("llmfleet-head"))]
    # hosts: each group's instance, lifecycle and health, from moto's Auto Scaling and EC2
    assert [(h.name, h.group, h.instance_id, h.lifecycle_state) for h in rep.hosts] == [
        ("head", "llmfleet-t-head", head["InstanceId"], "InService"),
        ("worker-0", "llmfleet-t-worker-0", workers[0]["InstanceId"], "InService"),
        ("worker-1", "llmfleet-t-worker-1", workers[1]["InstanceId"], "InService"),
    ]
    assert [h.ip for h in rep.hosts] == [outputs.head_private_ip, *worker_ips]
    assert [h.status for h in rep.hosts] == ["alive", "alive", "lost"] and rep.lost == ["worker-1"]
    assert rep.hosts[2].health == "Unhealthy" and "Unhealthy" in rep.hosts[2].reason
    # Ray: nodes and GPUs, the weights fingerprint of each worker
    assert rep.gpus_total == 16 and [n.weights for n in rep.nodes] == [None, WEIGHTS, WEIGHTS]
    # Serve: both replicas and the nodes they run on
    llm = next(d for d in rep.applications[0].deployments if d.name.startswith("LLMServer:"))
    assert llm.running == 2 and [r.node_ip for r in llm.replicas] == worker_ips
    assert rep.serve == {"llm": "RUNNING"} and rep.deployed_serve_config == "ab" * 32
    # the last rollout: `pulumi up` wrote version 2, the hosts run version 1
    assert rep.rollout.outcome == "pending" and "run `llmfleet rollout`" in rep.rollout.detail
    # live figures from the metrics workspace, signed, priced as the prod stack's workers
    assert all(a.startswith("AWS4-HMAC-SHA256") for a in amp.auth)
    m = rep.metrics
    assert (m.source, m.error, m.generation_tokens_per_s, m.measured_tokens_per_s) == ("amp", "", 41.5, 52.0)
    assert m.targets_total is None and m.requests_finished == 120 and m.requests_running is None
    assert m.cost.usd_per_million_output_tokens_measured == pytest.approx(
        m.cost.usd_per_hour / (52.0 * 3600) * 1e6, rel=1e-3
    )
    # one renderer for both targets
    con = Console(record=True, width=250)
    render(rep, con)
    text = con.export_text()
    for needle in (workers[0]["InstanceId"], "Unhealthy", "2/2 running", "AMP workspace", "41.5",
                   "last rollout: pending", WEIGHTS[:16]):  # fmt: skip
        assert needle in text, needle
    nodes_rows = [ln for ln in text.splitlines() if "llm/LLMServer" in ln]
    assert [ip for ip in worker_ips if any(ip in ln for ln in nodes_rows)] == worker_ips
    # --json dumps the model
    assert json.loads(json.dumps(rep.to_json()))["hosts"][2]["status"] == "lost"


def _creds():
    import boto3

    return boto3.session.Session(region_name=REGION).get_credentials()


def test_amp_refuses_an_unsigned_query_and_the_status_says_so_in_one_line(amp):
    from infra.status.metrics import read_metrics

    m = read_metrics(amp.url, MODEL, source="amp", with_targets=False)  # plain GET: no signature
    assert m.error and "HTTP 403" in m.error and "Missing Authentication Token" in m.error
    assert "\n" not in m.error


def test_last_rollout_pending_rolled_back_done_and_in_progress(moto):
    moto.reset()
    ssm = moto.client("ssm")
    names = seed_node_scripts(ssm)
    assert st_aws.last_rollout(ssm, "t").outcome == "pending"
    versions = {r: rs.role_versions(ssm, r, n) for r, n in names.items()}
    runner = rs.SsmRunner(ssm)
    # a failed rollout of the worker's version 2 restored version 1 as version 3
    runner.restore(versions["worker"])
    runner.promote(versions["head"])
    r = st_aws.last_rollout(ssm, "org/llmfleet/t")
    assert r.outcome == "rolled-back"
    assert "worker: version 2 failed its rollout; this restores version 1" in r.detail
    assert "head: version 2 rolled out" in r.detail
    assert [(x.role, x.newest, x.good) for x in r.roles] == [("head", 2, 2), ("worker", 3, 3)]
    # the next `pulumi up` + rollout of a fixed script: done
    ssm.put_parameter(Name=names["worker"], Value="worker-v4", Overwrite=True)
    ssm.label_parameter_version(Name=names["worker"], ParameterVersion=4, Labels=[rs.GOOD_LABEL])
    assert st_aws.last_rollout(ssm, "t").outcome == "done"
    with rs.rollout_lock(ssm, "t", "alice@laptop"):
        r = st_aws.last_rollout(ssm, "t")
        assert r.outcome == "in-progress" and "alice@laptop" in r.detail


def test_a_head_group_without_an_instance_is_lost_and_ray_is_not_asked(moto):
    moto.reset()
    raw = moto_stack(moto, slots=1)
    moto.client("autoscaling").update_auto_scaling_group(
        AutoScalingGroupName=raw["head_group"], MinSize=0, DesiredCapacity=0
    )
    assert instances(moto, raw["head_group"]) == []  # moto scales the group in at once
    outputs = StackOutputs.parse(raw)
    ssm = HeadSsm(moto.client("ssm"), "")
    rep = st_aws.deployed_status(
        "t", outputs, st_aws.AwsClients(moto.client("ec2"), moto.client("autoscaling"), ssm)
    )
    assert ssm.sent == []
    assert rep.hosts[0].status == "lost" and "no instance" in rep.hosts[0].reason
    assert rep.nodes_error.startswith("no running head instance") and rep.rollout.outcome == "unknown"
    assert (rep.hosts[1].status, rep.hosts[1].reason) == ("lost", "head unreachable, state unknown")
    assert rep.metrics.source == "none"


# ---------------------------------------------------------------- logs


def test_logs_by_node_since_and_follow_from_cloudwatch(moto):
    moto.reset()
    raw = moto_stack(moto, slots=2)
    outputs = StackOutputs.parse(raw)
    ec2, logs = moto.client("ec2"), moto.client("logs")
    w0 = instances(moto, outputs.worker_groups[0])[0]["PrivateIpAddress"]
    boot, containers = outputs.log_groups
    for g in outputs.log_groups:
        logs.create_log_group(logGroupName=g)
    now = int(time.time() * 1000)
    streams = {
        (boot, f"worker-{w0}"): ["staging weights", "weights verified"],
        (containers, f"worker-{w0}/llmfleet-node"): ["ray start --address=10.42.0.10:6379"],
        # another host whose IP starts with this one's: never this node's
        (containers, f"worker-{w0}9/llmfleet-node"): ["someone else"],
        (containers, f"head-{outputs.head_private_ip}/llmfleet-head"): ["serve deploy: applied"],
    }
    for i, ((g, s), lines) in enumerate(streams.items()):
        logs.create_log_stream(logGroupName=g, logStreamName=s)
        logs.put_log_events(
            logGroupName=g, logStreamName=s,
            logEvents=[{"timestamp": now - 60_000 + i * 1000 + j, "message": m} for j, m in enumerate(lines)],
        )  # fmt: skip
    logs.put_log_events(
        logGroupName=containers, logStreamName=f"head-{outputs.head_private_ip}/llmfleet-head",
        logEvents=[{"timestamp": now - 3_600_000, "message": "an hour ago"}],
    )  # fmt: skip
    stream = st_logs.node_stream_name(outputs, "worker-0", ec2)
    assert stream == f"worker-{w0}"
    got = st_logs.read_events(logs, st_logs.log_groups(outputs, "all"), stream, now - 600_000)
    assert [e.message for e in got] == [
        "staging weights",
        "weights verified",
        "ray start --address=10.42.0.10:6379",
    ]
    assert got[0].line().endswith(f"worker-{w0} staging weights")
    head = st_logs.read_events(
        logs, [containers], st_logs.node_stream_name(outputs, "head", ec2), now - 600_000
    )
    assert [e.message for e in head] == ["serve deploy: applied"]  # --since 10m leaves the older line out
    # --follow: what is there, then each new event once
    it = st_logs.follow(
        logs, [containers], "head-" + outputs.head_private_ip, now - 600_000, sleep=lambda s: new()
    )

    def new():
        logs.put_log_events(
            logGroupName=containers, logStreamName=f"head-{outputs.head_private_ip}/llmfleet-head",
            logEvents=[{"timestamp": int(time.time() * 1000), "message": "replica restarted"}],
        )  # fmt: skip

    seen = []
    for e in it:
        seen.append(e.message)
        if len(seen) == 2:
            break
    assert seen == ["serve deploy: applied", "replica restarted"]
    polled = list(st_logs.follow(logs, [containers], "head-" + outputs.head_private_ip, now - 600_000, polls=3,
                                 sleep=lambda s: None))  # fmt: skip
    assert [e.message for e in polled] == ["serve deploy: applied", "replica restarted"]  # no repeats


@pytest.mark.parametrize(
    ("since", "ok"),
    [("10m", 600), ("30s", 30), ("2h", 7200), ("1d", 86400), ("0m", None), ("5x", None), ("", None)],
)
def test_parse_since(since, ok):
    if ok is None:
        with pytest.raises(st_logs.LogsError, match=r"--since .*allowed a positive whole number"):
            st_logs.parse_since(since)
    else:
        assert st_logs.parse_since(since) == ok


def test_bad_node_and_source_are_one_line_errors():
    outputs = StackOutputs.parse(moto_stack_raw())
    for node_, needle in (("worker-7", "allowed worker-0..worker-2"), ("gpu1", "allowed head or worker-N"),
                          ("head;rm", "allowed head or worker-N")):  # fmt: skip
        with pytest.raises(st_logs.LogsError) as e:
            st_logs.node_stream_name(outputs, node_, ec2=None)
        assert needle in str(e.value) and node_ in str(e.value)
    with pytest.raises(st_logs.LogsError, match="--source 'x': allowed all, containers, boot"):
        st_logs.log_groups(outputs, "x")


def moto_stack_raw() -> dict:
    raw = json.loads((DATA / "stack_outputs_prod.json").read_text())
    raw["log_groups"] = ["/llmfleet/llmfleet-prod/boot", "/llmfleet/llmfleet-prod/containers"]
    return raw


# ---------------------------------------------------------------- the CLI: endpoint, chat, status, logs


@pytest.fixture
def outputs_file(moto, tmp_path, amp):
    moto.reset()
    raw = moto_stack(moto)
    raw["metrics_query_url"] = amp.url
    moto.client("ssm").put_parameter(Name=raw["token_parameter"], Value="tok-s3cr3t", Type="SecureString")
    f = tmp_path / "outputs.json"
    f.write_text(json.dumps(raw))
    return f


def cli(moto, *args: str, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    return RUNNER.invoke(app, list(args))


def test_endpoint_prints_the_token_only_with_show_token(moto, outputs_file, monkeypatch):
    r = cli(moto, "endpoint", "--stack", "t", "--outputs", str(outputs_file), monkeypatch=monkeypatch)
    assert r.exit_code == 0 and "endpoint-nlb" in r.stdout and "tok-s3cr3t" not in r.stdout
    assert "--show-token prints it" in r.stdout
    r = cli(moto, "endpoint", "--stack", "t", "--outputs", str(outputs_file), "--show-token", "--json",
            monkeypatch=monkeypatch)  # fmt: skip
    assert r.exit_code == 0 and json.loads(r.stdout)["token"] == "tok-s3cr3t"


def test_chat_sends_the_ssm_token_as_bearer_and_never_prints_it(moto, outputs_file, monkeypatch):
    with JsonServer(lambda req: (200, chat_completion(MODEL, "Hi\x07", 3, 2))) as srv:
        raw = json.loads(outputs_file.read_text())
        raw["endpoint_url"] = f"{srv.base}/v1"
        outputs_file.write_text(json.dumps(raw))
        r = cli(
            moto, "chat", "Hello", "--stack", "t", "--outputs", str(outputs_file), monkeypatch=monkeypatch
        )
    seen = [(q.path, q.headers.get("Authorization"), q.json()) for q in srv.requests]
    assert r.exit_code == 0, r.output
    [(path, auth, body)] = seen
    assert path == "/v1/chat/completions" and auth == "Bearer tok-s3cr3t" and body["model"] == MODEL
    assert body["messages"] == [{"role": "user", "content": "Hello"}]
    assert "Hi\\x07" in r.stdout and "tok-s3cr3t" not in r.output


def test_status_cli_json_through_moto_reports_a_silent_head_in_one_line(moto, outputs_file, monkeypatch):
    # moto answers the SSM command with no output (it runs nothing): the status still shows the
    # groups, the rollout and the metrics, and says what the head did not report.
    seed_node_scripts(moto.client("ssm"))
    r = cli(moto, "status", "--stack", "t", "--outputs", str(outputs_file), "--price-stack", "prod", "--json",
            monkeypatch=monkeypatch)  # fmt: skip
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["target"] == "aws" and [h["name"] for h in rep["hosts"]] == ["head", "worker-0", "worker-1"]
    assert all(h["lifecycle_state"] == "InService" for h in rep["hosts"])
    assert "the head's status is not JSON" in rep["nodes_error"]
    assert rep["rollout"]["outcome"] == "pending"
    assert rep["metrics"]["generation_tokens_per_s"] == 41.5 and rep["metrics"]["cost"]["stack"] == "prod"


def test_day2_commands_without_pulumi_or_with_a_bad_outputs_file_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no pulumi CLI
    for cmd in (["status"], ["logs"], ["endpoint"], ["chat", "hi"]):
        r = RUNNER.invoke(app, [*cmd, "--stack", "prod"])
        assert r.exit_code == 2 and "pulumi CLI not found" in r.output and "--outputs FILE" in r.output
    bad = tmp_path / "o.json"
    bad.write_text(json.dumps({"endpoint_url": "x"}))
    r = RUNNER.invoke(app, ["endpoint", "--stack", "prod", "--outputs", str(bad)])
    assert r.exit_code == 2 and "is missing" in r.output and "Traceback" not in r.output


def test_a_head_image_without_the_cluster_report_says_roll_it_out():
    class OldHead:
        def run(self, instance_id, commands, comment, timeout_s):
            return False, "Failed (exit 2): error: unrecognized arguments: --compact --cluster", ""

    with pytest.raises(StatusError) as e:
        st_aws.head_report(OldHead(), "i-0abc", "llmfleet-head", 60)
    assert "predates the cluster report" in str(e.value) and "llmfleet up" in str(e.value)


def test_wake_ends_on_ups_readiness_wait_and_not_ready_is_one_error_line(moto, outputs_file, monkeypatch):
    """`wake` waits as `up` does (infra.deploy.wait_stack_ready): on the head group's running
    instance, for the Serve config this stack renders; not ready is one error line on stderr,
    exit 1."""
    from infra import deploy as d
    from infra.stack.files import load_config

    seen = []

    def ready(ssm, head, cmds, **kw):
        seen.append((head, kw["expect_fingerprint"]))
        return d.Readiness(False, "not ready after 60 s: completion: HTTP 503")

    monkeypatch.setattr(d, "wait_head_ready", ready)
    args = ("wake", "--stack", "prod", "--outputs", str(outputs_file), "--timeout", "60")
    r = cli(moto, *args, monkeypatch=monkeypatch)
    assert r.exit_code == 1 and "woke 0 of 2 worker slots (all were up)" in r.stdout
    assert r.stderr.strip() == "error: not ready: not ready after 60 s: completion: HTTP 503"
    groups = moto.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=["llmfleet-t-head"]
    )
    head = groups["AutoScalingGroups"][0]["Instances"][0]["InstanceId"]
    assert seen == [(head, d.expected_fingerprint(load_config("prod")))]
