"""Direct streaming (issue #29 point 3): the LLMServer replica's own vLLM app as the HTTP
ingress, with the bearer gate around it inside the replica (ray_cluster.serve_app).

First the pure parts (args, the rendered config, the gated class's hooks without a cluster),
then one real `llmfleet local up --hosts 2 -c llmfleet:directStreaming=true` cluster (`ray`
marker) driven through Serve's proxy: every route 401 in OpenAI's shape without the token, a
websocket refused, and with it real completions, chat and streams through the `openai` client.
"""

from __future__ import annotations

import asyncio
import json
import os

import httpx
import openai
import pytest
import yaml

from infra.local import hosts, layout, state
from infra.local.cluster import LocalError, UpOptions, check_direct
from infra.local.tiny_model import MODEL_ID
from infra.rayconf import serve_config as sc
from ray_cluster import serve_app
from ray_cluster.auth import TokenSourceError
from tests.ray_fixtures import local_subnet
from tests.test_local import ROOT, cli, free_port

ONE = [{"model_loading_config": {"model_id": "m", "model_source": "/x"}}]


# ---------------------------------------------------------------- args (pure)


def test_direct_args_bind_the_token_env_name_to_the_server_and_nothing_else(monkeypatch):
    monkeypatch.delenv(serve_app.DIRECT_STREAMING_ENV, raising=False)
    args = {"api_token_env": "TOK_1", "llm_configs": ONE, "direct_streaming": True}
    bind, serving = serve_app.parse_direct_args(args)
    assert bind == {"api_token_env": "TOK_1"} and serving == {"llm_configs": ONE}
    assert args["direct_streaming"] is True and serve_app.is_direct(args)  # the caller's args kept
    assert not serve_app.is_direct({"direct_streaming": "true"}) and not serve_app.is_direct(None)


@pytest.mark.parametrize(
    ("extra", "want"),
    [
        (
            {"schedule": "daily 08:00-18:00 UTC"},
            "schedule with direct_streaming: not allowed; the asleep 503",
        ),
        ({"activity_file": "/tmp/a"}, "activity_file with direct_streaming: not allowed; the engine replica"),
        (
            {"ingress_cls_config": {"ingress_cls": "a:B"}},
            "ingress_cls_config with direct_streaming: not allowed",
        ),
        (
            {"ingress_deployment_config": {"num_replicas": 2}},
            "ingress_deployment_config with direct_streaming",
        ),
        ({"llm_configs": ONE * 2}, "llm_configs with direct_streaming: 2 models; allowed: exactly one"),
        (
            {"llm_configs": "x.yaml"},
            "llm_configs with direct_streaming: 'x.yaml' models; allowed: exactly one",
        ),
        ({"direct_streaming": "yes"}, "direct_streaming = 'yes': allowed: true or false"),
        ({"api_token_env": "A B"}, "api_token_env = 'A B': allowed: an environment variable name"),
    ],
)
def test_direct_args_refuse_what_the_engines_app_cannot_honour_in_one_line(monkeypatch, extra, want):
    monkeypatch.delenv(serve_app.DIRECT_STREAMING_ENV, raising=False)
    args = {"api_token_env": "T", "llm_configs": ONE, "direct_streaming": True, **extra}
    with pytest.raises(serve_app.AppArgsError) as e:
        serve_app.parse_direct_args(args)
    assert str(e.value).startswith("build_app args: ") and want in str(e.value) and "\n" not in str(e.value)


def test_the_ingress_parser_refuses_the_direct_flag_and_rays_own_switch(monkeypatch):
    monkeypatch.delenv(serve_app.DIRECT_STREAMING_ENV, raising=False)
    with pytest.raises(
        serve_app.AppArgsError, match="direct_streaming = True: build it with parse_direct_args"
    ):
        serve_app.parse_args({"api_token_env": "T", "llm_configs": ONE, "direct_streaming": True})
    # Ray's own switch stays refused on both paths: its builder needs HAProxy and skips any ingress
    monkeypatch.setenv(serve_app.DIRECT_STREAMING_ENV, "1")
    for parse in (serve_app.parse_args, serve_app.parse_direct_args):
        with pytest.raises(serve_app.AppArgsError, match="no bearer gate; allowed: unset or 0"):
            parse(
                {
                    "api_token_env": "T",
                    "llm_configs": ONE,
                    "direct_streaming": parse is serve_app.parse_direct_args,
                }
            )


