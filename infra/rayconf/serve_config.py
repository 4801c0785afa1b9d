"""Render the Ray Serve deploy config (what `serve deploy` takes) from stack outputs + the plan.

One application, `ray_cluster.serve_app:build_app`: Ray Serve LLM's `build_openai_app` with a
bearer-token gate; its args are LLMServingArgs plus `api_token_env` (the NAME of the env var
holding the token). GPU hosts and the local CPU cluster get the same document; the device kind
changes only what must change (ServeInputs.device):

- placement_group_config: one bundle per rank from ray_cluster.contract. GPU: {GPU: 1} plus one
  unit of `gpu_model:<GPU>` that GPU workers advertise (Ray's accelerator list has no L20, so
  accelerator_type is never used), PACK. CPU: {CPU: 1} plus the CPU-worker resource that only
  worker hosts advertise, STRICT_PACK (vLLM's Ray executor refuses CPU, so a replica's ranks
  are children of the replica on its host). Ray Serve LLM adds the replica actor's CPU to
  bundle 0 itself;
- accelerator_config kind gpu/cpu; CPU adds VLLM_CPU_KVCACHE_SPACE (without it vLLM reads
  gpu_memory_utilization as a fraction of RAM) and VLLM_CPU_OMP_THREADS_BIND, and a dtype,
  since FP8 does not run on the CPU build;
- model_loading_config: the served model id, and as source the local path of the weights
  (the same path on every host), so nothing is downloaded at deploy time;
- engine_kwargs from the planner: TP = GPUs per host, PP = hosts, max_model_len,
  gpu_memory_utilization, chunked prefill, prefix caching, trust_remote_code (off unless the
  stack turns it on), then the model's serving defaults (catalog models.yaml `serving_defaults`):
  vLLM's reasoning parser, a tool-call parser where the model calls tools, and the card's sampling
  as vLLM's default generation settings (`override_generation_config`: a request's own values
  still win), then the stack's `llmfleet:engineArgs` over them;
- deployment_config.num_replicas = replicas (`llmfleet:replicas`; locally one per worker host),
  with routing "prefix" Ray Serve LLM's PrefixCacheAffinityRouter as the request router, then
  `llmfleet:serveOptions` (autoscaling_config replaces the fixed count); its `ingress` map
  goes to the ingress deployment;
- server_cls: ray_cluster.serve_app's LLMServer, Ray Serve LLM's with a health check that
  round-trips to the engine core (a hung core fails it; vLLM's own check sees only a dead one);
- runtime_env env vars: cluster-wide ones only. NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME /
  VLLM_HOST_IP name each node's own NIC and IP, so they cannot live in one runtime_env:
  ray_cluster.node sets them on each node before `ray start`, and Ray workers inherit them.

Validated with ray.serve.schema.ServeDeploySchema and ray.serve.llm.LLMConfig, and (LLMConfig
keeps them as opaque dicts) each deployment's options with Ray's DeploymentSchema and the engine
kwargs with vLLM's own EngineArgs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from pydantic import ValidationError

from infra.catalog.engine_args import engine_args as vllm_engine_fields
from infra.validation import first_error
from ray_cluster import contract
from ray_cluster.contract import (
    APP_NAME,
    ENGINE_LIVENESS_TIMEOUT_S,
    ENV_NAME_RE,
    HEAD_RESOURCE,
    LIVE_SERVER_CLS,
    SERVE_IMPORT_PATH,
    STAGED_WEIGHTS_CALLBACK,
)

DEFAULT_TOKEN_ENV = contract.TOKEN_ENV
CPU_DTYPES = ("float32", "bfloat16")
# vLLM's parser names are registry keys (e.g. deepseek_r1, deepseek_v3): a name, never a path.
PARSER_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_]{0,63}")
# vLLM reads these keys of a generation config as sampling defaults (ModelConfig.get_diff_sampling_param).
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
ROUTINGS = ("pow2", "prefix")
# Ray Serve LLM's LLMServer batches a streaming response's chunks (ray.llm's Batcher): it waits a
# whole interval before it yields the first batch, so a streamed request's first token waits up
# to this long in the replica (issue #29). Ray's default is 50 ms. Measured on one cluster with
# 10 and 50 interleaved (benchmarks/RESULTS.md, 2026-12-07 11:53): 10 ms cut the median TTFT at
# concurrency 1 from 65 ms to 23-25 ms (vLLM's own server: 6.5 ms) and at 4 from 71-78 to 42-45
# ms, and cost 11-23% of output tokens/s at 1 and about 23% on average at 4 on this 2-core machine,
# where the per-chunk work shares the engine's cores; 0 (every token its own stream item) cut TTFT
# to ~19 ms and lost more. A GPU host has the cores for the per-chunk work and a reasoning model's
# reader waits on the first token: 10. `bench_local_serving.py --intervals` compares values.
STREAM_BATCHING_MS = 10
# The engine kwargs llmfleet renders that are vLLM FrontendArgs fields, not EngineArgs ones.
FRONTEND_KWARGS = ("enable_auto_tool_choice", "tool_call_parser")
# Ray Serve LLM's prefix-cache-aware router (public: ray.serve.llm.request_router).
PREFIX_ROUTER = "ray.serve.llm.request_router.PrefixCacheAffinityRouter"
# imbalanced_threshold: Ray's guide documents 10 (queue-length gap above which it falls back to
# power-of-two), but 2.60's initialize_state defaults to inf, which would pin every request that
# shares a hot prefix (a common system prompt) to one replica however long its queue. do_eviction:
# off by default, and then the router's prefix tree grows for the cluster's whole life; on, it is
# trimmed to Ray's default 360k characters once past 400k (docs.ray.io serve/llm prefix-aware-routing).
PREFIX_ROUTER_KWARGS: dict[str, Any] = {"imbalanced_threshold": 10, "do_eviction": True}


class ServeConfigError(ValueError):
    """One line: what is wrong with the inputs, or what Ray's schema rejected."""


