"""The status' live figures: infra.local.live's PromQL against a Prometheus query API (the local
cluster's Prometheus, or the stack's AMP workspace through a SigV4 fetch), and the USD per 1M
output tokens at the measured rate, priced as a stack's workers (beside its planner estimate)."""

from __future__ import annotations

from typing import Literal

from infra.local.live import cost_beside_plan, read_live
from infra.local.prometheus import Fetch
from infra.status.model import Cost, Metrics


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_metrics(
    url: str,
    model: str,
    *,
    source: Literal["prometheus", "amp"] = "prometheus",
    fetch: Fetch | None = None,
    with_targets: bool = True,
    price_stack: str | None = None,
    timeout: float = 5.0,
) -> Metrics:
    live = read_live(url, model, timeout, fetch=fetch, with_targets=with_targets, source=source)
    m = Metrics(**dict(live))
    if price_stack and not live.error:
        try:
            m.cost = Cost.model_validate(cost_beside_plan(live.measured_tokens_per_s, price_stack))
        except (ValueError, OSError) as e:  # a missing or invalid stack file: the figures still show
            m.cost_error = f"pricing as stack {price_stack}: {_one_line(e)}"
    return m


def no_metrics(why: str) -> Metrics:
    return Metrics(source="none", error=why)
