"""Serve autoscaling over the replicas a stack has (issue #32 point 3): the defaults
`serveOptions.autoscaling_config` gets from the plan, Ray's acceptance of them, and the head's
watcher, the serving gate and the status treating a replica the autoscaler released as normal."""

from __future__ import annotations

import json

import pytest
from ray.serve.config import AutoscalingConfig

from infra.local import layout as local_layout
from infra.rayconf import serve_config as sc
from infra.rayconf import serving
from infra.stack import serve_autoscaling as sa
from infra.stack.config import ConfigError
from infra.stack.files import load_config
from infra.stack.resolve import resolve
from infra.status.model import HostSlot, cluster_side, power_state
from ray_cluster import serve_app, serve_rest
from ray_cluster.cluster_status import serve_rows
from ray_cluster.watch import WatchView, watch


def _deployment(stack: str, *overrides: str) -> dict:
    s = resolve(load_config(stack, list(overrides)))
    doc = serving.render_for_plan(s.cfg, s.plan)
    dep = doc["applications"][0]["args"]["llm_configs"][0]["deployment_config"]
    sc.validate_deployment_options(dep, "deployment_config")  # Ray's DeploymentSchema, its rules too
    return dep


# ---------------------------------------------------------------- the defaults


def test_off_by_default_every_replica_the_stack_pays_for_serves():
    # dev: two replicas, no autoscaling_config: a fixed count
    dep = _deployment("dev")
    assert dep["num_replicas"] == 2 and "autoscaling_config" not in dep


def test_auto_fills_the_defaults_from_the_plan_and_rays_autoscalingconfig_takes_them():
    s = resolve(load_config("dev", []))
    dep = _deployment("dev", 'llmfleet:serveOptions={"autoscaling_config": "auto"}')
    assert "num_replicas" not in dep  # Serve refuses a fixed count beside autoscaling
    auto = dep["autoscaling_config"]
    assert auto == {
        "min_replicas": 1,
        "max_replicas": 2,  # llmfleet:replicas
        "initial_replicas": 2,  # the deploy brings every replica up once
        "target_ongoing_requests": s.plan.effective_concurrency,  # 35 for dev's L4 replica
        "upscale_delay_s": sa.UPSCALE_DELAY_S,
        "downscale_delay_s": 1800,  # dev's reload (~85 s) x 3 is below the half-hour floor
    }
    got = AutoscalingConfig(**auto)
    assert (got.min_replicas, got.max_replicas, got.initial_replicas) == (1, 2, 2)
    assert got.target_ongoing_requests == 35


def test_ray_serve_llms_own_defaults_do_not_put_back_a_target_that_never_scales():
    from ray.llm._internal.common.dict_utils import maybe_apply_llm_deployment_config_defaults
    from ray.llm._internal.serve.constants import DEFAULT_MAX_TARGET_ONGOING_REQUESTS

    # Ray Serve LLM deep-merges target_ongoing_requests 1e9 under the deployment's options
    # (server/builder.py DEFAULT_DEPLOYMENT_OPTIONS): a user map without a target never scales up.
    ray_defaults = {"autoscaling_config": {"target_ongoing_requests": DEFAULT_MAX_TARGET_ONGOING_REQUESTS}}
    bare = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 2}}
    assert (
        maybe_apply_llm_deployment_config_defaults(ray_defaults, bare)["autoscaling_config"][
            "target_ongoing_requests"
        ]
        == DEFAULT_MAX_TARGET_ONGOING_REQUESTS
    )
    ours = _deployment(
        "dev", 'llmfleet:serveOptions={"autoscaling_config": {"min_replicas": 1, "max_replicas": 2}}'
    )
    merged = maybe_apply_llm_deployment_config_defaults(ray_defaults, ours)["autoscaling_config"]
    assert merged["target_ongoing_requests"] == 35


def test_a_map_sets_its_own_fields_over_the_defaults():
    dep = _deployment(
        "dev",
        'llmfleet:serveOptions={"autoscaling_config": {"max_replicas": 1, "downscale_delay_s": 120}}',
        'llmfleet:engineArgs={"max_num_seqs": 8}',
    )
    assert dep["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 1,
        "initial_replicas": 1,  # bounded by the map's own max_replicas
        "target_ongoing_requests": 8,  # max_num_seqs below the plan's 35: past it the engine queues
        "upscale_delay_s": sa.UPSCALE_DELAY_S,
        "downscale_delay_s": 120,
    }


def test_the_downscale_delay_follows_the_modeled_reload_above_its_floor():
    prod = resolve(load_config("prod", [])).plan
    reload = sa.reload_s(prod.cold_start_terms)
    by_name = {t["name"]: t["seconds"] for t in prod.cold_start_terms}
    # on hosts that stay up: no boot, no image pull, no weight staging
    assert reload == pytest.approx(
        by_name["engine load"] + by_name["compile + CUDA graphs"] + by_name["first token"]
    )
    assert reload < prod.cold_start_s
    assert sa.defaults(4, 8, 900.0)["downscale_delay_s"] == 2700
    assert sa.defaults(4, 8, reload)["downscale_delay_s"] == max(1800, round(3 * reload))
    assert sa.defaults(4, 8, None)["downscale_delay_s"] == 1800
    assert sa.reload_s(None) is None


