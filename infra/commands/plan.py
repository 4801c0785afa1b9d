"""`llmfleet plan`: the capacity planner for a model on a GPU, or across every GPU (--compare)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from infra.bench.calibration import calibrate_plan
from infra.bench.sweep import BenchError
from infra.catalog import QUANTIZATIONS, load_catalog
from infra.commands._common import (
    JsonOpt,
    complete_gpu,
    complete_model,
    console,
    err_console,
    fail,
    print_json,
    resolve_id,
)
from infra.commands._fit import Col, dropped, fitted_table
from infra.stack.compare import compare as compare_gpus
from infra.stack.lora import refusal
from infra.stack.planner import PlanInputError, plan
from infra.stack.serving_hours import worker_hours
from infra.stack.units import fmt_gib
from ray_cluster.schedule import ScheduleError, parse_schedule

if TYPE_CHECKING:
    from infra.stack.compare import CompareRow
    from infra.stack.planner import Plan

EXIT_DOES_NOT_FIT = 3


def _money(v: float | None, places: int = 2) -> str:
    return "-" if v is None else f"{v:,.{places}f}"


def capped_line(effective: int, requested: int, kv_tokens: int, seq_len: int) -> str:
    return (
        f"concurrency capped: the KV cache holds {kv_tokens:,} tokens = {effective} sequences of "
        f"{seq_len:,} tokens (input + output), fewer than --concurrency {requested}; "
        f"the speeds are for {effective}"
    )


def _fits_cell(p: Plan) -> str:
    if not p.fits:
        return "[red]no[/]"
    if p.concurrency_capped:  # it fits, but not at the concurrency asked: say so where it says yes
        return f"[yellow]yes, at concurrency {p.effective_concurrency} (not {p.concurrency})[/]"
    return "[green]yes[/]"


def _plan_rows(p: Plan) -> list[tuple[str, str]]:
    """The plan table's rows: layout and memory, then (when it fits) speed, cost and cold start."""
    conc = f"{p.effective_concurrency}"
    if p.concurrency_capped:
        conc = f"[yellow]{p.effective_concurrency} (capped from {p.concurrency})[/]"
    rows = [
        ("fits", _fits_cell(p)),
        ("nodes x GPUs per node", f"{p.nodes} x {p.gpus_per_node}"),
        ("tensor x pipeline parallel", f"{p.tensor_parallel_size} x {p.pipeline_parallel_size}"),
        ("layers per stage", ", ".join(map(str, p.stage_layers))),
        # the checkpoint on disk (with DeepSeek's MTP layer) beside what the engine loads of it
        ("checkpoint on disk", fmt_gib(load_catalog().models[p.model].checkpoint_gib)),
        ("weights loaded", fmt_gib(p.weights_gib_total)),
        ("weights per GPU", fmt_gib(p.weights_gib_per_gpu)),
        ("usable per GPU", f"{p.usable_gib_per_gpu:.1f} GiB"),
        ("KV cache per GPU", f"{p.kv_cache_gib_per_gpu:.1f} GiB"),
        ("KV bytes per token per GPU", f"{p.kv_bytes_per_token_per_gpu:,}"),
        ("max model len", f"{p.max_model_len:,}" + (" (auto)" if p.max_model_len_auto else "")),
        (
            "full-length sequences in KV",
            f"{p.max_concurrent_sequences:,}"
            + (f" (target {p.target_concurrency})" if p.max_model_len_auto else ""),
        ),
    ]
    if p.fits:
        rows += [
            ("concurrency (speeds below are for it)", conc),
            ("per user: decode tok/s (TPOT)", f"{p.decode_tokens_per_s_per_user:,.1f} ({p.tpot_ms:,.1f} ms)"),
            ("  of TPOT, fixed per-step cost", f"{p.fixed_ms_per_token:,.1f} ms"),
            ("  pipeline bubble", f"{p.pipeline_bubble:.0%}"),
            ("cluster: decode tok/s expected", f"{p.decode_tokens_per_s_expected:,.0f}"),
            ("cluster: decode tok/s ceiling (roofline)", f"{p.decode_tokens_per_s_ceiling:,.0f}"),
            (f"TTFT ({p.input_len:,}-token prompt, idle)", f"{p.ttft_ms:,.0f} ms"),
            ("  of TTFT, serving path (measured)", f"{p.ttft_serving_path_ms:,.0f} ms"),
            (
                "engine efficiency (fitted)",
                f"{p.efficiency:.0%} of peak bandwidth, {p.layer_overhead_us:,.0f} us per layer",
            ),
        ]
        if p.calibration:
            c = p.calibration
            rows += [
                (
                    f"calibrated: decode tok/s (TPOT), {c['points']} measured points",
                    f"{c['decode_tokens_per_s_expected']:,.0f} ({c['tpot_ms']:,.1f} ms)",
                ),
                ("  measured / predicted tok/s", f"{c['tokens_per_s_ratio']:.2f}x  ({c['source']})"),
            ]
        if p.instance_type:
            rows += [
                (f"AWS: {p.nodes} x {p.instance_type}", f"{_money(p.usd_per_hour)} USD/h"),
                ("USD per 1M output tokens", _money(p.usd_per_million_output_tokens, 3)),
            ]
        else:
            rows.append(("AWS", f"no instance type with {p.gpus_per_node}x {p.gpu} in the catalog"))
        if p.cold_start_s is not None:
            rows.append(
                (
                    "cold start: boot -> first token",
                    f"{p.cold_start_s:,.0f} s ({_money(p.cold_start_usd)} USD)",
                )
            )
    return rows


