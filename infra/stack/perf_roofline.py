"""The roofline side of the speed model: peak hardware figures, the rooflines of a decode
step and a prefill, and the per-step pieces of a deployment (no fitted efficiency here).

Decode step of one pipeline stage on one GPU, for a microbatch of b sequences:

    t_stage = roofline(b) / eta + layers x (k + 2 x allreduce latency) + all-reduce bytes / link bandwidth

- roofline(b): max(bytes read / peak bandwidth, FLOPs / peak compute) for the stage's dense
  weights, the experts the b tokens touch and the KV at the average context. It is the same
  roofline as the ceiling, so the ceiling stays an upper bound of every expected figure.
- eta: the fraction of that peak the engine's kernels reach at this quantization (fitted).
- k: a fixed cost per layer per step whatever the batch: kernel launches, norms, the MoE
  router and its dispatch (fitted per engine and quantization). This is why one stream runs
  an order of magnitude below what bandwidth alone allows.
- all-reduce latency: tensor parallelism reduces twice per layer (after attention, after the
  FFN); each pays the link's small-message latency (links.yaml: NVLink, PCIe, or the node
  fabric when TP spans nodes). TP 1 pays nothing.

Pipeline: B sequences run as n = min(B, PP) microbatches of ceil(B / n). A sequence's next
token comes after max(sum of stage times + (PP - 1) hops, n x slowest stage): its microbatch
passes every stage, and the slowest stage serves every microbatch in turn. With B < PP,
stages idle (the pipeline bubble: 1 - B / PP of their time). Per user: TPOT = that period,
tokens/s = 1 / period; cluster: B / period.

Prefill (TTFT): one prompt passes every stage; all experts are touched, so at 1k tokens and
more it is compute-bound at the GPU's FLOPS for the quantization (fp8: FP8; int8: INT8;
bf16 and int4 (W4A16 kernels): BF16), plus the attention's quadratic FLOPs.

Prompts arriving while others decode (steady state): an engine that runs prefill as its own
forward pass (SGLang's default; vLLM V0 without chunked prefill) stops decoding for a whole
prefill pass per prompt, weights read again and every layer's fixed cost paid again. With
chunked prefill (vLLM V1 always; V0 above a 32k max_model_len) the prompt's tokens ride in
the decode steps' token budget: the weights are read once per step for both, so a prompt
adds only its FLOPs (at the prefill efficiency) to the steps that carry it. That is what
keeps short outputs after long prompts from being charged as separate compute-bound steps.

Crossing hosts: tensor parallelism over the node fabric pays the fabric's all-reduce latency
twice per layer; a pipeline hop pays one send/receive (links.yaml `hop_latency_us`) plus the
activations over the link's bandwidth, once per stage boundary per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from infra.catalog import Gpu, Model, load_catalog
from infra.stack.arch import (
    BYTES_PER_PARAM,
    SCALE_BYTES_PER_PARAM,
    UNQUANTIZED_BYTES,
    Architecture,
    Stage,
    architecture,
    expected_distinct_experts,
    kv_bytes_per_token_layer_per_gpu,
    stages,
)

# --- hardware figures ---------------------------------------------------------------------------


def compute_tflops(g: Gpu, quant: str) -> float:
    """Peak dense tensor throughput for the quantization's matmuls. W4A16 (AWQ/GPTQ int4)
    dequantizes to 16-bit and runs BF16 matmuls; W8A8 int8 uses INT8 tensor cores."""
    if quant == "fp8" and g.native_fp8 and g.fp8_tflops:
        return g.fp8_tflops
    if quant == "int8":
        return g.int8_tops
    return g.bf16_tflops


def intra_node_link(g: Gpu) -> str:
    return "nvlink" if g.nvlink else "pcie"


def tp_link(g: Gpu, tp: int, gpus_per_node: int, fabric: str | None) -> str | None:
    """The link tensor parallelism reduces over: none at TP 1, the GPUs' own link inside a
    node, the node fabric when TP spans nodes."""
    if tp == 1:
        return None
    if tp <= gpus_per_node or fabric is None:
        return intra_node_link(g)
    return fabric


def _link_figures(g: Gpu, link: str | None) -> tuple[float, float]:
    """(small-message all-reduce latency in s, bandwidth in bytes/s) of a link."""
    if link is None:
        return 0.0, math.inf
    row = load_catalog().links[link]
    bw = row.bandwidth_gbs if row.bandwidth_gbs is not None else g.interconnect_gbs
    return row.allreduce_latency_us * 1e-6, min(bw, g.interconnect_gbs) * 1e9


# --- rooflines (peak hardware, no efficiency) -----------------------------------------------------


def decode_roofline_seconds(
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
    return max(read / (g.bandwidth_gbs * 1e9), flops / (compute_tflops(g, quant) * 1e12))


def _attention_flops_per_token_layer(m: Model, context: float) -> float:
    """Prefill attention FLOPs of one token against `context` earlier tokens, one layer, all
    heads (MLA prefill runs as multi-head attention over the up-projected K and V)."""
    if m.attention == "mla":
        qk, v = m.mla.qk_nope_head_dim + m.mla.qk_rope_head_dim, m.mla.v_head_dim
    else:
        qk = v = m.head_dim
    return 2 * m.heads * (qk + v) * context


def prefill_roofline_seconds(
    m: Model, g: Gpu, arch: Architecture, stage: Stage, quant: str, tp: int, tokens: int, kv_layer: float
) -> float:
    """Roofline time of prefilling one prompt of `tokens` on one GPU of `stage`."""
    read_s, flops_s = _prefill_parts(m, g, arch, stage, quant, tp, tokens, kv_layer)
    return max(read_s, flops_s)


def _prefill_parts(
    m: Model, g: Gpu, arch: Architecture, stage: Stage, quant: str, tp: int, tokens: int, kv_layer: float
) -> tuple[float, float]:
    """(seconds reading, seconds computing) at peak for one prompt of `tokens` on one GPU of `stage`."""
    qbytes = BYTES_PER_PARAM[quant] + SCALE_BYTES_PER_PARAM[quant]
    k = m.moe.experts_per_token if m.moe else 0
    read = flops = 0.0
    for lyr in stage.layers:
        dense = lyr.sharded - lyr.experts * lyr.expert_params
        touched = expected_distinct_experts(lyr.experts, k, tokens) if lyr.experts else 0.0
        read += (dense + touched * lyr.expert_params) * qbytes / tp + lyr.replicated * UNQUANTIZED_BYTES
        read += tokens * kv_layer  # the KV it writes
        flops += 2 * lyr.active * tokens / tp
        flops += tokens * _attention_flops_per_token_layer(m, tokens / 2) / tp  # causal: half on average
    if stage.last:
        read += arch.head * UNQUANTIZED_BYTES / tp
        flops += 2 * arch.head / tp  # only the last position's logits
    return read / (g.bandwidth_gbs * 1e9), flops / (compute_tflops(g, quant) * 1e12)


# --- the deployment's per-step pieces, independent of the fitted efficiencies -----------------------


@dataclass(frozen=True)
class StepShape:
    """A deployment's decode (or prefill) pass cut into what the efficiencies multiply:
    per stage, the roofline seconds, the layer count and the fixed link seconds; plus, for a
    decode step in steady state, the share of a prompt's prefill pass it carries."""

    batch: int
    microbatches: int
    roofline_s: tuple[float, ...]
    layers: tuple[int, ...]
    link_s: tuple[float, ...]  # all-reduce latency + bytes per stage
    hop_s: float  # all pipeline hops of one pass
    prompts_per_step: float = 0.0  # prefill passes per decode step (other streams' prompts)
    prefill: StepShape | None = None  # one prompt's prefill pass
    # Per stage, the seconds of this pass's FLOPs alone at peak compute (what a prompt adds to
    # the decode steps that carry it under chunked prefill).
    compute_s: tuple[float, ...] = ()
    chunked: bool = False  # prompts ride in the decode steps (chunked prefill)

    def stage_seconds(self, eta: float, layer_s: float, extra: tuple[float, ...] = ()) -> list[float]:
        extra = extra or (0.0,) * len(self.layers)
        return [
            r / eta + n * layer_s + c + x
            for r, n, c, x in zip(self.roofline_s, self.layers, self.link_s, extra, strict=True)
        ]

    def decode_period(self, eta: float, layer_s: float, extra: tuple[float, ...] = ()) -> float:
        t = self.stage_seconds(eta, layer_s, extra)
        return max(sum(t) + self.hop_s, self.microbatches * max(t))

    def period(self, eta: float, layer_s: float, eta_prefill: float = 1.0) -> float:
        """Seconds between two tokens of one stream: the decode pass, plus what the prompts
        that arrive meanwhile cost it: a whole prefill pass each (the engine stops decoding),
        or, chunked, their FLOPs inside the decode steps."""
        if self.prefill is None or self.prompts_per_step == 0:
            return self.decode_period(eta, layer_s)
        if self.chunked:
            share = tuple(self.prompts_per_step * c / eta_prefill for c in self.prefill.compute_s)
            return self.decode_period(eta, layer_s, share)
        own = self.decode_period(eta, layer_s)
        return own + self.prompts_per_step * self.prefill.decode_period(eta_prefill, layer_s)

    def bubble(self, eta: float, layer_s: float) -> float:
        """Fraction of decode stage time idle: 1 - mean stage busy time / decode period."""
        t = self.stage_seconds(eta, layer_s)
        busy = self.microbatches * sum(t) / len(t)
        return max(0.0, 1.0 - busy / self.decode_period(eta, layer_s))


