"""Metrics without a cluster: the Grafana dashboards against the installed Ray, the Prometheus
configs through Debian's promtool, the host side of the user data, and the prod program's
metrics pieces (AMP, agent, DCGM, log groups with retention, least-privilege IAM, outputs).

The local cluster's real Prometheus is exercised in tests/test_local.py (metrics block)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import ray
import yaml
from ray.dashboard.modules.metrics.dashboards.default_dashboard_panels import default_dashboard_config
from ray.dashboard.modules.metrics.dashboards.serve_deployment_dashboard_panels import (
    serve_deployment_dashboard_config,
)
from ray.dashboard.modules.metrics.dashboards.serve_llm_dashboard_panels import serve_llm_dashboard_config
from ray.dashboard.modules.metrics.default_impl import get_serve_dashboard_config

from infra.boot import metrics as host_metrics
from infra.boot.cloud_init import NodeSpec, render_user_data
from infra.components.observability import MIRRORS, log_group_names, mirror_tag
from infra.local import live, prometheus
from infra.program.offline import OfflineError
from infra.rayconf import dashboards
from infra.stack.outputs import StackOutputs
from policy.resources import iam_document_problems
from tests.captures import capture
from tests.local_state_fixtures import new_state
from tests.node_scripts import node_script
from tests.shell import assert_bash_and_shellcheck

RAY_CONFIGS = {
    "ray-serve-llm.json": serve_llm_dashboard_config,
    "ray-serve.json": get_serve_dashboard_config(),
    "ray-serve-deployment.json": serve_deployment_dashboard_config,
    "ray-default.json": default_dashboard_config,
}
# metric names, not label names (a label is followed by =, =~, != or !~)
METRIC = re.compile(r"\b(ray_[A-Za-z0-9_]+|DCGM_FI_[A-Z0-9_]+)\b(?!\s*[=!])")


def _config_panels(cfg) -> list:
    return [*cfg.panels, *(p for row in cfg.rows for p in row.panels)]


def _file_panels(doc: dict) -> list[dict]:
    out = []
    for p in doc["panels"]:
        if p.get("type") == "row":
            out += p.get("panels", [])
        else:
            out.append(p)
    return out


# ---------------------------------------------------------------- dashboards vs the installed Ray


@pytest.fixture(scope="module")
def generated() -> dict[str, dict]:
    return dashboards.dashboards()


@pytest.mark.parametrize("name", sorted(RAY_CONFIGS))
def test_ray_dashboards_are_the_installed_rays_panels(generated, name):
    """Every panel and every query of Ray's own dashboard definition, as this Ray ships it."""
    doc, cfg = generated[name], RAY_CONFIGS[name]
    assert doc["uid"] == cfg.default_uid and f"rayVersion:{ray.__version__}" in doc["tags"]
    want = _config_panels(cfg)
    got = _file_panels(doc)
    assert [p["title"] for p in got] == [p.title for p in want]
    for g, w in zip(got, want, strict=True):
        exprs = " ".join(t["expr"] for t in g["targets"])
        assert set(METRIC.findall(exprs)) == set(METRIC.findall(" ".join(t.expr for t in w.targets))), w.title


def test_live_queries_use_the_metric_names_rays_serve_llm_dashboard_uses(generated):
    """A vLLM/Ray rename shows up here: `local status` reads what Ray's own dashboard reads."""
    in_dashboard = set(METRIC.findall(json.dumps(generated["ray-serve-llm.json"])))
    for key, promql in live.queries("m").items():
        names = set(METRIC.findall(promql))
        assert names and names <= in_dashboard | {n + "_bucket" for n in in_dashboard}, (key, names)