@dataclass(frozen=True)
class ServeInputs:
    model_id: str  # the name clients send as "model"
    model_source: str  # local path of the weights on every host
    tensor_parallel_size: int
    pipeline_parallel_size: int
    max_model_len: int
    gpu_memory_utilization: float = 0.90
    gpu_model: str | None = None
    efa: bool = False
    quantization: str | None = None  # vLLM `quantization` (only when not the checkpoint's own)
    # Off: vLLM would run the checkpoint's own Python (auto_map) in the engine. The DeepSeek-R1
    # family is native in vLLM; a stack turns it on only through its catalog entry or
    # llmfleet:trustRemoteCode (infra.stack.config.StackConfig.effective_trust_remote_code).
    trust_remote_code: bool = False
    api_token_env: str = DEFAULT_TOKEN_ENV
    http_port: int = contract.HTTP_PORT
    replicas: int = 1
    device: str = "gpu"
    # CPU only: vLLM's CPU KV cache in GiB and the dtype. The per-rank core binding
    # (VLLM_CPU_OMP_THREADS_BIND) names each host's own cores, so like the NIC env it is set on
    # each node, not here; None leaves it to the node (or vLLM's "auto").
    cpu_kvcache_gib: int = 1
    cpu_omp_threads_bind: str | None = None
    cpu_dtype: str = "float32"
    # llmfleet:engineArgs / llmfleet:serveOptions (infra.stack.engine_options checked their keys
    # against vLLM's and Ray's schemas): over the planner's engine kwargs, the LLM server
    # deployment's options, the OpenAI ingress deployment's options.
    engine_args: Mapping[str, Any] = field(default_factory=dict)
    deployment_options: Mapping[str, Any] = field(default_factory=dict)
    ingress_options: Mapping[str, Any] = field(default_factory=dict)
    # The model's serving defaults (infra.catalog ServingDefaults): vLLM parser names and the
    # card's sampling. None / empty = vLLM's own behaviour.
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    default_sampling: Mapping[str, float] = field(default_factory=dict)
    # Replica choice: "pow2" (Serve's power of two choices) or "prefix" (prefix-cache affinity).
    routing: str = "pow2"
    # llmfleet:lora (infra.stack.lora.LoraSettings): Ray Serve LLM's lora_config and vLLM's
    # LoRA engine kwargs; None = no adapters. The stack refused a model that cannot take them.
    lora_config: Mapping[str, Any] | None = None
    lora_engine_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # llmfleet:schedule (canonical text): the gate's 503 while asleep says when it serves again
    schedule: str | None = None
    # llmfleet:idleStopMinutes: where the gate records the last request (ray_cluster.contract)
    activity_file: str | None = None
    # 0: one Serve proxy and the ingress on the head (production without llmfleet:gcsRedis: the
    # load balancer's one target, the one host whose env file holds the API token). N >= 1: a
    # proxy on every node and N ingress replicas, at most one a node (the local cluster and a
    # gcsRedis stack on AWS: head + each serving worker, infra/rayconf/serving.py ingress_hosts),
    # so with the GCS on redis a worker's own proxy and ingress keep serving while the head restarts.
    ingress_every_node: int = 0
    # Local only (`llmfleet local up -c llmfleet:directStreaming=true`): the engine replica's own
    # vLLM app is the HTTP ingress, gated in the replica (ray_cluster.serve_app, direct
    # streaming): one streaming hop fewer. Production keeps the OpenAI ingress: there a worker's
    # env file holds no API token (without gcsRedis) and the ingress answers what the engine's
    # app cannot (DIRECT_LOSES).
    direct_streaming: bool = False

    def check(self) -> None:
        try:
            contract.check_device(self.device)
        except contract.ContractError as e:
            raise ServeConfigError(str(e)) from None
        if not ENV_NAME_RE.match(self.api_token_env):
            raise ServeConfigError(
                f"api_token_env = {self.api_token_env!r}: allowed: an environment variable name"
            )
        if self.ingress_every_node < 0:
            raise ServeConfigError(
                f"ingress_every_node = {self.ingress_every_node}: allowed: 0 (head only) or the ingress hosts"
            )
        for key in ("tensor_parallel_size", "pipeline_parallel_size", "max_model_len", "replicas"):
            if getattr(self, key) < 1:
                raise ServeConfigError(f"{key} = {getattr(self, key)}: allowed: an integer >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ServeConfigError(
                f"gpu_memory_utilization = {self.gpu_memory_utilization}: allowed: 0 < x <= 1"
            )
        for key in ("reasoning_parser", "tool_call_parser"):
            name = getattr(self, key)
            if name is not None and not PARSER_NAME_RE.fullmatch(name):
                raise ServeConfigError(
                    f"{key} = {name!r}: allowed: a vLLM parser name (lower-case letters, digits, '_')"
                )
        for key, value in self.default_sampling.items():
            if key not in SAMPLING_KEYS or isinstance(value, bool) or not isinstance(value, int | float):
                raise ServeConfigError(
                    f"default_sampling.{key} = {value!r}: allowed: a number for one of {', '.join(SAMPLING_KEYS)}"
                )
        # The replica's engine liveness call must time out first, or Serve's own timeout
        # (with no word of the engine) would always win it.
        timeout = self.deployment_options.get("health_check_timeout_s")
        if timeout is not None and timeout <= ENGINE_LIVENESS_TIMEOUT_S:
            raise ServeConfigError(
                f"serveOptions health_check_timeout_s = {timeout!r}: allowed: more than "
                f"{ENGINE_LIVENESS_TIMEOUT_S:g} (the replica's engine liveness timeout)"
            )
        if self.routing not in ROUTINGS:
            raise ServeConfigError(f"routing = {self.routing!r}: allowed: {', '.join(ROUTINGS)}")
        if self.routing == "prefix" and self.replicas < 2:
            raise ServeConfigError(
                f"routing = 'prefix' with replicas = {self.replicas}: allowed with 2 or more replicas "
                "(one replica gets every request); use pow2"
            )
        if not self.model_source.startswith("/"):
            raise ServeConfigError(f"model_source = {self.model_source!r}: allowed: an absolute path")
        if self.direct_streaming:
            for key, why in DIRECT_LOSES.items():
                value = getattr(self, key)
                if value and value != DIRECT_KEEPS.get(key):
                    raise ServeConfigError(
                        f"{key} = {getattr(self, key)!r} with direct_streaming: not allowed; {why}"
                    )
        if self.device == "cpu":
            if self.cpu_kvcache_gib < 1:
                raise ServeConfigError(f"cpu_kvcache_gib = {self.cpu_kvcache_gib}: allowed: an integer >= 1")
            if self.cpu_dtype not in CPU_DTYPES:
                raise ServeConfigError(f"cpu_dtype = {self.cpu_dtype!r}: allowed: {', '.join(CPU_DTYPES)}")
            if self.quantization == "fp8":
                raise ServeConfigError(
                    "quantization = 'fp8': allowed on device gpu only (vLLM's CPU build has no FP8 here)"
                )


