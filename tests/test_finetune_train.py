"""The LoRA fine-tune's training function (ray_cluster/finetune.py) on the tiny Llama, without a
cluster: the loss goes down, the adapter is PEFT's and loads in peft, the manifest says what was
trained, and the adapter lands at <out>/<NAME>/ with adapter_config.json written last."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infra.local.tiny_model import LLAMA_MODEL_ID, ensure_tiny_model
from ray_cluster import finetune

pytestmark = pytest.mark.slow


def write_data(path: Path, n: int = 8) -> Path:
    """A JSONL a tiny model can learn in a few steps: one fixed answer per question."""
    lines = [
        {"prompt": f"question {i}: what is the answer?", "completion": " the answer is blue"}
        for i in range(n)
    ]
    lines.append(
        {"messages": [{"role": "user", "content": "colour?"}, {"role": "assistant", "content": "blue"}]}
    )
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_the_loop_lowers_the_loss_and_writes_a_peft_adapter_with_its_manifest(tmp_path: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = ensure_tiny_model(model_id=LLAMA_MODEL_ID)
    spec = finetune.TrainSpec(
        base=str(base), data=str(write_data(tmp_path / "d.jsonl")), name="blue", out=str(tmp_path / "adapters"),
        base_model_id=LLAMA_MODEL_ID, steps=8, learning_rate=1e-2, llmfleet_version="0.1.0",
    ).check()  # fmt: skip
    seen: list[finetune.Progress] = []
    now = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
    doc = finetune.train_and_publish(spec, seen.append, now=lambda: now)

    assert [p.step for p in seen] == list(range(1, 9)) and all(p.steps == 8 for p in seen)
    assert seen[-1].eta_s == 0 and all(p.tokens_per_s > 0 for p in seen)
    losses = [p.loss for p in seen]
    # it learns the one answer: measured 6.22 -> 5.53 over these 8 steps (a random tiny model)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.25 and losses[-1] < losses[0], losses
    line = json.loads(seen[0].line().removeprefix(finetune.PROGRESS_PREFIX))
    assert set(line) == {"step", "steps", "loss", "tokens_per_s", "eta_s"}

    dest = tmp_path / "adapters" / "blue"
    assert sorted(p.name for p in dest.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
    ]
    on_disk = json.loads((dest / "manifest.json").read_text())
    assert on_disk == doc
    assert (
        doc["base_model"] == LLAMA_MODEL_ID
        and doc["rank"] == 8
        and doc["target_modules"] == ["q_proj", "v_proj"]
    )
    assert doc["steps"] == 8 and doc["final_loss"] == losses[-1] and doc["first_loss"] == losses[0]
    assert doc["data_sha256"] == finetune.data_sha256(spec.data) and len(doc["data_sha256"]) == 64
    assert doc["created_at"] == "2026-12-07T04:00:00+00:00" and doc["llmfleet_version"] == "0.1.0"
    cfg = json.loads((dest / "adapter_config.json").read_text())
    assert (
        cfg["peft_type"] == "LORA" and cfg["r"] == 8 and sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
    )

    # peft loads it onto the base, and it changes the model (B is no longer zero)
    ids = torch.tensor([[1, 5, 9, 13]])
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = plain(ids).logits
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), dest
    ).eval()
    with torch.no_grad():
        got = tuned(ids).logits
    assert (got - ref).abs().max().item() > 1e-3


def test_bad_inputs_are_one_line_each(tmp_path: Path):
    good = {"base": "b", "data": "d", "name": "n", "out": "o"}
    cases = {
        "--name '../x'": {"name": "../x"},
        "--rank 0: allowed 1..512": {"rank": 0},
        "--steps 0: allowed 1..100000": {"steps": 0},
        "--learning-rate 2.0": {"learning_rate": 2.0},
        "--target-modules 'lm_head'": {"target_modules": ("lm_head",)},
    }
    for want, bad in cases.items():
        with pytest.raises(finetune.FinetuneError, match=want.replace(".", r"\.").replace("(", r"\(")):
            finetune.TrainSpec(**{**good, **bad}).check()
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\nnot json\n')
    with pytest.raises(finetune.FinetuneError, match="--data line 2: not JSON"):
        finetune.read_examples(str(p))
    p.write_text('{"text": "a"}\n')
    with pytest.raises(finetune.FinetuneError, match="--data line 1: allowed"):
        finetune.read_examples(str(p))


def test_an_existing_adapter_is_not_overwritten(tmp_path: Path):
    (tmp_path / "a" / "blue").mkdir(parents=True)
    assert finetune.exists(finetune.destination(str(tmp_path / "a") + "/", "blue"))
    with pytest.raises(FileExistsError):
        finetune.publish(str(tmp_path), str(tmp_path / "a" / "blue"))


def test_the_adapter_lands_in_s3_where_ray_serve_llm_lists_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """publish() through pyarrow's S3 (AWS_ENDPOINT_URL_S3, as Ray Serve LLM reads it) against a
    real moto server; Ray Serve LLM's own lister then names the adapter `<model>:NAME`."""
    from ray.llm._internal.common.utils.lora_utils import get_lora_model_ids

    from infra.local import adapters
    from tests.moto_fixtures import MotoServer

    work = tmp_path / "work"
    work.mkdir()
    for f in (finetune.ADAPTER_WEIGHTS, finetune.MANIFEST, finetune.ADAPTER_CONFIG):
        (work / f).write_text(f"{f} bytes")
    with MotoServer() as moto:
        for k, v in adapters.env(moto.url).items():
            monkeypatch.setenv(k, v)
        adapters.wait_and_create_bucket(moto.url, tmp_path / "log")
        dest = finetune.destination(adapters.adapters_uri(), "blue")
        assert dest == "s3://llmfleet-local/adapters/blue" and not finetune.exists(dest)
        finetune.publish(str(work), dest)
        assert finetune.exists(dest)
        assert adapters.list_adapters(moto.url) == ["blue"]
        assert get_lora_model_ids(adapters.adapters_uri().rstrip("/"), "llmfleet/tiny-llama") == [
            "llmfleet/tiny-llama:blue"
        ]
        body = adapters.client(moto.url).get_object(Bucket=adapters.BUCKET, Key="adapters/blue/manifest.json")
        assert body["Body"].read() == b"manifest.json bytes"
