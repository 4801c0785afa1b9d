"""The LoRA fine-tune job (issue #33): a Ray Train `TorchTrainer` that trains a PEFT LoRA adapter
with `transformers` on a JSONL of examples and writes it where Ray Serve LLM loads adapters from.

`python -m ray_cluster.finetune --base DIR --data FILE --name NAME --out URI` is the Ray job's
entrypoint (`llmfleet finetune` submits it through Ray's JobSubmissionClient). It runs on the
cluster, so it lives in the image's package and imports nothing of the operator side.

Placement: every train worker asks for one unit of `llmfleet_train` (contract.TRAIN_RESOURCE),
which only a trainer host advertises; a serving replica's bundles ask for the engine resource
instead, and Ray never hands a placement group's reserved bundles to another task. What Ray does
not isolate: CPU time, memory bandwidth and the network of a host both run on.

Output, at `<out>/<NAME>/`: PEFT's adapter_model.safetensors, llmfleet's manifest.json (base,
rank, target modules, the data's sha256, steps, final loss, created-at, llmfleet's version) and,
last, adapter_config.json: Ray Serve LLM lists an adapter by its folder and loads it by that
file, so a half-copied adapter is never one a request can ask for. `out` is a local directory or
an s3:// URI (pyarrow's S3 filesystem, with AWS_ENDPOINT_URL_S3 as Ray Serve LLM reads it).
An existing NAME is refused: replicas cache an adapter by name, so a rewrite would serve the old
weights on some replicas and the new on others.

Progress: each step prints one line `llmfleet-train {json}` (step, steps, loss, tokens/s, ETA),
which reaches the job's logs through Ray's worker log forwarding; the CLI renders them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ray_cluster import contract

PROGRESS_PREFIX = "llmfleet-train "
MANIFEST = "manifest.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# The adapter's name is a path component and the suffix of the served model id (`<model>:NAME`):
# the same rule the operator side applies (infra/stack/lora.py ADAPTER_NAME_RE).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# vLLM 0.29's LoRA layers: the attention and MLP projections of a dense decoder.
TARGET_MODULES_ALLOWED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
IGNORE = -100  # transformers' label that the loss skips (the prompt's tokens, the padding)


class FinetuneError(RuntimeError):
    """One line: what is wrong with the job's input and what is allowed."""


@dataclass(frozen=True)
class TrainSpec:
    base: str  # the base checkpoint's directory on the trainer host
    data: str  # the JSONL: a path for the driver; a Train worker's copy of its bytes
    name: str
    out: str  # the adapters location: a directory or s3://BUCKET/PREFIX
    base_model_id: str = ""  # the served model id, for the manifest
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    steps: int = 30
    batch_size: int = 4
    learning_rate: float = 1e-3
    max_length: int = 256
    seed: int = 0
    llmfleet_version: str = "unknown"
    num_workers: int = 1
    use_gpu: bool = False

    def check(self) -> TrainSpec:
        if not NAME_RE.fullmatch(self.name):
            raise FinetuneError(f"--name {self.name!r}: allowed: 1-64 letters, digits, '_' or '-'")
        for key, v, lo, hi in (
            ("--rank", self.rank, 1, 512),
            ("--alpha", self.alpha, 1, 4096),
            ("--steps", self.steps, 1, 100_000),
            ("--batch-size", self.batch_size, 1, 1024),
            ("--max-length", self.max_length, 8, 131_072),
            ("--num-workers", self.num_workers, 1, 1024),
        ):
            if not lo <= v <= hi:
                raise FinetuneError(f"{key} {v}: allowed {lo}..{hi}")
        if not 0 < self.learning_rate < 1:
            raise FinetuneError(f"--learning-rate {self.learning_rate}: allowed 0 < lr < 1")
        bad = [m for m in self.target_modules if m not in TARGET_MODULES_ALLOWED]
        if bad or not self.target_modules:
            raise FinetuneError(
                f"--target-modules {','.join(self.target_modules)!r}: allowed: {', '.join(TARGET_MODULES_ALLOWED)}"
            )
        return self


