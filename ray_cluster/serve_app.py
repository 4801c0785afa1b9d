"""The production Serve application: Ray Serve LLM's OpenAI app behind a bearer token.

`import_path: ray_cluster.serve_app:build_app`; args = `ray.serve.llm.LLMServingArgs` plus
`api_token_env`, the NAME of the env var that holds the token on the head (the hosts' env file,
filled from SSM at boot). The token value never appears in a config, in the app graph or in
Ray's GCS: each ingress replica reads it from its own environment when it starts, and a replica
without a token fails to start instead of serving unauthenticated.

The app is built by Ray Serve LLM's public builder, `ray.serve.llm.build_openai_app`, with its
public extension point `ingress_cls_config.ingress_cls` set to `BearerOpenAiIngress`, a
subclass of the public `ray.serve.llm.ingress.OpenAiIngress`. GPU hosts and the local CPU
cluster deploy exactly this; only the LLMConfig (bundles, accelerator kind, env) differs.

The gate is ASGI middleware around the whole FastAPI app, so every route is covered, including
ones a later Ray adds (a per-route FastAPI dependency would leave new routes open). Ray 2.60's
builder makes the FastAPI app itself and has no public middleware hook; the one place where the
app exists inside the replica is Serve's `_set_asgi_app`, which `BearerOpenAiIngress` wraps. If
a Ray upgrade stops calling it, `check_health` fails the replica: the gate fails closed.
Ray Serve's own `/-/healthz` and `/-/routes` are answered by the proxy, so load balancer checks
need no token.

ray.serve.llm needs an engine package (vLLM) to import, so every ray.serve.llm import is inside
a function or the class factory: this module imports anywhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from datetime import UTC, datetime
from typing import Any, cast

from ray_cluster.auth import bearer_ok, load_token
from ray_cluster.contract import (
    ACTIVITY_PATH_RE,
    CPU_WORKER_RESOURCE,
    ENGINE_LIVENESS_TIMEOUT_S,
    ENV_NAME_RE,
    GPU_MODEL_PREFIX,
    LIVE_SERVER_CLS,
    is_direct,
)
from ray_cluster.schedule import Schedule, ScheduleError, parse_schedule, retry_after_s

GATED_INGRESS = "ray_cluster.serve_app:BearerOpenAiIngress"
# Ray Serve LLM's own switch for direct streaming. In Ray 2.60 its builder attaches an "ingress
# request router" (LLMRouter) that Serve builds only with HAProxy in front
# (RAY_SERVE_ENABLE_HA_PROXY=1 in the controller's environment; serve/_private/build_app.py
# raises otherwise), and it skips any ingress class. The app arg `direct_streaming` is this
# module's way to the same LLMServer-as-ingress shape, gated, behind Serve's own proxy.
DIRECT_STREAMING_ENV = "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"


def openai_error(
    message: str, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error body: the shape the `openai` client parses into `e.message`/`e.code`
    (anything else, e.g. FastAPI's {"detail": ...}, shows only "Error code: 404")."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


_OPENAI_401 = json.dumps(
    openai_error("Missing or invalid bearer token.", 401, code="invalid_api_key")
).encode()


class AppArgsError(ValueError):
    """One line naming the build_app key, the bad value and what is allowed."""


# ---------------------------------------------------------------- the gate (pure ASGI)


class BearerGate:
    """ASGI middleware: HTTP and WebSocket requests need `Authorization: Bearer <token>`.

    Lifespan events pass through (the app's own startup/shutdown)."""

    def __init__(self, app: Any, token: str):
        if not token:
            raise ValueError("BearerGate: empty token")
        self.app = app
        self._token = token

    def allows(self, scope: dict[str, Any]) -> bool:
        for k, v in scope.get("headers") or ():
            if k.lower() == b"authorization":
                return bearer_ok(v.decode("latin-1"), self._token)
        return False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or self.allows(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Bearer"),
                    (b"content-length", str(len(_OPENAI_401)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _OPENAI_401})


# ---------------------------------------------------------------- errors in OpenAI's shape


def model_not_found(asked: str, served: list[str]) -> Any:
    """The 404 for a model this app does not serve, naming the ones it does (OpenAI's code)."""
    from fastapi import HTTPException

    e = HTTPException(
        404,
        f"The model {asked!r} does not exist here; served models: {', '.join(sorted(served)) or 'none'}.",
    )
    e.openai_code = "model_not_found"  # type: ignore[attr-defined]
    e.openai_param = "model"  # type: ignore[attr-defined]
    return e


async def openai_http_error(request: Any, exc: Any) -> Any:
    """Every HTTPException (Ray's ingress raises them for a missing or unknown model, Starlette
    for an unknown route or method) as OpenAI's error object instead of FastAPI's {"detail"}."""
    from fastapi.responses import JSONResponse

    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404 and not hasattr(exc, "openai_code"):
        detail = f"{detail}: {request.method} {request.url.path}"
    body = openai_error(
        detail, exc.status_code, getattr(exc, "openai_code", None), getattr(exc, "openai_param", None)
    )
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def install_openai_errors(app: Any) -> Any:
    """Register the OpenAI-shaped HTTPException handler on the ingress's FastAPI app. Ray's own
    middleware already answers validation errors and uncaught exceptions as {"error": ...};
    HTTPException alone reached FastAPI's default handler. Must run before the first request
    (Starlette builds its middleware stack, with the handlers, on the first call)."""
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if hasattr(app, "add_exception_handler"):
        app.add_exception_handler(StarletteHTTPException, openai_http_error)
    return app


# ---------------------------------------------------------------- reasoning_content (pure)
# vLLM 0.29 returns R1's thought as `reasoning` only (its ChatMessage/DeltaMessage have no
# `reasoning_content` and no switch for it; the request side still accepts the old name). The
# clients R1 users run read `reasoning_content` (DeepSeek's own API, Open WebUI, LibreChat, many
# SDK wrappers); newer ones read `reasoning`. The ingress sends both, the same value.
REASONING_CONTENT = "reasoning_content"
# A stream chunk is vLLM's own pydantic JSON (model_dump_json: no spaces). In JSON a quote inside
# a string value is always escaped, so `"reasoning":` (an unescaped quote after `g`, then `:`)
# can only be the key of the delta's field; its value is a JSON string or null, copied verbatim
# (the unrolled-loop form of a JSON string: no backtracking per character). Nothing is parsed or
# re-serialized: a chunk without the key costs one substring test.
_REASONING_KEY = '"reasoning":'
_REASONING_RE = re.compile(r'"reasoning":("[^"\\]*(?:\\.[^"\\]*)*"|null)')
_REASONING_SUB = r'\g<0>,"reasoning_content":\1'
_REASONING_KEY_B = _REASONING_KEY.encode()
_REASONING_RE_B = re.compile(_REASONING_RE.pattern.encode())
_REASONING_SUB_B = _REASONING_SUB.encode()


def mirror_reasoning_sse(packet: str | bytes) -> str | bytes:
    """One SSE packet of a chat stream (one or more `data: {chunk}` events), each delta's
    `reasoning` followed by the same `reasoning_content`."""
    if isinstance(packet, str):
        return _REASONING_RE.sub(_REASONING_SUB, packet) if _REASONING_KEY in packet else packet
    if isinstance(packet, bytes):  # pyright: ignore[reportUnnecessaryIsInstance] - Ray passes chunks untyped: anything else goes through as is
        return _REASONING_RE_B.sub(_REASONING_SUB_B, packet) if _REASONING_KEY_B in packet else packet
    return packet


def mirror_reasoning_message(doc: Any) -> Any:
    """A whole chat.completion (parsed JSON): each choice's message gets `reasoning_content`
    beside `reasoning` (once per response, so parsed: keys are matched where they are, not as text)."""
    for choice in (doc.get("choices") or []) if isinstance(doc, dict) else []:  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType] - parsed JSON
        msg: Any = choice.get("message") if isinstance(choice, dict) else None  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType] - parsed JSON
        if isinstance(msg, dict) and "reasoning" in msg:
            msg[REASONING_CONTENT] = msg["reasoning"]
    return doc  # pyright: ignore[reportUnknownVariableType] - the parsed JSON it was given


