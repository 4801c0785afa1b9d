"""`llmfleet bench --tune`: a ray.tune search over Serve / vLLM options at a latency budget.

Each trial re-applies the running Serve config with the trial's options (the dashboard's Serve
REST API, as `serve deploy` does), waits until Serve reports the app RUNNING with the options in
force, runs the sweep and reports the objective: the highest output tokens/s of a step whose
TPOT p95 is within the budget and that had no errors (0 when none is). Trials run one at a time:
they share one cluster. The original config is applied again at the end, whatever happened.

Where an option goes, and what it costs (Ray Serve's own update types):
- max_ongoing_requests, max_queued_requests (the LLM server deployment) and
  ingress_max_ongoing_requests (the OpenAI ingress): deployment options in the app's
  `deployments` overrides; the app's code version (import path, args, runtime env) is unchanged,
  so Serve reconfigures the running replicas in place, no engine restarts;
- max_num_seqs, max_num_batched_tokens: vLLM engine args in the LLM config (the app's args), so
  every replica's engine restarts (a minute or more each on a CPU host; minutes on GPUs).

ray.tune runs in a short-lived Ray on this machine (1 CPU): the trials only send HTTP, and the
cluster under test keeps all its resources.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from infra.bench.sweep import BenchError, SweepSpec, Target, run_sweep

LLM_DEPLOYMENT_OPTIONS = {
    "max_ongoing_requests": "max_ongoing_requests",
    "max_queued_requests": "max_queued_requests",
}
INGRESS_OPTIONS = {"ingress_max_ongoing_requests": "max_ongoing_requests"}
ENGINE_OPTIONS = ("max_num_seqs", "max_num_batched_tokens")
IN_PLACE = tuple(LLM_DEPLOYMENT_OPTIONS) + tuple(INGRESS_OPTIONS)
KNOWN = IN_PLACE + ENGINE_OPTIONS
DEFAULT_GRID = {
    "max_num_seqs": [16, 64, 256],
    "max_num_batched_tokens": [2048, 8192],
    "max_ongoing_requests": [16, 64],
}
SEARCHES = ("grid", "random")


def parse_grid(items: list[str]) -> dict[str, list[int]]:
    grid: dict[str, list[int]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or key not in KNOWN:
            raise BenchError(
                f"--grid: {item!r} is not allowed; allowed: KEY=V1,V2 with KEY one of {', '.join(KNOWN)}"
            )
        try:
            vals = [int(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise BenchError(f"--grid: {item!r}: values must be integers, e.g. {key}=4,16") from None
        if not vals or any(v < (-1 if key == "max_queued_requests" else 1) for v in vals):
            raise BenchError(
                f"--grid: {item!r}: allowed: integers >= 1 (max_queued_requests: -1 = unbounded)"
            )
        grid[key] = vals
    return grid or dict(DEFAULT_GRID)


# --- the Serve REST API ---------------------------------------------------------------------------


def _get_json(url: str, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def serve_document(dashboard: str) -> dict:
    """The dashboard's Serve document (GET /api/serve/applications/)."""
    try:
        return _get_json(f"{dashboard.rstrip('/')}/api/serve/applications/")
    except (OSError, ValueError) as e:
        raise BenchError(f"Serve REST API at {dashboard}: {e}; is the dashboard reachable?") from None


def deployed_config(doc: dict) -> dict:
    """The running Serve config as a ServeDeploySchema document (what was last deployed)."""
    apps = [
        a["deployed_app_config"]
        for a in (doc.get("applications") or {}).values()
        if a.get("deployed_app_config")
    ]
    if not apps:
        raise BenchError("the cluster runs no Serve application deployed from a config; nothing to tune")
    http = {k: v for k, v in (doc.get("http_options") or {}).items() if k in ("host", "port", "root_path",
                                                                          "request_timeout_s", "keep_alive_timeout_s")}  # fmt: skip
    out = {
        "proxy_location": doc.get("proxy_location") or "HeadOnly",
        "http_options": http,
        "applications": apps,
    }
    return validated(out)


def validated(cfg: dict) -> dict:
    from ray.serve.schema import ServeDeploySchema

    try:
        return ServeDeploySchema.model_validate(cfg).model_dump(exclude_unset=True)
    except Exception as e:  # pydantic ValidationError: the first error, one line
        raise BenchError(f"Serve config: {str(e).splitlines()[0]}") from None


