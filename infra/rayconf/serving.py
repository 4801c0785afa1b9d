"""The Serve config of a stack: ServeInputs from its config, plan and outputs (operator side).

infra.rayconf.serve_config renders and validates the document from ServeInputs alone; this module
is what knows the stack: the catalog (served model id, native dtype, EFA) and the outputs'
layout. Both programs, `llmfleet render`, `llmfleet up` and the on-prem bootstrap call it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from infra.catalog import ServingDefaults, load_catalog
from infra.rayconf.serve_config import (
    DEFAULT_TOKEN_ENV,
    ServeConfigError,
    ServeInputs,
    render_serve_config,
    to_yaml,
    validate_engine_kwargs,
    validate_serve_config,
    validate_with_exported_schema,
)
from infra.stack import serve_autoscaling
from infra.stack.config import AwsStackConfig
from infra.stack.engine_options import ingress_options, llm_options, unchecked
from infra.stack.lora import LoraSettings
from ray_cluster import contract

if TYPE_CHECKING:
    from infra.stack.config import StackConfig
    from infra.stack.planner import Plan


def served_model_id(model: str) -> str:
    """The id clients send as "model" (and readiness asks for): the checkpoint's Hub name."""
    cat = load_catalog()
    return cat.models[model].hf_repo if model in cat.models else model


def serve_inputs_from_stack(outputs: Mapping[str, Any], cfg: StackConfig, plan: Plan) -> ServeInputs:
    """ServeInputs from the stack outputs (what is deployed) and the plan (engine knobs).

    The outputs' layout must equal the plan's: a config changed since the last `up` would
    otherwise deploy a layout the hardware does not have.
    """

    def need(key: str) -> Any:
        if outputs.get(key) in (None, ""):
            raise ServeConfigError(f"stack output {key!r} is missing")
        return outputs[key]

    tp, pp = int(need("tensor_parallel_size")), int(need("pipeline_parallel_size"))
    replicas = int(outputs.get("replicas") or cfg.replicas)
    if (tp, pp) != (plan.tensor_parallel_size, plan.pipeline_parallel_size):
        raise ServeConfigError(
            f"stack outputs have TP {tp} x PP {pp} but the plan for the current config is "
            f"TP {plan.tensor_parallel_size} x PP {plan.pipeline_parallel_size}; run `pulumi up` first"
        )
    model = str(need("model"))
    cat = load_catalog()
    native = cat.models[model].native_dtype if model in cat.models else None
    # Dynamic FP8 is the only non-native scheme vLLM applies at load; int8/int4 need their own
    # pre-quantized checkpoints, which carry their method in config.json.
    quant = "fp8" if plan.quantization == "fp8" and native and native != "fp8" else None
    defaults = cat.models[model].serving_defaults if model in cat.models else None
    inst = cat.instances.get(cfg.gpu_instance_type)
    efa = bool(inst and inst.efa) and cfg.provider == "aws"
    return ServeInputs(
        model_id=served_model_id(model),
        model_source=str(need("model_path")),
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        max_model_len=int(outputs.get("max_model_len") or plan.max_model_len),
        gpu_memory_utilization=float(plan.gpu_memory_utilization),
        gpu_model=str(need("gpu_model")),
        efa=efa,
        quantization=quant,
        api_token_env=DEFAULT_TOKEN_ENV,
        http_port=cfg.endpoint_port,
        replicas=replicas,
        trust_remote_code=cfg.effective_trust_remote_code,
        **serving_default_inputs(defaults),
        routing=cfg.routing,
        # llmfleet:engineArgs / serveOptions: checked against vLLM's and Ray's schemas and the plan
        engine_args=dict(cfg.engine_args),
        **lora_inputs(cfg.lora),
        deployment_options=deployment_options(cfg, plan, replicas),
        ingress_options=ingress_options(cfg.serve_options),
        schedule=cfg.schedule,
        activity_file=contract.ACTIVITY_FILE if cfg.idle_stop_minutes else None,
        ingress_every_node=ingress_hosts(cfg, outputs, plan),
    )


