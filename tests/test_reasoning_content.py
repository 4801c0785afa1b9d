"""The gated ingress sends R1's thought as both `reasoning` (vLLM 0.29's name) and
`reasoning_content` (DeepSeek's API, Open WebUI, LibreChat, ...), streaming and not.

The chunks and responses here are vLLM's own protocol models serialized the way vLLM's chat
server does, and the ingress path is Ray Serve LLM's own `_process_llm_request` (peek, the
StreamingResponse over its SSE wrapper); only the engine deployment's answer is fed in. The
local cluster's test (tests/test_local.py) reads both fields with the official openai client."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_cluster import serve_app

vllm_protocol = pytest.importorskip("vllm.entrypoints.openai.chat_completion.protocol")
from vllm.entrypoints.generate.base.protocol import DeltaMessage  # noqa: E402

TOKEN_ENV = "LLMF_TEST_REASONING_TOKEN"


def chunk(delta: DeltaMessage, index: int = 0) -> str:
    """One SSE event as vLLM's chat server writes it (serving.py: model_dump_json(exclude_unset=True))."""
    c = vllm_protocol.ChatCompletionStreamResponse(
        id="chatcmpl-1",
        created=0,
        model="org/m",
        choices=[vllm_protocol.ChatCompletionResponseStreamChoice(index=index, delta=delta)],
    )
    return f"data: {c.model_dump_json(exclude_unset=True)}\n\n"


def events(packet: str) -> list[dict]:
    return [json.loads(e.removeprefix("data: ")) for e in packet.split("\n\n") if e.startswith("data: {")]


# Text a model may write, including what looks like the key itself, quotes, backslashes,
# escapes and characters JSON escapes or passes raw.
_PIECES = [
    '"',
    "\\",
    ":",
    ",",
    "{",
    "}",
    "reasoning",
    '"reasoning":',
    "null",
    "\n",
    "\t",
    "é",
    "思",
    "\u2028",
    "a",
]
texts = st.lists(st.sampled_from(_PIECES), max_size=12).map("".join) | st.text(max_size=20)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(reasoning=st.none() | texts, content=st.none() | texts, batch=st.integers(1, 3))
def test_every_streamed_delta_carries_its_reasoning_twice_and_nothing_else_changes(reasoning, content, batch):
    kwargs = {k: v for k, v in (("reasoning", reasoning), ("content", content)) if v is not None}
    # Ray Serve LLM batches stream chunks: one packet may hold several events
    packet = "".join(chunk(DeltaMessage(**kwargs), index=i) for i in range(batch))
    out = serve_app.mirror_reasoning_sse(packet)
    want = events(packet)
    for e in want:
        delta = e["choices"][0]["delta"]
        if "reasoning" in delta:
            delta["reasoning_content"] = delta["reasoning"]
    assert events(out) == want
    if reasoning is None:
        assert out is packet  # no reasoning key: passed through untouched, not even copied
    assert serve_app.mirror_reasoning_sse(packet.encode()) == out.encode()  # bytes chunks alike


def test_the_role_and_done_events_pass_through_unchanged():
    for packet in (chunk(DeltaMessage(role="assistant", content="")), "data: [DONE]\n\n"):
        assert serve_app.mirror_reasoning_sse(packet) is packet


def test_a_whole_response_gets_reasoning_content_per_choice_null_when_there_is_none():
    from starlette.responses import JSONResponse

    resp = vllm_protocol.ChatCompletionResponse(
        id="chatcmpl-1",
        created=0,
        model="org/m",
        choices=[
            vllm_protocol.ChatCompletionResponseChoice(
                index=0,
                message=vllm_protocol.ChatMessage(role="assistant", content="4", reasoning='2+2 "is" 4'),
            ),
            vllm_protocol.ChatCompletionResponseChoice(
                index=1, message=vllm_protocol.ChatMessage(role="assistant", content="4")
            ),
        ],
        usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    )
    out = serve_app.with_reasoning_content(JSONResponse(resp.model_dump()))
    doc = json.loads(out.body)
    assert [c["message"]["reasoning_content"] for c in doc["choices"]] == ['2+2 "is" 4', None]
    assert [c["message"]["reasoning"] for c in doc["choices"]] == ['2+2 "is" 4', None]
    assert int(out.headers["content-length"]) == len(out.body)
    error = JSONResponse({"error": {"message": "x"}}, status_code=400)
    assert serve_app.with_reasoning_content(error) is error


