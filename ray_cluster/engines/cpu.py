"""CPU serving engine: a Ray Serve app with the production OpenAI interface.

Shape as in production (Ray Serve LLM's OpenAI app): an ingress deployment (FastAPI) does auth,
validation, tokenization and the OpenAI protocol; an engine deployment holds the model and
reserves the production placement group (TP x PP bundles of one GPU each, PACK), so local runs
really consume the cluster's logical GPUs. The model itself runs on CPU in the engine replica.

Serve config form::

    applications:
      - name: llm
        route_prefix: /
        import_path: ray_cluster.engines.cpu:build_app
        args: {model_id: llmfleet/tiny-deepseek-v3, api_token_env: LLMFLEET_API_TOKEN, ...}

Concurrent requests, streaming or not, are batched: ``@serve.batch`` groups arrivals, and every
group joins one shared step-wise decode loop (``scheduler.py``): one left-padded prefill per group,
then one batched forward per decode step for all running requests; late groups merge into the
running batch (continuous batching).

Length limits follow vLLM: a prompt of max_model_len tokens or more, or prompt + max_tokens over
max_model_len, is a 400 (never silently clamped); without max_tokens a chat request may use the
rest of the context. /v1/completions defaults to max_tokens=16 as OpenAI does.
"""

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from ray_cluster import openai_api as oa
from ray_cluster.auth import bearer_ok, load_token
from ray_cluster.engines.decoder import BatchedDecoder, GenRequest
from ray_cluster.engines.scheduler import Scheduler
from ray_cluster.tiny_model import MODEL_ID, ensure_tiny_model, ensure_tiny_model_at, is_tiny_model_id


class EngineArgs(BaseModel):
    """The `args` of the Serve application (the contract with serve configs and `local up`)."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = MODEL_ID
    model_source: str | None = None  # local dir; created there if it is the tiny model and missing
    model_seed: int = 0  # tiny model only
    max_model_len: int = Field(default=2048, ge=8)
    api_token_env: str | None = None  # name of the env var holding the token (never the token)
    api_token_file: str | None = None
    allow_unauthenticated: bool = False
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    pipeline_parallel_size: int = Field(default=1, ge=1, le=64)
    gpu_model: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    max_batch_size: int = Field(default=16, ge=1, le=256)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0.0, le=10.0)
    num_replicas: int = Field(default=1, ge=1, le=64)
    engine_num_cpus: float = Field(default=1.0, ge=0.0)
    torch_threads: int = Field(default=1, ge=1, le=64)
    stream_interval_ms: float = Field(default=20.0, ge=0.0, le=1000.0)

    @model_validator(mode="after")
    def _token_source(self) -> "EngineArgs":
        if self.api_token_env and self.api_token_file:
            raise ValueError("set only one of api_token_env and api_token_file")
        if not (self.api_token_env or self.api_token_file or self.allow_unauthenticated):
            raise ValueError(
                "set api_token_env or api_token_file (or allow_unauthenticated: true for local play)"
            )
        return self


def parse_args(args: dict[str, Any]) -> EngineArgs:
    """Validate build_app args; one-line ValueError naming the key, the value and what is allowed."""
    if "api_token" in (args or {}):
        raise ValueError(
            "build_app args: key 'api_token' is not allowed; put the token in an env var and pass api_token_env"
        )
    try:
        return EngineArgs.model_validate(args or {})
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "args"
        value = f" = {err['input']!r}" if err.get("type") != "missing" and key != "args" else ""
        raise ValueError(f"build_app args: key {key!r}{value}: {err['msg']}") from None


def placement_bundles(tp: int, pp: int, gpu_model: str | None, replica_cpus: float) -> list[dict[str, float]]:
    """TP x PP one-GPU bundles (plus gpu_model:<X>), with the replica actor's CPUs in bundle 0 as
    Ray Serve LLM does (the replica actor is scheduled into the first bundle)."""
    bundle: dict[str, float] = {"GPU": 1}
    if gpu_model:
        bundle[f"gpu_model:{gpu_model}"] = 1
    bundles = [dict(bundle) for _ in range(tp * pp)]
    if replica_cpus:
        bundles[0]["CPU"] = replica_cpus
    return bundles


def resolve_model_dir(a: EngineArgs) -> Path:
    """Where the weights are on this node; builds the tiny model when it is the one asked for."""
    if a.model_source:
        path = Path(a.model_source).expanduser()
        if path.is_dir():
            return path
        if is_tiny_model_id(a.model_id):
            return ensure_tiny_model_at(path, a.model_seed)
        raise FileNotFoundError(f"model_source: {str(path)!r} is not a directory on this node")
    if is_tiny_model_id(a.model_id):
        return ensure_tiny_model(None, a.model_seed)
    raise ValueError(f"model_source: required for model_id {a.model_id!r} (only {MODEL_ID!r} is generated)")


MAX_GROUPS = 32  # @serve.batch batches in flight at once; all of them share one decode loop


@serve.deployment(name="CpuEngine")
class CpuEngine:
    """Holds the model. `@serve.batch` groups concurrent arrivals; every group joins one shared,
    step-wise batched decode loop (the Scheduler), streaming and non-streaming alike."""

    def __init__(self, args: dict[str, Any]):
        a = parse_args(args)
        decoder = BatchedDecoder(resolve_model_dir(a), a.torch_threads)
        limit = decoder.model.config.max_position_embeddings
        if a.max_model_len > limit:
            raise ValueError(f"max_model_len = {a.max_model_len}: the model allows at most {limit}")
        self.scheduler = Scheduler(decoder, max_rows=a.max_batch_size)
        self._batch.set_max_batch_size(a.max_batch_size)
        self._batch.set_batch_wait_timeout_s(a.batch_wait_timeout_s)
        self.stream_interval_s = a.stream_interval_ms / 1000

    async def generate(self, request: dict[str, Any]):
        """Stream StepOutput dicts for one request; the last one carries the finish_reason.

        Deltas are coalesced to one message per stream_interval_ms (as Ray Serve LLM does), since
        a Ray streaming message per token per request costs more than the tiny model's step.
        """
        text, flushed = "", time.monotonic()
        # Consumed to the end (not left at the finish_reason): the batcher resolves one more future
        # per request, and leaving it unread logs "Future exception was never retrieved".
        async for out in self._batch(GenRequest(**request)):
            text += out.text
            if out.finish_reason or (text and time.monotonic() - flushed >= self.stream_interval_s):
                yield {**asdict(out), "text": text}
                text, flushed = "", time.monotonic()

    async def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request to the end, as a single message (non-streaming clients)."""
        text, last = "", None
        async for out in self._batch(GenRequest(**request)):
            text, last = text + out.text, out
        return {**asdict(last), "text": text}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01, max_concurrent_batches=MAX_GROUPS)
    async def _batch(self, requests: list[GenRequest]):
        async for step in self.scheduler.stream(requests):
            yield [StopIteration if o is None else o for o in step]

    def stats(self) -> dict[str, Any]:
        """group_sizes: requests per @serve.batch batch; step_batch_sizes: rows per decode forward."""
        return self.scheduler.stats()