async def _mirrored(chunks: AsyncIterable[Any]) -> AsyncIterator[Any]:
    async for packet in chunks:
        yield mirror_reasoning_sse(packet)


def with_reasoning_content(response: Any) -> Any:
    """The ingress's chat response with `reasoning_content` beside `reasoning`: a stream is
    rewritten chunk by chunk as it flows (no buffering: the first token leaves as soon as it
    comes), a whole response once. Anything else (an error) passes through."""
    from starlette.responses import JSONResponse, StreamingResponse

    if isinstance(response, StreamingResponse):
        response.body_iterator = _mirrored(response.body_iterator)
        return response
    if isinstance(response, JSONResponse) and response.status_code == 200:
        doc = mirror_reasoning_message(json.loads(bytes(response.body)))
        return JSONResponse(doc, status_code=response.status_code, background=response.background)
    return response


# ---------------------------------------------------------------- asleep / waking (pure ASGI)

SERVING, ASLEEP, WAKING = "serving", "asleep", "waking"
# Retry-After when no schedule says when: asleep = someone runs `llmfleet wake` (or the next
# window comes), which takes a cold start; waking = the engine is loading on hosts that are up.
RETRY_ASLEEP_S = 600
RETRY_WAKING_S = 60
# How long one look at the cluster holds: a request never waits for Ray's state API more than
# once per this many seconds (the look runs in a thread, off the event loop).
STATE_TTL_S = 3.0