def test_gpu_dashboard_has_every_dcgm_figure_and_rays_datasource_variable(generated):
    doc = generated[dashboards.GPU_FILE]
    metrics = [METRIC.findall(p["targets"][0]["expr"])[0] for p in _file_panels(doc)]
    assert metrics == [m for m, *_ in dashboards.DCGM_PANELS]
    assert {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_GPU_TEMP"} <= set(metrics)
    ray_ds = next(v for v in generated["ray-default.json"]["templating"]["list"] if v["name"] == "datasource")
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"] == ray_ds and "Hostname" in variables
    ray_ref = _file_panels(generated["ray-default.json"])[0]["datasource"]
    assert all(p["datasource"] == ray_ref for p in _file_panels(doc))


def test_write_lays_out_a_grafana_provisioning_tree(tmp_path):
    url = "https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws-1"
    files = dashboards.write(tmp_path, dashboards.Datasource(url, sigv4_region="us-east-1"))
    rel = sorted(str(p.relative_to(tmp_path)) for p in files)
    assert rel == sorted(
        ["provisioning/dashboards/llmfleet.yaml", "provisioning/datasources/llmfleet.yaml"]
        + [f"dashboards/{n}" for n in [*dashboards.RAY_DASHBOARDS, dashboards.GPU_FILE]]
    )
    [ds] = yaml.safe_load((tmp_path / "provisioning/datasources/llmfleet.yaml").read_text())["datasources"]
    assert ds["url"] == url and ds["jsonData"] == {
        "sigV4Auth": True,
        "sigV4AuthType": "default",
        "sigV4Region": "us-east-1",
    }
    [prov] = yaml.safe_load((tmp_path / "provisioning/dashboards/llmfleet.yaml").read_text())["providers"]
    assert prov["options"]["path"] == "/etc/grafana/llmfleet/dashboards"
    assert (
        json.loads((tmp_path / "dashboards/ray-serve-llm.json").read_text())["title"] == "Serve LLM Dashboard"
    )
    local = dashboards.datasource_doc(dashboards.Datasource("http://10.0.0.1:9090"))["datasources"][0]
    assert "jsonData" not in local


# ---------------------------------------------------------------- Prometheus configs, by promtool


def promtool_check(path, *extra: str) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    assert tool, "promtool missing: apt-get install -y prometheus (scripts/system-deps.sh)"
    return subprocess.run([tool, "check", "config", *extra, str(path)], capture_output=True, text=True)


def test_local_prometheus_config_reads_rays_service_discovery_file(tmp_path):
    (tmp_path / prometheus.SD_FILE).write_text('[{"labels": {"job": "ray"}, "targets": ["10.0.0.1:1"]}]')
    doc = prometheus.config_doc(str(tmp_path), "c1")
    [job] = doc["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == [str(tmp_path / prometheus.SD_FILE)]
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(doc))
    r = promtool_check(cfg)
    assert r.returncode == 0, r.stdout + r.stderr


def test_head_agent_config_scrapes_ray_and_dcgm_and_remote_writes_with_sigv4(tmp_path):
    m = host_metrics.HostMetrics(
        "b", "c", remote_write_url="https://aps/ws-1/api/v1/remote_write", cluster="x"
    )
    doc = host_metrics.prometheus_config(m, "us-east-1")
    assert doc["remote_write"] == [{"url": m.remote_write_url, "sigv4": {"region": "us-east-1"}}]
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    assert set(jobs) == {"ray", "dcgm"}
    relabel = jobs["dcgm"]["relabel_configs"]
    assert relabel[-1]["replacement"] == f"${{1}}:{host_metrics.DCGM_PORT}"
    text = yaml.safe_dump(doc).replace(host_metrics.HEAD_IP_PLACEHOLDER, "10.0.0.1")
    cfg = tmp_path / "agent.yml"
    cfg.write_text(text.replace(host_metrics.SD_DIR, str(tmp_path)))
    (tmp_path / "ray.json").write_text("[]")
    r = promtool_check(cfg, "--agent")
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------- the hosts' user data

COMMON = dict(
    region="us-east-1",
    image_ref="1.dkr.ecr.us-east-1.amazonaws.com/l@sha256:" + "ab" * 32,
    weights_s3_uri="s3://w/p/",
    model_path="/opt/m/r1",
    weights_path="/opt/m",
    ray_token_parameter="/l/ray",
)
HM = host_metrics.HostMetrics(
    boot_log_group="/llmfleet/x/boot",
    container_log_group="/llmfleet/x/containers",
    remote_write_url="https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws-1/api/v1/remote_write",
    prometheus_image="1.dkr.ecr.us-east-1.amazonaws.com/l@sha256:" + "cd" * 32,
    dcgm_image="1.dkr.ecr.us-east-1.amazonaws.com/l@sha256:" + "ef" * 32,
    cluster="x",
)
SPECS = {
    "head": NodeSpec(
        role="head",
        token_parameter="/l/tok",
        serve_config="a: 1\n",
        tensor_parallel_size=8,
        pipeline_parallel_size=1,
        metrics=HM,
        **COMMON,
    ),  # fmt: skip
    "worker": NodeSpec(role="worker", head_ip="10.0.0.1", gpus=8, gpu_model="L40S", metrics=HM, **COMMON),
}


@pytest.mark.parametrize("role", ["head", "worker"])
def test_user_data_with_metrics_passes_bash_and_shellcheck(role, tmp_path):
    script = tmp_path / f"{role}.sh"
    script.write_text(render_user_data(SPECS[role]))
    assert_bash_and_shellcheck(script)


def test_user_data_ships_logs_everywhere_dcgm_on_workers_and_the_agent_on_the_head():
    head, worker = (render_user_data(SPECS[r]) for r in ("head", "worker"))
    for text in (head, worker):
        assert '"awslogs-group": "/llmfleet/x/containers"' in text and '"live-restore": true' in text
        assert "awslogs-group=/llmfleet/x/boot" in text and "--entrypoint tail" in text
        assert "--no-healthcheck --entrypoint tail" in text  # no Ray node in it to ask
        assert "-n +1 -F /var/log/llmfleet-boot.log" in text
        # logging is set before any container starts; agents after the node container
        assert text.index("log-driver") < text.index("docker run --detach --name llmfleet-")
    assert HM.dcgm_image in worker and HM.prometheus_image not in worker and "-a :9400" in worker
    assert HM.prometheus_image in head and HM.dcgm_image not in head
    assert (
        f"--web.listen-address={host_metrics.PROMETHEUS_LISTEN}" in head and "--enable-feature=agent" in head
    )
    assert HM.remote_write_url in head and host_metrics.RAY_SD_FILE in head
    assert "llmfleet-dcgm" not in head and "llmfleet-prometheus" not in worker
    plain = render_user_data(NodeSpec(role="worker", head_ip="10.0.0.1", gpus=8, **COMMON))
    assert "awslogs" not in plain and "dcgm" not in plain


# ---------------------------------------------------------------- the prod program


@pytest.fixture(scope="module")
def prod():
    return capture("prod")


def test_prod_preview_holds_store_endpoint_collector_logs_and_iam(prod):
    [ws] = prod.of_type("aws:amp/workspace:Workspace")
    name = prod.outputs["cluster_name"]
    assert ws["inputs"]["alias"] == name
    [vpce] = [
        e
        for e in prod.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")
        if e["inputs"]["serviceName"].endswith(".aps-workspaces")
    ]
    vpce_sg = prod.named("net-vpce-sg")["outputs"]["id"]
    assert vpce["inputs"]["securityGroupIds"] == [vpce_sg] and vpce["inputs"]["privateDnsEnabled"]
    assert vpce["inputs"]["subnetIds"] == [prod.named("net-private")["outputs"]["id"]]
    groups = {
        g["inputs"]["name"]: g["inputs"]["retentionInDays"]
        for g in prod.of_type("aws:cloudwatch/logGroup:LogGroup")
    }
    assert groups == {n: prod.config.log_retention_days for n in log_group_names(name).values()}
    # the hosts pull the mirrored images from the stack's own repository
    repo = prod.named("registry-repo")["outputs"]["repositoryUrl"]
    mirrors = {
        i["name"]: i["inputs"] for i in prod.of_type("docker-build:index:Image") if "mirror" in i["name"]
    }
    assert {v["tags"][0] for v in mirrors.values()} == {f"{repo}:{mirror_tag(u)}" for u in MIRRORS.values()}
    assert {v["dockerfile"]["inline"].strip() for v in mirrors.values()} == {
        f"FROM {u}" for u in MIRRORS.values()
    }


def test_prod_metrics_iam_is_remote_write_on_its_workspace_and_logs_on_its_groups(prod):
    ws_arn = prod.of_type("aws:amp/workspace:Workspace")[0]["outputs"]["arn"]
    group_arns = sorted(g["outputs"]["arn"] for g in prod.of_type("aws:cloudwatch/logGroup:LogGroup"))
    pol = prod.named("observability-policy")
    doc = json.loads(pol["inputs"]["policy"])
    assert iam_document_problems(doc) == []
    actions = {a: s["Resource"] for s in doc["Statement"] for a in s["Action"]}
    assert actions["aps:RemoteWrite"] == ws_arn
    assert sorted(actions["logs:DescribeLogStreams"]) == group_arns
    assert sorted(actions["logs:PutLogEvents"]) == sorted(group_arns + [f"{a}:*" for a in group_arns])
    assert set(actions) == {
        "aps:RemoteWrite",
        "logs:DescribeLogStreams",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }
    attach = prod.named("observability-policy-attach")["inputs"]
    assert (
        attach["role"] == prod.named("iam-role")["outputs"]["name"]
        and attach["policyArn"] == pol["outputs"]["arn"]
    )


def test_prod_adds_no_ingress_and_its_hosts_boot_with_the_metrics_pieces(prod):
    obs_urn = prod.named("observability")["urn"]
    children = [r for r in prod.resources if r["parent"] == obs_urn]
    assert not [r for r in children if "ingress" in r["type"].lower() or "securityGroup" in r["type"]]
    # what each host runs: its node script (the SSM parameter its boot contract applies)
    head_script, worker_script = node_script(prod, "head"), node_script(prod, "worker")
    rw = (
        prod.of_type("aws:amp/workspace:Workspace")[0]["outputs"]["prometheusEndpoint"]
        + "api/v1/remote_write"
    )
    assert rw in head_script and "llmfleet-prometheus" in head_script and "llmfleet-dcgm" in worker_script


def test_prod_outputs_open_the_dashboards_and_logs(prod):
    out = StackOutputs.parse(prod.outputs)
    assert out.metrics_query_url and out.metrics_query_url in out.grafana_command
    assert (
        f"--sigv4-region {out.region}" in out.grafana_command and "llmfleet dashboards" in out.grafana_command
    )
    assert out.log_groups == list(log_group_names(out.cluster_name).values())
    assert out.logs_tail_command == f"aws logs tail {out.log_groups[1]} --follow --region {out.region}"


def test_existing_hosts_stack_still_exports_the_outputs_contract():
    out = StackOutputs.parse(capture("onprem-l20").outputs)
    assert out.provider == "existing" and out.grafana_command is None


def test_log_retention_is_a_stack_setting_with_a_one_line_error():
    cap = capture("prod", ["llmfleet:logRetentionDays=7"])
    assert {g["inputs"]["retentionInDays"] for g in cap.of_type("aws:cloudwatch/logGroup:LogGroup")} == {7}
    with pytest.raises((OfflineError, ValueError)) as e:
        capture("prod", ["llmfleet:logRetentionDays=10"])
    msg = str(e.value)
    assert (
        "llmfleet:logRetentionDays" in msg and "10" in msg and "allowed: 1, 3, 5" in msg and "\n" not in msg
    )


# ---------------------------------------------------------------- the local Prometheus, without a cluster


def test_prometheus_lifecycle_and_http_api_on_a_real_prometheus(tmp_path):
    """start -> ready -> queries (and a bad one as one line) -> stop leaves nothing behind."""
    from infra.local.hosts import Host
    from infra.local.layout import Ports

    if shutil.which(prometheus.BINARY) is None:
        pytest.skip("prometheus missing: apt-get install -y prometheus (scripts/system-deps.sh)")
    ports = Ports(gcs=0, dashboard=_free_port() - 1, http=0)
    st = new_state(tmp_path, "pt", temp_dir=str(tmp_path / "ray"))
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / prometheus.SD_FILE).write_text("[]")
    info = prometheus.start(st, Host("pt-h0", "127.0.0.1"), ports, tmp_path / "sd", tmp_path / "prom.log")
    try:
        url = info.url
        assert url == f"http://127.0.0.1:{ports.dashboard + 1}"
        assert prometheus.scalar(url, "vector(41) + 1") == 42
        assert prometheus.scalar(url, "ray_vllm_request_success_total") is None  # no series yet
        assert prometheus.targets(url) == []
        with pytest.raises(prometheus.PromError) as e:
            prometheus.query(url, "sum(")
        assert "HTTP 400" in str(e.value) and "\n" not in str(e.value)
        m = live.read_live(url, "m")
        assert m.source == "prometheus" and m.error == "" and m.requests_finished is None
    finally:
        st.prometheus = info
        removed = prometheus.stop(st, tmp_path / "sd", "pt")
    assert removed[0] == f"prometheus pid {info.pid}" and not (tmp_path / "sd" / "prometheus").exists()
    with pytest.raises(prometheus.PromError):
        prometheus.query(url, "vector(1)", timeout=1)
    # a stale state file (its pid gone or reused) kills nothing
    assert prometheus.stop(st, tmp_path / "sd", "pt") == []