def render_plan(p: Plan) -> None:
    t = Table(title=f"{p.model} on {p.gpu} ({p.quantization}, {p.engine})", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    for k, v in _plan_rows(p):
        t.add_row(k, v)
    console.print(t)
    if p.concurrency_capped:
        console.print(
            "[yellow]"
            + capped_line(
                p.effective_concurrency, p.concurrency, p.kv_cache_tokens, p.input_len + p.output_len
            )
            + "[/]",
            highlight=False,
            soft_wrap=True,
        )
    if p.fits and p.cold_start_terms:
        ct = Table(title=f"cold start on {p.instance_type} (all workers in parallel)")
        ct.add_column("term")
        ct.add_column("s", justify="right")
        ct.add_column("how", overflow="fold")
        for term in p.cold_start_terms:
            ct.add_row(term["name"], f"{term['seconds']:,.1f}", term["detail"])
        console.print(ct)
        console.print(
            "Sources: `llmfleet plan --json` (cold_start_terms[].source), infra/catalog/coldstart.yaml"
        )
    if p.context_note:
        console.print(f"context: {p.context_note}", highlight=False)
    if p.context_warning:
        console.print(f"[yellow]warning:[/] {p.context_warning}", highlight=False)
    if p.fits:
        console.print(f"efficiency: {p.efficiency_note}", highlight=False, soft_wrap=True)
    for r in p.reasons:
        console.print(f"[red]does not fit:[/] {r}", highlight=False, soft_wrap=True)


def render_compare(rows: list[CompareRow], model: str, concurrency: int) -> None:
    """One row per GPU. GPU ids and instance types are what a reader copies: whole, always; the
    note wraps between words; at 80 columns user tok/s, then USD/h, make room (--json has them)."""

    cols = [
        Col("GPU", whole=True),
        Col("TP x PP", whole=True),
        Col("AWS instance", whole=True),
        Col("USD/h", justify="right", whole=True, drop=1),
        Col("tok/s", justify="right", whole=True),
        Col("user tok/s", justify="right", whole=True, drop=2),
        Col("USD/1M", justify="right", whole=True),
        Col("note"),
    ]
    cells = []
    for r in rows:
        note = r.note
        if r.fits and r.concurrency_capped:
            note = f"concurrency capped at {r.effective_concurrency} by the KV cache" + (
                f"; {note}" if note else ""
            )
        cells.append(
            [
                r.gpu,
                f"{r.tensor_parallel_size} x {r.pipeline_parallel_size}" if r.fits else "-",
                r.instance_type or "-",
                _money(r.usd_per_hour),
                f"{r.decode_tokens_per_s_expected:,.0f}" if r.fits else "-",
                f"{r.decode_tokens_per_s_per_user:,.1f}" if r.fits else "-",
                _money(r.usd_per_million_output_tokens, 3),
                note,
            ]
        )
    t = fitted_table(
        console,
        cols,
        cells,
        title=f"{model}: every GPU in the catalog at concurrency {concurrency}, cheapest per token first",
    )
    console.print(t)
    console.print(
        "TP x PP: GPUs per node x nodes; tok/s: cluster decode; USD/1M: per 1M output tokens; "
        "USD/h: GPU workers on demand "
        "(us-east-1, instance catalog); speeds: infra/stack/perf.py, fitted on "
        "infra/catalog/calibration.yaml"
        + (
            f"; not shown at this width: {', '.join(dropped(t, cols))} (--json has every field)"
            if dropped(t, cols)
            else ""
        ),
        highlight=False,
    )


def _calibrated(p: Plan) -> Plan:
    """The plan with the user's own measurements of its layout (`llmfleet bench --calibrate`)."""

    try:
        return calibrate_plan(p)
    except BenchError as e:
        fail(str(e))


def _context_len(value: str) -> int | str:
    """--max-model-len: 'auto' or an integer (the planner checks its range)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        fail(f"--max-model-len: {value!r} is not allowed; allowed: 'auto' or an integer >= 16")


def _renamed(old: str, old_value: int | None, new: str, value: int | None) -> int | None:
    """A deprecated option's value, with a note; both given and different is bad input."""
    if old_value is None:
        return value
    if value is not None and value != old_value:
        fail(f"{old}: {old_value} and {new} {value} disagree; allowed: {new} alone ({old} is its old name)")
    err_console.print(f"[yellow]deprecated:[/] {old} is now {new}", highlight=False)
    return old_value


def _scheduled(p: Plan, text: str) -> dict | None:
    """The plan's cost per token when the workers run only in `text`'s windows: billed for the
    windows plus one cold start per opening, tokens only in the windows."""

    try:
        wh = worker_hours(parse_schedule(text), p)
    except ScheduleError as e:
        fail(f"--schedule = {text!r}: {e}")
    if wh is None or p.usd_per_million_output_tokens is None:
        return None
    per_m = p.usd_per_million_output_tokens * wh.hours_per_week / wh.window_hours_per_week
    return {
        "schedule": wh.schedule,
        "billed": wh.describe(),
        "billed_hours_per_week": round(wh.hours_per_week, 3),
        "serving_hours_per_week": wh.window_hours_per_week,
        "usd_per_million_output_tokens": round(per_m, 4),
    }


def plan_cmd(
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", autocompletion=complete_model, help="Catalog model id, e.g. deepseek-r1."
        ),
    ],
    gpu: Annotated[
        str | None,
        typer.Option(
            "--gpu",
            "-g",
            autocompletion=complete_gpu,
            help="GPU id, e.g. L20, L40S, H200 (not with --compare).",
        ),
    ] = None,
    compare: Annotated[
        bool, typer.Option("--compare", help="One row per GPU in the catalog, cheapest per token first.")
    ] = False,
    tp: Annotated[
        int | None,
        typer.Option(
            "--tp", "--tensor-parallel-size", help="Tensor parallel size = GPUs per node [default: 8]."
        ),
    ] = None,
    pp: Annotated[
        int | None,
        typer.Option(
            "--pp",
            "--pipeline-parallel-size",
            help="Pipeline parallel size = nodes; omit for the fewest that fit.",
        ),
    ] = None,
    # The names before one vocabulary (local up, preflight-cluster and vLLM say TP/PP): scripts
    # may still pass them, so they still work, hidden, with a note on stderr.
    gpus_per_node: Annotated[
        int | None, typer.Option("--gpus-per-node", hidden=True, help="Deprecated: --tp.")
    ] = None,
    nodes: Annotated[int | None, typer.Option("--nodes", hidden=True, help="Deprecated: --pp.")] = None,
    quantization: Annotated[
        str | None,
        typer.Option("--quantization", "-q", help=f"{', '.join(QUANTIZATIONS[:-1])} or {QUANTIZATIONS[-1]}."),
    ] = None,
    max_model_len: Annotated[
        str,
        typer.Option(
            "--max-model-len",
            help="Longest sequence in tokens, or auto: the longest clean context that holds --target-concurrency.",
        ),
    ] = "auto",
    concurrency: Annotated[int, typer.Option("--concurrency", help="Concurrent sequences.")] = 64,
    target_concurrency: Annotated[
        int,
        typer.Option(
            "--target-concurrency", help="Full-length sequences the KV cache holds (max-model-len auto)."
        ),
    ] = 16,
    input_len: Annotated[
        int, typer.Option("--input-len", help="Prompt tokens per request (TTFT, KV, prefill load).")
    ] = 1024,
    output_len: Annotated[int, typer.Option("--output-len", help="Output tokens per request.")] = 1024,
    engine: Annotated[
        str, typer.Option("--engine", help="Serving engine whose fitted efficiency to use.")
    ] = "vllm",
    schedule: Annotated[
        str | None,
        typer.Option(
            "--schedule",
            help="Serving windows as llmfleet:schedule takes them, e.g. 'mon-fri 08:00-20:00 Europe/Berlin': "
            "adds USD per 1M output tokens at the schedule's hours (one cold start per opening).",
        ),
    ] = None,
    lora: Annotated[
        bool,
        typer.Option(
            "--lora",
            help="The model will serve LoRA adapters (llmfleet:lora): refuse a model the catalog says cannot "
            "take them. The memory estimate does not count adapter slots yet.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Fit a model on GPUs: layout, memory per GPU, KV cache, per-user and cluster decode speed, time to first token, cold start, and what it costs on AWS.

    Exit 0 = fits, 3 = does not fit (the plan is still printed), 2 = bad input.
    """

    tp = _renamed("--gpus-per-node", gpus_per_node, "--tp", tp)
    pp = _renamed("--nodes", nodes, "--pp", pp)
    cat = load_catalog()
    model = resolve_id("--model", model, list(cat.models), "model")
    if lora:
        why = refusal(model, "--model", asked_by="--lora")
        if why:
            fail(why)
    if gpu is not None:
        gpu = resolve_id("--gpu", gpu, list(cat.gpus), "GPU")

    common = dict(
        quantization=quantization,
        max_model_len=_context_len(max_model_len),
        concurrency=concurrency,
        target_concurrency=target_concurrency,
        input_len=input_len,
        output_len=output_len,
        engine=engine,
    )
    if compare:
        if gpu is not None:
            fail(f"--gpu: {gpu!r} is not allowed with --compare; allowed: omit --gpu (every GPU is compared)")
        try:
            rows = compare_gpus(model, **common)  # type: ignore[arg-type]
        except PlanInputError as e:
            fail(str(e))
        if as_json:
            print_json({"model": model, **common, "rows": [r.to_dict() for r in rows]})
        else:
            render_compare(rows, model, concurrency)
        return
    if gpu is None:
        fail("--gpu: missing; allowed: a GPU id such as L20, L40S or H200, or --compare for every GPU")
    try:
        p = plan(model=model, gpu=gpu, gpus_per_node=8 if tp is None else tp, nodes=pp, **common)  # type: ignore[arg-type]
    except PlanInputError as e:
        fail(str(e))
    p = _calibrated(p)
    scheduled = _scheduled(p, schedule) if schedule is not None else None
    if as_json:
        print_json({**p.to_dict(), **({"schedule": scheduled} if scheduled else {})})
    else:
        render_plan(p)
        if scheduled:
            console.print(
                f"scheduled: {scheduled['billed']}; USD per 1M output tokens at the schedule's hours: "
                f"{_money(scheduled['usd_per_million_output_tokens'], 3)}",
                highlight=False,
            )
    if not p.fits:
        raise typer.Exit(EXIT_DOES_NOT_FIT)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)
