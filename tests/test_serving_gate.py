"""The endpoint while the workers sleep: 503 + Retry-After + an OpenAI error body, read by the
official openai client through the real gates (ray_cluster/serve_app.py), in-process, no Ray."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import httpx
import openai
import pytest

from ray_cluster import serve_app
from ray_cluster.schedule import parse_schedule

TOKEN = "tok-123"
SUNDAY_NIGHT = datetime(2026, 12, 6, 22, tzinfo=UTC)


def _engine_app(calls: list[str]):
    from fastapi import FastAPI

    api = FastAPI()

    @api.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "x"}]}

    @api.post("/v1/completions")
    async def completions():
        calls.append("completion")
        return {
            "id": "c",
            "object": "text_completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "text": "hi", "finish_reason": "stop", "logprobs": None}],
        }

    return api


def _client(state: str | list[str], schedule: str | None = None, calls: list[str] | None = None, ttl=0.0):
    states = [state] if isinstance(state, str) else list(state)
    looks: list[int] = []

    async def look() -> str:
        looks.append(1)
        return states.pop(0) if len(states) > 1 else states[0]

    gate = serve_app.ServingGate(
        _engine_app(calls if calls is not None else []),
        look,
        parse_schedule(schedule) if schedule else None,
        ttl=ttl,
        clock=lambda: SUNDAY_NIGHT,
    )
    app = serve_app.BearerGate(gate, TOKEN)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://head")
    return openai.AsyncOpenAI(
        base_url="http://head/v1", api_key=TOKEN, http_client=http, max_retries=0
    ), looks


def _complete(client):
    return asyncio.run(client.completions.create(model="m", prompt="hello", max_tokens=4))


def test_asleep_outside_the_schedule_says_when_it_serves_again():
    client, _ = _client(serve_app.ASLEEP, "mon-fri 08:00-20:00 Europe/Berlin")
    with pytest.raises(openai.InternalServerError) as e:
        _complete(client)
    r = e.value.response
    assert r.status_code == 503 and r.headers["retry-after"] == str(9 * 3600)  # Monday 07:00 UTC
    err = e.value.body
    assert err["code"] == "endpoint_asleep" and err["type"] == "service_unavailable" and err["param"] is None
    assert (
        "serves again at 2026-12-07T07:00:00Z" in err["message"] and "mon-fri 08:00-20:00" in err["message"]
    )


def test_asleep_without_a_schedule_names_the_wake_command():
    client, _ = _client(serve_app.ASLEEP)
    with pytest.raises(openai.InternalServerError) as e:
        _complete(client)
    assert e.value.response.headers["retry-after"] == str(serve_app.RETRY_ASLEEP_S)
    assert "llmfleet wake --stack" in e.value.body["message"]


def test_waking_is_a_short_retry_and_serving_passes_through():
    calls: list[str] = []
    client, _ = _client([serve_app.WAKING, serve_app.SERVING], calls=calls)
    with pytest.raises(openai.InternalServerError) as e:
        _complete(client)
    assert e.value.body["code"] == "endpoint_waking" and e.value.response.headers["retry-after"] == "60"
    assert calls == []  # the engine never saw it
    assert _complete(client).choices[0].text == "hi" and calls == ["completion"]


def test_the_model_list_answers_while_asleep_and_strangers_learn_nothing():
    client, looks = _client(serve_app.ASLEEP)

    async def listed():
        return await client.models.list()

    models = asyncio.run(listed())
    assert [m.id for m in models.data] == ["m"] and looks == []  # no look at the cluster for a GET
    stranger = openai.AsyncOpenAI(
        base_url="http://head/v1", api_key="wrong", http_client=client._client, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):  # 401 before 503: the token gate is outside
        _complete(stranger)


def test_one_look_at_the_cluster_serves_many_requests_within_the_ttl():
    calls: list[str] = []
    client, looks = _client(serve_app.SERVING, calls=calls, ttl=60.0)

    async def many():
        for _ in range(5):
            await client.completions.create(model="m", prompt="x", max_tokens=1)

    asyncio.run(many())
    assert len(calls) == 5 and len(looks) == 1


def test_a_failed_look_lets_the_request_through():
    async def broken() -> str:
        raise RuntimeError("GCS restarting")

    sent: list[dict] = []

    async def app(scope, receive, send):
        sent.append({"app": True})

    async def send(m):
        sent.append(m)

    gate = serve_app.ServingGate(app, broken)
    asyncio.run(gate({"type": "http", "method": "POST", "path": "/v1/chat/completions"}, None, send))
    assert sent == [{"app": True}]


@pytest.mark.parametrize(
    ("nodes", "running", "state"),
    [
        ([{"Alive": True, "Resources": {"CPU": 2, "node:__internal_head__": 1}}], None, "asleep"),
        (
            [
                {"Alive": True, "Resources": {"CPU": 2}},
                {"Alive": False, "Resources": {"llmfleet_cpu_worker": 1}},
            ],
            1,
            "asleep",
        ),
        ([{"Alive": True, "Resources": {"llmfleet_cpu_worker": 1}}], 0, "waking"),
        ([{"Alive": True, "Resources": {"GPU": 8, "gpu_model:L40S": 8}}], 1, "serving"),
        ([{"Alive": True, "Resources": {"gpu_model:L20": 8}}], None, "serving"),  # Serve's status unknown
    ],
)
def test_cluster_state_from_ray_nodes_and_engine_replicas(nodes, running, state):
    assert serve_app.cluster_state(nodes, running) == state


def test_build_app_args_carry_a_checked_schedule():
    _, args = serve_app.parse_args({"api_token_env": "T", "schedule": "mon-fri 08:00-20:00   UTC"})
    assert args["ingress_cls_config"]["ingress_extra_kwargs"]["schedule"] == "mon-fri 08:00-20:00 UTC"
    with pytest.raises(serve_app.AppArgsError, match=r"^build_app args: schedule = 'mon 8-9 UTC': window"):
        serve_app.parse_args({"api_token_env": "T", "schedule": "mon 8-9 UTC"})


def test_the_rendered_serve_config_hands_the_schedule_to_the_gate():
    from infra.rayconf.serving import render_for_plan
    from infra.stack.config import load_stack_config
    from infra.stack.resolve import resolve

    cfg = load_stack_config({"llmfleet:schedule": "mon-fri 08:00-20:00 Europe/Berlin"}, "prod")
    app = render_for_plan(cfg, resolve(cfg).plan)["applications"][0]
    assert app["args"]["schedule"] == "mon-fri 08:00-20:00 Europe/Berlin"
    _, args = serve_app.parse_args(json.loads(json.dumps(app["args"])))
    assert args["ingress_cls_config"]["ingress_extra_kwargs"]["schedule"] == cfg.schedule


def test_idle_stop_counts_completions_served_not_requests():
    """llmfleet:idleStopMinutes means no completion served: the gate marks activity on an engine
    route's 2xx answer and on every chunk of it (a long stream keeps the workers awake while it
    runs), never on a 401 flood, an unknown model's 404, a 503 while asleep or the model list."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import StreamingResponse

    served: list[int] = []
    seen_mid_stream: list[int] = []
    api = FastAPI()

    @api.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "x"}]}

    @api.post("/v1/completions")
    async def completions(body: dict):
        if body["model"] != "m":
            raise HTTPException(404, "model not found")
        if not body.get("stream"):
            return {"id": "c", "object": "text_completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "text": "hi", "finish_reason": "stop", "logprobs": None}]}  # fmt: skip

        async def chunks():
            for i in range(5):
                seen_mid_stream.append(len(served))  # what the gate had marked before this chunk
                doc = {"id": "c", "object": "text_completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "text": f"t{i}", "finish_reason": None, "logprobs": None}]}  # fmt: skip
                yield f"data: {json.dumps(doc)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    states = [serve_app.SERVING]
    gate = serve_app.ServingGate(api, _states(states), ttl=0.0, on_served=lambda: served.append(1))
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=serve_app.BearerGate(gate, TOKEN)), base_url="http://head"
    )
    client = openai.AsyncOpenAI(base_url="http://head/v1", api_key=TOKEN, http_client=http, max_retries=0)
    stranger = openai.AsyncOpenAI(base_url="http://head/v1", api_key="wrong", http_client=http, max_retries=0)

    async def run():
        for _ in range(20):
            with pytest.raises(openai.AuthenticationError):
                await stranger.completions.create(model="m", prompt="x", max_tokens=1)
        with pytest.raises(openai.NotFoundError):
            await client.completions.create(model="nope", prompt="x", max_tokens=1)
        assert [m.id for m in (await client.models.list()).data] == ["m"]
        assert served == []  # none of that is a completion served
        states[0] = serve_app.ASLEEP
        with pytest.raises(openai.InternalServerError):
            await client.completions.create(model="m", prompt="x", max_tokens=1)
        assert served == []
        states[0] = serve_app.SERVING
        assert (await client.completions.create(model="m", prompt="x", max_tokens=1)).choices[0].text == "hi"
        assert served  # the answer counted
        n = len(served)
        text = [
            c.choices[0].text
            async for c in await client.completions.create(model="m", prompt="x", stream=True)
        ]
        assert text == [f"t{i}" for i in range(5)]
        # marked when the answer started and again with every chunk while the stream ran
        assert seen_mid_stream == sorted(set(seen_mid_stream)) and seen_mid_stream[0] > n
        assert len(served) >= n + 1 + 5

    asyncio.run(run())


def _states(states: list[str]):
    async def look() -> str:
        return states[0]

    return look
