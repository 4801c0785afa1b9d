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

The best trial's options are written as stack config (`stack_fragment`: llmfleet:serveOptions
and llmfleet:engineArgs), so a stack deploys them from then on.

ray.tune runs in a short-lived Ray on this machine (1 CPU): the trials only send HTTP, and the
cluster under test keeps all its resources.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from infra.bench.sweep import BenchError, SweepSpec, Target, run_sweep
from ray_cluster import serve_rest
from ray_cluster.driver import NodeError

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


def serve_document(dashboard: str) -> dict:
    """The dashboard's Serve document (the node's own Serve REST client), as a BenchError."""
    try:
        return serve_rest.serve_document(dashboard)
    except NodeError as e:
        raise BenchError(f"{e}; is the dashboard reachable?") from None


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
        return ServeDeploySchema.model_validate(cfg).model_dump(mode="json", exclude_unset=True)
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
    """`serve deploy` of cfg through the node's own client (ray_cluster.serve_rest)."""
    try:
        serve_rest.serve_deploy(dashboard, cfg)
    except NodeError as e:
        raise BenchError(str(e)) from None


def replica_ids(doc: dict, app_name: str, deployment: str) -> set[str]:
    dep = doc["applications"][app_name]["deployments"].get(deployment) or {}
    return {r.get("replica_id", "") for r in dep.get("replicas") or [] if r.get("state") == "RUNNING"}


def deployment_options(doc: dict, app_name: str, names: tuple[str, ...]) -> dict[str, dict]:
    """The in-place options now in force, per deployment (what a restore waits for)."""
    deps = doc["applications"][app_name].get("deployments") or {}
    keys = set(LLM_DEPLOYMENT_OPTIONS.values()) | set(INGRESS_OPTIONS.values())
    return {
        n: {k: v for k, v in (deps[n].get("deployment_config") or {}).items() if k in keys}
        for n in names
        if n in deps
    }


def wait_applied(
    dashboard: str,
    app_name: str,
    want: dict[str, dict],
    timeout: float,
    replaced: tuple[str, set] | None = None,
) -> dict:
    """Poll until the app is RUNNING, every deployment HEALTHY with the wanted options and, with
    `replaced` = (deployment, old replica ids), none of those replicas left; the doc."""
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
        if ok and replaced is not None:
            ok = not replica_ids(doc, app_name, replaced[0]) & replaced[1]
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


@dataclass(frozen=True)
class App:
    """The Serve app under test: where it is, its deployments and the config it was deployed with."""

    dashboard: str
    name: str
    llm: str
    ingress: str
    base: dict

    def wanted(self, params: dict) -> dict[str, dict]:
        """{deployment: {option: value}} of a trial's in-place options (what wait_applied checks)."""
        want: dict[str, dict] = {}
        for k, v in params.items():
            if k in LLM_DEPLOYMENT_OPTIONS:
                want.setdefault(self.llm, {})[LLM_DEPLOYMENT_OPTIONS[k]] = v
            elif k in INGRESS_OPTIONS:
                want.setdefault(self.ingress, {})[INGRESS_OPTIONS[k]] = v
        return want

    def config_for(self, params: dict) -> dict:
        return trial_config(self.base, self.name, self.llm, self.ingress, params)


def apply_trial(app: App, params: dict, timeout: float) -> tuple[float, bool]:
    """Apply a trial's config and wait until it is in force: (seconds, engines restarted)."""
    cfg = app.config_for(params)
    now = serve_document(app.dashboard)
    before = replica_ids(now, app.name, app.llm)
    # New engine args (the app's args) replace every LLM replica: wait for new ones.
    engine_change = any(k in ENGINE_OPTIONS for k in params) and (
        deployed_config(now)["applications"] != cfg["applications"]
    )
    t0 = time.monotonic()
    apply_config(app.dashboard, cfg)
    time.sleep(2.0)  # the controller takes the new target before it reports on it
    doc = wait_applied(
        app.dashboard, app.name, app.wanted(params), timeout, (app.llm, before) if engine_change else None
    )
    return time.monotonic() - t0, replica_ids(doc, app.name, app.llm) != before


def make_trainable(app: App, target: Target, sweep: SweepSpec, spec: TuneSpec, vocab: list[int]):
    def trainable(params: dict) -> None:
        from ray import tune

        applied_s, restarted = apply_trial(app, params, spec.apply_timeout_s)
        steps = [s.to_dict() for s in run_sweep(target, sweep, vocab)]
        value, at = objective(steps, spec.tpot_budget_ms)
        tune.report({"objective": value, "best_concurrency": at, "apply_seconds": round(applied_s, 1),
                     "engines_restarted": restarted, "steps": steps})  # fmt: skip

    return trainable