@dataclass(frozen=True)
class Layout:
    model: str
    gpu: str
    quantization: str
    tensor_parallel: int
    pipeline_parallel: int
    gpus_per_node: int
    fabric: str | None  # the link between nodes (pipeline hops; TP when it spans nodes)


def _allreduce_seconds(m: Model, g: Gpu, link: str | None, layers: int, tp: int, tokens: int) -> float:
    if tp == 1 or link is None:
        return 0.0
    latency, bw = _link_figures(g, link)
    message = tokens * m.hidden * 2  # bf16 activations
    return layers * 2 * (latency + 2 * (tp - 1) / tp * message / bw)


def _hop_seconds(m: Model, g: Gpu, fabric: str | None, pp: int, tokens: int) -> float:
    """A pass's pipeline hops: one send/receive of the activations per stage boundary, at the
    link's point-to-point latency (not its all-reduce's) and bandwidth."""
    if pp == 1:
        return 0.0
    link = fabric or intra_node_link(g)
    _, bw = _link_figures(g, link)
    row = load_catalog().links[link]
    latency = (row.hop_latency_us if row.hop_latency_us is not None else row.allreduce_latency_us) * 1e-6
    return (pp - 1) * (latency + tokens * m.hidden * 2 / bw)


def decode_shape(
    lay: Layout,
    batch: int,
    avg_context: float,
    prompts_per_step: float = 0.0,
    prompt_len: int = 0,
    chunked: bool = False,
) -> StepShape:
    """One decode step of `batch` sequences, carrying `prompts_per_step` prompts of
    `prompt_len` tokens (steady-state arrivals): as prefill passes of their own, or, `chunked`,
    inside the decode steps."""
    cat = load_catalog()
    m, g = cat.models[lay.model], cat.gpus[lay.gpu]
    arch = architecture(lay.model)
    tp, pp = lay.tensor_parallel, lay.pipeline_parallel
    n_mb = max(1, min(batch, pp))
    b = math.ceil(batch / n_mb)
    kv_layer = kv_bytes_per_token_layer_per_gpu(m, arch, tp)
    link = tp_link(g, tp, lay.gpus_per_node, lay.fabric)
    st = stages(arch, pp)
    return StepShape(
        batch=batch,
        microbatches=n_mb,
        roofline_s=tuple(
            decode_roofline_seconds(m, g, arch, s, lay.quantization, tp, b, avg_context, kv_layer) for s in st
        ),
        layers=tuple(len(s.layers) for s in st),
        link_s=tuple(_allreduce_seconds(m, g, link, len(s.layers), tp, b) for s in st),
        hop_s=_hop_seconds(m, g, lay.fabric, pp, b),
        prompts_per_step=prompts_per_step,
        prefill=prefill_shape(lay, prompt_len) if prompts_per_step and prompt_len else None,
        chunked=chunked,
    )


def prefill_shape(lay: Layout, tokens: int) -> StepShape:
    cat = load_catalog()
    m, g = cat.models[lay.model], cat.gpus[lay.gpu]
    arch = architecture(lay.model)
    tp, pp = lay.tensor_parallel, lay.pipeline_parallel
    kv_layer = kv_bytes_per_token_layer_per_gpu(m, arch, tp)
    link = tp_link(g, tp, lay.gpus_per_node, lay.fabric)
    st = stages(arch, pp)
    parts = [_prefill_parts(m, g, arch, s, lay.quantization, tp, tokens, kv_layer) for s in st]
    return StepShape(
        batch=1,
        microbatches=1,
        roofline_s=tuple(max(p) for p in parts),
        compute_s=tuple(p[1] for p in parts),
        layers=tuple(len(s.layers) for s in st),
        link_s=tuple(_allreduce_seconds(m, g, link, len(s.layers), tp, tokens) for s in st),
        hop_s=_hop_seconds(m, g, lay.fabric, pp, tokens),
    )
