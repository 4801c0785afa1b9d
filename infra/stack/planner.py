"""Capacity planner: model x GPU -> layout, memory, concurrency, decode throughput.

Pure functions over the catalog. Both the Pulumi program and the policy pack call
`plan()`, so its one-line `reason` is what users see when a layout cannot fit.

Memory model: infra/stack/memory.py (per GPU, the worst pipeline stage decides).

Speed model (infra/stack/perf.py, perf_roofline.py and perf_fit.py have the details and the calibration):
- ceiling: a roofline per decode step at a batch of B sequences. Every stage must read
  its dense weights, the experts the batch touches (expected distinct experts under
  uniform routing, B tokens x k picks of E) and the batch's KV at the average context,
  at the GPU's peak bandwidth, and do 2 x active-params FLOPs per token at peak
  compute. A stage that batches all B tokens at once is the most efficient any
  schedule can be, so B / (slowest stage's step time) bounds every pipeline schedule.
- expected: per stage, roofline / bandwidth efficiency + a fixed cost per layer + two
  tensor-parallel all-reduces per layer at the link's latency; pipeline stages in series
  with their bubble when the batch is smaller than the stage count; prompts arriving in
  steady state add their prefill passes. The efficiencies are fitted per engine and
  quantization on published DeepSeek-R1/V3 measurements (catalog/calibration.yaml).
  Reported both per user (TPOT, tokens/s of one stream) and for the cluster.
- TTFT: one prompt of input_len through every stage, compute-bound at long prompts, plus the
  serving path's fixed cost (Serve's proxy, the gated ingress, Ray Serve LLM's stream batching),
  measured against vLLM's own server (catalog/serving_path.yaml).
- cold start: boot -> first token on the layout's AWS instance type (infra/stack/coldstart.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from infra.catalog import load_catalog
from infra.stack import context, perf, perf_roofline
from infra.stack.arch import GIB, QUANTIZATIONS, architecture
from infra.stack.coldstart import ColdStart, instance_for
from infra.stack.coldstart import estimate as estimate_cold_start
from infra.stack.config_values import DEFAULT_GPU_MEMORY_UTILIZATION, GPU_MEMORY_UTILIZATION_RANGE
from infra.stack.memory import Memory, memory

if TYPE_CHECKING:
    from infra.stack.config import StackConfig

DEFAULT_INPUT_LEN = 1024
DEFAULT_OUTPUT_LEN = 1024
MAX_AUTO_NODES = 32
DEFAULT_TARGET_CONCURRENCY = context.DEFAULT_TARGET_CONCURRENCY


@dataclass
class Plan:
    fits: bool
    reasons: list[str]
    model: str
    gpu: str
    quantization: str
    nodes: int
    gpus_per_node: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    weights_gib_total: float
    weights_gib_per_gpu: float
    usable_gib_per_gpu: float
    kv_cache_gib_per_gpu: float
    kv_bytes_per_token_per_gpu: int
    kv_cache_tokens: int
    max_model_len: int
    max_concurrent_sequences: int
    concurrency: int
    effective_concurrency: int
    concurrency_capped: bool  # the KV cache holds fewer than `concurrency` sequences
    engine: str
    input_len: int
    output_len: int
    decode_tokens_per_s_ceiling: float  # cluster, roofline at peak: no schedule beats it
    decode_tokens_per_s_expected: float  # cluster, at effective_concurrency, steady state
    decode_tokens_per_s_per_user: float  # one stream
    tpot_ms: float  # time per output token of one stream
    ttft_ms: float  # time to first token for one input_len prompt on an idle cluster
    ttft_serving_path_ms: float  # of ttft_ms, the serving path's measured fixed cost
    fixed_ms_per_token: float  # the part of TPOT that no bandwidth removes
    pipeline_bubble: float  # fraction of stage time idle (batch smaller than the stages)
    gpu_memory_utilization: float
    efficiency: float  # fraction of peak bandwidth the engine reaches (fitted)
    layer_overhead_us: float  # fixed cost per layer per decode step (fitted)
    prefill_efficiency: float
    efficiency_note: str
    instance_type: str | None  # the AWS type with gpus_per_node x gpu, if the catalog has one
    usd_per_hour: float | None  # GPU workers on demand (instance catalog)
    usd_per_million_output_tokens: float | None
    cold_start_s: float | None
    cold_start_terms: list[dict[str, Any]] = field(default_factory=list)
    cold_start_usd: float | None = None
    stage_layers: list[int] = field(default_factory=list)
    # The user's own measurements of this layout (`llmfleet bench --calibrate`), when present.
    calibration: dict[str, Any] | None = None
    # How max_model_len was decided (infra/stack/context.py): auto or set, for how many
    # full-length sequences, and why in one line; a warning for a reasoning model below 16k.
    max_model_len_auto: bool = False
    target_concurrency: int = DEFAULT_TARGET_CONCURRENCY
    context_note: str = ""
    context_warning: str | None = None

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # `reasons` only: `reason` is the same list joined


class PlanInputError(ValueError):
    """Bad planner input; str() is one line naming the option, the value and what is allowed."""


def _check_inputs(
    model: str,
    gpu: str,
    quantization: str | None,
    gpus_per_node: int,
    nodes: int | None,
    max_model_len: int | Literal["auto"],
    concurrency: int,
    gpu_memory_utilization: float,
    input_len: int,
    output_len: int,
    engine: str,
    target_concurrency: int,
) -> None:
    cat = load_catalog()
    if model not in cat.models:
        raise PlanInputError(f"--model: {model!r} is not a known model; allowed: {', '.join(cat.models)}")
    if gpu not in cat.gpus:
        raise PlanInputError(f"--gpu: {gpu!r} is not a known GPU; allowed: {', '.join(cat.gpus)}")
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise PlanInputError(
            f"--quantization: {quantization!r} is not allowed; allowed: {', '.join(QUANTIZATIONS)}"
        )
    if gpus_per_node < 1:
        raise PlanInputError(f"--tp: {gpus_per_node} is not allowed; allowed: an integer >= 1")
    if nodes is not None and nodes < 1:
        raise PlanInputError(f"--pp: {nodes} is not allowed; allowed: an integer >= 1 (or omit it for auto)")
    # isinstance: callers outside the types (the policy pack's config) reach here too
    if max_model_len != "auto" and (not isinstance(max_model_len, int) or max_model_len < 16):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise PlanInputError(
            f"--max-model-len: {max_model_len!r} is not allowed; allowed: 'auto' or an integer >= 16"
        )
    if target_concurrency < 1:
        raise PlanInputError(
            f"--target-concurrency: {target_concurrency} is not allowed; allowed: an integer >= 1"
        )
    if concurrency < 1:
        raise PlanInputError(f"--concurrency: {concurrency} is not allowed; allowed: an integer >= 1")
    lo, hi = GPU_MEMORY_UTILIZATION_RANGE
    if not lo <= gpu_memory_utilization <= hi:
        raise PlanInputError(
            f"--gpu-memory-utilization: {gpu_memory_utilization} is not allowed; allowed: {lo} to {hi}"
        )
    if input_len < 1:
        raise PlanInputError(f"--input-len: {input_len} is not allowed; allowed: an integer >= 1")
    if output_len < 1:
        raise PlanInputError(f"--output-len: {output_len} is not allowed; allowed: an integer >= 1")
    engines = known_engines()
    if engine not in engines:
        raise PlanInputError(f"--engine: {engine!r} is not a known engine; allowed: {', '.join(engines)}")


def known_engines() -> tuple[str, ...]:
    """The engines the calibration data measured (their efficiencies are fitted)."""
    return tuple(sorted({c.engine for c in load_catalog().calibrations.values()}))


def plan(
    model: str,
    gpu: str,
    gpus_per_node: int = 8,
    nodes: int | None = None,
    quantization: str | None = None,
    max_model_len: int | Literal["auto"] = "auto",
    concurrency: int = 64,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    input_len: int = DEFAULT_INPUT_LEN,
    output_len: int = DEFAULT_OUTPUT_LEN,
    engine: str = perf.DEFAULT_ENGINE,
    target_concurrency: int = DEFAULT_TARGET_CONCURRENCY,
) -> Plan:
    """Plan `model` on nodes of `gpus_per_node` x `gpu`. With nodes=None, the smallest node
    count that fits (up to MAX_AUTO_NODES). max_model_len 'auto': the longest clean context at
    which `target_concurrency` full-length sequences fit (infra/stack/context.py); the node count
    is still the smallest whose weights and one planned request fit: auto never adds hosts for
    a longer context."""
    _check_inputs(
        model,
        gpu,
        quantization,
        gpus_per_node,
        nodes,
        max_model_len,
        concurrency,
        gpu_memory_utilization,
        input_len,
        output_len,
        engine,
        target_concurrency,
    )
    fixed = partial(
        _plan_fixed,
        model,
        gpu,
        gpus_per_node=gpus_per_node,
        quantization=quantization,
        max_model_len=max_model_len,
        concurrency=concurrency,
        gpu_memory_utilization=gpu_memory_utilization,
        input_len=input_len,
        output_len=output_len,
        engine=engine,
        target_concurrency=target_concurrency,
    )
    if nodes is not None:
        return fixed(nodes=nodes)
    p = first = fixed(nodes=1)
    if first.fits or not _memory_only(first):
        return first
    limit = min(MAX_AUTO_NODES, load_catalog().models[model].layers)
    for n in range(2, limit + 1):
        p = fixed(nodes=n)
        if p.fits or not _memory_only(p):
            return p
    p.reasons.append(f"memory: does not fit on up to {limit} nodes of {gpus_per_node}x {gpu}")
    return p


def _memory_only(p: Plan) -> bool:
    return all(r.startswith("memory:") for r in p.reasons)


def _plan_fixed(
    model: str,
    gpu: str,
    *,
    nodes: int,
    gpus_per_node: int,
    quantization: str | None,
    max_model_len: int | Literal["auto"],
    concurrency: int,
    gpu_memory_utilization: float,
    input_len: int,
    output_len: int,
    engine: str,
    target_concurrency: int,
) -> Plan:
    m = load_catalog().models[model]
    quant = quantization or m.native_dtype
    tp = gpus_per_node
    auto = max_model_len == "auto"
    # Auto first sizes the cache at the shortest length it would pick, then picks from it.
    length = context.MIN_AUTO if auto else int(max_model_len)
    reasons, pp = _layout_reasons(model, gpu, quant, tp, nodes, length)
    layout_ok = not any(r.startswith(("layout: tensor", "quantization:")) for r in reasons)
    mem = memory(model, gpu, quant, tp, pp, gpu_memory_utilization, length, layout_ok)
    choice: context.ContextChoice | None = None
    if auto and input_len + output_len > m.max_position_embeddings:
        reasons.append(
            f"max_model_len: the planned request of {input_len + output_len} tokens (input + output) "
            f"exceeds {model}'s {m.max_position_embeddings} positions"
        )
    elif auto and not mem.reasons:
        choice = context.choose(m, mem.kv_tokens, mem.kv_gib, target_concurrency, input_len + output_len)
        if choice is None:
            mem = replace(
                mem,
                reasons=[
                    f"memory: after {mem.weights_per_gpu:.1f} GiB of weights per GPU, the KV cache holds "
                    f"{mem.kv_tokens} tokens, fewer than one {input_len + output_len}-token request "
                    "(maxModelLen auto); add nodes"
                ],
            )
        else:
            length = choice.max_model_len
            mem = replace(mem, max_seqs=choice.sequences)
    elif not auto and not mem.reasons:
        choice = context.explicit(m, length, mem.kv_tokens, mem.kv_gib)
    reasons += mem.reasons
    seq_len = input_len + output_len
    kv_tokens = mem.kv_tokens
    b_eff = max(1, min(concurrency, kv_tokens // seq_len)) if kv_tokens >= seq_len else 1
    fits = not reasons
    eff = perf.efficiency(engine, quant)
    inst = instance_for(gpu, tp)
    usd_h = inst.on_demand_usd_per_hour * pp if inst else None
    ceiling, sp, cold = 0.0, None, None
    if fits:
        ceiling, sp, cold = _speed(model, gpu, quant, tp, pp, mem, b_eff, input_len, output_len, engine)
    cluster = sp.cluster_tokens_per_s if sp else 0.0
    return Plan(
        fits=fits,
        reasons=reasons,
        model=model,
        gpu=gpu,
        quantization=quant,
        nodes=pp,
        gpus_per_node=tp,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        weights_gib_total=round(mem.weights_total / GIB, 2),
        weights_gib_per_gpu=round(mem.weights_per_gpu, 2),
        usable_gib_per_gpu=round(mem.usable, 2),
        kv_cache_gib_per_gpu=round(mem.kv_gib, 2),
        kv_bytes_per_token_per_gpu=mem.kv_per_token,
        kv_cache_tokens=kv_tokens,
        max_model_len=length,
        max_concurrent_sequences=mem.max_seqs,
        concurrency=concurrency,
        effective_concurrency=b_eff if fits else 0,
        concurrency_capped=fits and b_eff < concurrency,
        engine=engine,
        input_len=input_len,
        output_len=output_len,
        decode_tokens_per_s_ceiling=round(ceiling, 1),
        decode_tokens_per_s_expected=round(cluster, 1),
        decode_tokens_per_s_per_user=round(sp.per_user_tokens_per_s, 2) if sp else 0.0,
        tpot_ms=round(sp.tpot_s * 1000, 2) if sp else 0.0,
        ttft_ms=round(sp.ttft_s * 1000, 1) if sp else 0.0,
        ttft_serving_path_ms=round(sp.ttft_serving_path_s * 1000, 1) if sp else 0.0,
        fixed_ms_per_token=round(sp.fixed_part_s * 1000, 2) if sp else 0.0,
        pipeline_bubble=round(sp.bubble, 3) if sp else 0.0,
        gpu_memory_utilization=gpu_memory_utilization,
        efficiency=round(eff.bandwidth, 4),
        layer_overhead_us=round(eff.layer_us, 1),
        prefill_efficiency=round(eff.prefill, 4),
        efficiency_note=eff.note,
        instance_type=inst.name if inst else None,
        usd_per_hour=round(usd_h, 3) if usd_h is not None else None,
        usd_per_million_output_tokens=(
            round(usd_h / (cluster * 3600) * 1e6, 4) if usd_h is not None and cluster > 0 else None
        ),
        cold_start_s=round(cold.total_s, 1) if cold else None,
        cold_start_terms=cold.to_dict()["terms"] if cold else [],
        cold_start_usd=round(cold.usd(usd_h), 2) if cold and usd_h is not None else None,
        stage_layers=[len(s.layers) for s in mem.stages],
        max_model_len_auto=auto,
        target_concurrency=target_concurrency,
        context_note=choice.note if choice else "",
        context_warning=choice.warning if choice else None,
    )


def _speed(
    model: str,
    gpu: str,
    quant: str,
    tp: int,
    pp: int,
    mem: Memory,
    batch: int,
    input_len: int,
    output_len: int,
    engine: str,
) -> tuple[float, perf.Speed, ColdStart | None]:
    """A fitting layout's roofline ceiling (cluster tok/s), expected speed and cold start."""
    cat = load_catalog()
    m, g = cat.models[model], cat.gpus[gpu]
    arch = architecture(model)
    ceiling = batch / max(
        perf_roofline.decode_roofline_seconds(
            m, g, arch, s, quant, tp, batch, input_len + output_len / 2, mem.kv_layer_bytes
        )
        for s in mem.stages
    )
    inst = instance_for(gpu, tp)
    fabric = ("efa" if inst.efa else "ethernet") if inst else "ethernet"
    lay = perf_roofline.Layout(model, gpu, quant, tp, pp, tp, fabric)
    sp = perf.speed(lay, engine, batch, input_len, output_len)
    cold = estimate_cold_start(m, inst, pp, sp.ttft_s) if inst else None
    return ceiling, sp, cold