# What the OpenAI ingress does that the engine's own app cannot, for each ServeInputs field
# that needs it: direct streaming refuses the combination instead of dropping it silently.
DIRECT_LOSES = {
    "schedule": "the 503 naming the next opening comes from the ingress; asleep, no engine replica answers",
    "activity_file": "idle stop reads the head's activity file; the engine replica runs on a worker",
    "ingress_options": "the engine replica is the ingress; set its options in serveOptions' LLM keys",
    "lora_config": "Ray Serve LLM resolves '<model>:<adapter>' in the ingress; the engine's app sees no multiplexed id",
    "routing": "the proxy's call to the engine carries the raw HTTP request, not the prompt prefix routing reads",
}
DIRECT_KEEPS = {"routing": "pow2"}  # the one value of a DIRECT_LOSES key the direct path serves as is


def cluster_env_vars(efa: bool) -> dict[str, str]:
    """Env vars that are the same on every GPU node (runtime_env values must be strings)."""
    env = {
        "NCCL_DEBUG": "WARN",
        "VLLM_USE_V1": "1",
        "HF_HUB_OFFLINE": "1",  # weights are local; private subnets have no route to the Hub
    }
    if efa:
        env["FI_PROVIDER"] = "efa"  # NCCL over EFA via the aws-ofi-nccl plugin
    else:
        env["NCCL_IB_DISABLE"] = "1"  # no InfiniBand/EFA: sockets on the chosen NIC
    return env