TRIAL_KEYS = ("objective", "best_concurrency", "apply_seconds", "engines_restarted", "steps")


def fit(trainable, spec: TuneSpec, log: Callable[[str], None]) -> list[dict]:
    """Run the trials one at a time in a short-lived Ray; one dict per trial."""
    import ray
    from ray import tune

    storage = tempfile.mkdtemp(prefix="llmfleet-tune-")
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=False, object_store_memory=80 * 1024 * 1024)  # fmt: skip
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
        with contextlib.redirect_stdout(sys.stderr):  # Tune's own reporting; stdout carries --json
            grid = tuner.fit()
    finally:
        ray.shutdown()
    trials = []
    for r in grid:
        if r.error or not r.metrics:
            trials.append(
                {"config": r.config, "error": str(r.error).splitlines()[0] if r.error else "no result"}
            )
            continue
        trials.append({"config": r.config, **{k: r.metrics[k] for k in TRIAL_KEYS}})
        log(f"trial {r.config}: {r.metrics['objective']:.1f} tok/s within budget "
            f"(applied in {r.metrics['apply_seconds']} s)")  # fmt: skip
    shutil.rmtree(storage, ignore_errors=True)  # Tune's files: every figure is in `trials` now
    return trials


def run_tune(
    target: Target,
    dashboard: str,
    sweep: SweepSpec,
    spec: TuneSpec,
    vocab: list[int],
    log: Callable[[str], None] = lambda m: None,
) -> dict:
    """Run the search, then restore the original config; {"trials", "best" | None, "restored"}."""
    spec.check()
    sweep.check()
    doc = serve_document(dashboard)
    app = App(dashboard, *deployment_names(doc), base=deployed_config(doc))
    original = deployment_options(doc, app.name, (app.llm, app.ingress))
    restored = False
    try:
        trials = fit(make_trainable(app, target, sweep, spec, vocab), spec, log)
    finally:
        try:
            apply_config(dashboard, app.base)
            time.sleep(2.0)
            wait_applied(dashboard, app.name, original, spec.apply_timeout_s)
            restored = True
        except BenchError as e:
            log(f"could not restore the original Serve config: {e}")
    scored = [t for t in trials if t.get("objective")]
    best = max(scored, key=lambda t: t["objective"]) if scored else None
    return {
        "app": app.name,
        "deployments": {"llm": app.llm, "ingress": app.ingress},
        "tpot_budget_ms": spec.tpot_budget_ms,
        "search": spec.search,
        "grid": spec.grid,
        "trials": trials,
        "best": best
        and {
            "config": best["config"],
            "objective": best["objective"],
            "best_concurrency": best["best_concurrency"],
            "serve_config": app.config_for(best["config"]),
        },  # fmt: skip
        "restored": restored,
    }


# --- the best trial as stack config ----------------------------------------------------------------

ENGINE_ARGS_KEY = "llmfleet:engineArgs"
SERVE_OPTIONS_KEY = "llmfleet:serveOptions"


def stack_fragment(params: dict) -> dict:
    """A trial's options as the stack keys that carry them (infra.stack.engine_options):
    {"config": {"llmfleet:serveOptions": {...}, "llmfleet:engineArgs": {...}}}, the shape of a
    stack file, so its `config:` entries merge into stacks/Pulumi.<stack>.yaml as they are."""
    serve: dict = {}
    engine: dict = {}
    for key, value in params.items():
        if key in LLM_DEPLOYMENT_OPTIONS:
            serve[LLM_DEPLOYMENT_OPTIONS[key]] = value
        elif key in INGRESS_OPTIONS:
            serve.setdefault("ingress", {})[INGRESS_OPTIONS[key]] = value
        elif key in ENGINE_OPTIONS:
            engine[key] = value
        else:
            raise BenchError(f"{key}: not a tuned option; allowed: {', '.join(KNOWN)}")
    config = {}
    if serve:
        config[SERVE_OPTIONS_KEY] = serve
    if engine:
        config[ENGINE_ARGS_KEY] = engine
    return {"config": config}


def fragment_text(best: dict, tpot_budget_ms: float) -> str:
    """The --best-out file: the fragment, with what it scored and the `-c` form of each key."""
    import json

    import yaml

    frag = stack_fragment(best["config"])
    head = [
        f"# llmfleet bench --tune: {best['objective']:.1f} output tok/s at TPOT p95 <= {tpot_budget_ms:g} ms"
        + (f" (concurrency {best['best_concurrency']})" if best.get("best_concurrency") else ""),
        "# Merge `config:` into stacks/Pulumi.<stack>.yaml, or pass it with -c:",
        *[f"#   -c '{k}={json.dumps(v)}'" for k, v in frag["config"].items()],
    ]
    return "\n".join(head) + "\n" + yaml.safe_dump(frag, sort_keys=False)