# ----------------------------------------------------------------------------- data
def data_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_examples(path: str) -> list[dict[str, Any]]:
    """The JSONL's examples ({"prompt","completion"} or {"messages"}); the operator side checked
    the shapes before submitting (infra/commands/finetune.py), this only refuses what it cannot use."""
    out: list[dict[str, Any]] = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                raise FinetuneError(f"--data line {i}: not JSON") from None
            if not isinstance(obj, dict) or not ({"prompt", "completion"} <= obj.keys() or "messages" in obj):
                raise FinetuneError(f'--data line {i}: allowed: {{"prompt","completion"}} or {{"messages"}}')
            out.append(obj)  # pyright: ignore[reportUnknownArgumentType]
    if not out:
        raise FinetuneError("--data: no examples")
    return out


def _texts(example: dict[str, Any], tokenizer: Any) -> tuple[str, str]:
    """(prompt, completion) of one example: a chat's turns before its last assistant turn through
    the model's chat template (the form the served chat endpoint renders), that turn the target."""
    if "messages" not in example:
        return str(example["prompt"]), str(example["completion"])
    msgs: list[dict[str, str]] = example["messages"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    prompt = tokenizer.apply_chat_template(msgs[:last], tokenize=False, add_generation_prompt=True)
    return str(prompt), msgs[last]["content"]


def _pad_id(tokenizer: Any) -> int:
    """The tokenizer's padding id (its EOS when it has none; 0 when neither)."""
    pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else int(tokenizer.eos_token_id or 0)


def tokenize(
    examples: list[dict[str, Any]], tokenizer: Any, max_length: int
) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per example: the loss is on the completion's tokens and the EOS only."""
    rows: list[tuple[list[int], list[int]]] = []
    for ex in examples:
        prompt, completion = _texts(ex, tokenizer)
        p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            c = [*c, tokenizer.eos_token_id]
        ids = (p + c)[:max_length]
        labels = ([IGNORE] * len(p) + c)[:max_length]
        if any(x != IGNORE for x in labels):
            rows.append((ids, labels))
    if not rows:
        raise FinetuneError(f"--max-length {max_length}: every completion was cut off; allowed: a longer one")
    return rows


def _batch(rows: list[tuple[list[int], list[int]]], pad: int) -> dict[str, Any]:
    import torch

    n = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    labels = torch.full((len(rows), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


# ----------------------------------------------------------------------------- the loop
@dataclass(frozen=True)
class Progress:
    step: int
    steps: int
    loss: float
    tokens_per_s: float
    eta_s: float

    def line(self) -> str:
        return PROGRESS_PREFIX + json.dumps(asdict(self), separators=(",", ":"))


def fine_tune(
    spec: TrainSpec,
    workdir: str,
    report: Callable[[Progress], None],
    rank: int = 0,
    world: int = 1,
    wrap: Callable[[Any], Any] = lambda m: m,
    device: str = "cpu",
    clock: Callable[[], float] = time.monotonic,
) -> list[float]:
    """Train the adapter and, on rank 0, save it (PEFT's two files) into `workdir`; the losses per
    step. `wrap` is Ray Train's prepare_model (DDP over gloo/NCCL) inside the trainer, identity in
    a plain process; each rank trains on its own slice of the examples."""
    import torch
    from peft import LoraConfig, get_peft_model  # pyright: ignore[reportMissingTypeStubs]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(spec.seed)  # pyright: ignore[reportUnknownMemberType] - torch leaves `seed` unannotated
    tokenizer: Any = AutoTokenizer.from_pretrained(spec.base)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType] - transformers leaves the return unannotated
    pad = _pad_id(tokenizer)
    rows = tokenize(read_examples(spec.data), tokenizer, spec.max_length)[rank::world] or []
    if not rows:
        raise FinetuneError(f"--num-workers {world}: more workers than examples")
    model: Any = AutoModelForCausalLM.from_pretrained(spec.base, dtype=torch.float32)  # pyright: ignore[reportUnknownMemberType] - transformers leaves `**kwargs` unannotated
    lora = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=0.0,
        target_modules=list(spec.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model: Any = get_peft_model(model, lora)
    trained: Any = wrap(peft_model.to(device))
    params = [p for p in trained.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.learning_rate)
    trained.train()
    losses: list[float] = []
    started = clock()
    tokens = 0
    for step in range(1, spec.steps + 1):
        # the examples in order, round and round: a small data set is seen several times
        chunk = [rows[((step - 1) * spec.batch_size + k) % len(rows)] for k in range(spec.batch_size)]
        batch = {k: v.to(device) for k, v in _batch(chunk, pad).items()}
        loss = trained(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()  # pyright: ignore[reportUnknownMemberType] - torch leaves `closure` unannotated
        losses.append(float(loss.item()))
        tokens += int(batch["attention_mask"].sum().item())
        elapsed = max(clock() - started, 1e-9)
        report(Progress(step, spec.steps, losses[-1], tokens / elapsed, elapsed / step * (spec.steps - step)))
    if rank == 0:
        peft_model.save_pretrained(workdir, safe_serialization=True)
    return losses


def manifest(spec: TrainSpec, losses: Sequence[float], now: datetime) -> dict[str, Any]:
    return {
        "name": spec.name,
        "base_model": spec.base_model_id or spec.base,
        "base_path": spec.base,
        "rank": spec.rank,
        "alpha": spec.alpha,
        "target_modules": list(spec.target_modules),
        "data_sha256": data_sha256(spec.data),
        "steps": len(losses),
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "created_at": now.astimezone(UTC).isoformat(timespec="seconds"),
        "llmfleet_version": spec.llmfleet_version,
    }


# ----------------------------------------------------------------------------- storage
def _s3(uri: str) -> tuple[Any, str]:
    from pyarrow import fs  # pyright: ignore[reportMissingTypeStubs] - pyarrow ships no stubs

    # Ray Serve LLM's own S3 filesystem reads the endpoint the same way (pyarrow_filesystem.py)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3")
    return _filesystem(fs, endpoint), uri.removeprefix("s3://")


def _filesystem(fs: Any, endpoint: str | None) -> Any:
    """pyarrow's S3 filesystem (pyarrow ships no stubs: `fs` is its module)."""
    return fs.S3FileSystem(endpoint_override=endpoint) if endpoint else fs.S3FileSystem()


def destination(out: str, name: str) -> str:
    return f"{out.rstrip('/')}/{name}"


def exists(dest: str) -> bool:
    if dest.startswith("s3://"):
        from pyarrow import fs  # pyright: ignore[reportMissingTypeStubs] - pyarrow ships no stubs

        s3, path = _s3(dest)
        return bool(s3.get_file_info(fs.FileSelector(path, allow_not_found=True, recursive=False)))  # pyright: ignore[reportUnknownMemberType] - as above
    return Path(dest).exists()


def publish(workdir: str, dest: str) -> None:
    """Copy the adapter to `dest`, adapter_config.json last (the module's docstring says why)."""
    order = [ADAPTER_WEIGHTS, MANIFEST, ADAPTER_CONFIG]
    if dest.startswith("s3://"):
        s3, path = _s3(dest)
        for f in order:
            with open(os.path.join(workdir, f), "rb") as src, s3.open_output_stream(f"{path}/{f}") as dst:
                shutil.copyfileobj(src, dst)
        return
    Path(dest).mkdir(parents=True, exist_ok=False)
    for f in order:
        tmp = Path(dest) / f".{f}.part"
        shutil.copyfile(os.path.join(workdir, f), tmp)
        os.replace(tmp, Path(dest) / f)


def train_and_publish(
    spec: TrainSpec,
    report: Callable[[Progress], None],
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    **loop: Any,
) -> dict[str, Any]:
    """fine_tune, then the manifest and the copy to `<out>/<NAME>/` (rank 0); the manifest."""
    dest = destination(spec.out, spec.name)
    with tempfile.TemporaryDirectory(prefix="llmfleet-lora-") as work:
        losses = fine_tune(spec, work, report, **loop)
        if loop.get("rank", 0) != 0:
            return {}
        doc = manifest(spec, losses, now())
        Path(work, MANIFEST).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        publish(work, dest)
    return doc


# ----------------------------------------------------------------------------- Ray Train
def _train_loop_per_worker(config: dict[str, Any]) -> None:  # pragma: no cover - runs in Ray Train
    import ray.train
    import ray.train.torch

    # The data travels in the config (the driver read it): a Train worker's working directory
    # is Ray Train's to choose, and the job's working_dir is unpacked per node.
    data = tempfile.NamedTemporaryFile(prefix="llmfleet-data-", suffix=".jsonl", delete=False)  # noqa: SIM115
    with data:
        data.write(config["data_bytes"])
    # Ray Train hands the config back untyped: TrainSpec's own fields, checked by the driver
    fields: dict[str, Any] = {k: v for k, v in config.items() if k != "data_bytes"}
    fields |= {"data": data.name, "target_modules": tuple(config["target_modules"])}
    spec = TrainSpec(**fields)
    ctx = ray.train.get_context()

    def report(p: Progress) -> None:
        if ctx.get_world_rank() == 0:
            print(p.line(), flush=True)

    try:
        doc = train_and_publish(
            spec,
            report,
            rank=ctx.get_world_rank(),
            world=ctx.get_world_size(),
            wrap=ray.train.torch.prepare_model,
            device=str(ray.train.torch.get_device()),
        )
    finally:
        os.unlink(data.name)  # the worker's copy; the manifest has hashed it by now
    if doc:
        print(
            PROGRESS_PREFIX + json.dumps({"done": destination(spec.out, spec.name), "manifest": doc}),
            flush=True,
        )
    ray.train.report({"final_loss": doc.get("final_loss", 0.0)})


def run(spec: TrainSpec, storage: str) -> None:  # pragma: no cover - the job's driver
    """The TorchTrainer: one worker per `llmfleet_train` unit asked (CPU + gloo here, GPU + NCCL
    on a GPU stack), each worker pinned to a trainer host by that resource."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    per_worker: dict[str, float] = {contract.TRAIN_RESOURCE: 1, "CPU": 1}
    if spec.use_gpu:
        per_worker["GPU"] = 1
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={
            **asdict(spec),
            "target_modules": list(spec.target_modules),
            "data_bytes": Path(spec.data).read_bytes(),
        },
        scaling_config=ScalingConfig(
            num_workers=spec.num_workers, use_gpu=spec.use_gpu, resources_per_worker=per_worker
        ),
        torch_config=TorchConfig(backend="nccl" if spec.use_gpu else "gloo"),
        run_config=RunConfig(name=f"lora-{spec.name}", storage_path=storage),
    )
    trainer.fit()


def parse(argv: Sequence[str]) -> TrainSpec:
    p = argparse.ArgumentParser(
        prog="python -m ray_cluster.finetune", description=(__doc__ or "").splitlines()[0]
    )
    p.add_argument("--base", required=True)
    p.add_argument("--base-model-id", default="")
    p.add_argument("--data", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=int, default=16)
    p.add_argument("--target-modules", default="q_proj,v_proj")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--llmfleet-version", default="unknown")
    a = p.parse_args(list(argv))
    return TrainSpec(
        base=a.base,
        base_model_id=a.base_model_id,
        # relative to the driver's cwd (the job's unpacked working_dir); the driver reads it and
        # the Train workers get its bytes (_train_loop_per_worker), not this path
        data=a.data,
        name=a.name,
        out=a.out,
        rank=a.rank,
        alpha=a.alpha,
        target_modules=tuple(m for m in a.target_modules.split(",") if m),
        steps=a.steps,
        batch_size=a.batch_size,
        learning_rate=a.learning_rate,
        max_length=a.max_length,
        num_workers=a.num_workers,
        use_gpu=a.use_gpu,
        llmfleet_version=a.llmfleet_version,
    ).check()


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - the job's entrypoint
    try:
        spec = parse(sys.argv[1:] if argv is None else argv)
        if not os.path.isfile(spec.data):
            raise FinetuneError(f"--data {spec.data!r}: not a file on the job's host")
        if exists(destination(spec.out, spec.name)):
            raise FinetuneError(
                f"--name {spec.name!r}: {destination(spec.out, spec.name)} exists; allowed: a new name "
                "(replicas cache an adapter by name)"
            )
        with tempfile.TemporaryDirectory(prefix="llmfleet-train-") as storage:
            run(spec, storage)
    except FinetuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