app = FastAPI(title="llmfleet CPU engine (OpenAI API)")


@app.exception_handler(oa.OpenAIError)
async def _openai_error(_: Request, exc: oa.OpenAIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    err = oa.OpenAIError(exc.status_code, str(exc.detail), "invalid_request_error", None, None)
    return JSONResponse(err.body(), status_code=exc.status_code)


@serve.deployment(name="OpenAIIngress")
@serve.ingress(app)
class OpenAIIngress:
    """OpenAI HTTP front: auth, validation, tokenization, SSE; the engine does the decoding."""

    def __init__(self, engine: DeploymentHandle, args: dict[str, Any]):
        from transformers import AutoTokenizer

        self.args = parse_args(args)
        self.engine = engine
        self.token = (
            None
            if self.args.allow_unauthenticated and not (self.args.api_token_env or self.args.api_token_file)
            else load_token(self.args.api_token_env, self.args.api_token_file)
        )
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(self.args))
        self.created = int(time.time())

    def _authorize(self, request: Request) -> None:
        if self.token is not None and not bearer_ok(request.headers.get("authorization"), self.token):
            raise oa.unauthorized()

    def _check_model(self, model: str) -> None:
        if model != self.args.model_id:
            raise oa.model_not_found(model, self.args.model_id)

    def _gen_request(self, body: oa._SamplingParams, prompt_ids: list[int]) -> dict[str, Any]:
        """Length checks as vLLM does them: 400 when prompt (+ max_tokens) exceeds max_model_len."""
        limit, n_prompt, asked = self.args.max_model_len, len(prompt_ids), body.requested_max_tokens
        if n_prompt >= limit:
            raise oa.bad_request(
                f"This model's maximum context length is {limit} tokens. However, your prompt has "
                f"{n_prompt} tokens, which leaves no room for the completion.",
                "messages" if isinstance(body, oa.ChatCompletionRequest) else "prompt",
                "context_length_exceeded",
            )
        if asked is not None and n_prompt + asked > limit:
            raise oa.bad_request(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{n_prompt + asked} tokens ({n_prompt} in the prompt, {asked} for the completion).",
                "max_tokens",
                "context_length_exceeded",
            )
        return asdict(
            GenRequest(
                prompt_ids=prompt_ids,
                max_tokens=asked if asked is not None else limit - n_prompt,
                temperature=body.temperature,
                top_p=body.top_p,
                stop=list(body.stop),
                seed=body.seed,
                ignore_eos=body.ignore_eos,
            )
        )

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return oa.models_list(self.args.model_id, self.created, self.args.max_model_len)

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request):
        self._authorize(request)
        body: oa.ChatCompletionRequest = oa.parse(oa.ChatCompletionRequest, await request.body())
        self._check_model(body.model)
        text = self.tokenizer.apply_chat_template(
            body.chat_messages(), add_generation_prompt=True, tokenize=False
        )
        prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return await self._respond(body, prompt_ids, "chatcmpl", self._chat_stream, oa.chat_completion)

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        self._authorize(request)
        body: oa.CompletionRequest = oa.parse(oa.CompletionRequest, await request.body())
        self._check_model(body.model)
        if isinstance(body.prompt, str):
            prompt_ids = self.tokenizer(body.prompt)["input_ids"]
        else:
            vocab = len(self.tokenizer)
            if any(not 0 <= t < vocab for t in body.prompt):
                raise oa.bad_request(f"prompt token ids must be in [0, {vocab})", "prompt", "invalid_value")
            prompt_ids = list(body.prompt)
        return await self._respond(body, prompt_ids, "cmpl", self._completion_stream, oa.completion)

    async def _respond(self, body, prompt_ids: list[int], id_prefix: str, stream, build):
        """Run one request on the engine: an SSE stream of chunks, or one response object."""
        gen = self._gen_request(body, prompt_ids)
        rid, model = oa.new_id(id_prefix), body.model
        if body.stream:
            outs = self.engine.options(stream=True).generate.remote(gen)
            return StreamingResponse(
                stream(outs, rid, model, len(prompt_ids), body.include_usage),
                media_type="text/event-stream",
            )
        last = await self.engine.complete.remote(gen)
        usage = oa.usage(len(prompt_ids), last["completion_tokens"])
        return build(rid, model, last["text"], last["finish_reason"], usage)

    async def _chat_stream(self, outs, rid: str, model: str, n_prompt: int, include_usage: bool):
        yield oa.sse(
            oa.chat_chunk(rid, model, {"role": "assistant", "content": ""}, None, None, include_usage)
        )
        last = None
        try:
            async for out in outs:
                last = out
                if out["text"]:
                    yield oa.sse(
                        oa.chat_chunk(rid, model, {"content": out["text"]}, None, None, include_usage)
                    )
        except Exception as e:  # noqa: BLE001 - the status line is sent; report in-band, as vLLM does
            yield oa.sse(_stream_error(e))
            last = None
        if last is not None:
            yield oa.sse(oa.chat_chunk(rid, model, {}, last["finish_reason"], None, include_usage))
            if include_usage:
                u = oa.usage(n_prompt, last["completion_tokens"])
                yield oa.sse(oa.chat_chunk(rid, model, None, None, u, True))
        yield oa.sse("[DONE]")

    async def _completion_stream(self, outs, rid: str, model: str, n_prompt: int, include_usage: bool):
        last = None
        try:
            async for out in outs:
                last = out
                if out["text"] or out["finish_reason"]:
                    yield oa.sse(
                        oa.completion_chunk(
                            rid, model, out["text"], out["finish_reason"], None, include_usage
                        )
                    )
        except Exception as e:  # noqa: BLE001 - the status line is sent; report in-band, as vLLM does
            yield oa.sse(_stream_error(e))
            last = None
        if last is not None and include_usage:
            u = oa.usage(n_prompt, last["completion_tokens"])
            yield oa.sse(oa.completion_chunk(rid, model, None, None, u, True))
        yield oa.sse("[DONE]")


def _stream_error(exc: Exception) -> dict[str, Any]:
    return oa.OpenAIError(500, f"generation failed: {type(exc).__name__}", "internal_error").body()


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder (`import_path: ray_cluster.engines.cpu:build_app`)."""
    a = parse_args(args)
    engine = CpuEngine.options(
        num_replicas=a.num_replicas,
        placement_group_bundles=placement_bundles(
            a.tensor_parallel_size, a.pipeline_parallel_size, a.gpu_model, a.engine_num_cpus
        ),
        placement_group_strategy="PACK",
        ray_actor_options={"num_cpus": a.engine_num_cpus},
        max_ongoing_requests=a.max_batch_size * MAX_GROUPS,
    ).bind(a.model_dump())
    # The front is light (tokenize + JSON); 0 CPUs so a small node still fits it.
    return OpenAIIngress.options(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024).bind(
        engine, a.model_dump()
    )