def unavailable_body(state: str, schedule: Schedule | None, now: datetime) -> tuple[int, bytes] | None:
    """(Retry-After seconds, the OpenAI-shaped error body) for a request while the endpoint
    cannot serve, or None while it serves."""
    if state == SERVING:
        return None
    if state == WAKING:
        retry, code = RETRY_WAKING_S, "endpoint_waking"
        msg = f"The endpoint is waking up: its workers are loading the model. Retry in {retry} s."
    else:
        retry, nxt = retry_after_s(schedule, now, RETRY_ASLEEP_S)
        code = "endpoint_asleep"
        if nxt is not None and schedule is not None:  # a next opening comes only from a schedule
            msg = (
                f"The endpoint is asleep outside its serving schedule ({schedule.text}); "
                f"it serves again at {nxt.strftime('%Y-%m-%dT%H:%M:%SZ')} (in {retry} s)."
            )
        else:
            msg = (
                "The endpoint is asleep: its workers are stopped (idle stop or `llmfleet local sleep`); "
                f"`llmfleet wake --stack STACK` starts them. Retry in {retry} s."
            )
    body = {"error": {"message": msg, "type": "service_unavailable", "param": None, "code": code}}
    return retry, json.dumps(body).encode()


def _gated_path(scope: dict[str, Any]) -> bool:
    """Requests that need an engine replica: the OpenAI API's POSTs (completions, chat,
    embeddings, ...). GET /v1/models answers from the ingress itself, asleep or not."""
    return (
        scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path", "").startswith("/v1/")
    )


class ServingGate:
    """ASGI middleware: while the workers are asleep or waking, answer the OpenAI API's requests
    with 503, Retry-After and an OpenAI error body that says when it serves again, instead of a
    request that hangs until a replica exists. `state` is an async look at the cluster (cached
    `ttl` s); `clock` gives now (UTC).

    `on_served` marks the endpoint busy for idle stop (llmfleet:idleStopMinutes): it is called
    when an engine route answers 2xx, and again on every chunk of that answer's body, so a
    stream that runs for minutes keeps the workers awake for as long as it runs. Only answers
    count, not requests: a 401 flood never gets here (the bearer gate is outside), and an
    unknown model's 404, a bad request's 400, a 503 while asleep or `GET /v1/models` (answered
    by the ingress alone) are no completion served. Why here and not vLLM's own counter
    (`vllm:request_success`) through the stack's Prometheus: the counter moves only when a
    request finishes (a long reasoning stream reads as idle until its end), it resets when an
    engine restarts, and on AWS the hosts' Prometheus agent only writes to AMP (the head would
    need a query permission and a remote query to learn what the gate sees at once); the gate
    is the one place every answer passes, with its final status."""

    def __init__(
        self,
        app: Any,
        state: Callable[[], Awaitable[str]],
        schedule: Schedule | None = None,
        *,
        ttl: float = STATE_TTL_S,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        on_served: Callable[[], None] = lambda: None,
    ):
        self.app, self._state, self.schedule = app, state, schedule
        self._ttl, self._clock, self._mono = ttl, clock, monotonic
        self._cached: tuple[float, str] | None = None
        self._on_served = on_served

    async def state(self) -> str:
        t = self._mono()
        if self._cached is None or t - self._cached[0] >= self._ttl:
            try:
                self._cached = (t, await self._state())
            except Exception:  # noqa: BLE001 - not knowing is not a reason to refuse: let it through
                self._cached = (t, SERVING)
        return self._cached[1]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not _gated_path(scope):
            await self.app(scope, receive, send)
            return
        shut = unavailable_body(await self.state(), self.schedule, self._clock())
        if shut is None:
            await self.app(scope, receive, self._counting(send))
            return
        retry, body = shut
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"retry-after", str(retry).encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _counting(self, send: Any) -> Callable[[dict[str, Any]], Awaitable[None]]:
        """`send`, calling on_served for a 2xx answer's start and each of its body chunks."""
        answered = False

        async def counted(message: dict[str, Any]) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = 200 <= int(message["status"]) < 300
            if answered:
                self._on_served()
            await send(message)

        return counted


# While Serve holds the engine deployment unavailable to a router (`is_available=False` in its
# broadcast targets: ray/serve/_private/deployment_state.py, broadcast_running_replicas_if_changed,
# e.g. between a failed rolling update and its surviving replicas being seen), the ingress's handle
# call raises DeploymentUnavailableError at once and Ray Serve LLM answers 503. Such a request was
# never assigned to a replica (router.py raises before it picks one), so calling again is safe:
# nothing ran. Defensive: the fault suite's killed-controller 503s turned out to be this gate's own
# "waking" answer (LIVE_REPLICA_STATES, below), not this error; the whole fault run of record ran
# with this retry in place.
UNAVAILABLE_RETRY_S = 15.0  # then Serve's own 503: a deployment that really failed says so
UNAVAILABLE_BACKOFF_S = (0.1, 1.0)  # first wait, longest wait (doubling)


