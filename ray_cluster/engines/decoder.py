"""Batched, step-wise decoding of a causal LM on CPU (no Ray here).

``BatchedDecoder.run(requests)`` prefills all prompts as one left-padded batch, then runs one
batched forward per decode step and yields, after every step, one ``StepOutput`` per request (or
``None`` for a request that already finished). Streaming and non-streaming callers consume the
same steps; finished rows are dropped from the KV cache so the batch shrinks as requests end.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class StepOutput:
    text: str  # new text since the previous output of this request
    completion_tokens: int  # generated so far (EOS counts, as in vLLM)
    finish_reason: str | None = None  # "stop" | "length" once finished


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing chars to keep back: a partial UTF-8 char or a possible stop-string prefix."""
    keep = len(text) - len(text.rstrip("\ufffd"))
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                keep = max(keep, k)
                break
    return keep


class _Row:
    """Per-request decode state: tokens, emitted text, sampling generator."""

    def __init__(self, req: GenRequest, eos_id: int | None):
        import torch

        self.req = req
        self.eos_id = eos_id
        self.ids: list[int] = []
        self.emitted = 0
        seed = req.seed if req.seed is not None else random.getrandbits(63)
        self.gen = torch.Generator().manual_seed(seed)

    def advance(self, token: int, decode) -> StepOutput:
        self.ids.append(token)
        text = decode(self.ids)
        n = len(self.ids)
        cut = min((i for i in (text.find(s) for s in self.req.stop) if i >= 0), default=-1)
        if cut >= 0:
            out = StepOutput(text[self.emitted : cut], n, "stop")
        elif token == self.eos_id:
            out = StepOutput(text[self.emitted :], n, "stop")
        elif n >= self.req.max_tokens:
            out = StepOutput(text[self.emitted :], n, "length")
        else:
            safe = len(text) - held_back(text, self.req.stop)
            out = StepOutput(text[self.emitted : max(safe, self.emitted)], n)
        self.emitted += len(out.text)
        return out


class BatchedDecoder:
    """Holds a transformers causal LM + tokenizer and decodes batches of requests."""

    def __init__(self, model_dir: Path | str, torch_threads: int = 1):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(torch_threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _sample(self, logits, rows: list[_Row]) -> list[int]:
        import torch

        out = []
        for i, row in enumerate(rows):
            t, p = row.req.temperature, row.req.top_p
            if t <= 0:
                out.append(int(torch.argmax(logits[i])))
                continue
            probs = torch.softmax(logits[i].float() / t, dim=-1)
            if p < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                drop = (torch.cumsum(sorted_p, dim=-1) - sorted_p) >= p  # always keeps the top token
                sorted_p[drop] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
            out.append(int(torch.multinomial(probs, 1, generator=row.gen)))
        return out

    def run(self, requests: list[GenRequest]) -> Iterator[list[StepOutput | None]]:
        import torch
        from transformers import DynamicCache

        rows = [_Row(r, self.eos_id) for r in requests]
        active = list(range(len(rows)))  # request index of each batch row
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.tensor([[self.pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in requests])
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests])
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            while active:
                # Left padding: positions count real tokens only, so padded rows match unpadded ones.
                pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
                out = self.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=pos,
                    cache=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                tokens = self._sample(out.logits[:, -1, :], [rows[i] for i in active])
                step: list[StepOutput | None] = [None] * len(rows)
                for b, i in enumerate(active):
                    step[i] = rows[i].advance(tokens[b], self.decode)
                yield step
                keep = [b for b, i in enumerate(active) if step[i].finish_reason is None]
                if len(keep) < len(active):
                    if not keep:
                        return
                    idx = torch.tensor(keep)
                    cache.batch_select_indices(idx)
                    mask = mask[idx]
                    tokens = [tokens[b] for b in keep]
                    active = [active[b] for b in keep]
                ids = torch.tensor(tokens).unsqueeze(1)
                mask = torch.cat([mask, torch.ones(len(active), 1, dtype=mask.dtype)], dim=1)

    def generate(self, request: GenRequest) -> StepOutput:
        """One request, run to completion in-process (benchmarks and tests)."""
        return self.generate_batch([request])[0]

    def generate_batch(self, requests: list[GenRequest]) -> list[StepOutput]:
        texts = [""] * len(requests)
        final: list[StepOutput | None] = [None] * len(requests)
        for step in self.run(requests):
            for i, o in enumerate(step):
                if o is not None:
                    texts[i] += o.text
                    if o.finish_reason:
                        final[i] = StepOutput(texts[i], o.completion_tokens, o.finish_reason)
        return final  # type: ignore[return-value]