def deployment_names(doc: dict) -> tuple[str, str, str]:
    """(app, LLM server deployment, ingress deployment) of the running app."""
    for app_name, app in (doc.get("applications") or {}).items():
        deps = list(app.get("deployments") or {})
        llm = [d for d in deps if d.startswith("LLMServer")]
        ingress = [d for d in deps if not d.startswith("LLMServer")]
        if llm:
            return app_name, llm[0], ingress[0] if ingress else ""
    raise BenchError("no LLMServer deployment in the running Serve app; is this a Ray Serve LLM app?")


def trial_config(base: dict, app_name: str, llm: str, ingress: str, params: dict) -> dict:
    """The base config with the trial's options where Serve takes them (see the module doc)."""
    cfg = copy.deepcopy(base)
    app = next(a for a in cfg["applications"] if a["name"] == app_name)
    overrides: dict[str, dict] = {d["name"]: d for d in app.get("deployments", [])}
    for key, value in params.items():
        if key in LLM_DEPLOYMENT_OPTIONS:
            overrides.setdefault(llm, {"name": llm})[LLM_DEPLOYMENT_OPTIONS[key]] = value
        elif key in INGRESS_OPTIONS:
            if not ingress:
                raise BenchError(f"{key}: the app has no ingress deployment")
            overrides.setdefault(ingress, {"name": ingress})[INGRESS_OPTIONS[key]] = value
        elif key in ENGINE_OPTIONS:
            for llm_cfg in app["args"]["llm_configs"]:
                llm_cfg.setdefault("engine_kwargs", {})[key] = value
    if overrides:
        app["deployments"] = list(overrides.values())
    return validated(cfg)


def apply_config(dashboard: str, cfg: dict) -> None:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    try:
        ServeSubmissionClient(dashboard).deploy_applications(cfg)
    except Exception as e:
        raise BenchError(
            f"serve deploy to {dashboard}: {str(e).splitlines()[0] if str(e) else e!r}"
        ) from None


def replica_ids(doc: dict, app_name: str, deployment: str) -> set[str]:
    dep = doc["applications"][app_name]["deployments"].get(deployment) or {}
    return {r.get("replica_id", "") for r in dep.get("replicas") or [] if r.get("state") == "RUNNING"}