async def retry_unavailable(
    call: Callable[[], AsyncIterator[Any]],
    unavailable: tuple[type[BaseException], ...],
    *,
    budget_s: float = UNAVAILABLE_RETRY_S,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Any]:
    """The items of `call()`'s stream; while it raises one of `unavailable` before its first
    item, `call()` again after a doubling backoff, for at most `budget_s` (then the error).
    Once an item has been yielded nothing is retried: the client has part of an answer."""
    start, delay = monotonic(), UNAVAILABLE_BACKOFF_S[0]
    while True:
        stream = call()
        try:
            first = await anext(aiter(stream))
        except StopAsyncIteration:
            return
        except unavailable:
            if monotonic() - start + delay > budget_s:
                raise
            await sleep(delay)
            delay = min(delay * 2, UNAVAILABLE_BACKOFF_S[1])
            continue
        yield first
        async for item in stream:
            yield item
        return


ACTIVITY_TOUCH_S = 10.0  # the idle alarm counts minutes: one file write per 10 s is plenty


def activity_toucher(path: str | None, monotonic: Callable[[], float] = time.monotonic) -> Callable[[], None]:
    """A callback that sets `path`'s mtime to now, at most once per ACTIVITY_TOUCH_S (no-op without a path)."""
    if not path:
        return lambda: None
    last = [-ACTIVITY_TOUCH_S]

    def touch() -> None:
        t = monotonic()
        if t - last[0] < ACTIVITY_TOUCH_S:
            return
        last[0] = t
        try:
            with open(path, "a"):
                os.utime(path)
        except OSError:
            pass  # a full or read-only /tmp must not fail a request; the watcher then sees it idle

    return touch


def is_worker_node(node: Mapping[str, Any]) -> bool:
    """A Ray node (ray.nodes() entry) that hosts engine ranks: it advertises a worker resource."""
    res: Mapping[str, Any] = node.get("Resources") or {}
    return bool(node.get("Alive")) and (
        CPU_WORKER_RESOURCE in res
        or res.get("GPU", 0) > 0
        or any(k.startswith(GPU_MODEL_PREFIX) for k in res)
    )


def cluster_state(nodes: Sequence[Mapping[str, Any]], engine_replicas_running: int | None) -> str:
    """asleep: no worker host is alive; waking: hosts are up but no engine replica runs yet."""
    if not any(is_worker_node(n) for n in nodes):
        return ASLEEP
    if engine_replicas_running == 0:
        return WAKING
    return SERVING


# Engine replicas that exist and take requests, by Serve's ReplicaState (ray/serve/_private/common.py).
# RECOVERING: a restarted Serve controller (killed, or a head back on the GCS's Redis) re-attaches
# the live replicas in this state for seconds; the routers keep their last replica set and those
# replicas answer, so it is no "waking" (counting only RUNNING made this gate answer 503 to 16-22
# of ~65 requests in the fault suite's killed-controller case). UPDATING (a new user_config) and
# PENDING_MIGRATION (its node draining) serve too. STARTING is a replica not serving yet.
LIVE_REPLICA_STATES = ("RUNNING", "RECOVERING", "UPDATING", "PENDING_MIGRATION")


def _ray_state(own_deployment: str | None) -> str:
    """The live cluster's state, from Ray's node table and Serve's status (run in a thread)."""
    import ray
    from ray import serve

    running = None
    try:
        for app in serve.status().applications.values():
            engines = [d for name, d in app.deployments.items() if name != own_deployment]
            if own_deployment and own_deployment in app.deployments:
                # keyed by ReplicaState, a str enum: its values find it (typed as the enum)
                running = sum(
                    int(cast("dict[str, int]", d.replica_states).get(state, 0))
                    for d in engines
                    for state in LIVE_REPLICA_STATES
                )
    except Exception:  # noqa: BLE001 - the controller is busy: judge by the hosts alone
        running = None
    return cluster_state(ray.nodes(), running)  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType] - unannotated in Ray: a list of dicts


# ---------------------------------------------------------------- args (pure)


def _token_env(args: dict[str, Any]) -> str:
    """Pop and check `api_token_env` (and refuse a token value in the args)."""
    if "api_token" in args:
        raise AppArgsError(
            "build_app args: key 'api_token' is not allowed; put the token in an env var and pass api_token_env"
        )
    env_name = args.pop("api_token_env", None)
    # fullmatch: `$` alone would also match before a trailing newline ("TOKEN\n")
    if not isinstance(env_name, str) or not ENV_NAME_RE.fullmatch(env_name):
        raise AppArgsError(
            f"build_app args: api_token_env = {env_name!r}: allowed: an environment variable name"
        )
    if os.environ.get(DIRECT_STREAMING_ENV, "0") == "1":
        raise AppArgsError(
            f"{DIRECT_STREAMING_ENV}=1 makes the engine the ingress, with no bearer gate; allowed: unset "
            "or 0 (the app arg direct_streaming: true serves the engine's own app, gated)"
        )
    return env_name