def _inputs(**kw) -> sc.ServeInputs:
    base = dict(
        model_id="m", model_source="/models/m", tensor_parallel_size=1, pipeline_parallel_size=1,
        max_model_len=1024, device="cpu",
    )  # fmt: skip
    return sc.ServeInputs(**{**base, **kw})


def test_the_rendered_direct_app_is_the_llm_config_the_token_env_and_the_flag():
    ingress = sc.render_serve_config(_inputs())["applications"][0]["args"]
    direct = sc.render_serve_config(_inputs(direct_streaming=True))["applications"][0]["args"]
    assert direct == {
        "llm_configs": ingress["llm_configs"],  # the same engine, server class and batching
        "api_token_env": sc.DEFAULT_TOKEN_ENV,
        "direct_streaming": True,
    }
    assert "direct_streaming" not in ingress and serve_app.is_direct(direct)


@pytest.mark.parametrize(
    ("kw", "want"),
    [
        ({"schedule": "daily 08:00-18:00 UTC"}, "schedule = 'daily 08:00-18:00 UTC' with direct_streaming"),
        (
            {"activity_file": "/run/a"},
            "activity_file = '/run/a' with direct_streaming: not allowed; idle stop",
        ),
        (
            {"ingress_options": {"num_replicas": 2}},
            "ingress_options = {'num_replicas': 2} with direct_streaming",
        ),
        ({"lora_config": {"dynamic_lora_loading_path": "/a"}}, "lora_config = "),
        ({"routing": "prefix", "replicas": 2}, "routing = 'prefix' with direct_streaming: not allowed"),
    ],
)
def test_serve_inputs_refuse_direct_streaming_with_what_only_the_ingress_does(kw, want):
    _inputs(**{k: v for k, v in kw.items() if k != "routing"}).check()  # fine without the flag
    with pytest.raises(sc.ServeConfigError) as e:
        _inputs(direct_streaming=True, **kw).check()
    assert str(e.value).startswith(want) and "\n" not in str(e.value)


def test_local_up_refuses_direct_streaming_with_lora_prefix_routing_or_ingress_options():
    ok = UpOptions(direct_streaming=True)
    check_direct(ok)
    for o, want in (
        (UpOptions(direct_streaming=True, lora=True), "--lora with llmfleet:directStreaming=true"),
        (
            UpOptions(direct_streaming=True, routing="prefix"),
            "--routing prefix with llmfleet:directStreaming",
        ),
        (
            UpOptions(direct_streaming=True, serve_options={"ingress": {"num_replicas": 2}}),
            "llmfleet:serveOptions.ingress.num_replicas with llmfleet:directStreaming=true: not allowed",
        ),
    ):
        with pytest.raises(LocalError) as e:
            check_direct(o)
        assert str(e.value).startswith(want), str(e.value)
    check_direct(UpOptions(lora=True, routing="prefix"))  # off: nothing refused


def test_local_up_takes_direct_streaming_as_a_json_boolean_only(capsys):
    import typer

    from infra.commands.local import DIRECT_KEY, _serving_options

    assert _serving_options([f"{DIRECT_KEY}=true"]) == {DIRECT_KEY: True}
    assert _serving_options([f"{DIRECT_KEY}=false", 'llmfleet:engineArgs={"a": 1}']) == {
        DIRECT_KEY: False,
        "llmfleet:engineArgs": {"a": 1},
    }
    for bad, want in (
        ("1", "= 1: allowed: true or false"),
        ("yes", "= 'yes': not valid JSON; allowed: true or false"),
    ):
        with pytest.raises(typer.Exit) as e:
            _serving_options([f"{DIRECT_KEY}={bad}"])
        assert e.value.exit_code == 2 and want in capsys.readouterr().err


