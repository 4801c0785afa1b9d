"""The planner's arithmetic against hand-computed cases (numbers worked out in comments)."""

import json
import math

import pytest
from typer.testing import CliRunner

from infra.catalog import load_catalog
from infra.cli import app
from infra.stack import perf, perf_fit, perf_roofline
from infra.stack.arch import GIB, architecture, expected_distinct_experts, pp_partition
from infra.stack.coldstart import instance_for
from infra.stack.compare import compare
from infra.stack.planner import PlanInputError, plan

runner = CliRunner()


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
    p = plan("deepseek-r1-distill-qwen-7b", "L4", gpus_per_node=1, nodes=1, max_model_len=8192)
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


def test_no_node_count_advice_where_no_count_can_work():
    # TP 3 divides none of 128 heads: "at least N nodes of 3" would send the user on a goose chase
    p = plan("deepseek-r1", "L40S", gpus_per_node=3)
    assert not p.fits and "must divide deepseek-r1's 128 attention heads" in p.reason
    assert "nodes of 3" not in p.reason
    # a valid TP keeps the advice, and the advice is a count that fits
    two = plan("deepseek-r1", "L40S", gpus_per_node=8, nodes=2)
    assert "needs at least 3 nodes of 8" in two.reason and plan("deepseek-r1", "L40S", nodes=3).fits
    # a count beyond the model's layers is no advice either (61 stages is vLLM's limit)
    one = plan("deepseek-r1", "L4", gpus_per_node=1, nodes=1, quantization="bf16")
    assert "no node count of 1 can hold it (deepseek-r1 has 61 layers to split)" in one.reason


def test_bad_inputs_name_the_option():
    with pytest.raises(PlanInputError, match=r"^--gpu: 'Z9' is not a known GPU; allowed: L20"):
        plan("deepseek-r1", "Z9")
    with pytest.raises(PlanInputError, match=r"^--quantization: 'fp4'"):
        plan("deepseek-r1", "L20", quantization="fp4")
    with pytest.raises(PlanInputError, match=r"^--pp: 0"):
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


@pytest.mark.parametrize("gpu", ["L20", "L40S", "H100", "H200", "B200"])
@pytest.mark.parametrize("concurrency", [1, 16, 64, 256])
def test_expected_never_exceeds_ceiling(gpu, concurrency):
    p = plan("deepseek-r1", gpu, concurrency=concurrency)
    assert p.fits
    assert 0 < p.decode_tokens_per_s_expected <= p.decode_tokens_per_s_ceiling


# --- memory verdicts the speed model must not move ---------------------------------------------


def test_l20_memory_verdicts():
    assert plan("deepseek-r1", "L20", nodes=3).fits  # 3 x 8 L20
    two = plan("deepseek-r1", "L20", nodes=2)
    assert not two.fits and two.reasons[0].startswith("memory:")
    four_cards = plan("deepseek-r1", "L20", gpus_per_node=4, nodes=1)  # the seed's "4 L20"
    assert not four_cards.fits and four_cards.reasons[0].startswith("memory:")


# --- calibration: leave one out ---------------------------------------------------------------


def test_calibration_data_spans_what_the_fit_needs():
    cals = list(load_catalog().calibrations.values())
    assert len(cals) >= 5
    conc = [c.concurrency for c in cals]
    assert min(conc) == 1 and max(conc) >= 64
    assert len({c.engine for c in cals}) >= 2
    assert len({c.quantization for c in cals}) >= 2
    for c in cals:
        assert c.engine_version and len(c.source) > 20
        assert c.tensor_parallel * c.pipeline_parallel == c.nodes * c.gpus_per_node


def test_leave_one_out_predicts_every_published_point_within_2x():
    residuals = perf_fit.leave_one_out()
    print("\nleave-one-out: measured / predicted decode tok/s")
    for r in residuals:
        print(f"  {r.id:45s} {r.measured:9.1f} {r.predicted:9.1f}  x{r.ratio:.2f}")
    for r in perf_fit.ttft_residuals():
        print(f"  TTFT {r.id:40s} {r.measured:9.3f} {r.predicted:9.3f}  x{r.ratio:.2f} (full fit)")
    assert len(residuals) == len(load_catalog().calibrations) >= 5
    bad = [f"{r.id} x{r.ratio:.2f}" for r in residuals if not 0.5 <= r.ratio <= 2.0]
    assert not bad, bad


