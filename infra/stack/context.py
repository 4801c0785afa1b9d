"""`maxModelLen: auto`: the context length the planner picks from a layout's KV cache.

vLLM allocates KV blocks as tokens arrive, so max_model_len costs nothing until requests use
it; what it decides is how many requests of that full length can be in flight before the
scheduler preempts. Auto is therefore: the longest clean length (a power of two, or 1.5x one:
every value a multiple of 1,024) up to the model's max positions at which `target` sequences of
that length fit in the binding stage's KV cache at once.

Reasoning models (models.yaml `reasoning: true`: R1 and its distills) think for thousands of
tokens before they answer and the R1 card sets their generation limit to 32,768 tokens, so a
context cut short truncates answers rather than only queueing them: the note says whether the
pick reaches REASONING_PREFERRED and warns below REASONING_FLOOR (the policy pack's
`reasoning-model-context` flags the same).
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.catalog import Model

REASONING_PREFERRED = 32_768
REASONING_FLOOR = 16_384
# Below this a context holds too little of a chat to be worth serving; auto never goes lower.
MIN_AUTO = 2_048
DEFAULT_TARGET_CONCURRENCY = 16


@dataclass(frozen=True)
class ContextChoice:
    max_model_len: int
    sequences: int  # full-length sequences the KV cache holds at once
    note: str  # one line: what was picked and why
    warning: str | None = None  # a reasoning model below REASONING_FLOOR


def ladder(max_positions: int) -> list[int]:
    """Clean context lengths up to `max_positions`: 2^k and 1.5 x 2^k from MIN_AUTO, plus the
    model's own limit when it is a 1k multiple (R1's 163,840)."""
    out: set[int] = set()
    k = MIN_AUTO
    while k <= max_positions:
        out.add(k)
        if k * 3 // 2 <= max_positions:
            out.add(k * 3 // 2)
        k *= 2
    if max_positions % 1024 == 0 and max_positions >= MIN_AUTO:
        out.add(max_positions)
    return sorted(out)


def _k(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else f"{n:,}"


def _reasoning_warning(model: Model, length: int) -> str | None:
    if model.reasoning and length < REASONING_FLOOR:
        return (
            f"max_model_len {length:,} is below {REASONING_FLOOR:,} for the reasoning model {model.id}: "
            "long thoughts get cut off; add nodes, lower llmfleet:targetConcurrency or use a larger GPU"
        )
    return None


def choose(model: Model, kv_tokens: int, kv_gib: float, target: int, min_len: int) -> ContextChoice | None:
    """The auto context for `model` with `kv_tokens` of KV cache (`kv_gib` per GPU): the longest
    ladder length >= `min_len` (the planned request: input + output) at which `target` sequences
    fit. When even the shortest holds fewer than `target`, the shortest that holds one, and the
    note says how many it holds. None when the cache cannot hold one sequence of the shortest."""
    steps = [n for n in ladder(model.max_position_embeddings) if n >= min_len]
    if not steps:
        return None
    holding = [n for n in steps if target * n <= kv_tokens]
    length = holding[-1] if holding else steps[0]
    seqs = kv_tokens // length
    if seqs < 1:
        return None
    cache = f"{kv_gib:.1f} GiB of KV cache per GPU ({kv_tokens:,} tokens)"
    if holding:
        note = f"max_model_len {length:,} (auto): {target} sequences x {_k(length)} fit in {cache}"
        longer = [n for n in steps if n > length]
        if longer:
            note += f"; {_k(longer[0])} would hold {kv_tokens // longer[0]}, fewer than target concurrency {target}"
        else:
            note += f"; {model.id}'s limit is {model.max_position_embeddings:,} positions"
    else:
        note = (
            f"max_model_len {length:,} (auto): the shortest clean length for the planned "
            f"{min_len:,}-token request; {cache} hold {seqs} of it, fewer than target concurrency {target}"
        )
    if model.reasoning:
        if length >= REASONING_PREFERRED:
            note += f"; at least the {_k(REASONING_PREFERRED)} a reasoning model wants"
        elif (reach := kv_tokens // REASONING_PREFERRED) >= 1:
            note += f"; a reasoning model wants {_k(REASONING_PREFERRED)}: target concurrency {reach} gets it"
        else:
            note += f"; a reasoning model wants {_k(REASONING_PREFERRED)}, which does not fit once"
    return ContextChoice(length, seqs, note, _reasoning_warning(model, length))


def explicit(model: Model, length: int, kv_tokens: int, kv_gib: float) -> ContextChoice:
    """An explicit length (llmfleet:maxModelLen, --max-model-len): honoured as set; the note says
    how many sequences of it the cache holds."""
    seqs = kv_tokens // length
    note = (
        f"max_model_len {length:,} (as set): {kv_gib:.1f} GiB of KV cache per GPU "
        f"({kv_tokens:,} tokens) hold {seqs} sequences of it"
    )
    return ContextChoice(length, seqs, note, _reasoning_warning(model, length))
