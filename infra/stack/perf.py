"""Speed model: decode step time, per-user and cluster decode rates, time to first token.
Pure functions over the catalog.

This module is what the planner asks: the fitted efficiency of an engine at a quantization, and
the speed of a layout at a batch. The step model (rooflines, per-layer cost, all-reduce, the
pipeline) is in `perf_roofline`; the calibration that fits eta and k is in `perf_fit`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from infra.catalog import load_catalog
from infra.stack.perf_fit import calibrated_fit, prompts_per_step
from infra.stack.perf_roofline import Layout, decode_shape, prefill_shape

DEFAULT_ENGINE = "vllm"  # what llmfleet deploys (Ray Serve LLM + vLLM)
# Engines whose scheduler puts prompts into the decode steps (chunked prefill). vLLM V1 always
# does (its docs: "In vLLM V1, chunked prefill is always enabled by default"; the Serve config
# llmfleet renders also sets enable_chunked_prefill). SGLang runs prefill batches on their own
# unless --enable-mixed-chunk is set, which is off by default.
CHUNKED_PREFILL_ENGINES = frozenset({"vllm"})


@dataclass(frozen=True)
class Efficiency:
    engine: str
    quantization: str
    bandwidth: float  # eta
    layer_us: float  # k, microseconds per layer per step
    prefill: float
    calibrated: bool  # the fit saw this engine and this quantization
    note: str


def efficiency(engine: str, quant: str) -> Efficiency:
    f = calibrated_fit()
    pre, pre_rows = f.eta_prefill, f.ttft_points
    missing = [
        w
        for w, have in (("engine " + engine, engine in f.engines), (quant, quant in f.quantizations))
        if not have
    ]
    note = f"fitted on {f.points} published points"
    if missing:
        note += f"; no calibration point for {' or '.join(missing)}: pooled value"
    note += f"; prefill from {pre_rows} TTFT rows" if pre_rows else "; prefill efficiency assumed [U]"
    return Efficiency(
        engine=engine,
        quantization=quant,
        bandwidth=f.eta(engine, quant),
        layer_us=f.layer_s(engine, quant) * 1e6,
        prefill=pre,
        calibrated=not missing,
        note=note,
    )


@dataclass(frozen=True)
class Speed:
    batch: int
    tpot_s: float  # time per output token of one stream = the period
    per_user_tokens_per_s: float
    cluster_tokens_per_s: float
    roofline_part_s: float  # what bandwidth / compute (at the fitted efficiency) takes of the period
    fixed_part_s: float  # per-layer cost, all-reduce latency, hops: what no bandwidth removes
    bubble: float
    ttft_s: float  # what a client sees: the engine's prefill plus the serving path
    ttft_engine_s: float  # the prompt's pass through every stage (the fitted prefill)
    ttft_serving_path_s: float  # the production app's fixed cost on a first token (measured)


def serving_path_ttft_s() -> float:
    """What the production app's path (proxy, gated ingress, LLMServer, Ray Serve LLM's stream
    batching) adds to a first token over the engine's own server, measured
    (catalog/serving_path.yaml). The fit cannot learn it: every calibration row's TTFT was
    measured on an engine's own server, so the planner adds it after the fit."""
    return load_catalog().serving_path["first_token_ms"].value / 1000


def speed(lay: Layout, engine: str, batch: int, input_len: int, output_len: int) -> Speed:
    eff = efficiency(engine, lay.quantization)
    k = eff.layer_us * 1e-6
    ctx = input_len + output_len / 2
    # Steady state: a stream's TPOT carries the other streams' prompts; the cluster's output
    # rate carries all of them.
    chunked = engine in CHUNKED_PREFILL_ENGINES
    per_user = decode_shape(
        lay, batch, ctx, prompts_per_step(batch, output_len, own=False), input_len, chunked
    )
    cluster = decode_shape(lay, batch, ctx, prompts_per_step(batch, output_len, own=True), input_len, chunked)
    period = per_user.period(eff.bandwidth, k, eff.prefill)
    fixed = per_user.period(math.inf, k, math.inf)  # infinitely fast memory and compute
    ttft = prefill_shape(lay, input_len).period(eff.prefill, k)
    path = serving_path_ttft_s()
    return Speed(
        batch=batch,
        tpot_s=period,
        per_user_tokens_per_s=1 / period,
        cluster_tokens_per_s=batch / cluster.period(eff.bandwidth, k, eff.prefill),
        roofline_part_s=period - fixed,
        fixed_part_s=fixed,
        bubble=per_user.bubble(eff.bandwidth, k),
        ttft_s=ttft + path,
        ttft_engine_s=ttft,
        ttft_serving_path_s=path,
    )