def cpu_env_vars(i: ServeInputs) -> dict[str, str]:
    env = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(i.cpu_kvcache_gib)}
    if i.cpu_omp_threads_bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = i.cpu_omp_threads_bind
    return env


def model_default_kwargs(i: ServeInputs) -> dict[str, Any]:
    """The model's serving defaults as vLLM engine/frontend kwargs (Ray Serve LLM sorts them into
    vLLM's AsyncEngineArgs and FrontendArgs by name)."""
    kw: dict[str, Any] = {}
    if i.reasoning_parser:
        # the chat route splits <think>...</think> into the message's `reasoning` (streaming too)
        kw["reasoning_parser"] = i.reasoning_parser
    if i.tool_call_parser:
        kw["enable_auto_tool_choice"] = True
        kw["tool_call_parser"] = i.tool_call_parser
    if i.default_sampling:
        # merged over the checkpoint's generation_config.json; a request's own value wins
        kw["override_generation_config"] = dict(i.default_sampling)
    return kw


def deployment_config(i: ServeInputs) -> dict[str, Any]:
    cfg: dict[str, Any] = {"num_replicas": i.replicas}
    if i.routing == "prefix":
        cfg["request_router_config"] = {
            "request_router_class": PREFIX_ROUTER,
            "request_router_kwargs": dict(PREFIX_ROUTER_KWARGS),
        }
    return cfg


def llm_config(i: ServeInputs) -> dict[str, Any]:
    """The LLMConfig (as a dict) for ray.serve.llm."""
    engine_kwargs: dict[str, Any] = {
        "tensor_parallel_size": i.tensor_parallel_size,
        "pipeline_parallel_size": i.pipeline_parallel_size,
        "max_model_len": i.max_model_len,
        "gpu_memory_utilization": i.gpu_memory_utilization,
        "enable_chunked_prefill": True,
        "enable_prefix_caching": True,
        "trust_remote_code": i.trust_remote_code,
    }
    if i.quantization:
        engine_kwargs["quantization"] = i.quantization
    if i.device == "cpu":
        engine_kwargs["dtype"] = i.cpu_dtype
        # torch.compile on a small CPU host costs 20-50 s per replica start (and its AOT cache
        # does not load back here); eager skips it. Not with PP > 1: vLLM's CPU build only runs
        # pipeline parallelism compiled.
        if i.pipeline_parallel_size == 1:
            engine_kwargs["enforce_eager"] = True
    # The merge point, in order: the planner's and the device's kwargs above, then the model's
    # serving defaults from the catalog, then the stack's engine arguments, which win over both
    # (the plan-owned ones were checked to agree with the plan when the stack resolved).
    engine_kwargs.update(model_default_kwargs(i))
    engine_kwargs.update(i.lora_engine_kwargs)
    engine_kwargs.update(i.engine_args)
    deployment: dict[str, Any] = {**deployment_config(i), **i.deployment_options}
    if "autoscaling_config" in i.deployment_options:
        # Serve refuses a fixed count beside autoscaling; the bounds are the autoscaler's.
        deployment.pop("num_replicas")
    env = cluster_env_vars(i.efa) if i.device == "gpu" else cpu_env_vars(i)
    return {
        "model_loading_config": {"model_id": i.model_id, "model_source": i.model_source},
        # Adapters are not staged: Ray Serve LLM downloads `<path>/<NAME>` on a request for
        # "<model_id>:<NAME>" and keeps the last max_num_adapters_per_replica per replica.
        **({"lora_config": dict(i.lora_config)} if i.lora_config else {}),
        # Ray Serve LLM's LLMServer plus a round trip to the engine core in its health check:
        # vLLM's own check misses a hung core (ray_cluster.serve_app.engine_liveness).
        "server_cls": LIVE_SERVER_CLS,
        # Weights are staged on every host before it joins: no per-node download tasks.
        "callback_config": {"callback_class": STAGED_WEIGHTS_CALLBACK},
        "accelerator_config": {"kind": i.device},
        "engine_kwargs": engine_kwargs,
        "placement_group_config": {
            "bundles": contract.placement_bundles(
                i.tensor_parallel_size, i.pipeline_parallel_size, i.device, i.gpu_model
            ),
            "strategy": contract.placement_strategy(i.device),
        },
        "deployment_config": deployment,
        "runtime_env": {"env_vars": env},
        "experimental_configs": {"stream_batching_interval_ms": STREAM_BATCHING_MS},
    }


