"""The CPU engine as a real Ray Serve app, driven over HTTP with the official openai client."""

import asyncio
import json
import os
import socket

import httpx
import openai
import pytest

from ray_cluster.engines.cpu import parse_args, placement_bundles
from ray_cluster.engines.decoder import BatchedDecoder, GenRequest
from ray_cluster.engines.scheduler import Scheduler
from ray_cluster.tiny_model import MODEL_ID, ensure_tiny_model

pytestmark = pytest.mark.ray

TOKEN_ENV = "LLMFLEET_TEST_CPU_ENGINE_TOKEN"
TOKEN = "test-token-7f3a"
MAX_LEN = 256
APP = "llm"

# The Serve config form `llmfleet local up` deploys; the token is only named, never included.
SERVE_CONFIG = {
    "applications": [
        {
            "name": APP,
            "route_prefix": "/",
            "import_path": "ray_cluster.engines.cpu:build_app",
            "args": {
                "model_id": MODEL_ID,
                "max_model_len": MAX_LEN,
                "api_token_env": TOKEN_ENV,
                "tensor_parallel_size": 2,
                "pipeline_parallel_size": 1,
                "gpu_model": "L20",
                "max_batch_size": 16,
                "batch_wait_timeout_s": 0.02,
            },
        }
    ]
}


# ---- pure parts (no Ray) ----------------------------------------------------------------------


def test_placement_bundles_match_production_shape():
    assert placement_bundles(2, 2, "L20", 1) == [
        {"GPU": 1, "gpu_model:L20": 1, "CPU": 1},
        {"GPU": 1, "gpu_model:L20": 1},
        {"GPU": 1, "gpu_model:L20": 1},
        {"GPU": 1, "gpu_model:L20": 1},
    ]
    assert placement_bundles(1, 1, None, 0) == [{"GPU": 1}]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({"api_token_env": "X", "max_batch_size": 0}, "'max_batch_size' = 0"),
        ({"api_token_env": "X", "tensor_parallel_size": "two"}, "'tensor_parallel_size' = 'two'"),
        ({"api_token_env": "X", "gpu_model": "L 20"}, "'gpu_model' = 'L 20'"),
        ({"api_token_env": "X", "bogus": 1}, "'bogus'"),
        ({"api_token": "secret"}, "'api_token' is not allowed"),
        ({}, "api_token_env or api_token_file"),
        ({"api_token_env": "X", "api_token_file": "/f"}, "only one of"),
    ],
)
def test_bad_args_one_line_error_naming_the_key(args, needle):
    with pytest.raises(ValueError) as e:
        parse_args(args)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> BatchedDecoder:
    return BatchedDecoder(ensure_tiny_model(tmp_path_factory.mktemp("dec")))


def greedy(decoder, prompt: str, n: int) -> GenRequest:
    return GenRequest(decoder.tokenizer(prompt)["input_ids"], n, temperature=0)


def test_late_requests_join_the_running_batch_with_unchanged_output(decoder):
    early = [greedy(decoder, "A GPU cluster is a group of hosts", 64)]
    late = [greedy(decoder, "hi", 10), greedy(decoder, "Memory bandwidth sets the speed of decoding", 6)]
    expected = [decoder.generate(r) for r in early + late]

    async def run():
        sched = Scheduler(decoder, max_rows=8)

        async def collect(reqs, delay_steps=0):
            for _ in range(delay_steps):
                await asyncio.sleep(0.01)
            texts = [""] * len(reqs)
            finals = [None] * len(reqs)
            async for step in sched.stream(reqs):
                for i, o in enumerate(step):
                    if o is not None:
                        texts[i] += o.text
                        finals[i] = finals[i] or (o.finish_reason and (o.completion_tokens, o.finish_reason))
            return texts, finals

        a, b = await asyncio.gather(collect(early), collect(late, delay_steps=3))
        return a, b, sched.stats()

    (ta, fa), (tb, fb), stats = asyncio.run(run())
    assert ta + tb == [e.text for e in expected]
    assert fa + fb == [(e.completion_tokens, e.finish_reason) for e in expected]
    assert stats["group_sizes"] == [1, 2] and stats["max_step_batch"] == 3  # merged, not queued behind


