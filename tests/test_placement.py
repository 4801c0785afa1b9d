"""ray_cluster.placement: pure layout/bandwidth logic, then a real 3-host Ray cluster (head + 2 x 2 GPUs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from ray_cluster import placement as preflight
from ray_cluster.placement import PreflightError, RankInfo
from tests.ray_fixtures import ray_hosts_cluster  # noqa: F401  (module-scoped fixture)

# ---------------------------------------------------------------- pure


def _rank(i: int, node: str, tp: int) -> RankInfo:
    return RankInfo(
        rank=i, pp_stage=i // tp, tp_rank=i % tp, node_ip=node, node_id=node, hostname="h", gpu_ids=["0"]
    )


def test_bundles_match_engine_layout():
    b = preflight.bundles(2, 3, "L20")
    assert len(b) == 6
    assert all(x == {"GPU": 1, "gpu_model:L20": 1} for x in b)
    assert preflight.bundles(1, 1) == [{"GPU": 1}]
    with pytest.raises(PreflightError, match="tp=0"):
        preflight.bundles(0, 2)


def test_tp_groups_detect_a_group_spanning_hosts():
    ok = [_rank(0, "a", 2), _rank(1, "a", 2), _rank(2, "b", 2), _rank(3, "b", 2)]
    groups = preflight.tp_groups(ok, 2, 2)
    assert [g.ranks for g in groups] == [[0, 1], [2, 3]]
    assert all(g.one_host for g in groups)
    bad = [_rank(0, "a", 2), _rank(1, "b", 2), _rank(2, "a", 2), _rank(3, "b", 2)]
    assert [g.one_host for g in preflight.tp_groups(bad, 2, 2)] == [False, False]


def test_bus_bandwidth_follows_nccl_tests_formula():
    alg, bus = preflight.bus_bandwidth(8_000_000_000, 2.0, 8)
    assert alg == pytest.approx(4.0)
    assert bus == pytest.approx(4.0 * 2 * 7 / 8)
    assert preflight.bus_bandwidth(100, 0.0, 4) == (0.0, 0.0)
    assert preflight.expected_sum(4) == 10.0


def test_no_fit_message_is_one_line_with_needed_and_available():
    msg = preflight.no_fit_message(8, 3, "L20", 600, {"GPU": 16, "gpu_model:L20": 16}, {"GPU": 8})
    assert "\n" not in msg
    assert "24 GPU bundles (TP=8 x PP=3, PACK) not placed after 600 s" in msg
    assert "cluster has 16 GPUs, 8 available" in msg
    assert "gpu_model:L20 16 total, 0 available" in msg


def test_timeout_hint_names_nic_security_group_and_mtu():
    hint = preflight.timeout_hint(4, ["10.0.0.2", "10.0.0.3", "10.0.0.2"], 60, "ens5", "all-reduce")
    assert "10.0.0.2, 10.0.0.3" in hint and "ens5" in hint
    assert "security-group" in hint and "MTU" in hint


# ---------------------------------------------------------------- real cluster


@pytest.fixture(scope="module")
def tp2_pp2(ray_hosts_cluster):  # noqa: F811
    return preflight.run_preflight(
        ray_hosts_cluster.address,
        2,
        2,
        gpu_model="L20",
        timeout=60,
        collective_timeout=60,
        tensor_bytes=1 << 20,
    )


@pytest.mark.ray
def test_tp_groups_sit_within_hosts_and_stages_on_different_hosts(tp2_pp2, ray_hosts_cluster):  # noqa: F811
    worker_ips = {w.ip for w in ray_hosts_cluster.workers}
    r = tp2_pp2
    assert r.tp_groups_within_host and not r.problems
    assert [g.ranks for g in r.tp_groups] == [[0, 1], [2, 3]]
    stage_hosts = [set(g.node_ips) for g in r.tp_groups]
    assert all(len(h) == 1 for h in stage_hosts)
    assert stage_hosts[0] != stage_hosts[1]
    assert set().union(*stage_hosts) == worker_ips  # never the 0-GPU head
    for g in r.tp_groups:  # two distinct GPUs per host
        gpus = [tuple(k.gpu_ids) for k in r.ranks if k.rank in g.ranks]
        assert len(set(gpus)) == 2


@pytest.mark.ray
def test_allreduce_across_hosts_gives_exact_sum(tp2_pp2):
    r = tp2_pp2
    assert r.backend == "gloo"  # no CUDA here
    assert r.allreduce_ok and r.ok
    assert r.observed_sum == r.expected_sum == 10.0
    assert r.tensor_bytes == 1 << 20
    assert r.seconds > 0 and r.busbw_gbps > 0
    assert r.busbw_gbps == pytest.approx(r.algbw_gbps * 1.5)


@pytest.mark.ray
def test_layout_larger_than_cluster_fails_within_bounded_wait(ray_hosts_cluster):  # noqa: F811
    start = time.monotonic()
    with pytest.raises(PreflightError) as e:
        preflight.run_preflight(ray_hosts_cluster.address, 2, 3, timeout=4)
    assert time.monotonic() - start < 40
    msg = str(e.value)
    assert "\n" not in msg
    assert "6 GPU bundles (TP=2 x PP=3, PACK) not placed after 4 s: cluster has 4 GPUs, 4 available" in msg


@pytest.mark.ray
def test_placement_groups_and_gpus_are_released_after_success_and_failure(tp2_pp2, ray_hosts_cluster):  # noqa: F811
    import ray
    from ray.util import placement_group_table

    from ray_cluster.node import connect

    with pytest.raises(PreflightError):
        preflight.run_preflight(ray_hosts_cluster.address, 2, 3, timeout=1)
    connect(ray_hosts_cluster.address)
    try:
        deadline = time.monotonic() + 20
        while True:
            states = {pg["name"]: pg["state"] for pg in placement_group_table().values()}
            free = ray.available_resources().get("GPU", 0)
            if all(s == "REMOVED" for s in states.values()) and free == 4:
                break
            assert time.monotonic() < deadline, f"left behind: {states}, {free} of 4 GPUs free"
            time.sleep(0.5)
        assert "llmfleet-preflight-tp2-pp2" in states and "llmfleet-preflight-tp2-pp3" in states
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_missing_gpu_model_fails_naming_the_resource(ray_hosts_cluster):  # noqa: F811
    with pytest.raises(PreflightError, match="gpu_model:H100 0 total, 0 available"):
        preflight.run_preflight(ray_hosts_cluster.address, 1, 1, gpu_model="H100", timeout=2)


@pytest.mark.ray
def test_cli_preflight_cluster_from_root_namespace(ray_hosts_cluster):  # noqa: F811
    """The operator command, run as a separate process in the root namespace against the bridge IP."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    cmd = [
        sys.executable,
        "-c",
        "from infra.cli import main; main()",
        "preflight-cluster",
        "--address",
        ray_hosts_cluster.address,
    ]
    proc = subprocess.run(
        [*cmd, "--tp", "2", "--pp", "1", "--gpu-model", "L20", "--timeout", "60", "--json"],
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["ok"] and doc["allreduce_ok"] and doc["observed_sum"] == 3.0
    assert len({r["node_ip"] for r in doc["ranks"]}) == 1
    assert doc["ranks"][0]["node_ip"] in {w.ip for w in ray_hosts_cluster.workers}

    bad = subprocess.run(
        [*cmd, "--tp", "4", "--pp", "2", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert bad.returncode == 1
    lines = [ln for ln in bad.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "8 GPU bundles (TP=4 x PP=2, PACK) not placed" in lines[0]
    assert "Traceback" not in bad.stderr