def render_serve_config(i: ServeInputs) -> dict[str, Any]:
    """The ServeDeploySchema document for `serve deploy` (a dict; dump with to_yaml)."""
    i.check()
    app = {
        "name": APP_NAME,
        "route_prefix": "/",
        "import_path": SERVE_IMPORT_PATH,
        "args": {
            "llm_configs": [llm_config(i)],
            "api_token_env": i.api_token_env,
            **({"schedule": i.schedule} if i.schedule else {}),
            **({"activity_file": i.activity_file} if i.activity_file else {}),
            "ingress_deployment_config": ingress_deployment(i),
        }
        if not i.direct_streaming
        else {"llm_configs": [llm_config(i)], "api_token_env": i.api_token_env, "direct_streaming": True},
    }
    return {
        # Head only: the load balancer targets the head; the ingress runs there too. Every
        # node (gcsRedis on AWS, the local cluster): each node's proxy routes to its own node's
        # ingress replica first (Serve's RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING), so a
        # worker's proxy needs no head.
        "proxy_location": "EveryNode" if i.ingress_every_node else "HeadOnly",
        "http_options": {"host": "0.0.0.0", "port": i.http_port},
        "applications": [app],
    }


def ingress_deployment(i: ServeInputs) -> dict[str, Any]:
    """The OpenAI ingress deployment's options: pinned to the head, or (ingress_every_node) one
    replica on each of that many nodes. Every replica is the same gated class (serve_app), so the
    bearer check runs wherever a request enters."""
    if not i.ingress_every_node:
        return {
            **i.ingress_options,
            "ray_actor_options": {"num_cpus": 1, "resources": {HEAD_RESOURCE: 0.001}},
        }
    opts: dict[str, Any] = {**i.ingress_options, "max_replicas_per_node": 1}
    if "autoscaling_config" not in opts:
        # one a node, as many as the nodes meant to take one: Serve's spread never doubles up
        opts.setdefault("num_replicas", i.ingress_every_node)
    return {**opts, "ray_actor_options": {"num_cpus": 1}}


# ---------------------------------------------------------------- validation (Ray's own)


def _pydantic_line(what: str, e: ValidationError) -> str:
    err = first_error(e)
    return f"{what}: {err.path}: {err.msg}" if err.path else f"{what}: {err.msg}"


def llm_config_validator():
    """The class behind ray.serve.llm.LLMConfig, or None with the reason when it does not import.

    Ray 2.60's public `ray.serve.llm.LLMConfig` is `class LLMConfig(_LLMConfig): pass` over this
    class (same fields, same validators; tests/test_serve_config.py checks it), but importing
    `ray.serve.llm` imports vLLM: ~10 s of CPU and vLLM's "Triton not installed" line on every
    `render serve-config`. Validating with the class itself needs neither."""

    def load() -> Any:
        from ray.llm._internal.serve.core.configs.llm_config import LLMConfig

        return LLMConfig

    try:
        LLMConfig = _import_ray_validators(load)
    except ImportError as e:
        return None, f"Ray Serve LLM's LLMConfig does not import ({e}); install ray[serve,llm] to validate it"
    return LLMConfig, ""


