"""`llmfleet bench`: a bounded load sweep of a running endpoint, beside the planner's prediction;
`--tune`: a ray.tune search over Serve / vLLM options at a TPOT budget (infra.bench)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from infra.bench import calibration, sweep, targets, tune
from infra.bench.plot import write_plot
from infra.commands._common import JsonOpt, complete_stack, console, err_console, fail, print_json
from infra.commands._fit import Col, fitted_table
from infra.stack.config import ConfigError
from infra.stack.files import load_config

HELP = (
    "Measure a running endpoint: a load sweep through the OpenAI API (streaming completions, prompts "
    "of exactly --input-len tokens of the served tokenizer, --output-len tokens out), one step per "
    "concurrency, each bounded by a request count or duration and a time limit. Per step: requests/s, "
    "output tok/s, TTFT and TPOT p50/p95, errors, beside the planner's figures for the stack's layout. "
    "Load goes only to the target endpoint.\n\n"
    "Targets: --local (the `llmfleet local` cluster), --stack NAME (endpoint from the stack outputs, "
    "token from SSM; --endpoint may name a tunnel), or --endpoint URL --token-env VAR.\n\n"
    "--calibrate appends the result to the calibration file that `llmfleet plan` reads "
    "($LLMFLEET_CALIBRATION_FILE, default ~/.config/llmfleet/calibration.json). --tune runs a ray.tune "
    "search (--grid KEY=V1,V2 ...) and writes the best options as stack config (--best-out: "
    "llmfleet:serveOptions / llmfleet:engineArgs, for a stack file or -c)."
)


def _fmt(v, places: int = 1) -> str:
    return "-" if v is None else f"{v:,.{places}f}"


def render_steps(steps: list[dict], title: str) -> None:
    """One row per concurrency step. Figures never split; the errors (kinds and counts) wrap
    between words; at 80 columns the planner's TTFT, then its TPOT, then its tok/s make room
    (--json has them)."""

    cols = [
        Col("conc.", whole=True, justify="right"),
        Col("req ok/sent", whole=True, justify="right"),
        Col("errors", justify="right"),
        Col("req/s", whole=True, justify="right"),
        Col("out tok/s", whole=True, justify="right"),
        Col("TTFT ms p50/p95", whole=True, justify="right"),
        Col("TPOT ms p50/p95", whole=True, justify="right"),
        Col("planner tok/s", whole=True, justify="right", drop=1),
        Col("planner TPOT ms", whole=True, justify="right", drop=2),
        Col("planner TTFT ms", whole=True, justify="right", drop=3),
    ]
    rows = []
    for s in steps:
        errs = ", ".join(f"{k} {v}" for k, v in s["errors"].items()) or "0"
        p = s.get("predicted") or {}
        rows.append(
            [
                str(s["concurrency"]),
                f"{s['succeeded']}/{s['requests']}",
                Text(errs, style="red" if s["errors"] else ""),
                _fmt(s["requests_per_s"], 2),
                _fmt(s["output_tokens_per_s"]),
                f"{_fmt(s['ttft_ms_p50'])}/{_fmt(s['ttft_ms_p95'])}",
                f"{_fmt(s['tpot_ms_p50'])}/{_fmt(s['tpot_ms_p95'])}",
                _fmt(p.get("output_tokens_per_s")) if p.get("fits") else "-",
                _fmt(p.get("tpot_ms")) if p.get("fits") else "-",
                _fmt(p.get("ttft_ms"), 0) if p.get("fits") else "-",
            ]
        )
    console.print(fitted_table(console, cols, rows, title=title))


def _trust_remote_code(stack: str | None) -> bool:
    """The tokenizer runs remote code only where the stack's engine does (its config says so);
    the local cluster's tiny model and a bare endpoint never need it, nor does a stack whose
    config is not here (the safe side: the tokenizer then fails to load, with the reason)."""
    if not stack:
        return False

    try:
        return load_config(stack, []).effective_trust_remote_code
    except ConfigError:
        return False


def _resolve(local: bool, name: str, stack: str | None, outputs: Path | None, endpoint: str | None,
             token_env: str | None, model: str | None, tokenizer: str | None):  # fmt: skip

    chosen = [
        w for w, on in (("--local", local), ("--stack", stack), ("--endpoint", endpoint and not stack)) if on
    ]
    if len(chosen) != 1:
        fail(
            "target: "
            + (f"{' and '.join(chosen)} together" if chosen else "missing")
            + "; allowed: one of --local, --stack NAME, --endpoint URL --token-env VAR"
        )
    if local:
        r = targets.local_target(name)
        return r if tokenizer is None else targets.Resolved(r.target, tokenizer, r.dashboard, r.model_dir)
    if stack:
        return targets.stack_target(stack, outputs, endpoint, token_env, tokenizer)
    return targets.endpoint_target(endpoint, token_env, model, tokenizer)  # type: ignore[arg-type]


# The command's options (module level, so its signature stays short).
LocalOpt = Annotated[bool, typer.Option("--local", help="The local cluster (`llmfleet local up`).")]
NameOpt = Annotated[str, typer.Option("--name", help="Local cluster name.")]
TargetStackOpt = Annotated[
    str | None, typer.Option("--stack", "-s", autocompletion=complete_stack, help="A deployed stack.")
]
OutputsOpt = Annotated[
    Path | None,
    typer.Option("--outputs", help="JSON of `pulumi stack output --json` (with --stack)."),
]
EndpointOpt = Annotated[str | None, typer.Option("--endpoint", help="OpenAI base URL (…/v1).")]
TokenEnvOpt = Annotated[str | None, typer.Option("--token-env", help="Env var holding the endpoint's token.")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Served model id (default: /v1/models).")]
TokenizerOpt = Annotated[
    str | None,
    typer.Option("--tokenizer", help="Local dir of the served tokenizer (--local: the model dir)."),
]
ConcurrencyOpt = Annotated[str, typer.Option("--concurrency", help="Concurrencies, one step each.")]
InputLenOpt = Annotated[int, typer.Option("--input-len", help="Prompt tokens per request.")]
OutputLenOpt = Annotated[int, typer.Option("--output-len", help="Output tokens per request.")]
RequestsOpt = Annotated[
    int | None, typer.Option("--requests", help="Requests per step (default 4 x concurrency, >= 8).")
]
DurationOpt = Annotated[
    float | None,
    typer.Option("--duration", help="Seconds per step to send requests (instead of a count)."),
]
StepTimeoutOpt = Annotated[float, typer.Option("--step-timeout", help="Time limit of one step, s.")]
PlanStackOpt = Annotated[
    str | None,
    typer.Option(
        "--plan-stack",
        autocompletion=complete_stack,
        help="Stack whose plan to compare with (default: --stack; none for --local).",
    ),
]
PlotOpt = Annotated[
    Path | None, typer.Option("--plot", help="Write tok/s vs TPOT, measured and predicted (PNG).")
]
CalibrateOpt = Annotated[
    bool, typer.Option("--calibrate", help="Append the result to the calibration file `plan` reads.")
]
TuneOpt = Annotated[bool, typer.Option("--tune", help="ray.tune search over Serve / vLLM options.")]
GridOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--grid",
        metavar="KEY=V1,V2",
        help="Repeatable: max_ongoing_requests, max_queued_requests, "
        "ingress_max_ongoing_requests (in place), max_num_seqs, max_num_batched_tokens (restart engines).",
    ),
]
SearchOpt = Annotated[str, typer.Option("--search", help="grid or random.")]
SamplesOpt = Annotated[int, typer.Option("--samples", help="Trials of a random search.")]
TpotBudgetMsOpt = Annotated[float, typer.Option("--tpot-budget-ms", help="TPOT p95 budget of the objective.")]
DashboardOpt = Annotated[
    str | None,
    typer.Option("--dashboard", help="Ray dashboard URL for --tune (--local: the head's)."),
]
BestOutOpt = Annotated[
    Path,
    typer.Option(
        "--best-out",
        help="Where --tune writes the best options as stack config (llmfleet:serveOptions / engineArgs).",
    ),
]


def bench_cmd(
    local: LocalOpt = False,
    name: NameOpt = "local",
    stack: TargetStackOpt = None,
    outputs: OutputsOpt = None,
    endpoint: EndpointOpt = None,
    token_env: TokenEnvOpt = None,
    model: ModelOpt = None,
    tokenizer: TokenizerOpt = None,
    concurrency: ConcurrencyOpt = "1,4,8",
    input_len: InputLenOpt = 128,
    output_len: OutputLenOpt = 32,
    requests: RequestsOpt = None,
    duration: DurationOpt = None,
    step_timeout: StepTimeoutOpt = 120.0,
    plan_stack: PlanStackOpt = None,
    plot: PlotOpt = None,
    calibrate: CalibrateOpt = False,
    tune_: TuneOpt = False,
    grid: GridOpt = None,
    search: SearchOpt = "grid",
    samples: SamplesOpt = 4,
    tpot_budget_ms: TpotBudgetMsOpt = 200.0,
    dashboard: DashboardOpt = None,
    best_out: BestOutOpt = Path("bench-best.yaml"),
    as_json: JsonOpt = False,
) -> None:

    try:
        spec = sweep.SweepSpec(sweep.parse_concurrencies(concurrency), input_len, output_len, requests,
                               duration, step_timeout)  # fmt: skip
        spec.check()
        resolved = _resolve(local, name, stack, outputs, endpoint, token_env, model, tokenizer)
        if resolved.tokenizer is None:
            fail("--tokenizer: missing; allowed: a local directory with the served model's tokenizer")
        lay = calibration.layout_for_stack(s) if (s := plan_stack or stack) else None
        vocab = sweep.prompt_vocabulary(sweep.load_tokenizer(resolved.tokenizer, _trust_remote_code(stack)))
        if tune_:
            _tune(resolved, dashboard, spec, grid, search, samples, tpot_budget_ms, vocab, best_out, as_json)
            return
        if calibrate and lay is None:
            fail("--calibrate: no planner layout to calibrate; allowed: with --stack or --plan-stack NAME")
        doc = _sweep(resolved, spec, lay, vocab, plot, calibrate)
    except sweep.BenchError as e:
        fail(str(e), code=1)
    if as_json:
        print_json(doc)
        return
    render_steps(doc["steps"], _title(resolved, lay, input_len, output_len))
    if lay is None:
        console.print("planner: no layout to compare with (pass --plan-stack NAME)", highlight=False)
    if plot is not None:
        console.print(f"plot: {plot}", highlight=False)
    if calibrate:
        console.print(f"calibration: appended to {doc['calibration']['file']}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("bench", help=HELP)(bench_cmd)


def _sweep(resolved, spec, lay, vocab: list[int], plot: Path | None, calibrate: bool) -> dict:
    """Run the sweep; the --json document (steps beside the planner, plot data, calibration entry)."""

    steps = sweep.run_sweep(
        resolved.target,
        spec,
        vocab,
        on_step=lambda s: err_console.print(
            f"[dim]concurrency {s.concurrency}: {s.succeeded}/{s.requests} ok, "
            f"{s.output_tokens_per_s:,.1f} out tok/s[/]",
            highlight=False,
        ),
    )
    calibration.attach_predictions(steps, lay, spec.input_len, spec.output_len)
    doc = {
        "target": {
            "source": resolved.target.source,
            "endpoint": resolved.target.endpoint,
            "model": resolved.target.model,
        },
        "input_len": spec.input_len,
        "output_len": spec.output_len,
        "plan_layout": calibration.layout_dict(lay),
        "steps": [s.to_dict() for s in steps],
    }
    if plot is not None:
        doc["plot"] = {
            "file": str(plot),
            **write_plot(steps, plot, _title(resolved, lay, spec.input_len, spec.output_len)),
        }
    if calibrate:
        entry = calibration.entry_from_sweep(
            lay, steps, resolved.target.source, spec.input_len, spec.output_len
        )
        doc["calibration"] = {"file": str(calibration.append_entry(entry)), "entry": entry}
    return doc


def _title(resolved, lay, input_len: int, output_len: int) -> str:
    t = f"{resolved.target.model} at {resolved.target.endpoint} ({input_len} in / {output_len} out tokens)"
    if lay:
        t += f"; planner: {lay.stack} ({lay.model} on {lay.gpu}, TP {lay.tensor_parallel_size} x PP {lay.pipeline_parallel_size})"
    return t


def _tune(
    resolved, dashboard, spec, grid, search, samples, budget, vocab, best_out: Path, as_json: bool
) -> None:

    url = dashboard or resolved.dashboard
    if not url:
        fail(
            "--dashboard: missing; allowed: the Ray dashboard URL (e.g. through the stack's SSM port forward)"
        )
    tspec = tune.TuneSpec(tune.parse_grid(grid or []), search, samples, budget)
    if tspec.restarts_engines():
        err_console.print("[yellow]note:[/] engine args in the grid restart every replica's engine per trial",
                          highlight=False)  # fmt: skip
    result = tune.run_tune(
        resolved.target, url, spec, tspec, vocab, log=lambda m: err_console.print(m, highlight=False)
    )
    if result["best"]:
        # A stack-config fragment (llmfleet:serveOptions / engineArgs): what a stack file or -c takes.
        try:
            best_out.write_text(tune.fragment_text(result["best"], budget))
        except OSError as e:
            fail(f"--best-out {str(best_out)!r}: {e.strerror}")
        result["best_file"] = str(best_out)
        result["best"]["stack_config"] = tune.stack_fragment(result["best"]["config"])["config"]
    if as_json:
        print_json(result)
    else:
        t = Table(title=f"ray.tune {search} search, TPOT p95 <= {budget:g} ms")
        for col in (*tspec.grid, "tok/s within budget", "at conc.", "applied in s", "engines restarted"):
            t.add_column(col, justify="right")
        for tr in result["trials"]:
            if "objective" not in tr:
                t.add_row(
                    *[str(tr["config"].get(k)) for k in tspec.grid], f"[red]{tr['error']}[/]", "-", "-", "-"
                )
                continue
            t.add_row(*[str(tr["config"].get(k)) for k in tspec.grid], _fmt(tr["objective"]),
                      str(tr["best_concurrency"] or "-"), _fmt(tr["apply_seconds"]), str(tr["engines_restarted"]))  # fmt: skip
        console.print(t)
        if result["best"]:
            console.print(f"best: {result['best']['config']} -> {best_out}", highlight=False)
        else:
            console.print("best: none met the TPOT budget", highlight=False)
        console.print(f"original Serve config restored: {result['restored']}", highlight=False)
    if not result["restored"]:
        raise typer.Exit(1)
