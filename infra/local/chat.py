"""`llmfleet local chat`: one chat completion against the local endpoint."""

from __future__ import annotations

from infra.local.layout import LocalError
from infra.local.state import DEFAULT_NAME, load_state, read_token, state_dir


def chat(
    message: str,
    name: str = DEFAULT_NAME,
    max_tokens: int = 48,
    temperature: float = 0.7,
    thinking_budget: int | None = None,
) -> dict:
    """One chat completion against the local endpoint with the official openai client.

    thinking_budget: vLLM's thinking_token_budget, the most tokens the model may think before the
    engine closes the thought (`</think>`) and the rest of the reply is the answer."""
    import openai

    st = load_state(name)
    if st is None:
        raise LocalError(f"no local cluster {name!r} in {state_dir()}; start one with `llmfleet local up`")
    client = openai.OpenAI(base_url=st["endpoint"], api_key=read_token(st), timeout=120, max_retries=1)
    try:
        r = client.chat.completions.create(
            model=st["model"],
            messages=[{"role": "user", "content": message}],
            max_tokens=max_tokens,
            temperature=temperature,
            extra_body={} if thinking_budget is None else {"thinking_token_budget": thinking_budget},
        )
    except openai.APIConnectionError as e:
        raise LocalError(f"{st['endpoint']}: {e}; see `llmfleet local status`") from None
    except openai.APIStatusError as e:
        raise LocalError(f"{st['endpoint']}: HTTP {e.status_code}: {e.message}") from None
    c = r.choices[0]
    return {
        "model": r.model,
        # vLLM's reasoning parser puts the <think> part here (vLLM 0.29 names it `reasoning`;
        # older servers `reasoning_content`), the answer in content
        "reasoning": getattr(c.message, "reasoning", None)
        or getattr(c.message, "reasoning_content", None)
        or "",
        "reply": c.message.content or "",
        "finish_reason": c.finish_reason,
        "usage": r.usage.model_dump() if r.usage else None,
    }