@pytest.mark.parametrize(
    ("stack", "override", "message"),
    [
        (
            "prod",  # one replica
            'llmfleet:serveOptions={"autoscaling_config": "auto"}',
            "llmfleet:serveOptions.autoscaling_config = 'auto': allowed with llmfleet:replicas >= 2 (it is 1",
        ),
        (
            "dev",
            'llmfleet:serveOptions={"autoscaling_config": "on"}',
            "llmfleet:serveOptions.autoscaling_config = 'on': allowed: 'auto' (llmfleet's defaults from the plan)",
        ),
        (
            "dev",
            'llmfleet:serveOptions={"autoscaling_config": {"min_replicas": 0}}',
            "llmfleet:serveOptions.autoscaling_config.min_replicas = 0: allowed: >= 1 (at zero replicas the "
            "endpoint answers 503 'waking'",
        ),
        (
            "dev",
            'llmfleet:serveOptions={"autoscaling_config": {"max_replicas": 3}}',
            "llmfleet:serveOptions.autoscaling_config.max_replicas = 3: allowed: <= llmfleet:replicas = 2",
        ),
    ],
)
def test_bad_autoscaling_is_one_line(stack, override, message):
    with pytest.raises(ConfigError) as e:
        resolve(load_config(stack, [override]))
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_the_local_cluster_gets_the_same_defaults_with_its_own_concurrency():
    lay = local_layout.plan_layout(3)
    doc = local_layout.render_local_serve_config(
        "tiny", "/tmp/tiny", lay, "10.0.0.1", 8000, serve_options={"autoscaling_config": "auto"}
    )
    auto = doc["applications"][0]["args"]["llm_configs"][0]["deployment_config"]["autoscaling_config"]
    assert auto["max_replicas"] == lay.replicas == 2 and auto["min_replicas"] == 1
    assert auto["target_ongoing_requests"] == local_layout.LOCAL_CONCURRENCY
    with pytest.raises(local_layout.LocalError, match=r"autoscaling_config.min_replicas = 0: allowed: >= 1"):
        local_layout.check_options({}, {"autoscaling_config": {"min_replicas": 0}}, lay)


# ---------------------------------------------------------------- a released replica is no failure

LLM = "LLMServer:deepseek-ai--DeepSeek-R1"
HEAD, W1, W2 = "10.42.0.10", "10.42.0.11", "10.42.0.12"


def _downscaled_doc(running: int) -> dict:
    """Serve's REST document after the autoscaler released replicas: the LLM deployment
    DOWNSCALING (trigger AUTOSCALING), `running` of 2 replicas left, the application RUNNING
    (Ray 2.60's application_state: UP/DOWNSCALING is DEPLOYING only under CONFIG_UPDATE_STARTED)."""
    from ray.serve._private.common import DeploymentStatus, DeploymentStatusTrigger
    from ray.serve.schema import ApplicationDetails, DeploymentDetails, ReplicaDetails, ServeInstanceDetails

    def rep(i: int, ip: str, state: str) -> ReplicaDetails:
        return ReplicaDetails(
            replica_id=f"r{i}", state=state, start_time_s=1.765e9, node_id=f"{i:056x}", node_ip=ip,
            actor_id=f"{i:032x}", actor_name=f"SERVE_REPLICA::llm#r{i}", pid=100 + i,
        )  # fmt: skip

    reps = [rep(1, W1, "RUNNING")] + ([rep(2, W2, "RUNNING")] if running == 2 else [rep(2, W2, "STOPPING")])
    llm = DeploymentDetails(
        name=LLM, status=DeploymentStatus.DOWNSCALING, status_trigger=DeploymentStatusTrigger.AUTOSCALING,
        message="", deployment_config={"name": LLM}, target_num_replicas=1, required_resources={},
        replicas=reps,
    )  # fmt: skip
    ingress = DeploymentDetails(
        name="BearerOpenAiIngress", status="HEALTHY", status_trigger="CONFIG_UPDATE_COMPLETED", message="",
        deployment_config={"name": "BearerOpenAiIngress"}, target_num_replicas=1, required_resources={},
        replicas=[rep(9, HEAD, "RUNNING")],
    )  # fmt: skip
    app = ApplicationDetails(
        name="llm", route_prefix="/", docs_path=None, status="RUNNING", message="",
        last_deployed_time_s=1.765e9, source="declarative", external_scaler_enabled=False,
        deployments={LLM: llm, "BearerOpenAiIngress": ingress},
    )  # fmt: skip
    return ServeInstanceDetails(proxies={}, applications={"llm": app}).model_dump(
        mode="json", exclude_unset=True
    )


