"""Batched, step-wise decoding of a causal LM on CPU (no Ray here).

``start`` prefills a group of prompts as one left-padded batch; ``step`` runs one batched forward
for every running row; ``merge`` joins a newly started group into the running batch at a step
boundary (continuous batching), left-padding the shorter KV cache and mask. Finished rows are
dropped from the KV cache, so the batch shrinks as requests end. ``run`` is the simple loop over a
fixed set of requests (in-process use and tests).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False  # vLLM's extension: always produce max_tokens (benchmarks)


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
        elif token == self.eos_id and not self.req.ignore_eos:
            out = StepOutput(text[self.emitted :], n, "stop")
        elif n >= self.req.max_tokens:
            out = StepOutput(text[self.emitted :], n, "length")
        else:
            safe = len(text) - held_back(text, self.req.stop)
            out = StepOutput(text[self.emitted : max(safe, self.emitted)], n)
        self.emitted += len(out.text)
        return out


class RunningBatch:
    """Rows decoded together: per-row state, the caller's tag per row, KV cache, attention mask and
    the next input token of each row. Invariant between steps: cache length == mask width."""

    def __init__(self, rows: list[_Row], tags: list[Any], cache, mask):
        self.rows, self.tags, self.cache, self.mask = rows, tags, cache, mask
        self.next_ids = None

    @property
    def size(self) -> int:
        return len(self.rows)


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
        # transformers' GenerationConfig.suppress_tokens: never sampled (logits -inf).
        self.suppress = torch.tensor(
            getattr(self.model.generation_config, "suppress_tokens", None) or [], dtype=torch.long
        )

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _sample(self, logits, rows: list[_Row]) -> list[int]:
        import torch

        if self.suppress.numel():
            logits = logits.clone()
            logits[:, self.suppress] = float("-inf")
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

    def _forward(self, batch: RunningBatch, ids) -> list[int]:
        import torch

        # Left padding: positions count real tokens only, so padded rows match unpadded ones.
        pos = (batch.mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=batch.mask,
                position_ids=pos,
                cache=batch.cache,
                use_cache=True,
                logits_to_keep=1,
            )
            return self._sample(out.logits[:, -1, :], batch.rows)

    def _advance(self, batch: RunningBatch, tokens: list[int]) -> list[tuple[Any, StepOutput]]:
        """Feed sampled tokens to the rows, then drop finished rows from the batch (and its cache)."""
        import torch

        outs = [
            (tag, row.advance(tok, self.decode))
            for tag, row, tok in zip(batch.tags, batch.rows, tokens, strict=True)
        ]
        keep = [b for b, (_, o) in enumerate(outs) if o.finish_reason is None]
        if len(keep) < len(outs):
            idx = torch.tensor(keep, dtype=torch.long)
            if keep:
                batch.cache.batch_select_indices(idx)
            batch.mask = batch.mask[idx]
            batch.rows = [batch.rows[b] for b in keep]
            batch.tags = [batch.tags[b] for b in keep]
            tokens = [tokens[b] for b in keep]
        batch.next_ids = torch.tensor(tokens, dtype=torch.long).reshape(len(tokens), 1)
        return outs

    def start(
        self, requests: list[GenRequest], tags: list[Any]
    ) -> tuple[RunningBatch, list[tuple[Any, StepOutput]]]:
        """Prefill the prompts as one left-padded batch and sample each request's first token."""
        import torch
        from transformers import DynamicCache

        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.tensor([[self.pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in requests])
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests])
        rows = [_Row(r, self.eos_id) for r in requests]
        batch = RunningBatch(rows, list(tags), DynamicCache(config=self.model.config), mask)
        return batch, self._advance(batch, self._forward(batch, ids))

    def step(self, batch: RunningBatch) -> list[tuple[Any, StepOutput]]:
        """One batched decode forward for every row still running."""
        import torch

        batch.mask = torch.cat([batch.mask, torch.ones(batch.size, 1, dtype=batch.mask.dtype)], dim=1)
        return self._advance(batch, self._forward(batch, batch.next_ids))

    @staticmethod
    def merge(a: RunningBatch, b: RunningBatch) -> RunningBatch:
        """Join two running batches (continuous batching): left-pad the shorter to a common length."""
        import torch
        import torch.nn.functional as F

        width = max(a.mask.shape[1], b.mask.shape[1])

        def pad(x, dim_from_end: int):
            missing = width - x.shape[-dim_from_end]
            if not missing:
                return x
            spec = [0, 0] * (dim_from_end - 1) + [missing, 0]  # left-pad that dim with zeros
            return F.pad(x, spec)

        for la, lb in zip(a.cache.layers, b.cache.layers, strict=True):
            la.keys = torch.cat([pad(la.keys, 2), pad(lb.keys, 2)])
            la.values = torch.cat([pad(la.values, 2), pad(lb.values, 2)])
        a.mask = torch.cat([pad(a.mask, 1), pad(b.mask, 1)])
        a.next_ids = torch.cat([a.next_ids, b.next_ids])
        a.rows += b.rows
        a.tags += b.tags
        return a

    def run(self, requests: list[GenRequest]) -> Iterator[list[StepOutput | None]]:
        """Decode requests together; after each step, one output per request (None once finished)."""
        batch, outs = self.start(requests, list(range(len(requests))))
        while True:
            step: list[StepOutput | None] = [None] * len(requests)
            for i, o in outs:
                step[i] = o
            yield step
            if not batch.size:
                return
            outs = self.step(batch)

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
