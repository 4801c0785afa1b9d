"""`llmfleet:engineArgs` and `llmfleet:serveOptions`: any vLLM engine argument and any Ray Serve
deployment option from the stack, checked against the installed vLLM's and Ray's own schemas.

Ray Serve LLM hands `engine_kwargs` to vLLM as they are, and a deployment's options to Serve; so
does llmfleet, on top of the planner's values (TP, PP, max_model_len, ...), which stay the
defaults. Three checks, each a one-line ConfigError naming `llmfleet:engineArgs.<key>`:

- the key: a field of vLLM's EngineArgs (infra/catalog/vllm_engine_args.json, generated from the
  pinned vLLM) or of Ray's DeploymentSchema (the exported ServeDeploySchema beside the Serve
  config renderer); an unknown key gets a did-you-mean;
- the value's type: the field's JSON schema where the type is a plain one; vLLM's own config
  classes (compilation_config, ...) are checked by vLLM's EngineArgs at the final render;
- the plan: the knobs that the planner, the cost or the policy pack read are typed stack keys
  (`OWNED`); the map may repeat their value, never contradict it (`check_config` when the
  config loads, `check_plan` once the plan is known, in infra.stack.resolve).

Light on purpose: jsonschema and two JSON files, no vLLM or Ray import (`llmfleet cost` starts
in well under a second of its own; importing vLLM takes ~15 s).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from infra.catalog.engine_args import engine_args, vllm_version
from infra.stack import serve_autoscaling, suggest

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError as SchemaError

    from infra.stack.config import StackConfig
    from infra.stack.planner import Plan

ENGINE_KEY = "llmfleet:engineArgs"
SERVE_KEY = "llmfleet:serveOptions"
# serveOptions.ingress: the OpenAI ingress deployment's options (the rest: the LLM server's).
INGRESS = "ingress"
AUTOSCALING = serve_autoscaling.KEY

# Engine arguments that only a typed key sets: the value comes from elsewhere in the render.
REFUSED_ENGINE = {
    "model": "the weights' path comes from llmfleet:model and llmfleet:weightsPath",
    "served_model_name": "the served id is llmfleet:model's catalog name",
    "tokenizer": "the tokenizer is the checkpoint's, staged with the weights",
    "quantization": "set llmfleet:quantization (the planner and the cost read it)",
    "distributed_executor_backend": "Ray Serve LLM runs the engine on Ray",
    "data_parallel_size": "engine replicas are llmfleet:replicas (each gets its own hosts)",
    # The Serve config sits in the hosts' node scripts as plain text, and nothing comes from the Hub.
    "hf_token": "the Serve config holds no secrets, and the weights are staged, not downloaded",
    # A Python file vLLM imports into every engine process: the trust-remote-code rule's concern.
    # LoRA goes through one key, so a model the catalog refuses cannot get it, and Ray's adapter
    # slots (lora_config) and vLLM's stay the same number.
    **dict.fromkeys(
        ("enable_lora", "max_loras", "max_lora_rank", "max_cpu_loras"),
        "set llmfleet:lora (adapters, maxAdapters, maxRank)",
    ),  # fmt: skip
    "reasoning_parser_plugin": "vLLM would import a Python file from the hosts (llmfleet stages none)",
    # Paths on the hosts that llmfleet neither creates nor checks; the media one lets a request
    # read the hosts' files.
    **dict.fromkeys(
        (
            "download_dir",
            "hf_config_path",
            "allowed_local_media_path",
            "mm_encoder_fp8_scale_path",
            "mm_encoder_fp8_scale_save_path",
        ),
        "a path on the hosts that llmfleet neither stages nor checks",
    ),  # fmt: skip
}
# Deployment options Ray Serve LLM or the plan sets.
REFUSED_SERVE = {
    "name": "Ray Serve LLM names its deployments",
    "placement_group_bundles": "the engine's bundles come from the plan (TP x PP per replica)",
    "placement_group_strategy": "the engine's bundles come from the plan (TP x PP per replica)",
    "placement_group_bundle_label_selector": "the engine's bundles come from the plan",
    "ray_actor_options": "a replica's resources are its placement bundles, its env the Serve config's",
    "deployment_actors": "actors beside the replicas would need resources the plan does not provision",
}
REFUSED_INGRESS = {
    **REFUSED_SERVE,
    "ray_actor_options": "the ingress is pinned to the head (its CPU and the head's resource)",
    "num_replicas": "the ingress runs once, on the head",
    "autoscaling_config": "the ingress runs once, on the head",
}
# Keys these maps may repeat but never contradict: who decides them (the README lists them).
OWNED = {
    "tensor_parallel_size": "the plan (llmfleet:gpuInstanceType, llmfleet:workerCount)",
    "pipeline_parallel_size": "the plan (llmfleet:gpuInstanceType, llmfleet:workerCount)",
    "max_model_len": "llmfleet:maxModelLen",
    "gpu_memory_utilization": "llmfleet:gpuMemoryUtilization",
    "trust_remote_code": "llmfleet:trustRemoteCode",
    "num_replicas": "llmfleet:replicas",
}


class OptionError(ValueError):
    """One line: `<map>.<key> = <value>: <what is allowed>`."""

    def __init__(self, key: str, value: Any, allowed: str):
        shown = json.dumps(value) if not isinstance(value, str) else repr(value)
        super().__init__(f"{key} = {shown}: {allowed}")


def _typed(value: Any, owner: str) -> str:
    return f"allowed: {json.dumps(value)} or unset ({owner} decides it)"


# ---------------------------------------------------------------- keys and types (config load)


def _validator(schema: Mapping[str, Any]) -> Any:
    """jsonschema's Draft 2020-12 validator (typed Any: its stub's methods are partly untyped)."""
    import jsonschema

    return jsonschema.Draft202012Validator(dict(schema))


def check_engine_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """Each key a vLLM EngineArgs field, each plain-typed value of its type; the map itself."""
    fields = engine_args()
    for key, value in args.items():
        where = f"{ENGINE_KEY}.{key}"
        if key not in fields:
            hint = suggest.did_you_mean(key, fields).strip()
            raise OptionError(
                where, value, f"not an argument of vLLM {vllm_version()}'s EngineArgs; "
                + (hint or "allowed: its fields (`python -m vllm.entrypoints.openai.api_server --help`)"),
            )  # fmt: skip
        if key in REFUSED_ENGINE:
            raise OptionError(where, value, f"not allowed here: {REFUSED_ENGINE[key]}")
        schema = fields[key]["schema"]
        if schema is not None and not _validator(schema).is_valid(value):
            raise OptionError(where, value, f"allowed: {fields[key]['type']} (vLLM {vllm_version()})")
    return dict(args)


def unchecked(args: Mapping[str, Any]) -> list[str]:
    """The keys whose values only vLLM can check (its own config classes: no schema here)."""
    fields = engine_args()
    return [k for k in args if k in fields and fields[k]["schema"] is None]


@cache
def _serve_schema() -> dict[str, Any]:
    # Ray's ServeDeploySchema as JSON schema, kept equal to the pinned Ray's by a test.
    path = Path(__file__).parent.parent / "rayconf" / "schemas" / "serve_deploy.schema.json"
    return json.loads(path.read_text())


def deployment_fields() -> list[str]:
    return list(_serve_schema()["$defs"]["DeploymentSchema"]["properties"])


def _check_deployment(
    options: Mapping[str, Any], prefix: str, refused: Mapping[str, str], extra: tuple[str, ...] = ()
) -> None:
    schema = _serve_schema()
    fields = deployment_fields()
    for key, value in options.items():
        where = f"{prefix}.{key}"
        if key not in fields:
            names = [f for f in fields if f not in refused] + list(extra)
            hint = suggest.did_you_mean(key, names).strip()
            allowed = ", ".join(names)
            raise OptionError(
                where,
                value,
                f"not an option of Ray Serve's DeploymentSchema; {hint or 'allowed: ' + allowed}",
            )
        if key in refused:
            raise OptionError(where, value, f"not allowed here: {refused[key]}")
        prop = schema["$defs"]["DeploymentSchema"]["properties"][key]
        if isinstance(value, Mapping):
            _check_nested(where, cast(Mapping[str, Any], value), prop, schema["$defs"])
        err = _first(_validator({"$defs": schema["$defs"], **prop}), value)
        if err is not None:
            inner = "".join(f".{p}" for p in err.absolute_path)
            raise OptionError(
                f"{where}{inner}", err.instance, f"{_allowed(err)} (Ray Serve's DeploymentSchema)"
            )
    whole = {"$defs": schema["$defs"], "$ref": "#/$defs/DeploymentSchema"}
    # Rules across options (e.g. num_replicas with autoscaling_config) are Ray's model validators:
    # the final render runs them (infra.rayconf.serve_config.validate_serve_config).
    err = _first(_validator(whole), {**options, "name": "x"})
    if err is not None:
        raise OptionError(prefix, dict(options), f"{_allowed(err)} (Ray Serve's DeploymentSchema)")


def _check_nested(
    where: str, value: Mapping[str, Any], prop: Mapping[str, Any], defs: Mapping[str, Any]
) -> None:
    """A map option's keys against its model's fields (autoscaling_config, ...): Ray's models
    ignore an unknown key, so a typo there would silently leave Ray's default in force."""
    refs = [o["$ref"] for o in [prop, *prop.get("anyOf", [])] if "$ref" in o]
    model: Mapping[str, Any] = defs.get(refs[0].rsplit("/", 1)[-1], {}) if refs else {}
    fields: list[str] = list(model.get("properties") or {})
    for key, v in value.items():
        if fields and key not in fields:
            hint = suggest.did_you_mean(key, fields).strip()
            raise OptionError(
                f"{where}.{key}", v, f"not a field of Ray Serve's {model.get('title', 'model')}; "
                + (hint or "allowed: " + ", ".join(fields)),
            )  # fmt: skip
    if refs:
        # The generic-object branch of the option's anyOf would accept any values: the model's.
        err = _first(_validator({"$defs": dict(defs), "$ref": refs[0]}), value)
        if err is not None:
            inner = "".join(f".{p}" for p in err.absolute_path)
            raise OptionError(
                f"{where}{inner}", err.instance, f"{_allowed(err)} (Ray Serve's {model.get('title')})"
            )


