"""Capacity planner: model x GPU -> layout, memory, concurrency, decode throughput.

Pure functions over the catalog. Both the Pulumi program and the policy pack call
`plan()`, so its one-line `reason` is what users see when a layout cannot fit.

Memory model (per GPU, the worst pipeline stage decides):
- weights: each layer's tensor-parallel-sharded parameters / TP, plus the parameters vLLM
  replicates on every TP rank (MLA's low-rank down-projections, the MoE router, norms);
  layers are split across PP stages the way vLLM's `get_pp_indices` does it; the
  embedding sits on the first stage, the LM head on the last.
- usable: driver-visible memory x gpu_memory_utilization - RUNTIME_OVERHEAD_GIB.
- KV cache: MLA keeps one latent (kv_lora_rank + qk_rope_head_dim) per token and layer,
  replicated on every TP rank and split by PP; GQA K and V heads are split by TP down
  to one head per rank.

Throughput model:
- ceiling: a roofline per decode step at a batch of B sequences. Every stage must read
  its dense weights, the experts the batch touches (expected distinct experts under
  uniform routing, B tokens x k picks of E) and the batch's KV at the average context,
  at the GPU's peak bandwidth, and do 2 x active-params FLOPs per token at peak
  compute. A stage that batches all B tokens at once is the most efficient any
  schedule can be, so B / (slowest stage's step time) bounds every pipeline schedule.
- expected: step = ceiling step / EFFICIENCY + tensor-parallel all-reduce time over the
  GPUs' interconnect. EFFICIENCY is calibrated so the model reproduces the published
  DeepSeek-R1 / 8x H200 point in catalog/calibration.yaml (see `calibrated_efficiency`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from infra.catalog import Gpu, Model, load_catalog

if TYPE_CHECKING:
    from infra.config import StackConfig

GIB = 1024**3
QUANTIZATIONS = ("fp8", "bf16", "int8", "int4")
BYTES_PER_PARAM = {"fp8": 1.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}
# Scale tensors stored beside quantized weights: fp8 128x128 block scales (fp32),
# int4 group-128 scales (fp16); int8 per-channel scales are negligible.
SCALE_BYTES_PER_PARAM = {"fp8": 4 / (128 * 128), "bf16": 0.0, "int8": 0.0, "int4": 2 / 128}
UNQUANTIZED_BYTES = 2.0  # embeddings, LM head, norms, router stay bf16
KV_BYTES = 2  # bf16 KV cache (vLLM's "auto" for these checkpoints)
# CUDA context, NCCL buffers, cuda-graph pools and the activation peak of a prefill chunk.
RUNTIME_OVERHEAD_GIB = 2.0
DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
DEFAULT_INPUT_LEN = 1024
DEFAULT_OUTPUT_LEN = 1024
MAX_AUTO_NODES = 32


@dataclass(frozen=True)
class Layer:
    sharded: float  # parameters split across TP ranks
    replicated: float  # parameters every TP rank holds in full
    experts: int  # routed experts in this layer (0 for dense layers)
    expert_params: float  # parameters of one routed expert
    active: float  # parameters one token touches in this layer


@dataclass(frozen=True)
class Architecture:
    layers: tuple[Layer, ...]
    embedding: float
    head: float
    kv_elems_per_token_layer: int  # elements per token per layer before TP splitting

    @property
    def total_params(self) -> float:
        per_layer = sum(lyr.sharded + lyr.replicated for lyr in self.layers)
        return per_layer + self.embedding + self.head

    @property
    def active_params(self) -> float:
        return sum(lyr.active for lyr in self.layers) + self.head


@cache
def architecture(model_id: str) -> Architecture:
    m = load_catalog().models[model_id]
    h = m.hidden
    if m.attention == "mla":
        q_down = h * m.q_lora_rank
        kv_down = h * (m.kv_lora_rank + m.qk_rope_head_dim)
        q_up = m.q_lora_rank * m.heads * (m.qk_nope_head_dim + m.qk_rope_head_dim)
        kv_up = m.kv_lora_rank * m.heads * (m.qk_nope_head_dim + m.v_head_dim)
        out = m.heads * m.v_head_dim * h
        attn_sharded = q_up + kv_up + out
        attn_replicated = q_down + kv_down + m.q_lora_rank + m.kv_lora_rank
        kv_elems = m.kv_lora_rank + m.qk_rope_head_dim
    else:
        attn_sharded = h * m.heads * m.head_dim * 2 + 2 * h * m.kv_heads * m.head_dim
        attn_replicated = 0
        kv_elems = 2 * m.kv_heads * m.head_dim
    norms = 2 * h
    layers = []
    for i in range(m.layers):
        if m.moe and i >= m.moe.first_k_dense:
            expert = 3 * h * m.moe.expert_intermediate
            shared = m.moe.shared_experts * expert
            router = m.moe.routed_experts * h
            layers.append(
                Layer(
                    sharded=attn_sharded + shared + m.moe.routed_experts * expert,
                    replicated=attn_replicated + router + norms,
                    experts=m.moe.routed_experts,
                    expert_params=expert,
                    active=attn_sharded + attn_replicated + shared + m.moe.experts_per_token * expert,
                )
            )
        else:
            ffn = 3 * h * m.intermediate
            layers.append(
                Layer(
                    sharded=attn_sharded + ffn,
                    replicated=attn_replicated + norms,
                    experts=0,
                    expert_params=0,
                    active=attn_sharded + attn_replicated + ffn,
                )
            )
    emb = m.vocab * h
    return Architecture(tuple(layers), emb, 0 if m.tie_embeddings else emb, kv_elems)


def pp_partition(num_layers: int, pp: int) -> list[int]:
    """Layers per stage, as vLLM's get_pp_indices splits them (extra layers go to the
    stages before the last, which also holds the LM head)."""
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    return parts


def expected_distinct_experts(experts: int, k: int, batch: int) -> float:
    """Expected distinct experts touched when `batch` tokens each pick k of `experts`
    uniformly (DeepSeek's auxiliary-loss-free balancing keeps routing near uniform)."""
    return experts * (1 - (1 - k / experts) ** batch)


@dataclass(frozen=True)
class Stage:
    layers: tuple[Layer, ...]
    first: bool
    last: bool


def stages(arch: Architecture, pp: int) -> list[Stage]:
    out, start = [], 0
    parts = pp_partition(len(arch.layers), pp)
    for s, n in enumerate(parts):
        out.append(Stage(arch.layers[start : start + n], s == 0, s == pp - 1))
        start += n
    return out


def stage_weight_bytes_per_gpu(arch: Architecture, stage: Stage, quant: str, tp: int) -> float:
    qbytes = BYTES_PER_PARAM[quant] + SCALE_BYTES_PER_PARAM[quant]
    sharded = sum(lyr.sharded for lyr in stage.layers) * qbytes
    replicated = sum(lyr.replicated for lyr in stage.layers) * UNQUANTIZED_BYTES
    edges = (arch.embedding if stage.first else 0) + (arch.head if stage.last else 0)
    return (sharded + edges * UNQUANTIZED_BYTES) / tp + replicated


def kv_bytes_per_token_layer_per_gpu(model: Model, arch: Architecture, tp: int) -> float:
    if model.attention == "mla":
        return arch.kv_elems_per_token_layer * KV_BYTES  # replicated on every TP rank
    kv_heads_per_rank = max(1, model.kv_heads // tp)
    return 2 * kv_heads_per_rank * model.head_dim * KV_BYTES


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
    decode_tokens_per_s_ceiling: float
    decode_tokens_per_s_expected: float
    gpu_memory_utilization: float
    efficiency: float
    stage_layers: list[int] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reason"] = self.reason
        return d


class PlanInputError(ValueError):
    """Bad planner input; str() is one line naming the option, the value and what is allowed."""


def _check_inputs(
    model: str,
    gpu: str,
    quantization: str | None,
    gpus_per_node: int,
    nodes: int | None,
    max_model_len: int,
    concurrency: int,
    gpu_memory_utilization: float,
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
        raise PlanInputError(f"--gpus-per-node: {gpus_per_node} is not allowed; allowed: an integer >= 1")
    if nodes is not None and nodes < 1:
        raise PlanInputError(
            f"--nodes: {nodes} is not allowed; allowed: an integer >= 1 (or omit it for auto)"
        )
    if max_model_len < 16:
        raise PlanInputError(f"--max-model-len: {max_model_len} is not allowed; allowed: an integer >= 16")
    if concurrency < 1:
        raise PlanInputError(f"--concurrency: {concurrency} is not allowed; allowed: an integer >= 1")
    if not 0.1 <= gpu_memory_utilization <= 0.99:
        raise PlanInputError(
            f"--gpu-memory-utilization: {gpu_memory_utilization} is not allowed; allowed: 0.1 to 0.99"
        )


def plan(
    model: str,
    gpu: str,
    gpus_per_node: int = 8,
    nodes: int | None = None,
    quantization: str | None = None,
    max_model_len: int = 8192,
    concurrency: int = 64,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    input_len: int = DEFAULT_INPUT_LEN,
    output_len: int = DEFAULT_OUTPUT_LEN,
    efficiency: float | None = None,
) -> Plan:
    """Plan `model` on nodes of `gpus_per_node` x `gpu`. With nodes=None, the smallest node
    count that fits (up to MAX_AUTO_NODES)."""
    _check_inputs(
        model, gpu, quantization, gpus_per_node, nodes, max_model_len, concurrency, gpu_memory_utilization
    )
    kw = dict(
        gpus_per_node=gpus_per_node,
        quantization=quantization,
        max_model_len=max_model_len,
        concurrency=concurrency,
        gpu_memory_utilization=gpu_memory_utilization,
        input_len=input_len,
        output_len=output_len,
        efficiency=efficiency,
    )
    if nodes is not None:
        return _plan_fixed(model, gpu, nodes=nodes, **kw)
    first = _plan_fixed(model, gpu, nodes=1, **kw)
    if first.fits or not _memory_only(first):
        return first
    limit = min(MAX_AUTO_NODES, load_catalog().models[model].layers)
    for n in range(2, limit + 1):
        p = _plan_fixed(model, gpu, nodes=n, **kw)
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
    max_model_len: int,
    concurrency: int,
    gpu_memory_utilization: float,
    input_len: int,
    output_len: int,
    efficiency: float | None,
) -> Plan:
    cat = load_catalog()
    m, g = cat.models[model], cat.gpus[gpu]
    quant = quantization or m.native_dtype
    arch = architecture(model)
    tp, pp = gpus_per_node, nodes
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

    qbytes = BYTES_PER_PARAM[quant] + SCALE_BYTES_PER_PARAM[quant]
    sharded_total = sum(lyr.sharded for lyr in arch.layers)
    replicated_total = sum(lyr.replicated for lyr in arch.layers) + arch.embedding + arch.head
    weights_total = sharded_total * qbytes + replicated_total * UNQUANTIZED_BYTES
    usable = g.usable_gib * gpu_memory_utilization - RUNTIME_OVERHEAD_GIB
    kv_layer = kv_bytes_per_token_layer_per_gpu(m, arch, tp)

    st = stages(arch, pp)
    per_stage_weights = [stage_weight_bytes_per_gpu(arch, s, quant, tp) for s in st]
    per_stage_tokens = [
        max(0.0, usable * GIB - w) / (kv_layer * len(s.layers))
        for s, w in zip(st, per_stage_weights, strict=True)
    ]
    heaviest = max(range(pp), key=lambda i: per_stage_weights[i])
    binding = min(range(pp), key=lambda i: per_stage_tokens[i])
    weights_per_gpu = per_stage_weights[heaviest] / GIB
    kv_tokens = int(per_stage_tokens[binding])
    kv_per_token = int(kv_layer * len(st[binding].layers))
    kv_gib = max(0.0, usable - per_stage_weights[binding] / GIB)
    max_seqs = kv_tokens // max_model_len

    if weights_per_gpu > usable:
        total_need = weights_total / GIB
        min_gpus = math.ceil(total_need / usable) if usable > 0 else 0
        reasons.append(
            f"memory: weights need {weights_per_gpu:.1f} GiB per GPU ({model} {quant}, {weights_total / GIB:.1f} GiB "
            f"over TP {tp} x PP {pp}) but only {usable:.1f} GiB per {gpu} is usable "
            f"({g.usable_gib:.1f} GiB x {gpu_memory_utilization} - {RUNTIME_OVERHEAD_GIB} GiB runtime); "
            f"needs at least {math.ceil(min_gpus / tp)} nodes of {tp}"
        )
    elif max_seqs < 1:
        reasons.append(
            f"memory: after {weights_per_gpu:.1f} GiB of weights per GPU, the KV cache holds {kv_tokens} tokens, "
            f"fewer than one max_model_len {max_model_len} sequence; add nodes or lower max_model_len"
        )

    eff = efficiency if efficiency is not None else calibrated_efficiency()
    seq_len = input_len + output_len
    b_eff = max(1, min(concurrency, kv_tokens // seq_len)) if kv_tokens >= seq_len else 1
    fits = not reasons
    if fits:
        ceiling, expected = _decode_rates(
            m, g, arch, st, quant, tp, b_eff, input_len + output_len / 2, kv_layer, eff
        )
    else:
        ceiling = expected = 0.0
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
        weights_gib_total=round(weights_total / GIB, 2),
        weights_gib_per_gpu=round(weights_per_gpu, 2),
        usable_gib_per_gpu=round(usable, 2),
        kv_cache_gib_per_gpu=round(kv_gib, 2),
        kv_bytes_per_token_per_gpu=kv_per_token,
        kv_cache_tokens=kv_tokens,
        max_model_len=max_model_len,
        max_concurrent_sequences=max_seqs,
        concurrency=concurrency,
        effective_concurrency=b_eff if fits else 0,
        decode_tokens_per_s_ceiling=round(ceiling, 1),
        decode_tokens_per_s_expected=round(expected, 1),
        gpu_memory_utilization=gpu_memory_utilization,
        efficiency=round(eff, 4),
        stage_layers=[len(s.layers) for s in st],
    )


def decode_step_seconds(
    m: Model,
    g: Gpu,
    arch: Architecture,
    stage: Stage,
    quant: str,
    tp: int,
    batch: int,
    avg_context: float,
    kv_layer: float,
) -> float:
    """Roofline time of one decode step of `batch` sequences on one GPU of `stage`."""
    qbytes = BYTES_PER_PARAM[quant] + SCALE_BYTES_PER_PARAM[quant]
    k = m.moe.experts_per_token if m.moe else 0
    read = 0.0
    flops = 0.0
    for lyr in stage.layers:
        dense = lyr.sharded - lyr.experts * lyr.expert_params
        touched = expected_distinct_experts(lyr.experts, k, batch) if lyr.experts else 0.0
        read += (dense + touched * lyr.expert_params) * qbytes / tp + lyr.replicated * UNQUANTIZED_BYTES
        read += batch * avg_context * kv_layer
        flops += 2 * lyr.active * batch / tp
    if stage.last:
        read += arch.head * UNQUANTIZED_BYTES / tp
        flops += 2 * arch.head * batch / tp
    tflops = g.fp8_tflops if quant == "fp8" and g.native_fp8 else g.bf16_tflops
    return max(read / (g.bandwidth_gbs * 1e9), flops / (tflops * 1e12))


def allreduce_step_seconds(m: Model, g: Gpu, stage: Stage, tp: int, batch: int) -> float:
    """Ring all-reduce time of one decode step: two all-reduces of batch x hidden bf16
    activations per layer (after attention and after the FFN)."""
    if tp == 1:
        return 0.0
    message = batch * m.hidden * 2
    return len(stage.layers) * 2 * (2 * (tp - 1) / tp) * message / (g.interconnect_gbs * 1e9)


def _decode_rates(m, g, arch, st, quant, tp, batch, avg_context, kv_layer, eff) -> tuple[float, float]:
    ceil_steps = [decode_step_seconds(m, g, arch, s, quant, tp, batch, avg_context, kv_layer) for s in st]
    exp_steps = [
        c / eff + allreduce_step_seconds(m, g, s, tp, batch) for c, s in zip(ceil_steps, st, strict=True)
    ]
    return batch / max(ceil_steps), batch / max(exp_steps)


@cache
def calibrated_efficiency() -> float:
    """The factor that makes the expected rate equal the published point in
    catalog/calibration.yaml (DeepSeek-R1, 8x H200, TP 8, 1k/1k, concurrency 64)."""
    cat = load_catalog()
    cal = next(iter(cat.calibrations.values()))
    m, g = cat.models[cal.model], cat.gpus[cal.gpu]
    arch = architecture(cal.model)
    (stage,) = stages(arch, cal.nodes)
    kv_layer = kv_bytes_per_token_layer_per_gpu(m, arch, cal.gpus_per_node)
    ctx = cal.input_len + cal.output_len / 2
    ceil_step = decode_step_seconds(
        m, g, arch, stage, cal.quantization, cal.gpus_per_node, cal.concurrency, ctx, kv_layer
    )
    comm = allreduce_step_seconds(m, g, stage, cal.gpus_per_node, cal.concurrency)
    measured_step = cal.concurrency / cal.output_tokens_per_s_per_node
    return ceil_step / (measured_step - comm)


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
    )