# ---------------------------------------------------------------- the gated class (no cluster)


def _wrapped():
    """`serve.ingress()(LLMServer)` as build_app makes it, an instance without its constructor."""
    from ray import serve

    class Probe(serve.ingress()(serve_app.LLMServer)):
        def __del__(self):  # Serve's async one shuts the app's lifespan down: none started here
            pass

    return Probe.__new__(Probe)


def _app():
    from fastapi import FastAPI

    api = FastAPI()

    @api.get("/v1/models")
    async def models():
        return {"data": [{"id": "m"}]}

    return api


def test_the_server_gates_the_app_serve_hands_it_and_fails_closed_without_a_token(monkeypatch):
    from fastapi.testclient import TestClient

    s = _wrapped()
    with pytest.raises(RuntimeError, match="serves HTTP only behind the bearer gate"):
        s._set_asgi_app(_app())  # no token read: no app is served at all
    assert getattr(s, "_asgi_app", None) is None
    s._bearer_token = "tok-9"
    s._set_asgi_app(_app())
    assert isinstance(s._asgi_app, serve_app.BearerGate)
    client = TestClient(s._asgi_app)
    for path in ("/v1/models", "/docs", "/metrics", "/health", "/no/such/route"):
        r = client.get(path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
    ok = client.get("/v1/models", headers={"Authorization": "Bearer tok-9"})
    assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "m"
    # the OpenAI-shaped 404 is installed on the engine's app too
    nf = client.get("/no/such/route", headers={"Authorization": "Bearer tok-9"})
    assert nf.status_code == 404 and nf.json()["error"]["message"].endswith("GET /no/such/route")


def test_health_fails_when_the_gate_is_not_in_front_and_the_constructor_needs_the_token(monkeypatch):
    s = _wrapped()
    s._asgi_app = _app()  # as if a later Ray set the app without the hook
    with pytest.raises(RuntimeError, match="bearer gate is not in front of the engine's app"):
        asyncio.run(s.check_health())
    monkeypatch.delenv("LLMF_DIRECT_TEST_TOKEN", raising=False)
    with pytest.raises(TokenSourceError, match="'LLMF_DIRECT_TEST_TOKEN' is unset or empty"):
        asyncio.run(serve_app.LLMServer.__init__(s, None, api_token_env="LLMF_DIRECT_TEST_TOKEN"))


# ---------------------------------------------------------------- one real cluster


@pytest.fixture(scope="module")
def direct(tmp_path_factory):
    mode = layout.resolve_mode(os.environ.get("LLMFLEET_LOCAL_TEST_MODE", "auto"), ROOT)
    name = f"ds{os.getpid() % 100000}"
    subnet = local_subnet(name, mode == "netns")
    sd = tmp_path_factory.mktemp("ds-state")
    env = {state.STATE_DIR_ENV: str(sd), "LLMFLEET_DATA_DIR": str(tmp_path_factory.mktemp("ds-data"))}
    try:
        r = cli("up", "--name", name, "--hosts", "2", "--subnet", str(subnet), "--port", str(free_port()),
                "--mode", mode, "-c", "llmfleet:directStreaming=true", "--json", env=env, timeout=900)  # fmt: skip
        assert r.returncode == 0, f"local up failed: {r.stdout[-2000:]} {r.stderr[-2000:]}"
        yield {"name": name, "env": env, "doc": json.loads(r.stdout), "st": state.load_state(name, sd)}
    finally:
        cli("down", "--name", name, env=env, timeout=120)
        hosts.teardown(hosts.prefix_for(name), cluster=name, state_dir=sd)


@pytest.mark.ray
def test_the_app_is_the_llm_server_alone_as_the_ingress(direct):
    from ray_cluster import serve_rest

    st = direct["st"]
    args = yaml.safe_load(open(st.serve_config))["applications"][0]["args"]
    assert serve_app.is_direct(args) and direct["doc"]["token"] not in json.dumps(args)
    apps = serve_rest.serve_document(f"http://{st.hosts[0].ip}:{st.ports.dashboard}")["applications"]
    [app] = apps.values()
    assert app["status"] == "RUNNING" and list(app["deployments"]) == [
        "LLMServer:" + MODEL_ID.replace("/", "--")
    ]


ROUTES = [
    ("POST", "/v1/completions", {"model": MODEL_ID, "prompt": "x", "max_tokens": 2}),
    ("POST", "/v1/chat/completions", {"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}]}),
    ("GET", "/v1/models", None),
    ("GET", "/metrics", None),
    ("GET", "/docs", None),
    ("GET", "/health", None),
    ("GET", "/no/such/route", None),
]


@pytest.mark.ray
def test_every_route_is_401_in_openais_shape_without_the_token(direct):
    base = direct["doc"]["endpoint"].removesuffix("/v1")
    for method, path, body in ROUTES:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": direct["doc"]["token"]}):
            r = httpx.request(method, base + path, json=body, headers=headers, timeout=30)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json() == json.loads(serve_app._OPENAI_401), (method, path)
            assert r.headers["www-authenticate"] == "Bearer"
    bad = openai.OpenAI(base_url=direct["doc"]["endpoint"], api_key="wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.completions.create(model=MODEL_ID, prompt="hi", max_tokens=2)
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"


@pytest.mark.ray
def test_a_websocket_without_the_token_is_refused(direct):
    import websockets
    from websockets.exceptions import InvalidStatus

    ws = direct["doc"]["endpoint"].replace("http://", "ws://").removesuffix("/v1") + "/v1/realtime"

    async def connect(headers):
        async with websockets.connect(ws, additional_headers=headers, open_timeout=30) as c:
            await c.recv()

    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(InvalidStatus) as e:  # the handshake is never accepted
            asyncio.run(connect(headers))
        assert e.value.response.status_code == 403, headers


@pytest.mark.ray
def test_with_the_token_the_openai_client_gets_completions_chat_and_streams(direct):
    c = openai.OpenAI(
        base_url=direct["doc"]["endpoint"], api_key=direct["doc"]["token"], max_retries=0, timeout=60
    )
    assert [m.id for m in c.models.list().data] == [MODEL_ID]
    r = c.completions.create(model=MODEL_ID, prompt="Ray Serve", max_tokens=5, temperature=0)
    assert r.object == "text_completion" and 1 <= r.usage.completion_tokens <= 5 and r.choices[0].text
    chunks = list(
        c.completions.create(model=MODEL_ID, prompt="Ray Serve", max_tokens=5, temperature=0, stream=True)
    )
    assert len([k for k in chunks if k.choices and k.choices[0].text]) >= 2  # streamed token by token
    assert (
        "".join(k.choices[0].text for k in chunks if k.choices) == r.choices[0].text
    )  # greedy: the same text
    msgs = [{"role": "user", "content": "What does a Ray head node do?"}]
    chat = c.chat.completions.create(model=MODEL_ID, messages=msgs, max_tokens=6, temperature=0)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    stream = list(c.chat.completions.create(model=MODEL_ID, messages=msgs, max_tokens=6, stream=True))
    assert stream and all(k.object == "chat.completion.chunk" for k in stream)


@pytest.mark.ray
def test_what_the_direct_path_answers_differently_from_the_ingress(direct):
    """Recorded, not wished: an unknown model is vLLM's own 404 (OpenAI-shaped, but without
    the served ids the ingress names), and a chat answer carries vLLM's `reasoning` only."""
    c = openai.OpenAI(
        base_url=direct["doc"]["endpoint"], api_key=direct["doc"]["token"], max_retries=0, timeout=60
    )
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="deepseek-r1", prompt="hi", max_tokens=2)
    assert e.value.status_code == 404 and "deepseek-r1" in e.value.body["message"]
    assert f"served models: {MODEL_ID}" not in e.value.body["message"]
    msgs = [{"role": "user", "content": "hi"}]
    raw = c.chat.completions.with_raw_response.create(
        model=MODEL_ID, messages=msgs, max_tokens=8, temperature=0
    )
    msg = json.loads(raw.text)["choices"][0]["message"]
    assert "reasoning" in msg and serve_app.REASONING_CONTENT not in msg