def _first(validator: Any, value: Any) -> SchemaError | None:
    from jsonschema.exceptions import best_match  # pyright: ignore[reportUnknownVariableType] - its key= is untyped

    return cast("SchemaError | None", best_match(validator.iter_errors(value)))


_BOUNDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}


def _allowed(err: SchemaError) -> str:
    """A jsonschema error as "allowed: ..." where its keyword says what would be."""
    keyword, want = str(err.validator), cast(Any, err.validator_value)
    if keyword in _BOUNDS:
        return f"allowed: a number {_BOUNDS[keyword]} {want}"
    if keyword == "enum":
        return "allowed: " + ", ".join(json.dumps(v) for v in want)
    if keyword == "type":
        kinds = cast(list[Any], want) if isinstance(want, list) else [want]
        return "allowed: " + " or ".join(f"a JSON {k}" for k in kinds)
    return f"not allowed: {err.message}"


def check_serve_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The LLM server deployment's options, and under `ingress` the OpenAI ingress's.
    `autoscaling_config: auto` is llmfleet's: the plan's defaults (infra.stack.serve_autoscaling)."""
    llm = llm_options(options)
    auto = llm.get(AUTOSCALING)
    if isinstance(auto, str):
        if auto != serve_autoscaling.AUTO:
            raise OptionError(
                f"{SERVE_KEY}.{AUTOSCALING}", auto,
                f"allowed: '{serve_autoscaling.AUTO}' (llmfleet's defaults from the plan) or a map of "
                "Ray Serve's AutoscalingConfig fields (over those defaults)",
            )  # fmt: skip
        llm[AUTOSCALING] = {}  # Ray's schema sees a map; the defaults are filled in at render
    _check_deployment(llm, SERVE_KEY, REFUSED_SERVE, extra=(INGRESS,))
    if INGRESS in options:
        ingress = options[INGRESS]
        if not isinstance(ingress, Mapping):
            raise OptionError(
                f"{SERVE_KEY}.{INGRESS}", ingress, "allowed: a map of the ingress deployment's options"
            )
        _check_deployment(cast(Mapping[str, Any], ingress), f"{SERVE_KEY}.{INGRESS}", REFUSED_INGRESS)
    return dict(options)


def llm_options(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k != INGRESS}


def ingress_options(options: Mapping[str, Any]) -> dict[str, Any]:
    return dict(options.get(INGRESS) or {})


# ---------------------------------------------------------------- against the stack and the plan


def _same(where: str, value: Any, want: Any, owner: str) -> None:
    if value != want:
        raise OptionError(where, value, _typed(want, owner))


def check_config(cfg: StackConfig) -> None:
    """What the config alone decides: the typed keys' values, the replicas the stack has hosts for."""
    eng, serve = cfg.engine_args, llm_options(cfg.serve_options)
    if "gpu_memory_utilization" in eng:
        _same(f"{ENGINE_KEY}.gpu_memory_utilization", eng["gpu_memory_utilization"],
              cfg.gpu_memory_utilization, OWNED["gpu_memory_utilization"])  # fmt: skip
    if "trust_remote_code" in eng:
        # The policy pack's advisory and the catalog's reasons read the typed key: the map must
        # not turn vLLM's checkpoint code on behind them (nor off for a model that needs it).
        _same(f"{ENGINE_KEY}.trust_remote_code", eng["trust_remote_code"],
              cfg.effective_trust_remote_code, OWNED["trust_remote_code"])  # fmt: skip
    _check_replicas(serve, cfg.replicas, "llmfleet:replicas")