def _layout_reasons(
    model: str, gpu: str, quant: str, tp: int, pp: int, max_model_len: int
) -> tuple[list[str], int]:
    """Why TP x PP cannot serve `model` on `gpu` at all (quantization, heads, layers, positions),
    and the pipeline size to go on with (at most one stage per layer)."""
    cat = load_catalog()
    m, g = cat.models[model], cat.gpus[gpu]
    reasons: list[str] = []
    if quant == "fp8" and not g.native_fp8:
        reasons.append(
            f"quantization: fp8 needs native FP8 support and {gpu} has none; allowed on {gpu}: bf16, int8, int4"
        )
    if m.heads % tp:
        reasons.append(
            f"layout: tensor parallel size {tp} (GPUs per node) must divide {model}'s {m.heads} attention heads"
        )
    elif m.attention == "gqa" and m.kv_heads % tp and tp % m.kv_heads:
        reasons.append(
            f"layout: tensor parallel size {tp} and {model}'s {m.kv_heads} KV heads must divide one another"
        )
    if pp > m.layers:
        reasons.append(f"layout: {pp} pipeline stages exceed {model}'s {m.layers} layers")
        pp = m.layers
    if max_model_len > m.max_position_embeddings:
        reasons.append(
            f"max_model_len: {max_model_len} exceeds {model}'s {m.max_position_embeddings} positions"
        )
    return reasons, pp