def test_a_fit_without_a_group_falls_back_to_the_pool():
    # Without the SGLang rows the fit has no sglang term: asking for SGLang gives the pooled
    # value (the base terms without vLLM's own), and efficiency() says when data was missing.
    pts = perf_fit.calibration_points()
    f = perf_fit.fit([p for p in pts if p.engine != "sglang"])
    assert f.engines == ("vllm",)
    assert f.eta("sglang", "fp8") == pytest.approx(f.eta("vllm", "fp8") / math.exp(f.a["e:vllm"]))
    e = perf.efficiency("vllm", "int8")
    assert not e.calibrated and "no calibration point for int8" in e.note


# --- step time: what one stream waits for --------------------------------------------------------


def test_concurrency_one_is_bounded_by_the_fixed_per_step_cost_not_bandwidth():
    p = plan("deepseek-r1", "H100", nodes=2, concurrency=1)
    assert p.fits and p.effective_concurrency == 1
    # The bandwidth-only roofline says a stream could run at the ceiling...
    bandwidth_only_tpot_ms = 1000 / p.decode_tokens_per_s_ceiling
    # ...but layers x (per-layer cost + 2 all-reduce latencies) + the pipeline hop come first:
    assert p.fixed_ms_per_token > 5 * bandwidth_only_tpot_ms
    assert p.fixed_ms_per_token > p.tpot_ms / 2
    assert p.decode_tokens_per_s_per_user <= 1000 / p.fixed_ms_per_token
    assert p.decode_tokens_per_s_per_user < p.decode_tokens_per_s_ceiling / 10
    # Published single-stream R1 on 16 H100s runs at 32-43 tok/s (calibration.yaml):
    assert 20 < p.decode_tokens_per_s_per_user < 100


def test_the_fixed_cost_follows_layers_link_and_tp():
    f = perf_fit.calibrated_fit()
    k = f.layer_s("vllm", "fp8")
    # PCIe all-reduces cost more per layer than NVLink ones at the same TP...
    pcie = perf_roofline.decode_shape(
        perf_roofline.Layout("deepseek-r1", "L40S", "fp8", 8, 3, 8, "efa"), 1, 1536
    )
    nvl = perf_roofline.decode_shape(
        perf_roofline.Layout("deepseek-r1", "H100", "fp8", 8, 3, 8, "efa"), 1, 1536
    )
    assert sum(pcie.link_s) > 5 * sum(nvl.link_s)
    # ...TP 1 pays none...
    tp1 = perf_roofline.decode_shape(
        perf_roofline.Layout("deepseek-r1-distill-qwen-7b", "L4", "bf16", 1, 1, 1, None), 1, 1536
    )
    assert tp1.link_s == (0.0,)
    # ...and the per-layer term scales with the layers a token passes.
    assert nvl.decode_period(math.inf, k) == pytest.approx(61 * k + sum(nvl.link_s) + nvl.hop_s)


def test_pipeline_bubble_below_and_above_the_stage_count():
    one = plan("deepseek-r1", "L20", nodes=3, concurrency=1)
    assert one.pipeline_bubble == pytest.approx(2 / 3, abs=0.02)  # two of three stages idle
    full = plan("deepseek-r1", "L20", nodes=3, concurrency=30)
    assert full.pipeline_bubble < 0.1
    # More streams than stages share each stage's fixed cost: the cluster rate grows ~ with them.
    assert full.decode_tokens_per_s_expected > 5 * one.decode_tokens_per_s_expected


def test_per_user_and_cluster_views_agree():
    p = plan("deepseek-r1", "H200", concurrency=32)
    assert p.tpot_ms == pytest.approx(1000 / p.decode_tokens_per_s_per_user, rel=0.01)
    # The cluster rate also pays each stream's own prompt, so it sits a little under B / TPOT.
    assert 0.8 * 32 * p.decode_tokens_per_s_per_user <= p.decode_tokens_per_s_expected
    assert p.decode_tokens_per_s_expected <= 32 * p.decode_tokens_per_s_per_user


def test_quantization_has_its_own_speed():
    fp8 = plan("deepseek-r1", "H200", quantization="fp8", concurrency=1)
    int4 = plan("deepseek-r1", "H200", quantization="int4", concurrency=1)
    e8, e4 = perf.efficiency("vllm", "fp8"), perf.efficiency("vllm", "int4")
    assert e8.calibrated and e4.calibrated
    assert (e8.bandwidth, e8.layer_us) != (e4.bandwidth, e4.layer_us)
    # Half the bytes does not mean twice the speed: one stream is bound by the fixed cost.
    assert int4.decode_tokens_per_s_per_user < 1.5 * fp8.decode_tokens_per_s_per_user


