"""The tiny DeepSeek-V3-architecture model: built locally, reproducible, loads through transformers."""

import hashlib
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DeepseekV3ForCausalLM

from ray_cluster.engines.decoder import BatchedDecoder, GenRequest, held_back
from ray_cluster.tiny_model import ensure_tiny_model, ensure_tiny_model_at, model_dir_for


def digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("data"), seed=0)


def test_created_under_data_dir_with_real_files(model_dir):
    assert model_dir.name == "tiny-deepseek-v3-v2-s0"
    assert model_dir.parent.name == "models"
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".")], "temp dir left behind"


def test_env_var_sets_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMFLEET_DATA_DIR", str(tmp_path))
    assert ensure_tiny_model(seed=3) == model_dir_for(tmp_path, 3)
    assert (tmp_path / "models" / "tiny-deepseek-v3-v2-s3" / "model.safetensors").is_file()


def test_same_seed_same_bytes_other_seed_other_weights(model_dir, tmp_path):
    again = ensure_tiny_model_at(tmp_path / "again", seed=0)
    other = ensure_tiny_model_at(tmp_path / "other", seed=1)
    assert digests(again) == digests(model_dir)
    d0, d1 = digests(model_dir), digests(other)
    assert d0["model.safetensors"] != d1["model.safetensors"]
    assert d0["tokenizer.json"] == d1["tokenizer.json"]  # the tokenizer does not depend on the seed


def test_concurrent_creation_is_safe(tmp_path):
    results, errors = [], []

    def make():
        try:
            results.append(ensure_tiny_model(tmp_path, seed=5))
        except Exception as e:  # noqa: BLE001 - surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=make) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny-deepseek-v3-v2-s5"]
    # The winner is complete and bit-identical to a build made alone.
    assert digests(results[0]) == digests(ensure_tiny_model_at(tmp_path / "alone", seed=5))


def test_deepseek_v3_architecture_round_trip(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = model.config
    assert isinstance(model, DeepseekV3ForCausalLM) and cfg.model_type == "deepseek_v3"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.first_k_dense_replace) == (2, 64, 1)
    assert (cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_shared_experts) == (8, 2, 1)
    assert cfg.q_lora_rank and cfg.kv_lora_rank and cfg.qk_rope_head_dim and cfg.v_head_dim
    names = {n for n, _ in model.named_parameters()}
    assert "model.layers.0.mlp.gate_proj.weight" in names  # dense first layer
    assert "model.layers.1.mlp.shared_experts.up_proj.weight" in names  # MoE after it
    assert "model.layers.1.self_attn.kv_a_proj_with_mqa.weight" in names  # MLA
    # Weights are the saved random ones, not a fresh init.
    fresh = DeepseekV3ForCausalLM(cfg)
    assert not torch.equal(fresh.lm_head.weight, model.lm_head.weight)


def test_tokenizer_round_trip_and_chat_template(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    text = "Tensor parallelism splits every layer across the GPUs of one host."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert len(ids) < len(text.encode()) / 2  # BPE merged something: it was trained on the corpus
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(tok("héllo ✓")["input_ids"], skip_special_tokens=True) == "héllo ✓"  # byte-level
    assert tok.eos_token and tok.pad_token and tok.pad_token_id != tok.eos_token_id
    chat = tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert chat == f"{tok.bos_token}S<｜User｜>U<｜Assistant｜>"


def test_generate_is_fast_and_batching_matches_single(model_dir):
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt = torch.tensor([tok("A GPU cluster")["input_ids"]])
    t0 = time.perf_counter()
    out = model.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False)
    per_token = (time.perf_counter() - t0) / 32
    assert out.shape[1] == prompt.shape[1] + 32
    assert per_token < 0.05, f"{per_token * 1000:.1f} ms/token"

    dec = BatchedDecoder(model_dir)
    prompts = ["A GPU cluster", "Pipeline parallelism splits the model by layers.", "x"]
    reqs = [GenRequest(tok(p)["input_ids"], 12, temperature=0) for p in prompts]
    singles = [dec.generate(r) for r in reqs]
    assert dec.generate_batch(reqs) == singles  # left padding does not change greedy output
    # ... and the decoder's greedy text is what transformers' own generate() produces.
    ref = model.generate(torch.tensor([reqs[0].prompt_ids]), max_new_tokens=12, do_sample=False)
    assert dec.decode(ref[0, len(reqs[0].prompt_ids) :].tolist()) == singles[0].text
    assert all(s.completion_tokens == 12 and s.finish_reason == "length" for s in singles)


def test_sampling_seed_stop_and_holdback(model_dir):
    dec = BatchedDecoder(model_dir)
    ids = dec.tokenizer("Memory bandwidth")["input_ids"]
    a = dec.generate(GenRequest(ids, 20, temperature=1.0, seed=11))
    b = dec.generate(GenRequest(ids, 20, temperature=1.0, seed=11))
    c = dec.generate(GenRequest(ids, 20, temperature=1.0, seed=12))
    assert a == b and a.text != c.text
    full = dec.generate(GenRequest(ids, 20, temperature=0))
    stop = full.text[6:9]
    cut = dec.generate(GenRequest(ids, 20, temperature=0, stop=[stop]))
    assert cut.finish_reason == "stop" and stop not in cut.text
    assert full.text.startswith(cut.text) and cut.text == full.text[: full.text.find(stop)]
    assert held_back("abc<st", ["<stop>"]) == 3 and held_back("abc", ["<stop>"]) == 0
    assert held_back("ab\ufffd", []) == 1


def test_tokens_that_are_not_text_alone_are_suppressed(model_dir):
    # A random-weight model picks lone bytes 0x80-0xFF as often as anything else; its generation
    # config suppresses them, so replies are text (no U+FFFD), greedy or sampled.
    from ray_cluster.tiny_model import partial_utf8_token_ids

    dec = BatchedDecoder(model_dir)
    suppressed = set(dec.suppress.tolist())
    assert suppressed == set(partial_utf8_token_ids(dec.tokenizer))
    assert len(suppressed) >= 128  # every lone high byte of the byte-level alphabet
    assert not any(
        "\ufffd" in dec.tokenizer.decode([i]) for i in range(len(dec.tokenizer)) if i not in suppressed
    )
    prompt = dec.tokenizer("What does a Ray head node do?")["input_ids"]
    reqs = [
        GenRequest(prompt, max_tokens=48, temperature=t, seed=s) for t, s in [(0, None), (1.0, 1), (1.5, 2)]
    ]
    for out in dec.generate_batch(reqs):
        assert out.text.strip() and "\ufffd" not in out.text