# What Ray's validator modules import only for later use, never in a validator, each behind an
# optional import Ray itself keeps (they import, and validate, without it):
# - ray.llm's download_utils: `torch = try_import("torch")`, used when a replica downloads a model;
# - LLMConfig's module: `transformers = try_import("transformers")`, used when a replica reads the
#   checkpoint's config (apply_checkpoint_info);
# - ray.serve._private.utils: `try: import pandas as pd`, for the proxy's JSON encoder of a
#   DataFrame response.
# Together they were most of a first render's CPU (torch ~2 s, transformers and pandas ~1 s each
# in a fresh `import` here; a first render 3.6 -> 1.9 s, benchmarks/RESULTS.md),
# so they are hidden while the validators import: the same classes and validators run, in the
# set-up Ray supports without those packages. Each name is then bound back to an import-on-use
# stand-in (the module at first attribute access), so the rest of the process, a test session
# included, sees what it would have. What stays different in such a process: Serve's DataFrame
# encoder is not registered; only a process that serves HTTP through Serve's proxy uses it, and
# Serve's proxy and replicas are Ray actors in processes of their own.
_OPTIONAL_IN_RAY_VALIDATORS = {  # Ray module -> (its global, the module that global names)
    "ray.llm._internal.common.utils.download_utils": ("torch", "torch"),
    "ray.llm._internal.serve.core.configs.llm_config": ("transformers", "transformers"),
    "ray.serve._private.utils": ("pd", "pandas"),
}


_T = TypeVar("_T")


class _ImportOnUse(ModuleType):
    """Stands for an optional module a Ray module bound to None: imports it at first use."""

    def __getattr__(self, attr: str) -> Any:
        import importlib

        return getattr(importlib.import_module(self.__name__), attr)


def _import_ray_validators(load: Callable[[], _T]) -> _T:
    """load() with _hidden_optional_imports; should a Ray need one of them to import its
    validators after all, load() again with it: slower, never a skipped check."""
    try:
        with _hidden_optional_imports():
            return load()
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] not in {real for _, real in _OPTIONAL_IN_RAY_VALIDATORS.values()}:
            raise
    return load()


