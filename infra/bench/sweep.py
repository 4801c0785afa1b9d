"""A bounded load sweep through the OpenAI API (streaming completions, the official async client).

Each step runs a closed loop at one concurrency: that many workers send one request after
another until the step's request count is reached (or its duration is up), and the whole step
stops at its time limit; what is still open then is cancelled and counted as a timeout error.
Prompts are token ids of the served tokenizer's vocabulary (no special tokens), so their length is
exact by construction (the OpenAI completions API takes token-id prompts); the server's own
usage figures are kept beside them, so a report shows that the engine saw what was sent.
`ignore_eos` makes every request produce `output_len` tokens, as a benchmark needs.

Per request: TTFT = first streamed token - send; TPOT = (last - first token) / (tokens - 1).
Per step: requests/s and output tokens/s over the step's wall time, TTFT and TPOT p50/p95, errors.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

DEFAULT_STEP_TIMEOUT_S = 120.0
MAX_CONCURRENCY = 1024


class BenchError(RuntimeError):
    """One line for the user: the option or target that is wrong, and what is allowed."""


@dataclass(frozen=True)
class Target:
    """Where load goes: the OpenAI base URL (…/v1), its token and the served model id."""

    endpoint: str
    token: str
    model: str
    source: str  # "local:<name>", "stack:<name>" or "endpoint"


@dataclass(frozen=True)
class SweepSpec:
    concurrencies: tuple[int, ...]
    input_len: int
    output_len: int
    requests_per_step: int | None = None  # None: 4 x concurrency, at least 8 (when no duration)
    duration_s: float | None = None  # send new requests for this long, then drain
    step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S
    seed: int = 0

    def requests_for(self, concurrency: int) -> int | None:
        if self.duration_s is not None:
            return self.requests_per_step  # a cap, or none
        return self.requests_per_step or max(8, 4 * concurrency)

    def check(self) -> None:
        if not self.concurrencies:
            raise BenchError(
                "--concurrency: empty; allowed: a comma-separated list of integers >= 1, e.g. 1,4,8"
            )
        for c in self.concurrencies:
            if not 1 <= c <= MAX_CONCURRENCY:
                raise BenchError(f"--concurrency: {c} is not allowed; allowed: 1..{MAX_CONCURRENCY}")
        for key, v in (("--input-len", self.input_len), ("--output-len", self.output_len)):
            if v < 1:
                raise BenchError(f"{key}: {v} is not allowed; allowed: an integer >= 1")
        if self.requests_per_step is not None and self.requests_per_step < 1:
            raise BenchError(f"--requests: {self.requests_per_step} is not allowed; allowed: an integer >= 1")
        if self.duration_s is not None and self.duration_s <= 0:
            raise BenchError(f"--duration: {self.duration_s} is not allowed; allowed: seconds > 0")
        if self.step_timeout_s <= 0:
            raise BenchError(f"--step-timeout: {self.step_timeout_s} is not allowed; allowed: seconds > 0")


def parse_concurrencies(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BenchError(
            f"--concurrency: {text!r} is not allowed; allowed: a comma-separated list of integers, e.g. 1,4,8"
        ) from None
    return values


# --- prompts of known token length ---------------------------------------------------------------


def prompt_vocabulary(tokenizer) -> list[int]:
    """Token ids a prompt may use: the tokenizer's vocabulary without its special tokens."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = [i for i in range(len(tokenizer)) if i not in special]
    if not ids:
        raise BenchError("the served tokenizer has no ordinary tokens to build prompts from")
    return ids