def _direct_flag(args: dict[str, Any]) -> bool:
    flag = args.pop("direct_streaming", False)
    if not isinstance(flag, bool):
        raise AppArgsError(f"build_app args: direct_streaming = {flag!r}: allowed: true or false")
    return flag


def parse_args(args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(token env name, LLMServingArgs dict with the gated ingress); one-line AppArgsError.

    `ingress_cls_config.ingress_cls` may name BearerOpenAiIngress or a subclass of it; anything
    else could not be gated and is refused. `ingress_extra_kwargs` pass through."""
    args = dict(args or {})
    env_name = _token_env(args)
    if _direct_flag(args):
        raise AppArgsError("build_app args: direct_streaming = True: build it with parse_direct_args")
    icc: dict[str, Any] | Any = args.get("ingress_cls_config") or {}
    if not isinstance(icc, dict):
        raise AppArgsError(
            f"build_app args: ingress_cls_config = {icc!r}: allowed: a mapping with ingress_cls/ingress_extra_kwargs"
        )
    unknown = set(icc) - {"ingress_cls", "ingress_extra_kwargs"}  # pyright: ignore[reportUnknownArgumentType] - the Serve config's YAML mapping
    if unknown:
        raise AppArgsError(
            f"build_app args: ingress_cls_config.{sorted(unknown)[0]}: allowed keys: ingress_cls, ingress_extra_kwargs"
        )
    extra = dict(icc.get("ingress_extra_kwargs") or {})  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType] - as above
    if "api_token_env" in extra:
        raise AppArgsError(
            "build_app args: ingress_cls_config.ingress_extra_kwargs.api_token_env: not allowed; "
            "set the top-level api_token_env"
        )
    extra["api_token_env"] = env_name
    schedule = args.pop("schedule", None)
    if schedule is not None:
        try:
            extra["schedule"] = parse_schedule(schedule).text
        except ScheduleError as e:
            raise AppArgsError(f"build_app args: schedule = {schedule!r}: {e}") from None
    if "schedule" in extra and not isinstance(extra["schedule"], str):
        raise AppArgsError("build_app args: ingress_extra_kwargs.schedule: set the top-level schedule")
    activity = args.pop("activity_file", None)
    if activity is not None:
        if not isinstance(activity, str) or not ACTIVITY_PATH_RE.fullmatch(activity) or ".." in activity:
            raise AppArgsError(
                f"build_app args: activity_file = {activity!r}: allowed: an absolute path of letters, "
                "digits, '.', '_', '-' and '/'"
            )
        extra["activity_file"] = activity
    args["ingress_cls_config"] = {
        "ingress_cls": icc.get("ingress_cls") or GATED_INGRESS,  # pyright: ignore[reportUnknownMemberType] - as above
        "ingress_extra_kwargs": extra,
    }
    return env_name, args


# What the ingress does that the engine's own app (direct streaming) cannot: each refused with
# why, rather than silently dropped. The engine replica runs on a worker host, so a file it
# touched would not be the head's (idle stop reads the head's), and while the workers sleep
# there is no replica to answer the 503 that names the schedule's next opening.
_DIRECT_REFUSED = {
    "schedule": "the asleep 503 that names the next opening is the OpenAI ingress's; "
    "with direct streaming there is no replica while asleep",
    "activity_file": "the engine replica runs on a worker host; idle stop reads the head's file",
    "ingress_cls_config": "the engine's own app is the ingress (Ray refuses an ingress class with direct streaming)",
    "ingress_deployment_config": "the engine's own app is the ingress; set its options on the LLMConfig's deployment_config",
}


def parse_direct_args(args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the gated LLMServer's bind kwargs, the LLMServingArgs dict) for `direct_streaming: true`;
    one-line AppArgsError for what the direct path cannot honour (Ray's own direct builder
    refuses the same: one model, no ingress class, no ingress options)."""
    args = dict(args or {})
    env_name = _token_env(args)
    if not _direct_flag(args):
        raise AppArgsError("build_app args: direct_streaming = False: build it with parse_args")
    for key, why in _DIRECT_REFUSED.items():
        if args.get(key):
            raise AppArgsError(f"build_app args: {key} with direct_streaming: not allowed; {why}")
        args.pop(key, None)
    configs = args.get("llm_configs")
    if not isinstance(configs, list) or len(configs) != 1:  # pyright: ignore[reportUnknownArgumentType] - the Serve config's YAML list
        n = len(configs) if isinstance(configs, list) else configs  # pyright: ignore[reportUnknownArgumentType] - as above
        raise AppArgsError(
            f"build_app args: llm_configs with direct_streaming: {n!r} models; allowed: exactly one "
            "(the engine's own app serves one model)"
        )
    return {"api_token_env": env_name}, args


def _check_gated(cls: Any) -> None:
    name = getattr(cls, "__qualname__", repr(cls))
    if not (isinstance(cls, type) and issubclass(cls, _gated_base())):
        raise AppArgsError(
            f"build_app args: ingress_cls_config.ingress_cls = {name}: allowed: {GATED_INGRESS} "
            "or a subclass of it (the bearer gate must wrap the ingress)"
        )


# ---------------------------------------------------------------- the ingress class

_GATED: type | None = None


def _gated_base() -> type:
    """BearerOpenAiIngress, made on first use: its base class needs ray.serve.llm (and vLLM)."""
    global _GATED
    if _GATED is not None:
        return _GATED
    from fastapi import HTTPException
    from ray.serve._private.http_util import ASGIAppReplicaWrapper
    from ray.serve.llm.ingress import OpenAiIngress

    if not hasattr(ASGIAppReplicaWrapper, "_set_asgi_app"):
        # The hook the gate wraps is gone in this Ray: refuse to build an ungated app.
        raise RuntimeError(
            "this Ray has no ASGIAppReplicaWrapper._set_asgi_app; the bearer gate cannot attach"
        )

    class BearerOpenAiIngress(OpenAiIngress):
        """Ray Serve LLM's OpenAI ingress with every request behind the bearer token."""

        def __init__(
            self,
            *args: Any,
            api_token_env: str,
            schedule: str | None = None,
            activity_file: str | None = None,
            **kwargs: Any,
        ):
            # Read in the replica process: a replica without a token fails to start.
            self._bearer_token = load_token(api_token_env)
            self._schedule = parse_schedule(schedule) if schedule else None
            self._touch = activity_toucher(activity_file)
            super().__init__(*args, **kwargs)  # pyright: ignore[reportUnknownMemberType] - Ray leaves DeploymentHandle's type parameter unbound

        def _set_asgi_app(self, app: Any) -> None:
            from ray import serve

            try:
                own = serve.get_replica_context().deployment
            except Exception:  # noqa: BLE001 - outside a replica (a unit test): no own deployment
                own = None

            async def state() -> str:
                return await asyncio.to_thread(_ray_state, own)

            # The token first: who may not call learns nothing, not even that it sleeps.
            super()._set_asgi_app(  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType] - Ray's ingress base, bound at run time
                BearerGate(
                    ServingGate(install_openai_errors(app), state, self._schedule, on_served=self._touch),
                    self._bearer_token,
                )
            )

        async def check_health(self) -> None:
            if not isinstance(getattr(self, "_asgi_app", None), BearerGate):
                raise RuntimeError("bearer gate is not in front of the ingress app")
            await super().check_health()

        async def chat(self, body: Any, request: Any) -> Any:
            return with_reasoning_content(await super().chat(body, request))

        async def _get_response(self, **kwargs: Any) -> AsyncGenerator[Any, None]:
            # Every OpenAI route's call to the engine deployment: retried while a restarted
            # controller has it unavailable (retry_unavailable, above).
            from ray.serve.exceptions import DeploymentUnavailableError

            base = super()._get_response  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType, reportUnknownVariableType] - Ray's ingress base, bound at run time
            async for item in retry_unavailable(lambda: base(**kwargs), (DeploymentUnavailableError,)):  # pyright: ignore[reportUnknownLambdaType, reportUnknownArgumentType] - the base's stream
                yield item

        async def _get_model_id(self, model: Any) -> str:
            # Ray's 404 for an unknown model names only the model asked for; a client needs the
            # id to send instead. Every OpenAI route resolves its model here.
            try:
                return await super()._get_model_id(model)
            except HTTPException as e:
                if e.status_code != 404:
                    raise
                raise model_not_found(str(model), list(self._model_cards)) from None

    # FastAPI reads the route's body model from the method's annotations: the base's own
    # (this module's are strings under `from __future__ import annotations`).
    BearerOpenAiIngress.chat.__annotations__ = dict(OpenAiIngress.chat.__annotations__)
    # Importable by name (module __getattr__ below), so replicas unpickle it by reference.
    BearerOpenAiIngress.__module__ = __name__
    BearerOpenAiIngress.__qualname__ = "BearerOpenAiIngress"
    # Serve's class-based view finds a class's routes by the endpoint's __qualname__ (it must
    # start with "BearerOpenAiIngress."): with the factory's "_gated_base.<locals>." prefix,
    # `self` of the chat route would be a query parameter every request lacks (a 400).
    for fn in vars(BearerOpenAiIngress).values():
        if callable(fn) and hasattr(fn, "__qualname__"):
            fn.__qualname__ = f"BearerOpenAiIngress.{fn.__name__}"
    _GATED = BearerOpenAiIngress  # pyright: ignore[reportConstantRedefinition] - the class, built once per process
    return _GATED


