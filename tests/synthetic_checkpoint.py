"""Header-only safetensors checkpoints for the weights tests: real headers (names, dtypes,
shapes, offsets), the data region a sparse hole (`truncate`), so R1's ~640 GiB costs a few MiB
of disk. Only code that never reads tensor data can use them, which is what they test."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from infra.weights.checkpoint import ITEMSIZE

Tensor = tuple[str, str, tuple[int, ...]]  # name, safetensors dtype, shape

# DeepSeek-R1's config.json, the keys the check reads (deepseek-ai/DeepSeek-R1 config.json).
R1_CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 61,
    "num_nextn_predict_layers": 1,
    "first_k_dense_replace": 3,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "num_attention_heads": 128,
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "vocab_size": 129280,
    "quantization_config": {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    },
}


def _fp8(name: str, rows: int, cols: int) -> list[Tensor]:
    """An FP8 e4m3 weight and its F32 128x128 block scales, as R1 stores every linear layer."""
    return [
        (f"{name}.weight", "F8_E4M3", (rows, cols)),
        (f"{name}.weight_scale_inv", "F32", (math.ceil(rows / 128), math.ceil(cols / 128))),
    ]


def r1_tensors(layers: int = 61, mtp: int = 1, weight_dtype: str = "F8_E4M3") -> list[Tensor]:
    """R1's tensors: 3 dense layers, MoE after, MLA attention, the MTP layer(s) after the last."""
    h, vocab, heads = 7168, 129280, 128
    out: list[Tensor] = [
        ("model.embed_tokens.weight", "BF16", (vocab, h)),
        ("model.norm.weight", "BF16", (h,)),
        ("lm_head.weight", "BF16", (vocab, h)),
    ]
    for i in range(layers + mtp):
        p = f"model.layers.{i}"
        out += [
            (f"{p}.input_layernorm.weight", "BF16", (h,)),
            (f"{p}.post_attention_layernorm.weight", "BF16", (h,)),
        ]
        out += _fp8(f"{p}.self_attn.q_a_proj", 1536, h) + [
            (f"{p}.self_attn.q_a_layernorm.weight", "BF16", (1536,))
        ]
        out += _fp8(f"{p}.self_attn.q_b_proj", heads * (128 + 64), 1536)
        out += _fp8(f"{p}.self_attn.kv_a_proj_with_mqa", 512 + 64, h)
        out += [(f"{p}.self_attn.kv_a_layernorm.weight", "BF16", (512,))]
        out += _fp8(f"{p}.self_attn.kv_b_proj", heads * (128 + 128), 512)
        out += _fp8(f"{p}.self_attn.o_proj", h, heads * 128)
        if i < 3:
            out += _fp8(f"{p}.mlp.gate_proj", 18432, h) + _fp8(f"{p}.mlp.up_proj", 18432, h)
            out += _fp8(f"{p}.mlp.down_proj", h, 18432)
        else:
            out += [
                (f"{p}.mlp.gate.weight", "BF16", (256, h)),
                (f"{p}.mlp.gate.e_score_correction_bias", "F32", (256,)),
            ]
            for e in [*(f"experts.{j}" for j in range(256)), "shared_experts"]:
                out += _fp8(f"{p}.mlp.{e}.gate_proj", 2048, h) + _fp8(f"{p}.mlp.{e}.up_proj", 2048, h)
                out += _fp8(f"{p}.mlp.{e}.down_proj", h, 2048)
        if i >= layers:  # the MTP module: its own embedding, projections and head
            out += [
                (f"{p}.embed_tokens.weight", "BF16", (vocab, h)),
                (f"{p}.enorm.weight", "BF16", (h,)),
                (f"{p}.hnorm.weight", "BF16", (h,)),
                (f"{p}.eh_proj.weight", "BF16", (h, 2 * h)),
                (f"{p}.shared_head.norm.weight", "BF16", (h,)),
                (f"{p}.shared_head.head.weight", "BF16", (vocab, h)),
            ]
    if weight_dtype != "F8_E4M3":  # the same model stored in another precision, without scales
        out = [
            (n, weight_dtype if d == "F8_E4M3" else d, s) for n, d, s in out if not n.endswith("_scale_inv")
        ]
    return out


def nbytes(t: Tensor) -> int:
    return math.prod(t[2]) * ITEMSIZE[t[1]]


def write_header_only(directory: Path, tensors: list[Tensor], shards: int, config: dict) -> Path:
    """config.json, the index and `shards` safetensors files named as Hugging Face names them,
    each a real header followed by a sparse hole of its data's exact size."""
    directory.mkdir(parents=True, exist_ok=True)
    per = sum(nbytes(t) for t in tensors) / shards
    groups: list[list[Tensor]] = [[] for _ in range(shards)]
    acc = 0
    for t in tensors:  # in order, filling each shard to its share (R1's layers stay together mostly)
        groups[min(int(acc // per), shards - 1)].append(t)
        acc += nbytes(t)
    weight_map = {}
    for i, group in enumerate(groups, 1):
        name = f"model-{i:05d}-of-{shards:05d}.safetensors"
        header, off = {}, 0
        for n, d, s in group:
            header[n] = {"dtype": d, "shape": list(s), "data_offsets": [off, off + nbytes((n, d, s))]}
            off += nbytes((n, d, s))
            weight_map[n] = name
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
        path = directory / name
        with open(path, "wb") as fh:
            fh.write(struct.pack("<Q", len(raw)) + raw)
            fh.truncate(8 + len(raw) + off)  # a hole: no data block is written
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": sum(nbytes(t) for t in tensors)}, "weight_map": weight_map})
    )
    (directory / "config.json").write_text(json.dumps(config))
    return directory