def synthetic_prompts(vocab: Sequence[int], n: int, input_len: int, seed: int = 0) -> list[list[int]]:
    """n prompts of exactly input_len token ids, different from one another (so prefix caching
    does not turn the sweep into a cache benchmark)."""
    rng = random.Random(seed)
    return [[rng.choice(vocab) for _ in range(input_len)] for _ in range(n)]


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """The served tokenizer. trust_remote_code only as the stack that serves it has it (the
    DeepSeek-R1 family's tokenizers are native in transformers)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise BenchError(
            f"--tokenizer: {path!r} does not load ({str(e).splitlines()[0]}); "
            "allowed: a local directory with the served model's tokenizer"
        ) from None


# --- one step --------------------------------------------------------------------------------------


@dataclass
class RequestResult:
    ok: bool
    error: str = ""
    ttft_s: float = 0.0
    latency_s: float = 0.0
    output_tokens: int = 0
    prompt_tokens: int = 0

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or self.output_tokens < 2:
            return None
        return (self.latency_s - self.ttft_s) / (self.output_tokens - 1)


def _error_kind(e: BaseException) -> str:
    import openai

    if isinstance(e, openai.APIStatusError):
        return f"http_{e.status_code}"
    if isinstance(e, openai.APITimeoutError):
        return "timeout"
    if isinstance(e, openai.APIConnectionError):
        return "connection"
    return type(e).__name__


async def one_request(client, model: str, prompt: list[int], output_len: int) -> RequestResult:
    t0 = time.perf_counter()
    first: float | None = None
    usage = None
    try:
        stream = await client.completions.create(
            model=model,
            prompt=prompt,
            max_tokens=output_len,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        async for chunk in stream:
            if chunk.choices and first is None:
                first = time.perf_counter()
            if chunk.usage is not None:
                usage = chunk.usage
    except Exception as e:  # every failure is a counted error of the step, never a crash
        return RequestResult(ok=False, error=_error_kind(e), latency_s=time.perf_counter() - t0)
    end = time.perf_counter()
    if first is None or usage is None or not usage.completion_tokens:
        return RequestResult(ok=False, error="no_tokens", latency_s=end - t0)
    return RequestResult(
        ok=True,
        ttft_s=first - t0,
        latency_s=end - t0,
        output_tokens=int(usage.completion_tokens),
        prompt_tokens=int(usage.prompt_tokens or 0),
    )


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no values."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class StepStats:
    concurrency: int
    requests: int  # sent
    succeeded: int
    errors: dict[str, int]
    duration_s: float
    requests_per_s: float
    output_tokens: int
    output_tokens_per_s: float
    prompt_tokens_mean: float | None
    output_tokens_mean: float | None
    ttft_ms_p50: float | None
    ttft_ms_p95: float | None
    tpot_ms_p50: float | None
    tpot_ms_p95: float | None
    timed_out: bool
    predicted: dict | None = field(default=None)  # the planner's figures at this concurrency

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(
    concurrency: int, results: Sequence[RequestResult], wall_s: float, timed_out: bool
) -> StepStats:
    ok = [r for r in results if r.ok]
    ms = lambda v: None if v is None else round(v * 1000, 2)  # noqa: E731
    ttft = [r.ttft_s for r in ok]
    tpot = [t for r in ok if (t := r.tpot_s) is not None]
    out_tokens = sum(r.output_tokens for r in ok)
    wall = max(wall_s, 1e-9)
    return StepStats(
        concurrency=concurrency,
        requests=len(results),
        succeeded=len(ok),
        errors=dict(Counter(r.error for r in results if not r.ok)),
        duration_s=round(wall_s, 3),
        requests_per_s=round(len(ok) / wall, 3),
        output_tokens=out_tokens,
        output_tokens_per_s=round(out_tokens / wall, 2),
        prompt_tokens_mean=round(sum(r.prompt_tokens for r in ok) / len(ok), 2) if ok else None,
        output_tokens_mean=round(out_tokens / len(ok), 2) if ok else None,
        ttft_ms_p50=ms(percentile(ttft, 50)),
        ttft_ms_p95=ms(percentile(ttft, 95)),
        tpot_ms_p50=ms(percentile(tpot, 50)),
        tpot_ms_p95=ms(percentile(tpot, 95)),
        timed_out=timed_out,
    )


async def run_step(
    client, target: Target, spec: SweepSpec, concurrency: int, prompts: list[list[int]]
) -> StepStats:
    """One closed-loop step; never longer than spec.step_timeout_s."""
    limit = spec.requests_for(concurrency)
    results: list[RequestResult] = []
    sent = 0
    t0 = time.perf_counter()
    stop_sending = t0 + spec.duration_s if spec.duration_s is not None else math.inf

    async def worker() -> None:
        nonlocal sent
        while (limit is None or sent < limit) and time.perf_counter() < stop_sending:
            prompt = prompts[sent % len(prompts)]
            sent += 1
            results.append(await one_request(client, target.model, prompt, spec.output_len))

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    done, pending = await asyncio.wait(tasks, timeout=spec.step_timeout_s)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - t0
    # A request cancelled by the time limit was sent and never answered: a timeout error.
    unanswered = sent - len(results)
    results.extend(RequestResult(ok=False, error="step_timeout") for _ in range(unanswered))
    return summarize(concurrency, results, wall, timed_out=bool(pending))


def run_sweep(
    target: Target,
    spec: SweepSpec,
    vocab: Sequence[int],
    on_step: Callable[[StepStats], None] = lambda s: None,
) -> list[StepStats]:
    """Every step of the sweep, in order of spec.concurrencies; load goes only to target.endpoint."""
    import openai

    spec.check()
    n_prompts = max(spec.requests_for(c) or 4 * c for c in spec.concurrencies)
    prompts = synthetic_prompts(vocab, n_prompts, spec.input_len, spec.seed)

    async def main() -> list[StepStats]:
        steps = []
        async with openai.AsyncOpenAI(
            base_url=target.endpoint,
            api_key=target.token,
            max_retries=0,  # a retry would hide an error and send more load than the step says
            timeout=spec.step_timeout_s,
        ) as client:
            for c in spec.concurrencies:
                s = await run_step(client, target, spec, c, prompts)
                on_step(s)
                steps.append(s)
        return steps

    return asyncio.run(main())