# --- time to first token ----------------------------------------------------------------------


def test_ttft_is_compute_bound_at_long_prompts():
    cat = load_catalog()
    g, m = cat.gpus["H200"], cat.models["deepseek-r1"]
    short = plan("deepseek-r1", "H200", input_len=1024, max_model_len=65536)
    mid = plan("deepseek-r1", "H200", input_len=8192, max_model_len=65536)
    long = plan("deepseek-r1", "H200", input_len=32768, max_model_len=65536)
    # 2 x active params x tokens over 8 GPUs at peak FP8 is a floor under any TTFT...
    floor_s = 2 * m.params_active_b * 1e9 * 32768 / 8 / (g.fp8_tflops * 1e12)
    assert long.ttft_ms / 1000 > floor_s
    # ...at 1k tokens, reading every expert once dominates (8x fewer tokens, not 8x the time);
    # past that, TTFT grows at least linearly (plus the attention's quadratic term).
    assert mid.ttft_ms < 8 * short.ttft_ms
    assert long.ttft_ms >= 4 * mid.ttft_ms
    assert perf_roofline.compute_tflops(g, "fp8") == g.fp8_tflops
    assert perf_roofline.compute_tflops(g, "int4") == g.bf16_tflops  # W4A16 kernels multiply in BF16
    assert perf_roofline.compute_tflops(g, "int8") == g.int8_tops


def test_ttft_carries_the_serving_paths_measured_cost_on_top_of_the_engines_prefill():
    from infra.rayconf.serve_config import STREAM_BATCHING_MS

    row = load_catalog().serving_path["first_token_ms"]
    # the measured gap: the app's median TTFT minus vLLM's own server's, issue #29's run
    assert (
        row.value == pytest.approx(29.18 - 6.78, abs=0.05)
        and "29.18 ms" in row.source
        and "6.78 ms" in row.source
    )
    # Ray Serve LLM holds a stream's first chunk for the rendered batching interval: that is part
    # of the measured gap, so raising the interval without measuring again fails here
    assert STREAM_BATCHING_MS <= row.value and "STREAM_BATCHING_MS" in row.source
    p = plan("deepseek-r1", "L40S", input_len=1024)
    lay = perf_roofline.Layout("deepseek-r1", "L40S", p.quantization, 8, 3, 8, "efa")
    sp = perf.speed(lay, "vllm", p.effective_concurrency, 1024, p.output_len)
    assert p.ttft_serving_path_ms == row.value
    assert p.ttft_ms == pytest.approx(sp.ttft_engine_s * 1000 + row.value, abs=0.1)
    # the cold start ends on a first token through the same path
    [first] = [t for t in p.cold_start_terms if t["name"] == "first token"]
    assert first["seconds"] == round(p.ttft_ms / 1000, 1) and "serving_path.yaml" in first["source"]
    r = CliRunner().invoke(app, ["plan", "-m", "deepseek-r1", "-g", "L40S"], env={"COLUMNS": "100"})
    assert r.exit_code == 0 and "of TTFT, serving path (measured)" in r.output and "22 ms" in r.output


# --- cold start ---------------------------------------------------------------------------------


def test_cold_start_terms_add_up_and_carry_sources():
    p = plan("deepseek-r1", "L40S")  # 3 x g6e.48xlarge
    assert p.instance_type == "g6e.48xlarge"
    names = [t["name"] for t in p.cold_start_terms]
    assert names == [
        "instance boot",
        "image pull",
        "weight staging",
        "engine load",
        "compile + CUDA graphs",
        "first token",
    ]
    assert p.cold_start_s == pytest.approx(sum(t["seconds"] for t in p.cold_start_terms), abs=0.5)
    assert all(len(t["source"]) > 10 for t in p.cold_start_terms)
    assert p.cold_start_usd == pytest.approx(p.cold_start_s / 3600 * p.usd_per_hour, abs=0.01)