# ---------------------------------------------------------------- the LLM server class


class EngineNotAnswering(RuntimeError):
    """The replica's engine core did not answer a round trip within the liveness timeout."""


async def engine_liveness(engine: Any, timeout_s: float = ENGINE_LIVENESS_TIMEOUT_S) -> None:
    """Raise unless the engine core answers a utility call (`is_sleeping`) within timeout_s.

    vLLM 0.29's `AsyncLLM.check_health` only reads the `errored` flag its process monitor sets
    when the core DIES: a core that hangs (a stuck kernel, a deadlock, SIGSTOP) passes it forever
    and the replica keeps taking requests that never finish. `is_sleeping` is a utility call
    over the core's ZMQ socket: it comes back only if the core's busy loop turns, and it is
    answered asleep too (the scale-to-zero sleep), unlike a generate request. A timed-out call
    is cancelled; vLLM drops the late answer (core_client._process_utility_output)."""
    try:
        await asyncio.wait_for(engine.is_sleeping(), timeout_s)
    except TimeoutError:
        raise EngineNotAnswering(
            f"the engine core did not answer a utility call (is_sleeping) within {timeout_s:g} s: "
            "hung or stopped; failing the health check so Serve replaces the replica"
        ) from None


_LIVE: type | None = None


def _live_server() -> type:
    """LLMServer: Ray Serve LLM's LLMServer whose health check also round-trips to the engine
    core (engine_liveness). Named LLMServer, like its base, because Ray Serve LLM names the
    deployment after the class (`LLMServer:<model>`): dashboards, `serveOptions` and the tools
    that find the deployment by that prefix keep working.

    Direct streaming (`direct_streaming: true`, build_app): the same class, wrapped by
    `serve.ingress()`, is the app's HTTP ingress, and the app it serves is vLLM's own FastAPI
    app, built in the replica after the engine starts (Ray's `__serve_build_asgi_app__`). Serve
    hands that app to `_set_asgi_app` (ray/serve/_private/replica.py,
    `_initialize_asgi_callable`), where the bearer gate goes around it, as on the ingress. The
    token is read in the replica (`api_token_env`, bound by build_app): a replica without it
    never starts, and one serving HTTP without the gate in front fails its health check."""
    global _LIVE
    if _LIVE is not None:
        return _LIVE
    from ray.serve._private.http_util import ASGIAppReplicaWrapper
    from ray.serve.llm.deployment import LLMServer as RayLLMServer

    if not hasattr(ASGIAppReplicaWrapper, "_set_asgi_app"):
        raise RuntimeError(
            "this Ray has no ASGIAppReplicaWrapper._set_asgi_app; the bearer gate cannot attach"
        )

    class LLMServer(RayLLMServer):
        async def __init__(self, *args: Any, api_token_env: str | None = None, **kwargs: Any):
            # Bound only when this class is the HTTP ingress: read here, in the replica process,
            # so the token is in no config and no app graph; without it the replica fails to start.
            self._bearer_token = load_token(api_token_env) if api_token_env is not None else None
            await super().__init__(*args, **kwargs)  # pyright: ignore[reportUnknownMemberType] - Ray's async constructor

        def _set_asgi_app(self, app: Any) -> None:
            # Reached only as `serve.ingress()(LLMServer)`, whose MRO ends in ASGIAppReplicaWrapper.
            token = getattr(self, "_bearer_token", None)
            if not token:
                raise RuntimeError(
                    "LLMServer serves HTTP only behind the bearer gate: build it with "
                    "direct_streaming and api_token_env (ray_cluster.serve_app.build_app)"
                )
            # No ServingGate: a replica that answers is an engine that runs (asleep, there is no
            # replica), and the activity file is the head's (parse_direct_args refuses both).
            super()._set_asgi_app(BearerGate(install_openai_errors(app), token))  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType] - ASGIAppReplicaWrapper's, bound by serve.ingress

        async def check_health(self) -> None:
            if isinstance(self, ASGIAppReplicaWrapper) and not isinstance(
                getattr(self, "_asgi_app", None), BearerGate
            ):
                raise RuntimeError("bearer gate is not in front of the engine's app (direct streaming)")
            await super().check_health()  # the engine died: vLLM's own flag, Ray's message
            if getattr(self, "engine", None) is not None:  # None until the engine started
                await engine_liveness(self.engine)

    # Importable by name (module __getattr__ below), so replicas unpickle it by reference.
    LLMServer.__module__ = __name__
    LLMServer.__qualname__ = "LLMServer"
    for fn in ("__init__", "_set_asgi_app", "check_health"):
        getattr(LLMServer, fn).__qualname__ = f"LLMServer.{fn}"
    _LIVE = LLMServer  # pyright: ignore[reportConstantRedefinition] - the class, built once per process
    return _LIVE