def _ray_nodes() -> list[dict]:
    """ray.nodes() with both workers alive: a released replica's hosts stay in Ray."""
    head = {"NodeManagerAddress": HEAD, "Alive": True, "NodeID": "h", "Resources": {"CPU": 8.0, "head": 1.0}}
    workers = [
        {
            "NodeManagerAddress": ip,
            "Alive": True,
            "NodeID": ip,
            "Resources": {"GPU": 8.0, "gpu_model:L40S": 8.0},
        }
        for ip in (W1, W2)
    ]
    return [head, *workers]


def test_the_watcher_neither_reapplies_nor_alarms_when_a_replica_is_released(monkeypatch):
    doc = _downscaled_doc(running=1)
    apps = doc["applications"]
    statuses = serve_rest._statuses(apps)
    assert statuses == {"llm": "RUNNING"}
    monkeypatch.setattr(serve_rest, "_serve_applications", lambda *a, **k: apps)
    assert not serve_rest.app_needs_restart(statuses, serve_rest.serve_deployments("http://head:8265"))

    workers = {W1: "n1", W2: "n2"}  # the same node ids: nobody left or came back
    applied: list[str] = []
    logged: list[str] = []
    views = iter([WatchView("d1", dict(workers), {})] + [WatchView("d1", dict(workers), statuses)] * 5)
    watch(lambda: next(views), applied.append, interval=0, polls=5, sleep=lambda s: None, log=logged.append)
    assert applied == [] and logged == []


def test_the_gate_serves_while_one_replica_runs_and_says_waking_only_at_none(monkeypatch):
    import ray
    from ray import serve
    from ray.serve.schema import ApplicationStatusOverview, DeploymentStatusOverview, ServeStatus

    def status(llm_states: dict) -> ServeStatus:
        deps = {
            LLM: DeploymentStatusOverview(
                status="DOWNSCALING", status_trigger="AUTOSCALING", replica_states=llm_states, message=""
            ),
            "BearerOpenAiIngress": DeploymentStatusOverview(
                status="HEALTHY",
                status_trigger="CONFIG_UPDATE_COMPLETED",
                replica_states={"RUNNING": 1},
                message="",
            ),
        }
        return ServeStatus(applications={"llm": ApplicationStatusOverview("RUNNING", "", 1.765e9, deps)})

    monkeypatch.setattr(ray, "nodes", _ray_nodes)
    monkeypatch.setattr(serve, "status", lambda: status({"RUNNING": 1, "STOPPING": 1}))
    assert serve_app._ray_state("BearerOpenAiIngress") == serve_app.SERVING
    # the contrast the gate exists for: hosts up and no engine replica at all
    monkeypatch.setattr(serve, "status", lambda: status({"STARTING": 2}))
    assert serve_app._ray_state("BearerOpenAiIngress") == serve_app.WAKING
    # a restarted Serve controller re-attaching the live replicas: they serve, nothing is waking
    for live in ("RECOVERING", "UPDATING", "PENDING_MIGRATION"):
        monkeypatch.setattr(serve, "status", lambda live=live: status({live: 1, "STARTING": 1}))
        assert serve_app._ray_state("BearerOpenAiIngress") == serve_app.SERVING, live


def test_status_says_serving_with_a_released_replica_and_readiness_still_counts_its_hosts(monkeypatch):
    import ray

    from ray_cluster import readiness

    side = cluster_side({"applications": serve_rows(_downscaled_doc(running=1))}, "head")
    (llm,) = [d for d in side.applications[0].deployments if d.name == LLM]
    assert (llm.running, llm.target_replicas, llm.status) == (1, 1, "DOWNSCALING")
    hosts = [
        HostSlot(name=f"worker-{i}", role="worker", ip=ip, status="alive") for i, ip in enumerate((W1, W2))
    ]
    assert power_state(hosts, None, {a.name: a.status for a in side.applications}) == "serving"
    # a re-apply (a worker came back) waits for every replica's slots: Ray's node table counts the
    # hosts' GPUs whether a placement group holds them or not
    monkeypatch.setattr(ray, "nodes", _ray_nodes)
    assert readiness.gpu_shortfall(readiness.ray_cluster_state(), 16, "L40S", [W1, W2]) is None


def test_cost_says_autoscaling_does_not_change_the_bill():
    auto = sa.defaults(2, 35, None)
    line = sa.describe(auto)
    assert line.startswith("Serve autoscaling: 1-2 engine replicas (target 35 requests each")
    assert "billed, so it does not change this cost" in line
    assert sa.describe(None) == ""
    json.dumps(auto)  # plain JSON values (the Serve config is YAML/JSON)


def test_llmfleet_cost_prints_the_line_only_when_autoscaling_is_on():
    from typer.testing import CliRunner

    from infra.cli import app

    on = CliRunner().invoke(
        app,
        ["cost", "--stack", "dev", "-c", 'llmfleet:serveOptions={"autoscaling_config": "auto"}'],
        env={"COLUMNS": "200"},
    )
    assert on.exit_code == 0, on.output
    assert "Serve autoscaling: 1-2 engine replicas" in on.output and "does not change this cost" in on.output
    off = CliRunner().invoke(app, ["cost", "--stack", "dev"], env={"COLUMNS": "200"})
    assert off.exit_code == 0 and "Serve autoscaling" not in off.output