def _ingress(monkeypatch, answer: list):
    """The gated ingress with the engine deployment's answer fed in (Ray's own request path after it)."""
    monkeypatch.setenv(TOKEN_ENV, "t")
    ing = serve_app.BearerOpenAiIngress({"org/m": None}, {"org/m": None}, api_token_env=TOKEN_ENV)

    async def engine(*, body, call_method, raw_request=None):
        assert call_method == "chat"
        for item in answer:
            yield item

    ing._get_response = engine
    return ing


def _request(stream: bool):
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    return ChatCompletionRequest(model="org/m", messages=[{"role": "user", "content": "hi"}], stream=stream)


def test_the_gated_ingress_streams_both_fields_through_rays_own_path(monkeypatch):
    # the engine deployment's stream: batches of vLLM's SSE strings (LLMServer's Batcher)
    batches = [
        [chunk(DeltaMessage(role="assistant", content=""))],
        [chunk(DeltaMessage(reasoning="Two")), chunk(DeltaMessage(reasoning=" plus two"))],
        [chunk(DeltaMessage(content="4"))],
    ]
    ing = _ingress(monkeypatch, batches)

    async def run():
        resp = await ing.chat(_request(stream=True), None)
        return resp.media_type, [p async for p in resp.body_iterator]

    media, packets = asyncio.run(run())
    assert media == "text/event-stream" and packets[-1] == "data: [DONE]\n\n"
    deltas = [e["choices"][0]["delta"] for p in packets for e in events(p)]
    assert [d.get("reasoning_content") for d in deltas] == [None, "Two", " plus two", None]
    assert [d.get("reasoning") for d in deltas] == [None, "Two", " plus two", None]
    assert "".join(d.get("content") or "" for d in deltas) == "4"


def test_the_gated_ingress_answers_a_whole_chat_with_both_fields(monkeypatch):
    from ray.serve.llm.openai_api_models import ChatCompletionResponse

    whole = ChatCompletionResponse(
        id="chatcmpl-1",
        created=0,
        model="org/m",
        choices=[{"index": 0, "message": {"role": "assistant", "content": "4", "reasoning": "Two plus two"}}],
        usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    )
    resp = asyncio.run(_ingress(monkeypatch, [whole]).chat(_request(stream=False), None))
    msg = json.loads(resp.body)["choices"][0]["message"]
    assert (msg["reasoning"], msg["reasoning_content"], msg["content"]) == (
        "Two plus two",
        "Two plus two",
        "4",
    )


def test_the_chat_route_is_the_overrides_with_rays_request_model_and_no_self_parameter():
    """Ray Serve LLM's builder turns the ingress's methods into FastAPI routes and Serve's
    class-based view injects `self` into the routes it recognises as the class's (by __qualname__).
    Unrecognised, `self` became a required query parameter: every chat request was a 400."""
    from fastapi import FastAPI
    from fastapi.routing import APIRoute
    from ray.llm._internal.serve.core.ingress.ingress import make_fastapi_ingress
    from ray.serve.llm.ingress import OpenAiIngress

    app = FastAPI()
    make_fastapi_ingress(serve_app.BearerOpenAiIngress, app=app)

    def routes(r):
        for x in r.routes:
            if isinstance(x, APIRoute):
                yield x
            elif hasattr(x, "routes"):
                yield from routes(x)

    (chat,) = [r for r in routes(app) if r.path == "/v1/chat/completions"]
    assert chat.endpoint.__qualname__ == "BearerOpenAiIngress.chat"
    assert [p.name for p in chat.dependant.query_params] == []
    assert [(p.name, p.field_info.annotation) for p in chat.dependant.body_params] == [
        ("body", OpenAiIngress.chat.__annotations__["body"])
    ]
