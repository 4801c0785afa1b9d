"""The gated ingress retries Serve's DeploymentUnavailableError before a stream's first item
(ray_cluster.serve_app.retry_unavailable): what a restarted Serve controller makes the ingress's
router raise for a few seconds (the fault suite's killed-controller case)."""

from __future__ import annotations

import asyncio

import pytest

from ray_cluster import serve_app

pytest.importorskip("ray.serve.llm")
from ray.serve._private.common import DeploymentID  # noqa: E402
from ray.serve.exceptions import DeploymentUnavailableError  # noqa: E402

TOKEN_ENV = "LLMF_TEST_UNAVAILABLE_TOKEN"
UNAVAILABLE = DeploymentUnavailableError(DeploymentID(name="LLMServer:org--m", app_name="llm"))


class Clock:
    """A fake monotonic clock that the fake sleep advances."""

    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def stream(fail_first: int, items: list, calls: list):
    """A call() that raises before its first item the first `fail_first` times."""

    def call():
        calls.append(1)

        async def gen():
            if len(calls) <= fail_first:
                raise UNAVAILABLE
            for i in items:
                yield i

        return gen()

    return call


async def collect(agen) -> list:
    return [x async for x in agen]


def test_unavailable_before_the_first_item_is_called_again_with_a_doubling_backoff():
    c, calls = Clock(), []
    out = asyncio.run(
        collect(
            serve_app.retry_unavailable(
                stream(3, ["a", "b"], calls),
                (DeploymentUnavailableError,),
                sleep=c.sleep,
                monotonic=c.monotonic,
            )
        )
    )
    assert out == ["a", "b"] and len(calls) == 4
    assert c.slept == [0.1, 0.2, 0.4]


def test_still_unavailable_after_the_budget_is_serves_own_error():
    c, calls = Clock(), []
    agen = serve_app.retry_unavailable(
        stream(10**6, ["a"], calls),
        (DeploymentUnavailableError,),
        budget_s=5,
        sleep=c.sleep,
        monotonic=c.monotonic,
    )
    with pytest.raises(DeploymentUnavailableError):
        asyncio.run(collect(agen))
    assert c.t <= 5 and max(c.slept) == serve_app.UNAVAILABLE_BACKOFF_S[1]
    assert len(calls) == len(c.slept) + 1


def test_an_error_after_the_first_item_or_of_another_kind_is_not_retried():
    calls: list = []

    def broken_midway():
        calls.append(1)

        async def gen():
            yield "a"
            raise UNAVAILABLE

        return gen()

    got: list = []

    async def run():
        async for x in serve_app.retry_unavailable(broken_midway, (DeploymentUnavailableError,)):
            got.append(x)

    with pytest.raises(DeploymentUnavailableError):
        asyncio.run(run())
    assert got == ["a"] and len(calls) == 1

    calls.clear()

    def other():
        calls.append(1)

        async def gen():
            raise ValueError("bad request")
            yield  # pragma: no cover - makes it a generator

        return gen()

    with pytest.raises(ValueError):
        asyncio.run(collect(serve_app.retry_unavailable(other, (DeploymentUnavailableError,))))
    assert len(calls) == 1


def test_the_gated_ingress_retries_rays_own_handle_call(monkeypatch):
    """Through Ray Serve LLM's own OpenAiIngress._get_response (model check, handle call),
    with the engine deployment's handle unavailable twice, then answering."""
    from ray.serve.llm.openai_api_models import CompletionRequest

    monkeypatch.setenv(TOKEN_ENV, "t")
    monkeypatch.setattr(serve_app, "UNAVAILABLE_BACKOFF_S", (0.001, 0.002))
    ing = serve_app.BearerOpenAiIngress({"org/m": None}, {"org/m": None}, api_token_env=TOKEN_ENV)
    calls: list = []
    answer = stream(2, ["chunk-1", "chunk-2"], calls)

    class Method:
        def remote(self, body, raw_request_info):
            assert body.model == "org/m"
            return answer()

    class Handle:
        completions = Method()

    ing._get_configured_serve_handle = lambda model_id: Handle()
    body = CompletionRequest(model="org/m", prompt="hi", stream=True)
    out = asyncio.run(collect(ing._get_response(body=body, call_method="completions")))
    assert out == ["chunk-1", "chunk-2"] and len(calls) == 3

    # an unknown model is the client's error: answered at once, never retried
    calls.clear()
    from fastapi import HTTPException

    with pytest.raises(HTTPException) as e:
        asyncio.run(
            collect(
                ing._get_response(
                    body=CompletionRequest(model="nope", prompt="hi"), call_method="completions"
                )
            )
        )
    assert e.value.status_code == 404 and calls == []
