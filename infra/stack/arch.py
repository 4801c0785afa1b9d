"""Model shape as the planner and the speed model need it: parameters per layer (what tensor
parallelism splits and what every rank keeps), pipeline stages as vLLM splits them, weight
and KV-cache bytes per GPU. Pure functions over the catalog."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from infra.catalog import QUANTIZATIONS, Model, load_catalog

GIB = 1024**3
__all__ = ["QUANTIZATIONS"]  # defined with the catalog; the planner reads it from here too
BYTES_PER_PARAM = {"fp8": 1.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}
# Scale tensors stored beside quantized weights: fp8 128x128 block scales (fp32),
# int4 group-128 scales (fp16); int8 per-channel scales are negligible.
SCALE_BYTES_PER_PARAM = {"fp8": 4 / (128 * 128), "bf16": 0.0, "int8": 0.0, "int4": 2 / 128}
UNQUANTIZED_BYTES = 2.0  # embeddings, LM head, norms, router stay bf16
KV_BYTES = 2  # bf16 KV cache (vLLM's "auto" for these checkpoints)


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
        a = m.mla
        q_down = h * a.q_lora_rank
        kv_down = h * (a.kv_lora_rank + a.qk_rope_head_dim)
        q_up = a.q_lora_rank * m.heads * (a.qk_nope_head_dim + a.qk_rope_head_dim)
        kv_up = a.kv_lora_rank * m.heads * (a.qk_nope_head_dim + a.v_head_dim)
        out = m.heads * a.v_head_dim * h
        attn_sharded = q_up + kv_up + out
        attn_replicated = q_down + kv_down + a.q_lora_rank + a.kv_lora_rank
        kv_elems = a.kv_lora_rank + a.qk_rope_head_dim
    else:
        attn_sharded = h * m.heads * m.head_dim * 2 + 2 * h * m.kv_heads * m.head_dim
        attn_replicated = 0
        kv_elems = 2 * m.kv_heads * m.head_dim
    norms = 2 * h
    layers: list[Layer] = []
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
    out: list[Stage] = []
    start = 0
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