def test_weight_staging_is_the_slowest_rate():
    from infra.stack.coldstart import estimate

    cat = load_catalog()
    m = cat.models["deepseek-r1"]
    fig = {k: v.value for k, v in cat.coldstart.items()}
    g6e = cat.instances["g6e.48xlarge"]
    staging = next(t for t in estimate(m, g6e, 3, 1.0).terms if t.name == "weight staging")
    rates_gbps = {
        "nvme": g6e.nvme_disks * fig["nvme_write_mbps_per_disk"] * 8 / 1000,
        "client": fig["s3_client_gbps"],
        "s3": fig["s3_instance_max_gbps"],
        "nic": g6e.network_gbps,
    }
    slowest = min(rates_gbps.values())
    assert staging.seconds == pytest.approx(m.checkpoint_gib * GIB * 8 / (slowest * 1e9), rel=1e-6)
    assert "NVMe write" in staging.detail  # 4 disks x 349 MB/s is the tightest on g6e.48xlarge


def test_no_aws_instance_no_cold_start():
    p = plan("deepseek-r1", "L20")
    assert p.fits and p.instance_type is None
    assert p.cold_start_s is None and p.cold_start_terms == [] and p.usd_per_hour is None


# --- the table and the comparison ----------------------------------------------------------------


def test_capped_concurrency_is_said_and_the_speeds_are_for_the_cap():
    p = plan("deepseek-r1", "H20", concurrency=64)
    assert p.concurrency_capped and p.effective_concurrency < 64
    at_cap = plan("deepseek-r1", "H20", concurrency=p.effective_concurrency)
    assert p.decode_tokens_per_s_expected == at_cap.decode_tokens_per_s_expected
    res = runner.invoke(app, ["plan", "--model", "deepseek-r1", "--gpu", "H20"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "concurrency capped" in res.stdout
    assert f"the speeds are for {p.effective_concurrency}" in res.stdout


def test_plan_json_has_the_speed_and_cold_start_keys():
    res = runner.invoke(app, ["plan", "--model", "deepseek-r1", "--gpu", "H100", "--pp", "2", "--json"])
    assert res.exit_code == 0
    d = json.loads(res.stdout)
    for key in ("decode_tokens_per_s_per_user", "tpot_ms", "ttft_ms", "input_len", "cold_start_s"):
        assert key in d
    assert d["input_len"] == 1024 and d["cold_start_terms"]
    res = runner.invoke(app, ["plan", "--model", "deepseek-r1", "--gpu", "H100", "--engine", "tgi"])
    assert res.exit_code == 2 and "--engine: 'tgi' is not a known engine; allowed: sglang, vllm" in res.stderr


@pytest.mark.parametrize(
    ("gpu", "instance", "usd"),
    [
        ("A100-80GB", "p4de.24xlarge", 27.44705),
        ("L4", "g6.48xlarge", 13.3504),
        ("B200", "p6-b200.48xlarge", 113.9328),
    ],
)
def test_aws_eight_gpu_instances_are_in_the_catalog(gpu, instance, usd):
    # the catalog said AWS had no 8x A100-80GB, L4 or B200 instance, so plan priced none (issue #30)
    inst = instance_for(gpu, 8)
    assert inst is not None and inst.name == instance and inst.on_demand_usd_per_hour == usd
    assert inst.source.startswith("price: ") and "us-east-1" in inst.source
    row = {r.gpu: r for r in compare("deepseek-r1")}[gpu]
    assert row.instance_type == instance and not row.note.startswith("hardware only")


def test_compare_sorts_by_cost_and_marks_hardware_only_gpus():
    rows = compare("deepseek-r1")
    assert [r.gpu for r in rows] and len(rows) == len(load_catalog().gpus)
    priced = [r for r in rows if r.usd_per_million_output_tokens is not None]
    assert priced and [r.usd_per_million_output_tokens for r in priced] == sorted(
        r.usd_per_million_output_tokens for r in priced
    )
    assert rows[: len(priced)] == priced  # priced rows first
    by_gpu = {r.gpu: r for r in rows}
    for hw in ("L20", "H20"):
        assert by_gpu[hw].fits and by_gpu[hw].usd_per_hour is None
        assert by_gpu[hw].note.startswith("hardware only")
    l20 = by_gpu["L20"]
    assert (l20.nodes, l20.gpus_per_node) == (3, 8)  # the smallest layout that fits
    h200 = by_gpu["H200"]
    assert h200.usd_per_million_output_tokens == pytest.approx(
        h200.usd_per_hour / (h200.decode_tokens_per_s_expected * 3600) * 1e6, rel=1e-3
    )


def test_compare_cli_json_has_the_same_rows():
    res = runner.invoke(app, ["plan", "--compare", "--model", "deepseek-r1", "--json"])
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert [r["gpu"] for r in doc["rows"]] == [r.gpu for r in compare("deepseek-r1")]
    table = runner.invoke(app, ["plan", "--compare", "--model", "deepseek-r1"], env={"COLUMNS": "220"})
    assert table.exit_code == 0 and "hardware only" in table.stdout
    both = runner.invoke(app, ["plan", "--compare", "--model", "deepseek-r1", "--gpu", "L20"])
    assert both.exit_code == 2


# --- maxModelLen: auto (infra/stack/context.py) ---------------------------------------------------


def test_auto_context_is_the_longest_clean_length_that_holds_the_target():
    from infra.stack.context import ladder

    p = plan("deepseek-r1", "L40S")  # prod's layout: 3 x 8 L40S, FP8
    assert p.max_model_len_auto and p.target_concurrency == 16
    steps = ladder(163_840)
    assert p.max_model_len in steps and p.max_model_len % 1024 == 0
    # 16 sequences of it fit in the binding stage's cache; 16 of the next clean length do not.
    assert 16 * p.max_model_len <= p.kv_cache_tokens
    assert 16 * steps[steps.index(p.max_model_len) + 1] > p.kv_cache_tokens
    assert p.max_concurrent_sequences == p.kv_cache_tokens // p.max_model_len >= 16
    assert p.max_model_len >= 16_384 and p.context_warning is None
    assert (
        f"16 sequences x {p.max_model_len // 1024}k fit in {p.kv_cache_gib_per_gpu:.1f} GiB" in p.context_note
    )


def test_a_lower_target_buys_a_longer_context_and_the_note_says_how_for_a_reasoning_model():
    p16 = plan("deepseek-r1", "L40S")
    assert p16.max_model_len < 32_768
    reach = p16.kv_cache_tokens // 32_768
    assert f"a reasoning model wants 32k: target concurrency {reach} gets it" in p16.context_note
    p = plan("deepseek-r1", "L40S", target_concurrency=reach)
    assert p.max_model_len >= 32_768 and "at least the 32k a reasoning model wants" in p.context_note
    assert plan("deepseek-r1", "L40S", target_concurrency=1).max_model_len > p.max_model_len


def test_auto_stops_at_the_models_positions():
    p = plan("deepseek-r1-distill-qwen-7b", "H200", gpus_per_node=1, nodes=1, target_concurrency=1)
    assert p.max_model_len == 131_072 and "limit is 131,072 positions" in p.context_note


def test_a_reasoning_model_below_16k_is_warned_and_the_target_is_what_moves_it():
    # Qwen-7B on one L4 keeps ~74k tokens of KV cache: 16 sequences only fit at 4k.
    short = plan("deepseek-r1-distill-qwen-7b", "L4", gpus_per_node=1, nodes=1)
    assert short.fits and short.max_model_len == 4096
    assert "below 16,384 for the reasoning model deepseek-r1-distill-qwen-7b" in short.context_warning
    ok = plan("deepseek-r1-distill-qwen-7b", "L4", gpus_per_node=1, nodes=1, target_concurrency=4)
    assert ok.max_model_len == 16_384 and ok.context_warning is None


def test_auto_never_goes_below_the_planned_request_and_says_when_the_target_does_not_fit():
    p = plan(
        "deepseek-r1-distill-qwen-7b", "L4", gpus_per_node=1, nodes=1, input_len=30_000, output_len=2_000
    )
    assert p.max_model_len == 32_768 and p.max_concurrent_sequences == 2
    assert "hold 2 of it, fewer than target concurrency 16" in p.context_note


def test_an_explicit_length_is_honoured_and_one_the_cache_cannot_hold_is_refused_in_one_line():
    from infra.stack.config import ConfigError
    from infra.stack.files import load_config
    from infra.stack.resolve import resolve

    pinned = plan("deepseek-r1", "L40S", max_model_len=8192)
    assert pinned.max_model_len == 8192 and not pinned.max_model_len_auto
    assert pinned.context_note.startswith("max_model_len 8,192 (as set): 9.5 GiB of KV cache per GPU")
    # dev: two L4 hosts, one replica each; 131,072 tokens do not fit one L4's ~74k-token cache.
    with pytest.raises(ConfigError) as e:
        resolve(load_config("dev", ["llmfleet:maxModelLen=131072"]))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("llmfleet:maxModelLen = 131072: the KV cache of 1 x 1 L4 holds")
    assert msg.endswith("allowed: 'auto' or up to 73,614")


def test_prod_serves_the_planners_context_of_at_least_16k():
    """Done-when of issue #28 point 3: prod leaves maxModelLen to the planner, and the Serve config
    the head deploys carries the planner's pick."""
    from infra.rayconf.serving import render_for_plan
    from infra.stack.files import load_config
    from infra.stack.resolve import resolve

    cfg = load_config("prod")
    assert cfg.max_model_len == "auto"
    p = resolve(cfg).plan
    (app,) = render_for_plan(cfg, p)["applications"]
    kw = app["args"]["llm_configs"][0]["engine_kwargs"]
    assert kw["max_model_len"] == p.max_model_len >= 16_384


def test_plan_prints_the_context_it_picked_and_why():
    r = CliRunner().invoke(app, ["plan", "-m", "deepseek-r1", "-g", "L40S"])
    assert r.exit_code == 0, r.output
    assert "(auto)" in r.output and "(target 16)" in r.output
    text = " ".join(r.output.split())  # the note wraps at the terminal's width
    assert "context: max_model_len 24,576 (auto): 16 sequences x 24k fit in 9.5 GiB of KV cache" in text
    bad = CliRunner().invoke(app, ["plan", "-m", "deepseek-r1", "-g", "L40S", "--max-model-len", "long"])
    assert bad.exit_code == 2 and "--max-model-len: 'long' is not allowed; allowed: 'auto'" in bad.output


# --- workload shapes: chunked prefill, crossing hosts (issue #28 point 6) ------------------------


def test_chunked_prefill_charges_a_prompts_flops_not_a_separate_pass():
    """550 in / 150 out at 32 streams: under chunked prefill the other streams' prompts add only
    their FLOPs (at the prefill efficiency) to the decode steps that carry them."""
    lay = perf_roofline.Layout("deepseek-r1", "H200", "fp8", 8, 1, 8, None)
    pps = perf_fit.prompts_per_step(32, 150, own=False)
    ctx = 550 + 150 / 2
    alone = perf_roofline.decode_shape(lay, 32, ctx)
    separate = perf_roofline.decode_shape(lay, 32, ctx, pps, 550, chunked=False)
    chunked = perf_roofline.decode_shape(lay, 32, ctx, pps, 550, chunked=True)
    eta, k, eta_pre = 0.5, 150e-6, 0.3
    base = alone.period(eta, k, eta_pre)
    # One stage: the chunked step is the decode step plus the prompts' compute, exactly.
    assert chunked.period(eta, k, eta_pre) == pytest.approx(
        base + pps * chunked.prefill.compute_s[0] / eta_pre
    )
    # A separate pass re-reads the weights and pays every layer's fixed cost again.
    assert base < chunked.period(eta, k, eta_pre) < separate.period(eta, k, eta_pre)
    assert separate.period(eta, k, eta_pre) - base > 3 * (chunked.period(eta, k, eta_pre) - base)


def test_the_deployed_engine_chunks_and_sglang_does_not():
    # The same layout and load: vLLM (chunked) is charged less for arriving prompts than SGLang.
    lay = perf_roofline.Layout("deepseek-r1", "H200", "fp8", 8, 1, 8, None)
    assert "vllm" in perf.CHUNKED_PREFILL_ENGINES and "sglang" not in perf.CHUNKED_PREFILL_ENGINES
    v = perf.speed(lay, "vllm", 32, 550, 150)
    eff = perf.efficiency("vllm", "fp8")
    sep = perf_roofline.decode_shape(lay, 32, 550 + 75, perf_fit.prompts_per_step(32, 150, own=False), 550)
    assert v.tpot_s < sep.period(eff.bandwidth, eff.layer_us * 1e-6, eff.prefill)


@pytest.mark.parametrize(("fabric", "hop_us"), [("infiniband", 19.9), ("efa", 29.9), ("ethernet", 47.6)])
def test_a_pipeline_hop_pays_the_fabrics_send_receive_and_tp_across_hosts_its_all_reduce(fabric, hop_us):
    links = load_catalog().links
    assert (links[fabric].hop_latency_us or links[fabric].allreduce_latency_us) == hop_us
    pp = perf_roofline.Layout("deepseek-r1", "H100", "fp8", 8, 2, 8, fabric)
    shape = perf_roofline.decode_shape(pp, 1, 1024)
    bytes_per_hop = 1 * 7168 * 2
    bw = min(links[fabric].bandwidth_gbs, load_catalog().gpus["H100"].interconnect_gbs) * 1e9
    assert shape.hop_s == pytest.approx(hop_us * 1e-6 + bytes_per_hop / bw)
    # TP 16 over two hosts reduces over the fabric twice per layer, at its all-reduce latency.
    tp = perf_roofline.Layout("deepseek-r1", "H100", "fp8", 16, 1, 8, fabric)
    tp_shape = perf_roofline.decode_shape(tp, 1, 1024)
    assert tp_shape.link_s[0] > 2 * 61 * links[fabric].allreduce_latency_us * 1e-6
    one_host = perf_roofline.decode_shape(
        perf_roofline.Layout("deepseek-r1", "H100", "fp8", 8, 1, 8, None), 1, 1024
    )
    assert tp_shape.link_s[0] > one_host.link_s[0]


def test_calibration_has_both_new_shapes_each_with_its_figure_in_the_source():
    cals = load_catalog().calibrations
    cross = cals["tenstorrent-2x8h100-sglang-fp8-c1-8k-in"]
    assert cross.nodes >= 2 and cross.concurrency == 1 and cross.fabric == "infiniband"
    assert "TPOT 24.0 ms" in cross.source and cross.tpot_ms == 24.0
    short = cals["issue507-8xh200nvl-vllm-fp8-c32-550in-150out"]
    assert (short.input_len, short.output_len, short.concurrency) == (550, 150, 32)
    assert short.chunked_prefill and "1000 tokens/s" in short.source and "issue #507" in short.source


def test_the_leave_one_out_table_in_results_md_is_the_one_the_code_computes():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "calibration_table.py"
    r = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_auto_context_says_when_the_planned_request_exceeds_the_models_positions():
    p = plan("deepseek-r1-distill-qwen-7b", "L4", gpus_per_node=1, input_len=200_000)
    assert not p.fits and p.nodes == 1  # a layout reason: no node count would help
    assert p.reasons == [
        "max_model_len: the planned request of 201024 tokens (input + output) exceeds "
        "deepseek-r1-distill-qwen-7b's 131072 positions"
    ]


def test_the_committed_calibration_fit_is_the_fit_of_the_current_catalog():
    # `plan` and `pulumi up` read catalog/calibration_fit.json instead of refitting; it must be
    # what the fit gives today (after a catalog or speed-model change:
    # `python -m infra.stack.perf_fit --export`).
    stored = perf_fit.stored_fit()
    assert stored is not None, "calibration_fit.json is stale: python -m infra.stack.perf_fit --export"
    assert stored == perf_fit.fit(perf_fit.calibration_points())


def test_an_edited_calibration_refits_instead_of_reading_the_stale_file(tmp_path, monkeypatch):
    import json

    doc = json.loads(perf_fit.FIT_FILE.read_text())
    doc["fit"]["a0"] = 123.0  # a fit of other rows...
    stale = tmp_path / "calibration_fit.json"
    stale.write_text(json.dumps(doc))
    assert perf_fit.stored_fit(stale).a0 == 123.0  # ...read while its key matches
    doc["key"] = "0" * 64  # ...and ignored once the inputs hash differently
    stale.write_text(json.dumps(doc))
    assert perf_fit.stored_fit(stale) is None
    monkeypatch.setattr(perf_fit, "FIT_FILE", stale)
    perf_fit.calibrated_fit.cache_clear()
    try:
        assert perf_fit.calibrated_fit() == perf_fit.fit(perf_fit.calibration_points())
    finally:
        perf_fit.calibrated_fit.cache_clear()


def test_the_fit_key_changes_with_a_calibration_row(tmp_path, monkeypatch):
    key = perf_fit.fit_key()
    edited = tmp_path / "calibration.yaml"
    edited.write_bytes((perf_fit.CATALOG_DIR / "calibration.yaml").read_bytes() + b"\n# one more row\n")
    monkeypatch.setattr(
        perf_fit,
        "_FIT_INPUTS",
        tuple(edited if p.name == "calibration.yaml" else p for p in perf_fit._FIT_INPUTS),
    )
    assert perf_fit.fit_key() != key
