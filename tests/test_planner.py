"""The planner's arithmetic against hand-computed cases (numbers worked out in comments)."""

import pytest

from infra.catalog import load_catalog
from infra.planner import (
    GIB,
    PlanInputError,
    architecture,
    calibrated_efficiency,
    expected_distinct_experts,
    plan,
    pp_partition,
)


def test_deepseek_parameter_count_matches_model_card():
    arch = architecture("deepseek-r1")
    # 671B total, ~37B active (DeepSeek-V3 README); our sum of the config.json shapes:
    assert arch.total_params / 1e9 == pytest.approx(671.0, rel=0.002)
    assert arch.active_params / 1e9 == pytest.approx(37, rel=0.03)
    # One routed expert: 3 x hidden x expert_intermediate = 3 x 7168 x 2048.
    moe_layer = arch.layers[3]
    assert moe_layer.expert_params == 3 * 7168 * 2048 == 44_040_192
    assert moe_layer.experts == 256
    assert arch.layers[0].experts == 0  # first_k_dense_replace = 3


@pytest.mark.parametrize(
    "model,billions",
    [
        ("deepseek-r1-distill-qwen-7b", 7.62),
        ("deepseek-r1-distill-qwen-32b", 32.8),
        ("deepseek-r1-distill-llama-70b", 70.6),
    ],
)
def test_distill_parameter_counts(model, billions):
    assert architecture(model).total_params / 1e9 == pytest.approx(billions, rel=0.01)


def test_pp_partition_matches_vllm():
    # vLLM's get_pp_indices: even split, the remainder goes to the stages before the last.
    assert pp_partition(61, 1) == [61]
    assert pp_partition(61, 2) == [31, 30]
    assert pp_partition(61, 3) == [20, 21, 20]
    assert pp_partition(10, 4) == [2, 3, 3, 2]


def test_mla_kv_is_replicated_across_tp_and_split_by_pp():
    # (kv_lora_rank 512 + rope 64) x 61 layers x 2 bytes = 70,272 bytes per token (FACTS.md).
    one_node = plan("deepseek-r1", "H200", gpus_per_node=8, nodes=1)
    assert one_node.kv_bytes_per_token_per_gpu == 70_272
    four_gpu = plan("deepseek-r1", "H200", gpus_per_node=4, nodes=2)
    # TP 4 does not split the latent; PP 2 leaves the 31-layer stage: 576 x 2 x 31.
    assert four_gpu.stage_layers == [31, 30]
    assert four_gpu.kv_bytes_per_token_per_gpu in (576 * 2 * 31, 576 * 2 * 30)


def test_gqa_kv_is_split_by_tp_down_to_one_head():
    # Llama-70B: 2 (K,V) x 8 heads x 128 x 2 bytes x 80 layers = 327,680 bytes per token.
    tp8 = plan("deepseek-r1-distill-llama-70b", "L40S", gpus_per_node=8, nodes=1)
    assert tp8.kv_bytes_per_token_per_gpu == 327_680 // 8
    tp4 = plan("deepseek-r1-distill-llama-70b", "H100", gpus_per_node=4, nodes=1)
    assert tp4.kv_bytes_per_token_per_gpu == 327_680 // 4


def test_weights_and_usable_memory_by_hand():
    # Qwen-7B BF16 on one L4: every parameter at 2 bytes.
    p = plan("deepseek-r1-distill-qwen-7b", "L4", gpus_per_node=1, nodes=1)
    params = 28 * (3584 * 3584 * 2 + 2 * 3584 * 512 + 3 * 3584 * 18944 + 2 * 3584) + 2 * 152064 * 3584
    assert p.weights_gib_total == pytest.approx(params * 2 / GIB, abs=0.01)
    assert p.weights_gib_per_gpu == pytest.approx(params * 2 / GIB, abs=0.01)
    # L4: 22888 MiB x 0.90 - 2 GiB runtime overhead.
    assert p.usable_gib_per_gpu == pytest.approx(22888 / 1024 * 0.9 - 2, abs=0.01)
    assert p.kv_cache_gib_per_gpu == pytest.approx(p.usable_gib_per_gpu - p.weights_gib_per_gpu, abs=0.02)
    # 2 x 4 KV heads x 128 x 2 bytes x 28 layers = 57,344 bytes per token.
    assert p.kv_bytes_per_token_per_gpu == 57_344
    assert p.max_concurrent_sequences == int(p.kv_cache_gib_per_gpu * GIB / 57_344) // 8192