def wait_applied(dashboard: str, app_name: str, want: dict[str, dict], timeout: float) -> dict:
    """Poll until the app is RUNNING, every deployment HEALTHY with the wanted options; the doc."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        doc = serve_document(dashboard)
        app = (doc.get("applications") or {}).get(app_name) or {}
        deps = app.get("deployments") or {}
        ok = app.get("status") == "RUNNING" and all(d.get("status") == "HEALTHY" for d in deps.values())
        for name, opts in want.items():
            have = (deps.get(name) or {}).get("deployment_config") or {}
            ok = ok and all(have.get(k) == v for k, v in opts.items())
        if ok:
            return doc
        last = f"app {app.get('status')}: " + ", ".join(f"{n}={d.get('status')}" for n, d in deps.items())
        time.sleep(1.0)
    raise BenchError(f"the Serve config was not in force within {timeout:g} s ({last})")


def objective(steps: list[dict], tpot_budget_ms: float) -> tuple[float, int | None]:
    """(max output tok/s over the steps within the TPOT p95 budget and without errors, its concurrency)."""
    ok = [
        s
        for s in steps
        if not s["errors"] and s["tpot_ms_p95"] is not None and s["tpot_ms_p95"] <= tpot_budget_ms
    ]
    if not ok:
        return 0.0, None
    best = max(ok, key=lambda s: s["output_tokens_per_s"])
    return best["output_tokens_per_s"], best["concurrency"]


# --- the search -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneSpec:
    grid: dict[str, list[int]]
    search: str = "grid"
    samples: int = 4  # random search only
    tpot_budget_ms: float = 200.0
    apply_timeout_s: float = 600.0
    seed: int = 0

    def check(self) -> None:
        if self.search not in SEARCHES:
            raise BenchError(f"--search: {self.search!r} is not allowed; allowed: {', '.join(SEARCHES)}")
        if self.samples < 1:
            raise BenchError(f"--samples: {self.samples} is not allowed; allowed: an integer >= 1")
        if self.tpot_budget_ms <= 0:
            raise BenchError(f"--tpot-budget-ms: {self.tpot_budget_ms} is not allowed; allowed: > 0")

    def restarts_engines(self) -> bool:
        return any(k in ENGINE_OPTIONS for k in self.grid)


def _param_space(spec: TuneSpec) -> dict:
    from ray import tune

    pick = tune.grid_search if spec.search == "grid" else tune.choice
    return {k: pick(v) for k, v in spec.grid.items()}


def run_tune(
    target: Target,
    dashboard: str,
    sweep: SweepSpec,
    spec: TuneSpec,
    vocab: list[int],
    log: Callable[[str], None] = lambda m: None,
) -> dict:
    """Run the search; returns {"trials": [...], "best": {...} | None, "restored": bool}."""
    spec.check()
    sweep.check()
    doc = serve_document(dashboard)
    base = deployed_config(doc)
    app_name, llm, ingress = deployment_names(doc)

    def trainable(params: dict) -> None:
        from ray import tune

        cfg = trial_config(base, app_name, llm, ingress, params)
        want: dict[str, dict] = {}
        for k, v in params.items():
            if k in LLM_DEPLOYMENT_OPTIONS:
                want.setdefault(llm, {})[LLM_DEPLOYMENT_OPTIONS[k]] = v
            elif k in INGRESS_OPTIONS:
                want.setdefault(ingress, {})[INGRESS_OPTIONS[k]] = v
        before = replica_ids(serve_document(dashboard), app_name, llm)
        t0 = time.monotonic()
        apply_config(dashboard, cfg)
        time.sleep(2.0)  # the controller takes the new target before it reports on it
        after_doc = wait_applied(dashboard, app_name, want, spec.apply_timeout_s)
        applied_s = time.monotonic() - t0
        steps = [s.to_dict() for s in run_sweep(target, sweep, vocab)]
        value, at = objective(steps, spec.tpot_budget_ms)
        tune.report(
            {
                "objective": value,
                "best_concurrency": at,
                "apply_seconds": round(applied_s, 1),
                "engines_restarted": replica_ids(after_doc, app_name, llm) != before,
                "steps": steps,
            }
        )

    import ray
    from ray import tune

    storage = tempfile.mkdtemp(prefix="llmfleet-tune-")
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=False, object_store_memory=80 * 1024 * 1024)  # fmt: skip
    restored = False
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space=_param_space(spec),
            tune_config=tune.TuneConfig(
                metric="objective",
                mode="max",
                num_samples=1 if spec.search == "grid" else spec.samples,
                max_concurrent_trials=1,  # one cluster: trials must not overlap
            ),
            run_config=tune.RunConfig(storage_path=storage, name="bench", verbose=0),
        )
        # Tune's own reporting goes to stderr: stdout carries --json.
        with contextlib.redirect_stdout(sys.stderr):
            grid = tuner.fit()
        trials = []
        for r in grid:
            if r.error or not r.metrics:
                trials.append(
                    {"config": r.config, "error": str(r.error).splitlines()[0] if r.error else "no result"}
                )
                continue
            m = r.metrics
            trials.append({"config": r.config, **{k: m[k] for k in ("objective", "best_concurrency",
                                                                  "apply_seconds", "engines_restarted", "steps")}})  # fmt: skip
            log(
                f"trial {r.config}: {m['objective']:.1f} tok/s within budget (applied in {m['apply_seconds']} s)"
            )
    finally:
        ray.shutdown()
        try:
            apply_config(dashboard, base)
            wait_applied(dashboard, app_name, {}, spec.apply_timeout_s)
            restored = True
        except BenchError as e:
            log(f"could not restore the original Serve config: {e}")
    scored = [t for t in trials if "objective" in t]
    best = (
        max(scored, key=lambda t: t["objective"])
        if scored and max(t["objective"] for t in scored) > 0
        else None
    )
    return {
        "app": app_name,
        "deployments": {"llm": llm, "ingress": ingress},
        "tpot_budget_ms": spec.tpot_budget_ms,
        "search": spec.search,
        "grid": spec.grid,
        "trials": trials,
        "best": best
        and {
            "config": best["config"],
            "objective": best["objective"],
            "best_concurrency": best["best_concurrency"],
            "serve_config": trial_config(base, app_name, llm, ingress, best["config"]),
        },  # fmt: skip
        "restored": restored,
    }
