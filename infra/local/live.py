"""Live serving figures from Prometheus: what `local status` and `local top` show.

The PromQL reads vLLM's own metrics as Ray Serve LLM exports them through every node's metrics
agent (`vllm:<name>` becomes `ray_vllm_<name>`, with the served model in `model_name`). Every
figure is a query of the real Prometheus the cluster runs, never a parse of logs.

"Measured tokens/s" is the busiest minute in the window (`MEASURE_WINDOW`): the cluster's output
rate while it had load, which is what a price per token needs, not the current (maybe idle) rate.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict

from infra.cost.estimate import usd_per_million_tokens
from infra.local.prometheus import Fetch, PromError, query, scalar, targets
from infra.stack.files import load_config
from infra.stack.planner import plan_for_stack

PREFIX = "ray_vllm_"
RATE_WINDOW = "1m"
MEASURE_WINDOW = "15m"
SUBQUERY_STEP = "10s"
GAUGE_WINDOW = "30s"


def _sel(model: str) -> str:
    # PromQL string literals take Go's escapes, which a JSON string literal also is.
    return "{model_name=" + json.dumps(model) + "}"


def queries(model: str) -> dict[str, str]:
    """Figure -> PromQL for one served model (pure, so tests read the exact queries)."""
    s = _sel(model)
    p = PREFIX
    gen_rate = f"sum(rate({p}generation_tokens_total{s}[{RATE_WINDOW}]))"

    def p50(hist: str) -> str:
        return f"histogram_quantile(0.5, sum by (le) (rate({p}{hist}_bucket{s}[5m])))"

    served = f"count({p}request_success_total{s})"

    def gauge(name: str, agg: str = "sum") -> str:
        # vLLM records its gauges on engine steps, and Ray's agent exports only what was
        # recorded: an idle engine's gauges vanish. So: the last value of the last 30 s, and 0
        # once the engine has served and then went quiet ("no data" only before any request).
        return f"{agg}(last_over_time({p}{name}{s}[{GAUGE_WINDOW}])) or on() (0 * {served})"

    return {
        "requests_running": gauge("num_requests_running"),
        "requests_waiting": gauge("num_requests_waiting"),
        "generation_tokens_per_s": gen_rate,
        "prompt_tokens_per_s": f"sum(rate({p}prompt_tokens_total{s}[{RATE_WINDOW}]))",
        "ttft_p50_s": p50("time_to_first_token_seconds"),
        "tpot_p50_s": p50("request_time_per_output_token_seconds"),
        "kv_cache_usage": gauge("kv_cache_usage_perc", "avg"),
        "requests_finished": f"sum({p}request_success_total{s})",
        "generation_tokens": f"sum({p}generation_tokens_total{s})",
        "prompt_tokens": f"sum({p}prompt_tokens_total{s})",
        "measured_tokens_per_s": f"max_over_time(({gen_rate})[{MEASURE_WINDOW}:{SUBQUERY_STEP}])",
    }


class Live(BaseModel):
    """The live figures of one served model: one field per key of `queries()`, None while the
    store has no series. infra.status.model.Metrics (what `status` and `local status` report)
    is this model plus the price per token, so the two never drift apart."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["prometheus", "amp", "none"]
    url: str = ""
    requests_running: float | None = None
    requests_waiting: float | None = None
    generation_tokens_per_s: float | None = None
    prompt_tokens_per_s: float | None = None
    ttft_p50_s: float | None = None
    tpot_p50_s: float | None = None
    kv_cache_usage: float | None = None
    requests_finished: float | None = None
    generation_tokens: float | None = None
    prompt_tokens: float | None = None
    measured_tokens_per_s: float | None = None
    targets_up: int | None = None  # None: the store has no targets API (AMP)
    targets_total: int | None = None
    error: str = ""

    def to_dict(self) -> dict:
        return self.model_dump()


def read_live(
    url: str,
    model: str,
    timeout: float = 5.0,
    fetch: Fetch | None = None,
    with_targets: bool = True,
    source: Literal["prometheus", "amp"] = "prometheus",
) -> Live:
    """Every figure of `queries(model)` from the Prometheus query API at url (None: no series
    yet). `fetch` signs the requests for a managed store; without a targets API (AMP),
    `with_targets=False`."""
    live = Live(source=source, url=url)
    if with_targets:  # else None: the store has no targets API; 0/0 until this one answers
        live.targets_up = live.targets_total = 0
    try:
        for key, promql in queries(model).items():
            setattr(live, key, scalar(url, promql, timeout, fetch))
        if with_targets:
            ts = targets(url, timeout, fetch)
            live.targets_total = len(ts)
            live.targets_up = sum(1 for t in ts if t["health"] == "up")
    except PromError as e:
        live.error = str(e)
    return live


def by_host(url: str, metric: str, model: str, timeout: float = 5.0) -> dict[str, float]:
    """{node IP: value} of one ray_vllm_ series summed per node (Ray's NodeAddress label)."""
    rows = query(
        url, f"sum by (NodeAddress) (last_over_time({PREFIX}{metric}{_sel(model)}[{GAUGE_WINDOW}]))", timeout
    )
    return {r["metric"].get("NodeAddress", ""): r["value"] for r in rows}


def cost_beside_plan(measured_tps: float | None, stack: str) -> dict:
    """USD per 1M output tokens of `stack`'s workers at the measured rate, beside the planner's
    estimate for the same workers: the same price, two throughputs."""

    cfg = load_config(stack)
    plan = plan_for_stack(cfg)
    hourly = plan.usd_per_hour
    measured = usd_per_million_tokens(Decimal(str(hourly)), measured_tps) if hourly is not None else None
    return {
        "stack": stack,
        "instance_type": plan.instance_type,
        "usd_per_hour": hourly,
        "measured_tokens_per_s": measured_tps,
        "usd_per_million_output_tokens_measured": round(float(measured), 4) if measured is not None else None,
        "planner_tokens_per_s": plan.decode_tokens_per_s_expected,
        "usd_per_million_output_tokens_planner": plan.usd_per_million_output_tokens,
    }