_STAGED: type | None = None


def weights_are_staged(model_source: Any) -> bool:
    """True when the engine can load straight from model_source: a local checkpoint directory."""
    return isinstance(model_source, str) and os.path.isfile(os.path.join(model_source, "config.json"))


def _staged_weights() -> type:
    """StagedWeights: skips Ray Serve LLM's per-node "download model files" tasks when the
    weights already sit at model_source on the replica's host.

    The hosts stage the checkpoint onto local disk at the same path before they join (the
    production boot; the local cluster's generated model), so the download tasks would only
    return that path. Each task is a fresh Ray worker that imports vLLM, ~25-50 s of CPU per
    replica start on a small host. The switch, `CallbackCtx.run_init_node`, is only reachable
    through Ray Serve LLM's callback base class, which 2.60 does not export publicly: this is
    the one `ray.llm._internal` import. A host without the checkpoint keeps Ray's own path."""
    global _STAGED
    if _STAGED is not None:
        return _STAGED
    from ray.llm._internal.common.callbacks.base import CallbackBase

    class StagedWeights(CallbackBase):
        async def on_before_node_init(self) -> None:
            src = self.llm_config.model_loading_config.model_source  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType, reportUnknownVariableType] - Ray types it as a dict; it is a model
            if weights_are_staged(src):
                self.ctx.run_init_node = False

    StagedWeights.__module__ = __name__
    StagedWeights.__qualname__ = "StagedWeights"
    _STAGED = StagedWeights  # pyright: ignore[reportConstantRedefinition] - the class, built once per process
    return _STAGED


