"""The serving benchmark's pure parts: Serve access-log lines, the per-hop breakdown, the table.

The benchmark itself (two servers, vLLM's benchmark client) runs under `make bench`, not here.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_local_serving as b  # noqa: E402

PROXY = "INFO 2026-12-07 01:20:00,169 proxy 10.99.7.10 rid-1 -- POST / 200 69.5ms"
INGRESS = "INFO 2026-12-07 01:20:00,166 default_OpenAiIngress abc123 rid-1 -- POST / 200 60.0ms"
LLM = "INFO 2026-12-07 01:20:00,160 default_LLMServer:x def456 rid-1 -- CALL completions OK 40.0ms"


def ts(s: str) -> float:
    return datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_access_line_start_is_log_time_minus_latency():
    e = b.parse_access_line(PROXY)
    assert e["request_id"] == "rid-1" and e["component"] == "proxy"
    assert (e["method"], e["route"], e["status"], e["ms"]) == ("POST", "/", "200", 69.5)
    assert e["end"] == ts("2026-12-07 01:20:00,169")
    assert e["start"] == pytest.approx(e["end"] - 0.0695)


@pytest.mark.parametrize(
    "line",
    [
        "INFO 2026-12-07 01:20:00,169 proxy 10.99.7.10 -- Proxy starting on node abc",  # no latency
        "INFO 2026-12-07 01:20:00,169 proxy 10.99.7.10 rid -- POST /v1/completions 200 fastms",
        "garbage",
    ],
)
def test_lines_that_are_not_access_logs_are_skipped(line):
    assert b.parse_access_line(line) is None


def entries(*lines_and_files):
    out = []
    for line, f in lines_and_files:
        e = b.parse_access_line(line)
        e["file"] = f
        out.append(e)
    return out


def test_breakdown_splits_ttft_into_hops_by_request_id():
    log = entries(
        (PROXY, "proxy_10.99.7.10.log"),
        (INGRESS, "replica_default_OpenAiIngress_abc123.log"),
        (LLM, "replica_default_LLMServer_def456.log"),
    )
    p_start = ts("2026-12-07 01:20:00,169") - 0.0695
    req = {"request_id": "rid-1", "sent": p_start - 0.001, "first": p_start + 0.050}
    res = b.breakdown([req], log)
    m = res["median_ms"]
    assert res["matched"] == 1
    assert m["client -> proxy start"] == pytest.approx(1.0, abs=0.05)
    # proxy starts at ,0995, the ingress at ,106, the LLMServer at ,120
    assert m["proxy -> ingress replica start"] == pytest.approx(6.5, abs=0.05)
    assert m["ingress replica -> LLMServer replica start"] == pytest.approx(14.0, abs=0.05)
    assert m["LLMServer replica start -> first token at the client"] == pytest.approx(29.5, abs=0.05)
    # the hops add up to the client's TTFT
    parts = [v for k, v in m.items() if k != "first token at the client (TTFT)"]
    assert sum(parts) == pytest.approx(m["first token at the client (TTFT)"], abs=0.2)
    assert m["first token at the client (TTFT)"] == pytest.approx(51.0, abs=0.05)


def test_breakdown_falls_back_to_the_one_line_inside_the_proxys_interval():
    llm_other_id = LLM.replace("rid-1", "internal-7")
    log = entries(
        (PROXY, "proxy_x.log"),
        (INGRESS, "replica_default_OpenAiIngress_abc123.log"),
        (llm_other_id, "replica_default_LLMServer_def456.log"),
    )
    req = {"request_id": "rid-1", "sent": 0.0, "first": 0.0}
    req["sent"] = ts("2026-12-07 01:20:00,169") - 0.07
    req["first"] = req["sent"] + 0.05
    assert b.breakdown([req], log)["matched"] == 1
    # a request the proxy never logged is not counted
    assert b.breakdown([{**req, "request_id": "rid-2"}], log)["matched"] == 0


def test_compare_gives_app_over_vllm_per_metric_and_refuses_mismatched_steps():
    keys = {f"{s}_{m}_ms": 10.0 for m in b.METRICS for s in ("median", "p99")}
    a = {"shape": "short", "concurrency": 1, **keys, "output_tok_s": 300.0}
    c = {**a, "median_ttft_ms": 12.5, "output_tok_s": 270.0}
    rows = {r["metric"]: r for r in b.compare([a], [c])}
    assert rows["median_ttft_ms"]["ratio"] == 1.25
    assert rows["output_tok_s"]["ratio"] == 0.9
    assert rows["p99_itl_ms"]["ratio"] == 1.0
    with pytest.raises(ValueError, match="steps differ"):
        b.compare([a], [{**c, "concurrency": 4}])


def test_set_interval_rewrites_every_llm_config_of_the_serve_config():
    doc = {
        "applications": [
            {
                "args": {
                    "llm_configs": [{"experimental_configs": {"stream_batching_interval_ms": 0, "k": 1}}, {}]
                }
            }
        ]
    }
    out = b.set_interval(doc, 50)
    cfgs = out["applications"][0]["args"]["llm_configs"]
    assert [c["experimental_configs"]["stream_batching_interval_ms"] for c in cfgs] == [50, 50]
    assert cfgs[0]["experimental_configs"]["k"] == 1  # other experimental keys kept


def test_worker_endpoint_is_the_first_workers_own_proxy_in_netns_mode_only():
    from types import SimpleNamespace as NS

    hosts = [
        NS(ip="10.7.0.1", role="head"),
        NS(ip="10.7.0.3", role="trainer"),
        NS(ip="10.7.0.2", role="worker"),
    ]
    st = NS(endpoint="http://10.7.0.1:8123/v1", hosts=hosts, mode="netns")
    assert b.worker_endpoint(st) == "http://10.7.0.2:8123"
    assert b.worker_endpoint(NS(endpoint=st.endpoint, hosts=hosts, mode="loopback")) is None
    assert b.worker_endpoint(NS(endpoint=st.endpoint, hosts=hosts[:1], mode="netns")) is None


def test_direct_breakdown_is_proxy_then_the_llm_servers_own_post_line():
    # direct streaming: the LLMServer replica is the HTTP ingress, so its line is a POST and
    # there is no CALL hop; an earlier ingress run's CALL line in the same logs is not taken for it
    server = "INFO 2026-12-07 01:20:00,166 default_LLMServer:x def456 rid-1 -- POST / 200 60.0ms"
    log = entries(
        (PROXY, "proxy_10.99.7.10.log"),
        (server, "replica_default_LLMServer_def456.log"),
        (LLM.replace("rid-1", "rid-0"), "replica_default_LLMServer_def456.log"),
    )
    p_start = ts("2026-12-07 01:20:00,169") - 0.0695
    req = {"request_id": "rid-1", "sent": p_start - 0.001, "first": p_start + 0.050}
    res = b.breakdown([req], log, direct=True)
    m = res["median_ms"]
    assert res["matched"] == 1 and list(m) == [
        "client -> proxy start",
        "proxy -> LLMServer replica start (direct)",
        "LLMServer replica start -> first token at the client",
        "first token at the client (TTFT)",
    ]
    assert m["proxy -> LLMServer replica start (direct)"] == pytest.approx(6.5, abs=0.05)
    assert m["LLMServer replica start -> first token at the client"] == pytest.approx(43.5, abs=0.05)
    assert sum(v for k, v in m.items() if "TTFT" not in k) == pytest.approx(
        m["first token at the client (TTFT)"], abs=0.2
    )
    # by the one line inside the proxy's interval when the ids differ
    other = entries(
        (PROXY, "proxy_x.log"), (server.replace("rid-1", "internal-3"), "replica_default_LLMServer_d.log")
    )
    assert b.breakdown([req], other, direct=True)["matched"] == 1


def test_set_direct_keeps_the_engine_and_the_token_env_and_drops_the_ingress_args():
    from ray_cluster.serve_app import is_direct

    cfgs = [{"model_loading_config": {"model_id": "m"}}]
    doc = {"applications": [{"name": "llm", "args": {
        "llm_configs": cfgs, "api_token_env": "T", "activity_file": "/tmp/a",
        "ingress_deployment_config": {"num_replicas": 2},
    }}]}  # fmt: skip
    out = b.set_direct(doc)["applications"][0]
    assert out["args"] == {"llm_configs": cfgs, "api_token_env": "T", "direct_streaming": True}
    assert out["name"] == "llm" and is_direct(out["args"])
