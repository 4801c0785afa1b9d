"""The planner's memory model: weights and KV cache per GPU for one TP x PP layout.

Memory model (per GPU, the worst pipeline stage decides):
- weights: each layer's tensor-parallel-sharded parameters / TP, plus the parameters vLLM
  replicates on every TP rank (MLA's low-rank down-projections, the MoE router, norms);
  layers are split across PP stages the way vLLM's `get_pp_indices` does it; the
  embedding sits on the first stage, the LM head on the last.
- usable: driver-visible memory x gpu_memory_utilization - RUNTIME_OVERHEAD_GIB.
- KV cache: MLA keeps one latent (kv_lora_rank + qk_rope_head_dim) per token and layer,
  replicated on every TP rank and split by PP; GQA K and V heads are split by TP down
  to one head per rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from infra.catalog import load_catalog
from infra.stack.arch import (
    BYTES_PER_PARAM,
    GIB,
    SCALE_BYTES_PER_PARAM,
    UNQUANTIZED_BYTES,
    Stage,
    architecture,
    kv_bytes_per_token_layer_per_gpu,
    stage_weight_bytes_per_gpu,
    stages,
)

# CUDA context, NCCL buffers, cuda-graph pools and the activation peak of a prefill chunk.
RUNTIME_OVERHEAD_GIB = 2.0


@dataclass(frozen=True)
class Memory:
    """Per-GPU memory of one layout; `reasons` says why it does not fit (empty when it does)."""

    stages: list[Stage]
    weights_total: float  # bytes, whole model
    weights_per_gpu: float  # GiB, heaviest stage
    usable: float  # GiB per GPU
    kv_layer_bytes: float  # KV bytes per token and layer on one GPU
    kv_tokens: int  # KV cache capacity of the binding stage
    kv_per_token: int
    kv_gib: float
    max_seqs: int
    reasons: list[str]


def memory(
    model: str,
    gpu: str,
    quant: str,
    tp: int,
    pp: int,
    gpu_memory_utilization: float,
    max_model_len: int,
    layout_ok: bool = True,
) -> Memory:
    """`layout_ok`: TP and the quantization can serve the model at all; only then does a
    "needs at least N nodes" advice mean anything (with TP 3 no node count divides 128 heads)."""
    cat = load_catalog()
    m, g = cat.models[model], cat.gpus[gpu]
    arch = architecture(model)
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

    reasons: list[str] = []
    if weights_per_gpu > usable:
        total_need = weights_total / GIB
        min_gpus = math.ceil(total_need / usable) if usable > 0 else 0
        min_nodes = math.ceil(min_gpus / tp)
        if not layout_ok:
            advice = ""  # the layout reason says why no count works; advising one would mislead
        elif usable <= 0 or min_nodes > m.layers:
            advice = f"; no node count of {tp} can hold it ({model} has {m.layers} layers to split)"
        else:
            advice = f"; needs at least {min_nodes} nodes of {tp}"
        reasons.append(
            f"memory: weights need {weights_per_gpu:.1f} GiB per GPU ({model} {quant}, {weights_total / GIB:.1f} GiB "
            f"over TP {tp} x PP {pp}) but only {usable:.1f} GiB per {gpu} is usable "
            f"({g.usable_gib:.1f} GiB x {gpu_memory_utilization} - {RUNTIME_OVERHEAD_GIB} GiB runtime)"
            + advice
        )
    elif max_seqs < 1:
        reasons.append(
            f"memory: after {weights_per_gpu:.1f} GiB of weights per GPU, the KV cache holds {kv_tokens} tokens, "
            f"fewer than one max_model_len {max_model_len} sequence; add nodes or lower max_model_len"
        )
    return Memory(
        st,
        weights_total,
        weights_per_gpu,
        usable,
        kv_layer,
        kv_tokens,
        kv_per_token,
        kv_gib,
        max_seqs,
        reasons,
    )