def calibrate(p: Plan, tokens_ratio: float, tpot_ratio: float, points: int, source: str) -> Plan:
    """The plan with measured figures beside the fitted ones: expected tok/s x measured/predicted
    and TPOT x measured/predicted (geometric means over `points` of the user's own runs on this
    layout). The fitted figures stay as they are; `calibration` holds the calibrated ones."""
    tpot = p.tpot_ms * tpot_ratio
    return replace(
        p,
        calibration={
            "source": source,
            "points": points,
            "tokens_per_s_ratio": round(tokens_ratio, 4),
            "tpot_ratio": round(tpot_ratio, 4),
            "decode_tokens_per_s_expected": round(p.decode_tokens_per_s_expected * tokens_ratio, 1),
            "tpot_ms": round(tpot, 2),
            "decode_tokens_per_s_per_user": round(1000 / tpot, 2) if tpot > 0 else 0.0,
        },
    )


def plan_for_stack(cfg: StackConfig) -> Plan:
    """The plan for a stack's model, quantization, max length, worker type and count."""
    # One replica's layout: the declared (or configured) workers split evenly across replicas.
    nodes = cfg.nodes_per_replica()
    return plan(
        model=cfg.model,
        gpu=cfg.gpu_model,
        gpus_per_node=cfg.gpus_per_worker,
        nodes=nodes,
        quantization=cfg.quantization,
        max_model_len=cfg.max_model_len,
        concurrency=cfg.concurrency,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        target_concurrency=cfg.target_concurrency,
    )