def ingress_hosts(cfg: StackConfig, outputs: Mapping[str, Any], plan: Plan) -> int:
    """How many ingress replicas (one a host) the stack's Serve app runs; 0 = the head only.

    With llmfleet:gcsRedis on AWS the NLB targets every serving host's proxy (infra/components/
    endpoint.py), so each host gets a proxy (`proxy_location: EveryNode`) and one replica of the
    gated ingress (`max_replicas_per_node: 1`): the head and every worker group's host at full
    scale. A worker's proxy then answers with its own ingress and engine replicas while the head
    is replaced, as the local cluster's do (infra/local/layout.py ingress_hosts).

    Why a fixed count at full scale, from Ray 2.60's Serve (ray/serve/_private/): while a host is
    missing (replaced, or its group scaled down by a schedule or idle stop), the ingress replica
    it held dies, fails its health check and marks the ingress deployment UNHEALTHY
    (deployment_state.py `_stop_replica_mark_unhealthy_if_target_version`); its replacement asks
    for the per-deployment implicit resource every node holds one of (deployment_scheduler.py,
    `max_replicas_per_node`), so it waits in PENDING_ALLOCATION, which is neither a startup
    failure nor DEPLOY_FAILED (deployment_state.py `_check_startup_replicas` only warns), and
    the deployment turns HEALTHY again once the host is back and the replica is placed
    (`check_curr_status`: target == running). The other replicas keep serving meanwhile. The
    same missing host holds an engine rank, so the LLM server deployment is UNHEALTHY for the
    same time: the app's status, which is all the deploy watcher reads (ray_cluster/watch.py
    AppBackoff, serve_rest.app_needs_restart: never deletes a deployment that still has RUNNING
    replicas), is the one it has without the ingress replicas, so they add no re-apply and no
    alarm. A count below the hosts would leave some host's proxy without a local ingress (it
    forwards to another host's, the head's too); autoscaling the ingress would not keep one on
    each host. The head (0 GPUs) and the workers are all serving hosts on AWS: no trainer hosts."""
    if not isinstance(cfg, AwsStackConfig) or not cfg.gcs_redis:
        return 0
    workers = outputs.get("workers")
    return 1 + (int(workers) if workers not in (None, "") else cfg.resolved_workers(plan))


def deployment_options(cfg: StackConfig, plan: Plan, replicas: int) -> dict[str, Any]:
    """The LLM server's deployment options: llmfleet:serveOptions with autoscaling_config (when
    set) filled in from the plan: target = a replica's planned concurrency, the downscale delay
    from its modeled engine reload (infra.stack.serve_autoscaling)."""
    options = llm_options(cfg.serve_options)
    if options.get(serve_autoscaling.KEY) is None:
        return options
    concurrency = serve_autoscaling.per_replica_concurrency(
        cfg.engine_args, plan.effective_concurrency or plan.concurrency
    )
    reload = serve_autoscaling.reload_s(plan.cold_start_terms)
    return serve_autoscaling.resolve(options, replicas, concurrency, reload)


def lora_inputs(settings: LoraSettings | None) -> dict[str, Any]:
    """ServeInputs fields from llmfleet:lora (None: no adapters)."""
    if settings is None:
        return {}
    return {"lora_config": settings.lora_config(), "lora_engine_kwargs": settings.engine_kwargs()}


def serving_default_inputs(defaults: ServingDefaults | None) -> dict[str, Any]:
    """ServeInputs fields from a catalog model's serving_defaults (None: vLLM's own behaviour)."""
    if defaults is None:
        return {}
    return {
        "reasoning_parser": defaults.reasoning_parser,
        "tool_call_parser": defaults.tool_call_parser,
        "default_sampling": defaults.sampling.as_generation_config(),
    }


def render_for_outputs(
    outputs: Mapping[str, Any], cfg: StackConfig, plan: Plan
) -> tuple[dict[str, Any], list[str]]:
    """The Serve config from real stack outputs, validated by Ray's own models: the document
    and the validation notes (what could not be checked here)."""
    doc = render_serve_config(serve_inputs_from_stack(outputs, cfg, plan))
    return doc, validate_serve_config(doc)


def render_for_plan(cfg: StackConfig, plan: Plan) -> dict[str, Any]:
    """The Serve config a stack will deploy, from its config and plan alone (what the head's
    boot script writes before any output exists). Same renderer as `llmfleet render`."""
    # The serving outputs the program will export, so both paths render from the same keys.
    outputs = serving_outputs(cfg, plan, cfg.resolved_workers(plan))
    doc = render_serve_config(serve_inputs_from_stack(outputs, cfg, plan))
    validate_with_exported_schema(doc)
    if unchecked(cfg.engine_args):
        # A value of one of vLLM's own config classes (compilation_config, ...): only vLLM can
        # check it, and importing it costs seconds, so only a stack that sets one pays for it.
        llm = doc["applications"][0]["args"]["llm_configs"][0]
        validate_engine_kwargs(llm["engine_kwargs"], llm["model_loading_config"]["model_source"])
    return doc


def serve_config_yaml(cfg: StackConfig, plan: Plan) -> str:
    """The Serve config the head deploys, as YAML (validated by Ray's schema on render).
    Raises ServeConfigError with one line."""
    return to_yaml(render_for_plan(cfg, plan))


def serving_outputs(cfg: StackConfig, plan: Plan, workers: int) -> dict[str, Any]:
    """What the renderers (cluster.yaml, Serve config) need, the same for every provider."""
    return {
        "model": cfg.model,
        # the id the Serve app serves, what clients send as "model" and readiness asks for
        "served_model": served_model_id(cfg.model),
        "model_path": cfg.model_path,
        "quantization": cfg.effective_quantization,
        # the planner's context: maxModelLen as set, or what auto picked from the KV cache
        "max_model_len": plan.max_model_len,
        "gpu_model": cfg.gpu_model,
        "gpus_per_worker": cfg.gpus_per_worker,
        "workers": workers,
        "replicas": cfg.replicas,
        "tensor_parallel_size": plan.tensor_parallel_size,
        "pipeline_parallel_size": plan.pipeline_parallel_size,
        "endpoint_port": cfg.endpoint_port,
    }
