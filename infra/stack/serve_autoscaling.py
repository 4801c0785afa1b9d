"""Serve autoscaling over the replicas a stack has: `llmfleet:serveOptions.autoscaling_config`.

Off unless the stack asks: without `autoscaling_config` the LLM server runs `llmfleet:replicas`
replicas, fixed. On AWS the worker hosts are billed whether a replica holds their GPUs or not,
so releasing an idle replica saves nothing; it only frees the GPUs for other Ray work on the
cluster (`llmfleet batch`) and costs an engine reload (minutes) when the next burst comes.

`autoscaling_config: auto` turns it on with the defaults below, derived from the plan; a map
turns it on with its own fields over the same defaults. Over them, not over Ray's: Ray Serve
LLM deep-merges `target_ongoing_requests: 1e9` under a user's autoscaling map
(ray.llm ... server/builder.py DEFAULT_DEPLOYMENT_OPTIONS), so a map without the target would
never scale up on load. The field names are Ray Serve 2.60's AutoscalingConfig; the final render
validates the result with Ray's own DeploymentSchema (infra.rayconf.serve_config).

Pure: numbers in, a dict out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

AUTO = "auto"
KEY = "autoscaling_config"
# Never below one replica: the serving gate answers 503 "waking" while no engine replica runs
# (ray_cluster.serve_app.cluster_state), so no request would reach Serve's handle to scale a
# replica back up from zero; and a replica's reload is minutes, a request would wait that long.
MIN_REPLICAS = 1
# Scale up soon: the new replica's engine reload (minutes) comes on top of the decision.
UPSCALE_DELAY_S = 15.0
# Scale down only after long idle: a released replica's next start is a whole engine reload.
# At least half an hour, and at least this many reloads' time.
DOWNSCALE_DELAY_FLOOR_S = 1800.0
RELOAD_MULTIPLE = 3
# The cold-start terms a replica pays again on hosts that stay up (weights on local NVMe, image
# pulled, Ray joined): infra.stack.coldstart's term names.
RELOAD_TERMS = ("engine load", "compile + CUDA graphs", "first token")


def reload_s(cold_start_terms: Iterable[Mapping[str, Any]] | None) -> float | None:
    """Seconds to start an engine replica again on hosts that stay (None: the plan has no
    cold-start model for this hardware, e.g. hosts you own of a type the catalog lacks)."""
    terms = [t for t in cold_start_terms or () if t.get("name") in RELOAD_TERMS]
    return sum(float(t["seconds"]) for t in terms) if terms else None


def per_replica_concurrency(engine_args: Mapping[str, Any], planned: int) -> int:
    """Requests one replica serves at once: the plan's concurrency (what its speeds are for,
    capped by the KV cache), or vLLM's max_num_seqs where the stack sets it lower: past it the
    engine queues, and a queue is what another replica is for."""
    cap = engine_args.get("max_num_seqs")
    n = min(planned, cap) if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else planned
    return max(1, int(n))


def defaults(replicas: int, concurrency: int, reload: float | None) -> dict[str, Any]:
    """The autoscaling_config `auto` stands for: one replica at least, every replica the stack
    has hosts for at most and at the start (the deploy's readiness waits for every replica's
    slots anyway, and a fresh deploy proves each replica loads), scale up when a replica has
    more than its planned batch in flight, down only after long idle."""
    down = max(DOWNSCALE_DELAY_FLOOR_S, RELOAD_MULTIPLE * reload) if reload else DOWNSCALE_DELAY_FLOOR_S
    return {
        "min_replicas": MIN_REPLICAS,
        "max_replicas": replicas,
        "initial_replicas": replicas,
        "target_ongoing_requests": concurrency,
        "upscale_delay_s": UPSCALE_DELAY_S,
        "downscale_delay_s": round(down),
    }


def resolve(
    options: Mapping[str, Any], replicas: int, concurrency: int, reload: float | None
) -> dict[str, Any]:
    """The LLM server's deployment options with `autoscaling_config` filled in: unchanged when
    it is absent (autoscaling off), the defaults for `auto`, the stack's fields over the
    defaults for a map (its own max_replicas also bounds the default initial_replicas)."""
    out = dict(options)
    asked = out.get(KEY)
    if asked is None:
        out.pop(KEY, None)
        return out
    base = defaults(replicas, concurrency, reload)
    if asked == AUTO:
        out[KEY] = base
        return out
    merged = {**base, **dict(asked)}
    if "initial_replicas" not in asked:
        merged["initial_replicas"] = max(merged["min_replicas"], min(replicas, merged["max_replicas"]))
    out[KEY] = merged
    return out


def describe(autoscaling: Mapping[str, Any] | None) -> str:
    """One line for `cost`/`plan`-style output: the bounds, and that the bill does not move."""
    if not autoscaling:
        return ""
    return (
        f"Serve autoscaling: {autoscaling['min_replicas']}-{autoscaling['max_replicas']} engine "
        f"replicas (target {autoscaling['target_ongoing_requests']:g} requests each, down after "
        f"{autoscaling['downscale_delay_s']:g} s idle); the worker hosts stay up and billed, so it "
        "does not change this cost"
    )
