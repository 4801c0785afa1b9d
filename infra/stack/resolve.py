"""`resolve(cfg) -> Stack`: a stack's config with everything derived from it, computed once.

The plan (layout, fit, speeds), the worker count and the replicas are derived from the config
by the planner, which is not free at 32 workers; the program, the renderers, the preflight and
the policy runner each take this one answer instead of asking the config again.
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.stack import engine_options
from infra.stack.config import ConfigError, StackConfig
from infra.stack.config_values import MAX_WORKERS
from infra.stack.planner import Plan, plan_for_stack


@dataclass(frozen=True)
class Stack:
    cfg: StackConfig
    plan: Plan
    workers: int  # worker hosts: replicas x nodes per replica (or the declared hosts)

    @property
    def replicas(self) -> int:
        return self.cfg.replicas

    @property
    def nodes_per_replica(self) -> int:
        return self.workers // self.cfg.replicas


def resolve(cfg: StackConfig) -> Stack:
    plan = plan_for_stack(cfg)
    if cfg.max_model_len != "auto" and plan.weights_gib_per_gpu <= plan.usable_gib_per_gpu:
        if plan.kv_cache_tokens < cfg.max_model_len:
            # The weights fit but not one sequence of the set length: the engine would refuse to
            # start on every host, so stop here rather than after the hosts are paid for.
            raise ConfigError(
                f"llmfleet:maxModelLen = {cfg.max_model_len}: the KV cache of {plan.nodes} x "
                f"{plan.gpus_per_node} {plan.gpu} holds {plan.kv_cache_tokens:,} tokens, fewer than one "
                f"sequence of it; allowed: 'auto' or up to {plan.kv_cache_tokens:,}"
            )
    workers = cfg.resolved_workers(plan)
    if workers > MAX_WORKERS:
        # workerCount 'auto' = replicas x the planner's nodes: only known once the plan is.
        raise ConfigError(
            f"llmfleet:replicas = {cfg.replicas}: workerCount 'auto' makes {cfg.replicas} x {plan.nodes} = "
            f"{workers} workers; allowed: replicas x nodes per replica ({plan.nodes}) <= {MAX_WORKERS}"
        )
    try:
        # llmfleet:engineArgs may repeat the plan's layout and length, never contradict them.
        engine_options.check_plan(cfg, plan)
    except engine_options.OptionError as e:
        raise ConfigError(str(e)) from None
    return Stack(cfg=cfg, plan=plan, workers=workers)