def _check_replicas(serve: Mapping[str, Any], replicas: int, owner: str) -> None:
    if "num_replicas" in serve:
        _same(f"{SERVE_KEY}.num_replicas", serve["num_replicas"], replicas, owner)
    auto = serve.get(AUTOSCALING)
    if auto == serve_autoscaling.AUTO and replicas < 2:
        # min 1 and max <= replicas: nothing to scale. Said here, not left to look on.
        raise OptionError(
            f"{SERVE_KEY}.{AUTOSCALING}", auto,
            f"allowed with {owner} >= 2 (it is {replicas}: Serve autoscales between 1 and "
            f"{owner} replicas); unset it or raise {owner}",
        )  # fmt: skip
    if isinstance(auto, Mapping):
        auto = cast(Mapping[str, Any], auto)
        n = auto.get("min_replicas")
        if isinstance(n, int) and n < serve_autoscaling.MIN_REPLICAS:
            raise OptionError(
                f"{SERVE_KEY}.{AUTOSCALING}.min_replicas", n,
                f"allowed: >= {serve_autoscaling.MIN_REPLICAS} (at zero replicas the endpoint answers "
                "503 'waking' and no request reaches Serve to scale one up; to stop the hosts use "
                "llmfleet:idleStopMinutes or llmfleet:schedule)",
            )  # fmt: skip
        # Every replica needs its own worker hosts, and the stack has `replicas`' worth.
        for key in ("max_replicas", "initial_replicas", "min_replicas"):
            n = auto.get(key)
            if isinstance(n, int) and n > replicas:
                raise OptionError(
                    f"{SERVE_KEY}.autoscaling_config.{key}", n,
                    f"allowed: <= {owner} = {replicas} (there are worker hosts for {replicas} "
                    f"replica{'s' if replicas != 1 else ''}; raise {owner})",
                )  # fmt: skip