def test_deepseek_fp8_weights_by_hand():
    p = plan("deepseek-r1", "H200", nodes=1)
    arch = architecture("deepseek-r1")
    sharded = sum(lyr.sharded for lyr in arch.layers)
    replicated = sum(lyr.replicated for lyr in arch.layers) + arch.embedding + arch.head
    # FP8 weights + fp32 128x128 block scales; embeddings, norms, router in bf16.
    expected = sharded * (1 + 4 / 16384) + replicated * 2
    assert p.weights_gib_total == pytest.approx(expected / GIB, abs=0.01)
    assert 600 < p.weights_gib_total < 642  # below the 642 GiB checkpoint, which carries the MTP module


def test_four_l20_cards_do_not_hold_deepseek_r1():
    # A deployment guide claims 4 L20 cards hold DeepSeek-R1: 628 GiB over 4 x 48 GB cannot.
    p = plan("deepseek-r1", "L20", gpus_per_node=4, nodes=1)
    assert not p.fits
    assert p.reasons[0].startswith("memory:")
    assert "158.4 GiB per GPU" in p.reason
    assert "\n" not in p.reason


def test_auto_nodes_is_the_smallest_that_fits():
    p = plan("deepseek-r1", "L40S")
    assert p.fits and p.nodes == 3 and p.tensor_parallel_size == 8 and p.pipeline_parallel_size == 3
    two = plan("deepseek-r1", "L40S", nodes=2)
    assert not two.fits and "memory" in two.reason
    assert plan("deepseek-r1", "L20").nodes == 3


def test_fp8_needs_native_fp8():
    p = plan("deepseek-r1", "A100-80GB", nodes=2, quantization="fp8")
    assert not p.fits
    assert any(r.startswith("quantization: fp8 needs native FP8") for r in p.reasons)
    assert plan("deepseek-r1-distill-llama-70b", "A100-80GB", quantization="bf16").fits


def test_default_quantization_is_native():
    assert plan("deepseek-r1", "H200").quantization == "fp8"
    assert plan("deepseek-r1-distill-qwen-7b", "L4", gpus_per_node=1).quantization == "bf16"


def test_tp_must_divide_heads():
    p = plan("deepseek-r1-distill-qwen-7b", "L40S", gpus_per_node=3, nodes=1)  # 28 heads
    assert not p.fits and "must divide" in p.reason


def test_bad_inputs_name_the_option():
    with pytest.raises(PlanInputError, match=r"^--gpu: 'Z9' is not a known GPU; allowed: L20"):
        plan("deepseek-r1", "Z9")
    with pytest.raises(PlanInputError, match=r"^--quantization: 'fp4'"):
        plan("deepseek-r1", "L20", quantization="fp4")
    with pytest.raises(PlanInputError, match=r"^--nodes: 0"):
        plan("deepseek-r1", "L20", nodes=0)


def test_expected_distinct_experts():
    assert expected_distinct_experts(256, 8, 1) == pytest.approx(8)
    assert expected_distinct_experts(256, 8, 10_000) == pytest.approx(256)
    # 64 tokens x 8 picks of 256: 256 x (1 - (248/256)^64) = 222.5
    assert expected_distinct_experts(256, 8, 64) == pytest.approx(222.5, abs=0.1)


def test_roofline_by_hand_single_sequence():
    # Qwen-7B BF16 on one L4 at concurrency 1, 1k in / 1k out (average context 1536):
    # reads every weight but the embedding once, plus the KV of 1536 tokens, at 300 GB/s.
    p = plan("deepseek-r1-distill-qwen-7b", "L4", gpus_per_node=1, nodes=1, concurrency=1)
    layer = 3584 * 3584 * 2 + 2 * 3584 * 512 + 3 * 3584 * 18944 + 2 * 3584
    read = (28 * layer + 152064 * 3584) * 2 + 1536 * 57_344
    assert p.decode_tokens_per_s_ceiling == pytest.approx(1 / (read / 300e9), rel=0.002)


def test_calibration_reproduces_the_published_point():
    cal = next(iter(load_catalog().calibrations.values()))
    p = plan(
        cal.model, cal.gpu, gpus_per_node=cal.gpus_per_node, nodes=cal.nodes, concurrency=cal.concurrency
    )
    assert p.decode_tokens_per_s_expected == pytest.approx(cal.output_tokens_per_s_per_node, rel=0.002)
    assert 0.2 < calibrated_efficiency() < 1.0


@pytest.mark.parametrize("gpu", ["L20", "L40S", "H100", "H200", "B200"])
@pytest.mark.parametrize("concurrency", [1, 16, 64, 256])
def test_expected_never_exceeds_ceiling(gpu, concurrency):
    p = plan("deepseek-r1", gpu, concurrency=concurrency)
    assert p.fits
    assert 0 < p.decode_tokens_per_s_expected <= p.decode_tokens_per_s_ceiling
