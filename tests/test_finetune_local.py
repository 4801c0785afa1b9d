"""Issue #33 on a real local cluster: one cluster serves and fine-tunes.

3 hosts: the head, one serving worker host (a replica of the tiny Llama), one trainer host
(`local up --train-hosts 1`: `llmfleet_train`, no engine resource), with `--lora` (the adapters
store, an S3 endpoint on the head host, in the Serve config's lora_config). While a steady client
load hits the replica, `llmfleet finetune --local` trains a LoRA adapter there with Ray Train
(CPU, gloo); then the adapter is listed by /v1/models and a request naming it gets logprobs that
are transformers + peft's with the adapter merged, and not the base model's.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import openai
import pytest

from infra.local import adapters
from infra.local.tiny_model import LLAMA_MODEL_ID
from tests.test_local import LLMFLEET, cli, own_cluster

ADAPTER = "blue"
STEPS = 12
PROMPT = "question 3: what is the answer?"


def _data(path: Path) -> Path:
    rows = [
        {"prompt": f"question {i}: what is the answer?", "completion": " the answer is blue"}
        for i in range(8)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from own_cluster(tmp_path_factory, "ft", "--train-hosts", "1", "--lora", "--model", LLAMA_MODEL_ID)


class Load:
    """One client, one request after another on the base model, until stopped."""

    def __init__(self, client: openai.OpenAI):
        self.client, self.ok, self.failed, self._stop = client, 0, [], threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.client.completions.create(
                    model=LLAMA_MODEL_ID, prompt="hello", max_tokens=4, temperature=0
                )
                self.ok += 1
            except Exception as e:  # noqa: BLE001 - every failure is the test's finding
                self.failed.append(repr(e)[:300])
            time.sleep(0.2)

    def __enter__(self) -> Load:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(90)


def _reference(base: str, adapter_dir: Path | None, prompt_ids: list[int], gen: list[int]) -> list[float]:
    """transformers' logprobs of `gen` after the prompt: the base model, or with the adapter merged."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    with torch.no_grad():
        lp = torch.log_softmax(model.eval()(torch.tensor([prompt_ids + gen])).logits[0].float(), -1)
    n = len(prompt_ids)
    return [lp[n - 1 + k, t].item() for k, t in enumerate(gen)]


@pytest.mark.ray
@pytest.mark.finetune
def test_finetune_beside_serving_then_the_adapter_is_served(cluster, tmp_path: Path):
    from transformers import AutoTokenizer

    d, st, env = cluster["doc"], cluster["st"], cluster["env"]
    assert [h.role for h in st.hosts] == ["head", "worker", "trainer"]
    assert st.layout.replicas == 1 and st.lora.adapters == adapters.adapters_uri()
    client = openai.OpenAI(base_url=d["endpoint"], api_key=d["token"], max_retries=0, timeout=60)

    t0 = time.monotonic()
    with Load(client) as load:
        run = subprocess.run(
            [*LLMFLEET, "finetune", "--local", "--cluster", cluster["name"], "--data", str(_data(tmp_path / "d.jsonl")),
             "--name", ADAPTER, "--steps", str(STEPS), "--learning-rate", "0.01"],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if run.returncode != 0:  # the job's own log, before the cluster goes
            from ray.job_submission import JobSubmissionClient

            job = next(ln.split()[1] for ln in run.stderr.splitlines() if ln.startswith("submitted "))
            head = st.hosts[0].ip
            log = JobSubmissionClient(f"http://{head}:{st.ports.dashboard}").get_job_logs(job)
            pytest.fail(run.stderr[-2000:] + "\n--- job log ---\n" + log[-8000:])
    job_s = time.monotonic() - t0
    # zero failed requests while the job ran, and the load really ran through it
    assert load.failed == [] and load.ok >= 10, (load.ok, load.failed[:3])

    steps = [ln for ln in run.stdout.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in steps] == [f"{i}/{STEPS}" for i in range(1, STEPS + 1)], run.stdout
    losses = [float(ln.split()[3]) for ln in steps]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.25, losses  # the loss goes down
    assert all(" tokens/s  ETA " in ln for ln in steps)
    assert f"done: request model='{LLAMA_MODEL_ID}:{ADAPTER}'" in run.stdout

    # the adapter and its manifest, in the cluster's adapters store
    url = st.lora.endpoint
    assert adapters.list_adapters(url) == [ADAPTER]
    s3 = adapters.client(url)
    local = tmp_path / ADAPTER
    local.mkdir()
    for f in ("adapter_config.json", "adapter_model.safetensors", "manifest.json"):
        s3.download_file(adapters.BUCKET, f"{adapters.PREFIX}{ADAPTER}/{f}", str(local / f))
    manifest = json.loads((local / "manifest.json").read_text())
    assert manifest["base_model"] == LLAMA_MODEL_ID and manifest["steps"] == STEPS
    assert (
        manifest["final_loss"] == pytest.approx(losses[-1], abs=1e-4) and len(manifest["data_sha256"]) == 64
    )

    # served: listed, and a request naming it gets the merged model's logprobs
    served = {m.id for m in client.models.list().data}
    assert {LLAMA_MODEL_ID, f"{LLAMA_MODEL_ID}:{ADAPTER}"} <= served, served
    out = client.completions.create(
        model=f"{LLAMA_MODEL_ID}:{ADAPTER}", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=1,
        extra_body={"return_tokens_as_token_ids": True},
    )  # fmt: skip
    lp = out.choices[0].logprobs
    gen = [int(t.removeprefix("token_id:")) for t in lp.tokens]
    base = st.model_dir
    prompt_ids = AutoTokenizer.from_pretrained(base)(PROMPT)["input_ids"]
    merged = _reference(base, local, prompt_ids, gen)
    plain = _reference(base, None, prompt_ids, gen)
    vs_merged = max(abs(a - b) for a, b in zip(lp.token_logprobs, merged, strict=True))
    vs_base = max(abs(a - b) for a, b in zip(lp.token_logprobs, plain, strict=True))
    # the figures benchmarks/RESULTS.md records (pytest -rA shows them for a passing run)
    print(
        f"finetune-e2e: job+load {job_s:.0f} s, requests ok {load.ok} failed {len(load.failed)}, "
        f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps, "
        f"max |logprob diff| vs merged {vs_merged:.2e}, vs base {vs_base:.3f}"
    )
    assert vs_merged < 1e-3, (lp.token_logprobs, merged)
    assert vs_base > 0.05, (lp.token_logprobs, plain)

    # status and logs of the finished job, through the same Jobs API
    job = next(ln.split()[1] for ln in run.stderr.splitlines() if ln.startswith("submitted "))
    r = subprocess.run([*LLMFLEET, "finetune", "status", job, "--local", "--cluster", cluster["name"], "--json"],
                       env={**os.environ, **env}, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "SUCCEEDED" and doc["adapter"] == ADAPTER and doc["progress"]["step"] == STEPS
    r = cli(
        "chat",
        "--name",
        cluster["name"],
        "--adapter",
        ADAPTER,
        "--max-tokens",
        "4",
        "--json",
        "hello",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] == f"{LLAMA_MODEL_ID}:{ADAPTER}"