@contextmanager
def _hidden_optional_imports() -> Iterator[None]:
    """Import Ray's validator modules with their optional heavy imports hidden (see above).

    A no-op for a package the process already imported (nothing to save) or that is not
    installed (Ray binds None either way). Hiding is process-wide for the import's duration:
    validation runs on the thread that calls it, and no other thread of llmfleet imports these."""
    import importlib.util
    import logging
    import sys

    hidden = [
        real
        for _, real in _OPTIONAL_IN_RAY_VALIDATORS.values()
        if real not in sys.modules and importlib.util.find_spec(real) is not None
    ]
    # try_import logs "Could not import torch" at WARNING: the absence is ours, not the user's
    quiet = logging.getLogger("ray.llm._internal.common.utils.import_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    for real in hidden:
        sys.modules[real] = None  # type: ignore[assignment]  # import raises ModuleNotFoundError
    try:
        yield
    finally:
        for real in hidden:
            if sys.modules.get(real, 0) is None:
                del sys.modules[real]
        quiet.setLevel(level)
        for name, (attr, real) in _OPTIONAL_IN_RAY_VALIDATORS.items():
            module = sys.modules.get(name)
            if real in hidden and module is not None and getattr(module, attr, 0) is None:
                setattr(module, attr, _ImportOnUse(real))


def _serve_schemas() -> tuple[Any, Any]:
    """Ray Serve's ServeDeploySchema and DeploymentSchema, imported by _import_ray_validators."""

    def load() -> tuple[Any, Any]:
        from ray.serve.schema import DeploymentSchema, ServeDeploySchema

        return ServeDeploySchema, DeploymentSchema

    return _import_ray_validators(load)


def _validated_marker(doc: Mapping[str, Any]) -> Path | None:
    """Where a document Ray's classes accepted is remembered: keyed by its canonical JSON and the
    installed Ray's version, so the same bytes under the same Ray are not validated again.
    Importing Ray's validators (ray.serve's schema; LLMConfig's module), even without their
    optional imports (_hidden_optional_imports), is most of `render serve-config`'s time, and a stack's config changes far less often than it
    is rendered. Only accepted documents are remembered; anything else is validated every time."""
    import hashlib
    import json
    import os
    from importlib.metadata import PackageNotFoundError, version

    try:
        ray_version = version("ray")
    except PackageNotFoundError:
        return None
    key = hashlib.sha256(json.dumps([ray_version, doc], sort_keys=True, default=str).encode()).hexdigest()
    base = Path(os.environ.get("LLMFLEET_CACHE_DIR") or "~/.cache/llmfleet").expanduser()
    return base / "serve-config-valid" / key


def validate_serve_config(doc: Mapping[str, Any]) -> list[str]:
    """Validate with ServeDeploySchema (always) and LLMConfig (when importable); a document
    accepted before under the same Ray is not validated again (_validated_marker says why).

    Returns notes (e.g. why LLMConfig was skipped); raises ServeConfigError with Ray's message.
    """
    marker = _validated_marker(doc)
    if marker is not None and marker.is_file():
        return []
    notes = _validate_with_ray(doc)
    if marker is not None and not notes:  # a partial check (LLMConfig skipped) is not remembered
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("")
        except OSError:
            pass  # a read-only cache only costs the next run the validation
    return notes


def _validate_with_ray(doc: Mapping[str, Any]) -> list[str]:
    ServeDeploySchema, _ = _serve_schemas()
    try:
        ServeDeploySchema.model_validate(dict(doc))
    except ValidationError as e:
        raise ServeConfigError(_pydantic_line("Ray rejected the Serve config", e)) from None
    notes: list[str] = []
    for app in doc.get("applications", []):
        if app.get("import_path") != SERVE_IMPORT_PATH:
            continue
        cls, why = llm_config_validator()
        if cls is None:
            notes.append(f"LLMConfig not checked: {why}")
            continue
        for cfg in app["args"]["llm_configs"]:
            # LLMConfig's validator imports server_cls, and the server class's base imports
            # vLLM (~10 s, the Triton line): the renderer's own name is checked as a string.
            cfg = dict(cfg)
            server_cls = cfg.pop("server_cls", None)
            if server_cls not in (None, LIVE_SERVER_CLS):
                raise ServeConfigError(
                    f"llm_configs server_cls = {server_cls!r}: allowed: {LIVE_SERVER_CLS!r}"
                )
            try:
                cls.model_validate(cfg)
            except (ValidationError, ValueError) as e:
                msg = _pydantic_line("", e)[2:] if isinstance(e, ValidationError) else str(e)
                raise ServeConfigError(f"Ray Serve LLM rejected the LLMConfig: {msg}") from None
            # LLMConfig keeps both as opaque dicts: Serve and vLLM read them only at deploy.
            validate_deployment_options(cfg.get("deployment_config") or {}, "deployment_config")
            validate_engine_kwargs(
                cfg.get("engine_kwargs") or {}, cfg["model_loading_config"]["model_source"]
            )
        ingress = app["args"].get("ingress_deployment_config") or {}
        validate_deployment_options(ingress, "ingress_deployment_config")
    return notes


def validate_deployment_options(options: Mapping[str, Any], what: str) -> None:
    """Ray Serve's own DeploymentSchema over one deployment's options (its cross-option rules
    included, e.g. num_replicas beside autoscaling_config)."""
    _, DeploymentSchema = _serve_schemas()
    try:
        DeploymentSchema.model_validate({"name": "llmfleet", **options})
    except ValidationError as e:
        raise ServeConfigError(_pydantic_line(f"Ray Serve rejected the {what}", e)) from None


def validate_engine_kwargs(kwargs: Mapping[str, Any], model_source: str) -> None:
    """vLLM's own EngineArgs over the engine kwargs: the fields whose types are vLLM's config
    classes (compilation_config, ...) are checked here, the rest already when the stack loaded
    (infra/catalog/vllm_engine_args.json). Importing vLLM costs ~10 s of CPU and prints its
    Triton line, so it is imported only when such a field (or a key the catalog lacks) is set."""
    # vLLM's FrontendArgs (the OpenAI server's), which Ray Serve LLM takes from the same map and
    # hands to the server, not to EngineArgs (model_default_kwargs renders them)
    kwargs = {k: v for k, v in kwargs.items() if k not in FRONTEND_KWARGS}
    fields = vllm_engine_fields()
    unchecked = [k for k in kwargs if k not in fields or fields[k]["schema"] is None]
    if not unchecked:
        return
    for k in unchecked:
        # EngineArgs turns a mapping into the config class and keeps anything else as it is
        # (a string would fail only when the engine starts, on the hosts)
        kind = fields.get(k, {}).get("type", "")
        if CONFIG_CLASS_RE.fullmatch(kind) and not isinstance(kwargs[k], Mapping):
            raise ServeConfigError(
                f"vLLM rejected the engine_kwargs: {k} = {kwargs[k]!r}: allowed: a mapping of vLLM's {kind} fields"
            )
    from vllm.engine.arg_utils import EngineArgs

    # One key at a time first: vLLM's config class reports its own field (`mode`), not the
    # engine argument it sits in; then all together for EngineArgs' rules across keys.
    for k in unchecked:
        _vllm_engine_args(EngineArgs, model_source, {k: kwargs[k]}, k, fields.get(k, {}).get("type", ""))
    _vllm_engine_args(EngineArgs, model_source, kwargs, "", "")


# A vLLM config class as the catalog names a field's type (CompilationConfig, KernelConfig, ...)
CONFIG_CLASS_RE = re.compile(r"[A-Z][A-Za-z]*Config")


def _vllm_engine_args(cls: Any, model_source: str, kwargs: dict[str, Any], key: str, kind: str) -> None:
    import huggingface_hub.constants as hf

    # With HF_HUB_OFFLINE set (CI, air-gapped operators), EngineArgs.__post_init__ resolves
    # `model` as a Hub repo id, and a host path that exists only on the GPU hosts is refused
    # before any engine argument is looked at. Only the arguments are checked here: the resolve
    # is skipped for the check, and nothing is fetched either way (no engine, no config read).
    offline, hf.HF_HUB_OFFLINE = hf.HF_HUB_OFFLINE, False
    try:
        cls(model=model_source, **kwargs)
    except TypeError as e:  # an argument EngineArgs does not have
        raise ServeConfigError(f"vLLM rejected the engine_kwargs: {e}") from None
    except ValidationError as e:
        err = first_error(e)
        path = ".".join(p for p in (key, err.path) if p)
        if not path:
            raise ServeConfigError(f"vLLM rejected the engine_kwargs: {err.msg}") from None
        if err.type in ("unexpected_keyword_argument", "extra_forbidden"):
            allowed = f"not a field of vLLM's {kind}" if kind else "not a field vLLM knows"
        else:
            allowed = err.allowed()
        raise ServeConfigError(
            f"vLLM rejected the engine_kwargs: {path} = {err.input!r}: {allowed}"
        ) from None
    finally:
        hf.HF_HUB_OFFLINE = offline


def to_yaml(doc: Mapping[str, Any]) -> str:
    """The one YAML form of a rendered Serve config (boot scripts, files, stdout)."""
    import yaml

    return yaml.safe_dump(dict(doc), sort_keys=False, width=100)


# Ray's own ServeDeploySchema, exported as JSON schema for the pinned Ray. Importing ray.serve
# costs more than a second, so the Pulumi program checks against this file (jsonschema); the
# full pydantic check runs in `llmfleet render`, after `llmfleet up`, and in the head's
# `ray_cluster.node deploy` before anything is applied. A test keeps the file equal to Ray's.
SCHEMA_PATH = Path(__file__).parent / "schemas" / "serve_deploy.schema.json"


def export_schema() -> dict[str, Any]:
    import ray
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_json_schema()
    schema["$comment"] = (
        f"ray.serve.schema.ServeDeploySchema.model_json_schema() of ray {ray.__version__}; "
        "regenerate: python -m infra.rayconf.serve_config --export-schema"
    )
    return schema


def validate_with_exported_schema(doc: Mapping[str, Any]) -> None:
    import json

    import jsonschema.exceptions

    schema = json.loads(SCHEMA_PATH.read_text())
    # The schema itself is checked against its metaschema by the tests, not on every run.
    e = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    if e is not None:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise ServeConfigError(f"Serve config rejected by Ray's ServeDeploySchema at {where}: {e.message}")


if __name__ == "__main__":
    import json
    import sys

    if sys.argv[1:] == ["--export-schema"]:
        SCHEMA_PATH.write_text(json.dumps(export_schema(), indent=1, sort_keys=True) + "\n")
        print(f"wrote {SCHEMA_PATH}")
