"""Rendering of the live figures (infra.local.live) for `local top`, and its tables for the
status view (infra/commands/_status_view.py)."""

from __future__ import annotations

import time

from rich.console import Group, RenderableType
from rich.live import Live as RichLive
from rich.table import Table

from infra.commands._common import console
from infra.local.live import by_host, read_live
from infra.local.prometheus import PromError
from infra.local.state import LocalState

# (key in the live figures, label, format)
FIGURES = (
    ("requests_running", "requests running", "{:.0f}"),
    ("requests_waiting", "requests waiting", "{:.0f}"),
    ("generation_tokens_per_s", "generation tokens/s (last minute)", "{:.1f}"),
    ("prompt_tokens_per_s", "prompt tokens/s (last minute)", "{:.1f}"),
    ("ttft_p50_s", "time to first token p50 (5 min)", "{:.3f} s"),
    ("tpot_p50_s", "time per output token p50 (5 min)", "{:.4f} s"),
    ("kv_cache_usage", "KV-cache usage", "{:.1%}"),
    ("requests_finished", "requests finished (total)", "{:.0f}"),
    ("generation_tokens", "generation tokens (total)", "{:.0f}"),
    ("measured_tokens_per_s", "measured tokens/s (busiest minute, 15 min)", "{:.1f}"),
)


def _fmt(v, fmt: str) -> str:
    return "[dim]no data yet[/]" if v is None else fmt.format(v)


def figures_table(m: dict, title: str) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("figure")
    t.add_column("value", justify="right")
    for key, label, fmt in FIGURES:
        t.add_row(label, _fmt(m.get(key), fmt))
    return t


def cost_table(c: dict) -> Table:
    t = Table(title=f"cost per 1M output tokens, priced as stack {c['stack']} "
              f"({c['instance_type']}, ${c['usd_per_hour']}/h)", title_justify="left")  # fmt: skip
    for col in ("throughput", "tokens/s", "USD / 1M output tokens"):
        t.add_column(col, justify="right" if col != "throughput" else "left")
    for label, tps, usd in (
        ("measured here", c["measured_tokens_per_s"], c["usd_per_million_output_tokens_measured"]),
        ("planner's estimate", c["planner_tokens_per_s"], c["usd_per_million_output_tokens_planner"]),
    ):
        t.add_row(label, _fmt(tps, "{:.1f}"), _fmt(usd, "{:,.2f}"))
    return t


def top(st: LocalState, url: str, interval: float, iterations: int) -> None:
    """Refresh the figures in place every `interval` s (Prometheus at `url`); iterations 0 runs
    until Ctrl-C."""

    def frame() -> Group:
        live = read_live(url, st.model).to_dict()
        title = (
            f"llmfleet local top: {st.name} ({st.model}) - Prometheus {url}, "
            f"{live['targets_up']}/{live['targets_total']} targets up, {time.strftime('%H:%M:%S')}"
        )
        parts: list[RenderableType] = [figures_table(live, title)]
        if live["error"]:
            parts.append(f"[red]{live['error']}[/]")
            return Group(*parts)
        hosts_t = Table(title="per worker host", title_justify="left")
        for col in ("host", "ip", "running", "waiting", "KV-cache"):
            hosts_t.add_column(col)
        try:
            cols = [by_host(url, m, st.model) for m in
                    ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")]  # fmt: skip
        except PromError as e:
            parts.append(f"[red]{e}[/]")
            return Group(*parts)
        # Every worker host, also an idle one (whose engine gauges Ray stops exporting: 0).
        served = live["requests_finished"] is not None
        for h in st.hosts[1:]:
            run, wait, kv = (c.get(h.ip, 0.0 if served else None) for c in cols)
            hosts_t.add_row(h.name, h.ip, _fmt(run, "{:.0f}"), _fmt(wait, "{:.0f}"), _fmt(kv, "{:.1%}"))
        parts.append(hosts_t)
        return Group(*parts)

    n = 0
    with RichLive(frame(), console=console, refresh_per_second=4, screen=False) as view:
        n += 1
        while iterations == 0 or n < iterations:
            time.sleep(interval)
            view.update(frame())
            n += 1
