"""`llmfleet local chat` (and `llmfleet chat` for a deployed stack): one chat completion with
the official openai client."""

from __future__ import annotations

from infra.local.layout import LocalError
from infra.local.state import DEFAULT_NAME, load_state, read_token, state_dir


class ChatError(RuntimeError):
    """One line: the endpoint and what it answered."""


def chat_once(
    base_url: str,
    api_key: str,
    model: str,
    message: str,
    max_tokens: int = 48,
    temperature: float = 0.7,
    thinking_budget: int | None = None,
) -> dict:
    """One chat completion at an OpenAI-compatible base URL (ending in /v1).

    thinking_budget: vLLM's thinking_token_budget, the most tokens the model may think before the
    engine closes the thought (`</think>`) and the rest of the reply is the answer."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=120, max_retries=1)
    try:
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": message}],
            max_tokens=max_tokens,
            temperature=temperature,
            extra_body={} if thinking_budget is None else {"thinking_token_budget": thinking_budget},
        )
    except openai.APIConnectionError as e:
        raise ChatError(f"{base_url}: {e}") from None
    except openai.APIStatusError as e:
        raise ChatError(f"{base_url}: HTTP {e.status_code}: {e.message}") from None
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


def chat(
    message: str,
    name: str = DEFAULT_NAME,
    max_tokens: int = 48,
    temperature: float = 0.7,
    thinking_budget: int | None = None,
    adapter: str | None = None,
) -> dict:
    """One chat completion against the local endpoint (`adapter`: Ray Serve LLM's `<model>:NAME`)."""
    st = load_state(name)
    if st is None:
        raise LocalError(f"no local cluster {name!r} in {state_dir()}; start one with `llmfleet local up`")
    model = f"{st.model}:{adapter}" if adapter else st.model
    try:
        return chat_once(
            st.endpoint, read_token(st), model, message, max_tokens, temperature, thinking_budget
        )
    except ChatError as e:
        raise LocalError(f"{e}; see `llmfleet local status`") from None