def test_status_without_prometheus_says_why_in_one_line(tmp_path):
    from infra.local.state import PrometheusRecord
    from infra.status.local import local_metrics

    st = new_state(tmp_path, prometheus=PrometheusRecord(missing="prometheus not found in PATH; install"))
    m = local_metrics(st)
    assert (m.source, m.error) == (
        "none",
        "this cluster runs no Prometheus: prometheus not found in PATH; install",
    )
    assert m.targets_total is None and m.cost is None
    st.prometheus = None
    m = local_metrics(st)
    assert m.source == "none" and "started by an older llmfleet" in m.error


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ the docker daemon step, run
STUBS = {
    # every call is logged; docker info reports live-restore on once a reload happened
    "systemctl": '#!/bin/bash\necho "systemctl $*" >> "$CALLS"\n'
    '[[ "$1" == reload ]] && touch "$STATE/reloaded"\nexit 0\n',
    "docker": '#!/bin/bash\necho "docker $*" >> "$CALLS"\n'
    'if [[ "$*" == *LiveRestoreEnabled* ]]; then [[ -f "$STATE/reloaded" ]] && echo true || echo false; fi\n'
    "exit 0\n",
}


def _docker_step(tmp_path, daemon_json: dict | None) -> tuple[list[str], dict]:
    """Runs the rendered docker daemon step with stub systemctl/docker and daemon.json in a temp
    dir; returns the systemctl calls and the file it leaves."""
    ud = render_user_data(SPECS["worker"])
    start = ud.index("# Docker: live-restore")
    section = ud[start : ud.index("\n", ud.index("docker info >/dev/null", start))]
    conf = tmp_path / "daemon.json"
    if daemon_json is not None:
        conf.write_text(json.dumps(daemon_json))
    (tmp_path / "bin").mkdir(exist_ok=True)
    for name, body in STUBS.items():
        (tmp_path / "bin" / name).write_text(body)
        (tmp_path / "bin" / name).chmod(0o755)
    calls = tmp_path / "calls"
    calls.write_text("")
    script = tmp_path / "docker.sh"
    script.write_text(
        'set -euo pipefail\nlog() { echo "$*"; }\ndie() { echo "FAILED: $*"; exit 1; }\nNODE_IP=10.0.0.7\n'
        + section.replace(host_metrics.DAEMON_JSON, str(conf))
        + "\n"
    )
    import os

    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "CALLS": str(calls),
           "STATE": str(tmp_path)}  # fmt: skip
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    systemctl = [c for c in calls.read_text().splitlines() if c.startswith("systemctl")]
    return systemctl, json.loads(conf.read_text())