def test_model_error_reaches_every_waiting_caller(decoder):
    class Broken:
        def start(self, reqs, tags):
            raise RuntimeError("boom")

    async def run():
        sched = Scheduler(Broken(), max_rows=4)

        async def one():
            async for _ in sched.stream([greedy(decoder, "x", 3)]):
                pass

        return await asyncio.wait_for(asyncio.gather(one(), one(), return_exceptions=True), 10)

    assert [str(e) for e in asyncio.run(run())] == ["boom", "boom"]


# ---- the running app ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One single-node Ray with 2 logical L20s; the app deployed from the Serve config dict."""
    import ray
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    data_dir = tmp_path_factory.mktemp("llmfleet-data")
    env = {TOKEN_ENV: TOKEN, "LLMFLEET_DATA_DIR": str(data_dir)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # replicas inherit it from the raylet started below
    port = free_port()
    try:
        ray.init(
            address="local",  # a new private cluster, never one already running here
            num_cpus=2,
            num_gpus=2,
            resources={"gpu_model:L20": 2},
            object_store_memory=100 * 1024 * 1024,
            include_dashboard=False,
            log_to_driver=False,
        )
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # What `serve deploy` / the dashboard's REST API do: the controller imports import_path
        # and calls the builder with args on the cluster, not in this process.
        client = serve.context._get_global_client()
        client.deploy_apps(ServeDeploySchema.model_validate(SERVE_CONFIG))
        client._wait_for_application_running(APP, timeout_s=180)
        yield {
            "base": f"http://127.0.0.1:{port}",
            "model_dir": ensure_tiny_model(data_dir),
            "engine": serve.get_deployment_handle("CpuEngine", APP),
            "ray": ray,
        }
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served["base"] + "/v1", api_key=TOKEN, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tokenizer(served):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(served["model_dir"])


def chat_prompt_tokens(tokenizer, messages) -> int:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a GPU cluster?"}]


def test_placement_group_really_consumes_the_gpus(served):
    avail = served["ray"].available_resources()
    assert avail.get("GPU", 0) == 0 and avail.get("gpu_model:L20", 0) == 0
    assert any(k.startswith("GPU_group_") for k in avail)  # held by the engine's placement group


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert models.data[0].object == "model"


def test_chat_completion_shape_usage_and_max_tokens(client, tokenizer):
    r = client.chat.completions.create(model=MODEL_ID, messages=MSGS, max_tokens=7, temperature=0)
    assert r.object == "chat.completion" and r.model == MODEL_ID and r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert r.usage.prompt_tokens == chat_prompt_tokens(tokenizer, MSGS)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert 1 <= r.usage.completion_tokens <= 7
    assert choice.finish_reason == ("length" if r.usage.completion_tokens == 7 else "stop")


def test_streaming_chat_matches_non_streaming(client, tokenizer):
    kwargs = dict(model=MODEL_ID, messages=MSGS, max_tokens=9, temperature=0)
    full = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and not chunks[-1].choices
    assert usage_chunks[0].usage.model_dump() == full.usage.model_dump()


def test_raw_sse_framing_ends_with_done(served):
    body = {"model": MODEL_ID, "messages": MSGS, "max_tokens": 3, "stream": True}
    with httpx.stream(
        "POST",
        served["base"] + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(e[6:]) for e in events[:-1])  # no include_usage asked


def test_completions_plain_and_streaming(client, tokenizer):
    prompt = "Pipeline parallelism splits the model"
    n_prompt = len(tokenizer(prompt)["input_ids"])
    r = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.usage.prompt_tokens == n_prompt and r.usage.completion_tokens <= 6
    assert r.choices[0].finish_reason == ("length" if r.usage.completion_tokens == 6 else "stop")
    chunks = list(
        client.completions.create(
            model=MODEL_ID,
            prompt=prompt,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    # A prompt of token ids is accepted too.
    by_ids = client.completions.create(
        model=MODEL_ID, prompt=tokenizer(prompt)["input_ids"], max_tokens=6, temperature=0
    )
    assert by_ids.choices[0].text == r.choices[0].text


def test_stop_strings_truncate_with_finish_stop(client):
    kwargs = dict(model=MODEL_ID, prompt="Memory bandwidth sets", max_tokens=24, temperature=0)
    full = client.completions.create(**kwargs).choices[0].text
    stop = full[8:11]
    expect = full[: full.find(stop)]
    r = client.completions.create(**kwargs, stop=[stop, "never-appears-zz"])
    assert r.choices[0].text == expect and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 24
    streamed = list(client.completions.create(**kwargs, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expect
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_seed_makes_sampling_deterministic(client):
    kwargs = dict(model=MODEL_ID, messages=MSGS, max_tokens=16, temperature=1.0, top_p=0.9)
    a = client.chat.completions.create(**kwargs, seed=1234).choices[0].message.content
    b = client.chat.completions.create(**kwargs, seed=1234).choices[0].message.content
    c = client.chat.completions.create(**kwargs, seed=4321).choices[0].message.content
    assert a == b and a != c


# ---- auth and bad requests ----------------------------------------------------------------------


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None, in_message: str = ""):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and err["type"]
    if code:
        assert err["code"] == code
    assert in_message in err["message"]
    return err


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer"])
def test_missing_or_wrong_token_is_401(served, header):
    headers = {"Authorization": header} if header else {}
    for method, path in [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
    ]:
        r = httpx.request(method, served["base"] + path, headers=headers, content=b"{not json")
        assert_openai_error(r, 401, "invalid_api_key")


def test_openai_client_with_wrong_key_raises_authentication_error(served):
    bad = openai.OpenAI(base_url=served["base"] + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def post(served, path: str, body) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        served["base"] + path,
        content=content,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        timeout=30,
    )


LONG = " ".join(["tensor parallelism across hosts"] * 80)


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "needle"),
    [
        ("/v1/chat/completions", b'{"model": "x", "messages": [', 400, "invalid_json", "not valid JSON"),
        ("/v1/chat/completions", b"[1, 2]", 400, "invalid_json", "JSON object"),
        ("/v1/chat/completions", {"model": MODEL_ID}, 400, "missing_field", "messages"),
        ("/v1/chat/completions", {"model": MODEL_ID, "messages": []}, 400, None, "messages"),
        ("/v1/chat/completions", {"model": "gpt-4", "messages": MSGS}, 404, "model_not_found", "gpt-4"),
        ("/v1/completions", {"model": "other/model", "prompt": "a"}, 404, "model_not_found", "other/model"),
        (
            "/v1/chat/completions",
            {"model": MODEL_ID, "messages": MSGS, "max_tokens": 0},
            400,
            None,
            "max_tokens",
        ),
        ("/v1/completions", {"model": MODEL_ID, "prompt": "a", "max_tokens": -5}, 400, None, "max_tokens"),
        ("/v1/chat/completions", {"model": MODEL_ID, "messages": MSGS, "n": 2}, 400, None, "n=2"),
        (
            "/v1/chat/completions",
            {"model": MODEL_ID, "messages": MSGS, "temperature": -1},
            400,
            None,
            "temperature",
        ),
        (
            "/v1/completions",
            {"model": MODEL_ID, "prompt": LONG},
            400,
            "context_length_exceeded",
            f"{MAX_LEN} tokens",
        ),
        (
            "/v1/completions",
            {"model": MODEL_ID, "prompt": "a", "max_tokens": MAX_LEN},
            400,
            "context_length_exceeded",
            f"({2} in the prompt, {MAX_LEN} for the completion)",
        ),
        ("/v1/completions", {"model": MODEL_ID, "prompt": [99999]}, 400, None, "token ids"),
    ],
)
def test_bad_requests_get_openai_4xx(served, path, body, status, code, needle):
    assert_openai_error(post(served, path, body), status, code, needle)


def test_prompt_over_max_model_len_names_the_counts(served, tokenizer):
    n = len(tokenizer(LONG)["input_ids"])
    assert n > MAX_LEN
    err = assert_openai_error(post(served, "/v1/completions", {"model": MODEL_ID, "prompt": LONG}), 400)
    assert f"{n} tokens" in err["message"]


def test_unknown_route_is_openai_404(served):
    assert_openai_error(
        httpx.get(served["base"] + "/v1/nope", headers={"Authorization": f"Bearer {TOKEN}"}), 404
    )


def test_default_max_tokens_fills_the_context(client, tokenizer):
    # No max_tokens on chat: like vLLM, the rest of the context; never more than max_model_len.
    r = client.chat.completions.create(model=MODEL_ID, messages=MSGS, temperature=0)
    assert r.usage.total_tokens <= MAX_LEN
    if r.choices[0].finish_reason == "length":
        assert r.usage.total_tokens == MAX_LEN


# ---- concurrency and batching -------------------------------------------------------------------


def engine_stats(served) -> dict:
    return served["engine"].stats.remote().result()


def batching_since(served, before: dict) -> tuple[list[int], dict[int, int]]:
    """(@serve.batch group sizes, {rows per decode forward: count}) since `before`."""
    now = engine_stats(served)
    groups = now["group_sizes"][len(before["group_sizes"]) :]
    old = {int(k): v for k, v in before["step_batch_sizes"].items()}
    steps = {int(k): v - old.get(int(k), 0) for k, v in now["step_batch_sizes"].items()}
    return groups, {k: v for k, v in steps.items() if v > 0}


def test_64_concurrent_requests_all_succeed_and_are_batched(served):
    before = engine_stats(served)

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=served["base"] + "/v1", api_key=TOKEN, max_retries=0, timeout=60
        ) as aclient:

            async def one(i: int) -> str:
                if i % 2:
                    r = await aclient.completions.create(
                        model=MODEL_ID, prompt=f"GPU {i}", max_tokens=8, seed=i
                    )
                    assert r.usage.completion_tokens <= 8
                    return r.choices[0].finish_reason
                stream = await aclient.chat.completions.create(
                    model=MODEL_ID,
                    messages=[{"role": "user", "content": f"host {i}"}],
                    max_tokens=8,
                    seed=i,
                    stream=True,
                )
                finish = None
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].finish_reason:
                        finish = chunk.choices[0].finish_reason
                return finish

            return await asyncio.gather(*(one(i) for i in range(64)))

    finishes = asyncio.run(asyncio.wait_for(run(), timeout=90))
    assert len(finishes) == 64 and all(f in ("length", "stop") for f in finishes)
    groups, steps = batching_since(served, before)
    assert sum(groups) == 64  # every request went through @serve.batch exactly once
    assert max(groups) > 1 and len(groups) < 64, groups
    # Decode forwards ran many rows at once, never one request at a time throughout.
    rows = sum(k * v for k, v in steps.items())
    assert max(steps) >= 8 and rows / sum(steps.values()) > 4, steps


def test_concurrent_streams_share_a_batch(served):
    before = engine_stats(served)

    def stream_one(i: int) -> str:
        body = {"model": MODEL_ID, "prompt": f"stream {i}", "max_tokens": 32, "stream": True, "seed": i}
        with httpx.stream(
            "POST",
            served["base"] + "/v1/completions",
            json=body,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        ) as r:
            return r.read().decode()

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(stream_one, range(8)))
    assert all(o.rstrip().endswith("data: [DONE]") for o in outs)
    groups, steps = batching_since(served, before)
    assert sum(groups) == 8 and max(steps) > 1, (groups, steps)