def _check_layout(eng: Mapping[str, Any], tp: int, pp: int, label: str, detail: str, owner: str) -> None:
    for key, want in (("tensor_parallel_size", tp), ("pipeline_parallel_size", pp)):
        if key in eng and eng[key] != want:
            what = key.replace("_", " ").removesuffix(" size") + " size"
            raise OptionError(
                f"{ENGINE_KEY}.{key}", eng[key],
                f"{label} {what} is {want} ({detail}); allowed: {want} or unset ({owner})",
            )  # fmt: skip


def check_local(engine: Mapping[str, Any], serve: Mapping[str, Any], tp: int, pp: int, replicas: int) -> None:
    """`llmfleet local up -c`: the same keys and types, held to the local layout (--tp, --pp,
    one replica per worker host); the tiny model runs no checkpoint code."""
    check_engine_args(engine)
    check_serve_options(serve)
    _check_layout(engine, tp, pp, "the local layout's", f"--tp {tp} --pp {pp}", "--tp and --pp decide it")
    if "trust_remote_code" in engine:
        _same(
            f"{ENGINE_KEY}.trust_remote_code", engine["trust_remote_code"], False, "the tiny model is native"
        )
    _check_replicas(llm_options(serve), replicas, "--hosts - 1")


def check_plan(cfg: StackConfig, plan: Plan) -> None:
    """What the plan decides: the layout and the sequence length the KV cache is sized for."""
    eng = cfg.engine_args
    hosts = f"host{'s' if plan.nodes != 1 else ''}"
    _check_layout(
        eng, plan.tensor_parallel_size, plan.pipeline_parallel_size, "the plan's",
        f"{plan.gpus_per_node}x {plan.gpu} per host, {plan.nodes} {hosts} per replica",
        "llmfleet:gpuInstanceType and llmfleet:workerCount decide the layout",
    )  # fmt: skip
    if "max_model_len" in eng and eng["max_model_len"] != plan.max_model_len:
        n = eng["max_model_len"]
        why = (
            f"the plan's KV cache holds {plan.kv_cache_tokens} tokens"
            if n > plan.kv_cache_tokens
            else f"the plan sizes the KV cache for {plan.max_model_len}"
        )
        raise OptionError(
            f"{ENGINE_KEY}.max_model_len", n,
            f"{why}; allowed: {plan.max_model_len} or unset (set llmfleet:maxModelLen: the planner sizes for it)",
        )  # fmt: skip