def test_dockerd_is_restarted_only_when_its_config_changes_and_live_restore_is_on_first(tmp_path):
    ami = {"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}
    # the first boot: the AMI's file gains live-restore + awslogs; log-opts need a restart,
    # after a reload has put live-restore into the running daemon
    calls, conf = _docker_step(tmp_path, ami)
    assert calls == ["systemctl reload docker", "systemctl restart docker"]
    assert conf["runtimes"] == ami["runtimes"] and conf["live-restore"] is True
    assert conf["log-opts"]["tag"] == "worker-10.0.0.7/{{.Name}}"
    # every later rollout: the same file, dockerd untouched (and the file not rewritten)
    before = (tmp_path / "daemon.json").stat().st_mtime_ns
    calls, again = _docker_step(tmp_path, None)
    assert calls == [] and again == conf and (tmp_path / "daemon.json").stat().st_mtime_ns == before
    # a host whose file differs only in a reloadable key (live-restore): a reload, no restart
    calls, _ = _docker_step(tmp_path, {**conf, "live-restore": False})
    assert calls == ["systemctl reload docker"]


def test_metrics_agents_are_left_running_by_a_rollout_that_does_not_change_them():
    import dataclasses

    def digests(spec):
        return dict(
            re.findall(
                r'cat /etc/llmfleet/(llmfleet-[a-z]+)\.run 2>/dev/null\)" == (\w+)', render_user_data(spec)
            )
        )

    for role in ("head", "worker"):
        spec = SPECS[role]
        base = digests(spec)
        assert {"llmfleet-bootlog"} < set(base)
        # a Serve config / model change leaves every agent's identity as it was
        assert {
            k: v
            for k, v in digests(dataclasses.replace(spec, serve_config=spec.serve_config + "#2\n")).items()
            if k != f"llmfleet-{role}"
        } == {k: v for k, v in base.items() if k != f"llmfleet-{role}"}
    head = SPECS["head"]
    moved = dataclasses.replace(
        head, metrics=dataclasses.replace(HM, remote_write_url="https://other/api/v1/remote_write")
    )
    assert digests(moved)["llmfleet-prometheus"] != digests(head)["llmfleet-prometheus"]
    text = render_user_data(head)
    assert "systemctl is-active --quiet llmfleet-metrics-sd" in text  # a second systemd-run would fail