def __getattr__(name: str) -> Any:
    # `ray_cluster.serve_app:BearerOpenAiIngress` / `:StagedWeights` / `:LLMServer` resolve lazily (Ray's
    # load_class uses getattr), since their base classes need ray.serve.llm (and vLLM).
    if name == "BearerOpenAiIngress":
        return _gated_base()
    if name == "StagedWeights":
        return _staged_weights()
    if name == "LLMServer":
        return _live_server()
    raise AttributeError(name)


def build_app(args: dict[str, Any]):
    """Serve application builder: `ray.serve.llm.build_openai_app` with the gated ingress, or
    with `direct_streaming: true` the gated LLMServer as the ingress itself."""
    if is_direct(args):
        return _build_direct(args)
    from ray.serve.llm import LLMServingArgs, build_openai_app  # pyright: ignore[reportUnknownVariableType] - Ray annotates its argument as a bare dict

    _, serving = parse_args(args)
    cfg = LLMServingArgs.model_validate(serving)
    _check_gated(cfg.ingress_cls_config.ingress_cls)  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType] - Ray's annotation says dict; validated into a model
    return build_openai_app(cfg)  # pyright: ignore[reportArgumentType] - accepts LLMServingArgs (Ray's annotation says dict)


def _build_direct(args: dict[str, Any]) -> Any:
    """The LLMServer deployment as the app's ingress: what Ray 2.60's direct-streaming builder
    (`_build_direct_streaming_llm_deployment`) makes, `serve.ingress()(server_cls)` through the
    public `build_llm_deployment`, without its HAProxy-only ingress request router: Serve's own
    proxy routes each request to a replica with the deployment's request router (pow2 or
    llmfleet:routing's), one handle hop, and the replica's vLLM app streams the answer."""
    from ray import serve
    from ray.serve.llm import LLMServingArgs, build_llm_deployment  # pyright: ignore[reportUnknownVariableType] - Ray annotates bind_kwargs as a bare dict

    bind, serving = parse_direct_args(args)
    cfg = LLMServingArgs.model_validate(serving)
    llm = cast(Any, cfg.llm_configs[0])  # pyright: ignore[reportUnknownMemberType] - an LLMConfig once validated (Ray's annotation keeps the input union)
    server_cls: Any = llm.server_cls  # Ray resolved the import path
    if not (isinstance(server_cls, type) and issubclass(server_cls, _live_server())):
        name = getattr(server_cls, "__qualname__", repr(server_cls))
        raise AppArgsError(
            f"build_app args: llm_configs[0].server_cls = {name} with direct_streaming: allowed: "
            f"{LIVE_SERVER_CLS} or a subclass of it (the bearer gate must wrap the engine's app)"
        )
    ingress = cast(Any, serve.ingress()(server_cls))  # pyright: ignore[reportUnknownMemberType] - Serve's decorator is untyped
    return build_llm_deployment(
        llm,
        name_prefix="LLMServer:",  # the wrapper's own name would be Serve's, not the class's
        bind_kwargs=bind,
        deployment_cls=ingress,
    )
