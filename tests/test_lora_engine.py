"""vLLM's CPU build serves a LoRA adapter with the engine arguments llmfleet:lora renders, and the
adapter's logprobs are transformers' with the adapter merged into the weights (issue #33's
"logprobs equal ... differ from the base model's", at the engine; not yet through Ray Serve).

The adapter is written here in PEFT's format (adapter_config.json + adapter_model.safetensors,
PEFT's tensor names) with random A/B on q_proj and v_proj of the tiny Llama twin; the merge is
PEFT's: W + (lora_alpha / r) * B @ A. peft itself is not installed (nothing trains yet).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.local.tiny_model import LLAMA_MODEL_ID, ensure_tiny_model
from infra.stack.lora import LoraSettings

pytestmark = pytest.mark.slow

RANK, ALPHA = 8, 16
PROMPT = "the quick brown fox jumps over the lazy dog"

# Runs in its own process: vLLM's engine (in-process: VLLM_ENABLE_V1_MULTIPROCESSING=0) keeps
# torch threads and global state that should not outlive the test.
ENGINE = """
import json, sys
from vllm import LLM, SamplingParams
from vllm.lora.request import LoRARequest
from vllm.model_executor.models.interfaces import supports_lora

args = json.loads(sys.argv[1])
llm = LLM(model=args["base"], dtype="float32", enforce_eager=True, max_model_len=256, **args["engine_kwargs"])
# the class vLLM loaded for the checkpoint: SupportsLoRA, as the catalog's dense models
assert supports_lora(type(llm.llm_engine.model_executor.driver_worker.worker.model_runner.model))
sp = SamplingParams(max_tokens=1, prompt_logprobs=0)

def logprobs(req=None):
    out = llm.generate({"prompt_token_ids": args["ids"]}, sp, lora_request=req, use_tqdm=False)[0]
    return [next(iter(d.values())).logprob for d in out.prompt_logprobs[1:]]

print(json.dumps({"base": logprobs(), "adapter": logprobs(LoRARequest("ad1", 1, args["adapter"]))}))
"""


def _write_adapter(out: Path, base: Path) -> dict:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    tensors = {}
    for layer in range(2):
        for mod, (fan_in, fan_out) in {"q_proj": (128, 128), "v_proj": (128, 64)}.items():
            pre = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            tensors[f"{pre}.lora_A.weight"] = torch.randn(RANK, fan_in, generator=g) * 0.2
            tensors[f"{pre}.lora_B.weight"] = torch.randn(fan_out, RANK, generator=g) * 0.2
    out.mkdir(parents=True)
    save_file(tensors, out / "adapter_model.safetensors")
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base),
        "r": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "modules_to_save": None,
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    return tensors


def _transformers_logprobs(base: Path, ids: list[int], tensors: dict | None) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    if tensors:
        sd = model.state_dict()
        for key, a in tensors.items():
            if key.endswith("lora_A.weight"):
                b = tensors[key.replace("lora_A", "lora_B")]
                sd[key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")] += (
                    (ALPHA / RANK) * b @ a
                )
        model.load_state_dict(sd)
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return [lp[k - 1, ids[k]].item() for k in range(1, len(ids))]


def test_vllm_serves_the_adapter_with_llmfleets_engine_args(tmp_path: Path):
    from transformers import AutoTokenizer

    base = ensure_tiny_model(model_id=LLAMA_MODEL_ID)
    tensors = _write_adapter(tmp_path / "adapters" / "ad1", base)
    ids = AutoTokenizer.from_pretrained(base)(PROMPT)["input_ids"]
    settings = LoraSettings.model_validate(
        {"adapters": "s3://llmfleet-adapters-test/", "maxAdapters": 2, "maxRank": RANK}
    )
    engine_kwargs = settings.engine_kwargs()
    assert engine_kwargs == {"enable_lora": True, "max_loras": 2, "max_lora_rank": RANK}
    args = {
        "base": str(base),
        "ids": ids,
        "adapter": str(tmp_path / "adapters" / "ad1"),
        "engine_kwargs": engine_kwargs,
    }
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", ENGINE, json.dumps(args)], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])

    base_ref = _transformers_logprobs(base, ids, None)
    merged_ref = _transformers_logprobs(base, ids, tensors)
    assert len(got["adapter"]) == len(merged_ref) == len(ids) - 1
    assert max(abs(x - y) for x, y in zip(got["base"], base_ref, strict=True)) < 1e-4
    assert max(abs(x - y) for x, y in zip(got["adapter"], merged_ref, strict=True)) < 1e-4
    # the adapter changes the model: far beyond the tolerance above
    assert max(abs(x - y) for x, y in zip(got["adapter"], base_ref, strict=True)) > 0.05
