"""The tiny DeepSeek-V3-architecture model: built locally, reproducible, loads through transformers."""

import hashlib
import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DeepseekV3ForCausalLM

from infra.local.tiny_model import ensure_tiny_model, ensure_tiny_model_at, model_dir_for


def digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("data"), seed=0)


def test_created_under_data_dir_with_real_files(model_dir):
    assert model_dir.name == "tiny-deepseek-v3-v4-s0"
    assert model_dir.parent.name == "models"
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".")], "temp dir left behind"


def test_env_var_sets_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMFLEET_DATA_DIR", str(tmp_path))
    assert ensure_tiny_model(seed=3) == model_dir_for(tmp_path, 3)
    assert (tmp_path / "models" / "tiny-deepseek-v3-v4-s3" / "model.safetensors").is_file()


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
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny-deepseek-v3-v4-s5"]
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
    # Printable ASCII only: what is outside it is dropped, never turned into partial bytes.
    assert tok.decode(tok("héllo ✓ ok")["input_ids"], skip_special_tokens=True) == "hllo  ok"
    assert tok.eos_token and tok.pad_token and tok.pad_token_id != tok.eos_token_id
    chat = tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert chat == f"{tok.bos_token}S<｜User｜>U<｜Assistant｜><think>\n"


def test_chat_template_is_r1s_own(model_dir):
    """DeepSeek-R1's template: system prompts joined first, an earlier answer sent without its
    thought, the generation prompt opening a new one; tool calls and outputs in R1's markers."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    msgs = [
        {"role": "system", "content": "S1"},
        {"role": "system", "content": "S2"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "thought</think>A1"},
        {"role": "user", "content": "U2"},
    ]
    assert tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == (
        "<｜begin▁of▁sentence｜>S1\n\nS2<｜User｜>U1<｜Assistant｜>A1<｜end▁of▁sentence｜>"
        "<｜User｜>U2<｜Assistant｜><think>\n"
    )
    call = {"type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    tools = [
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "R"},
    ]
    assert tok.apply_chat_template(tools, add_generation_prompt=True, tokenize=False) == (
        "<｜begin▁of▁sentence｜><｜User｜>U<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function"
        '<｜tool▁sep｜>f\n```json\n{"x": 1}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>'
        "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>R<｜tool▁output▁end｜><｜tool▁outputs▁end｜>"
    )


def test_think_tokens_are_whole_added_tokens_that_stay_in_the_text(model_dir):
    """As in R1's tokenizer: <think> and </think> are single added tokens but not special ones, so
    decoding keeps them and vLLM's deepseek_r1 reasoning parser finds them (it refuses a
    tokenizer without them)."""
    from vllm.reasoning import ReasoningParserManager

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok("a<think>b</think>c", add_special_tokens=False)["input_ids"]
    think, end = tok.convert_tokens_to_ids(["<think>", "</think>"])
    assert think in ids and end in ids and tok.decode(ids, skip_special_tokens=True) == "a<think>b</think>c"
    parser = ReasoningParserManager.get_reasoning_parser("deepseek_r1")(tok)
    assert (parser.start_token_id, parser.end_token_id) == (think, end)
    # R1's template opens the thought in the prompt: the output up to </think> is the reasoning
    assert parser.extract_reasoning("part of it\n</think>\n\nthe answer", request=None) == (
        "part of it\n",
        "\n\nthe answer",
    )


def test_every_token_is_printable_text_alone(model_dir):
    # Random weights pick any token: each must decode to printable text (or a newline) by itself,
    # so a reply never holds U+FFFD or control characters.
    tok = AutoTokenizer.from_pretrained(model_dir)
    bad = [i for i in range(len(tok)) if not (tok.decode([i]).isprintable() or tok.decode([i]) == "\n")]
    assert bad == []
    assert len(tok) == 512 + 11  # the trained vocabulary, then R1's <think> and tool tokens


def test_config_is_what_vllms_cpu_build_serves(model_dir):
    cfg = AutoModelForCausalLM.from_pretrained(model_dir).config
    # vLLM's CPU MLA kernel: kv_lora_rank + qk_rope_head_dim = 576 (R1's 512 + 64)
    assert cfg.kv_lora_rank + cfg.qk_rope_head_dim == 576
    # R1's router: without noaux_tc/sigmoid vLLM's loader misses e_score_correction_bias
    assert (cfg.topk_method, cfg.scoring_func) == ("noaux_tc", "sigmoid")
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        assert "model.layers.1.mlp.gate.e_score_correction_bias" in set(f.keys())


def test_loads_without_remote_code_in_vllm_and_transformers(model_dir):
    """The local cluster's Serve config has trust_remote_code off: the checkpoint must name an
    architecture vLLM implements itself and ship no code of its own (no auto_map)."""
    import importlib.util
    import json

    doc = json.loads((model_dir / "config.json").read_text())
    assert doc["architectures"] == ["DeepseekV3ForCausalLM"] and doc["model_type"] == "deepseek_v3"
    assert "auto_map" not in doc and not list(model_dir.glob("*.py"))
    tok_doc = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert "auto_map" not in tok_doc
    # vLLM's registry, read as text (importing vllm takes seconds): the architecture is native.
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.origin
    registry = Path(spec.origin).parent / "model_executor" / "models" / "registry.py"
    assert '"DeepseekV3ForCausalLM": (' in registry.read_text()
    AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=False)
    AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)


def test_the_llama_twin_has_no_mla_and_the_same_tokenizer(model_dir, tmp_path):
    """`local up --model llmfleet/tiny-llama`: plain grouped-query attention (vLLM's CPU build
    caches prefixes for it, not for MLA), the same heads and layers as the layout checks assume,
    and the DeepSeek model's tokenizer with R1's chat template."""
    from transformers import LlamaForCausalLM

    from infra.local import tiny_model

    d = ensure_tiny_model(tmp_path, seed=0, model_id=tiny_model.LLAMA_MODEL_ID)
    assert d == model_dir_for(tmp_path, 0, tiny_model.LLAMA_MODEL_ID) and d.name == "tiny-llama-v1-s0"
    model = AutoModelForCausalLM.from_pretrained(d)
    cfg = model.config
    assert isinstance(model, LlamaForCausalLM) and cfg.model_type == "llama"
    assert not hasattr(cfg, "kv_lora_rank")  # no latent attention
    assert (cfg.num_attention_heads, cfg.num_hidden_layers) == (tiny_model.TINY_HEADS, tiny_model.TINY_LAYERS)
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # grouped-query attention
    assert digests(d)["tokenizer.json"] == digests(model_dir)["tokenizer.json"]
    msgs = [{"role": "user", "content": "hi"}]
    tok = AutoTokenizer.from_pretrained(d)
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True).endswith(
        "<｜Assistant｜><think>\n"
    )
    with pytest.raises(ValueError, match=r"^model 'llmfleet/nope': allowed: llmfleet/tiny-deepseek-v3, "):
        ensure_tiny_model(tmp_path, model_id="llmfleet/nope")
