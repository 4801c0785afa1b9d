"""`llmfleet preview`: the stack's resources and outputs, from the offline engine."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from infra.commands._common import (
    ConfigOpt,
    JsonOpt,
    StackOpt,
    capture_or_fail,
    console,
    err_console,
    fail,
    print_json,
)
from infra.commands._fit import Col, dropped, fitted_table, min_width
from infra.stack import suggest
from infra.stack.resolve import resolve


def output_text(value: Any) -> str:
    """An output as one copyable string: lists and maps as JSON (what `pulumi stack output
    --json` prints), scalars as they are."""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def short_type(token: str) -> str:
    """A type token as `pulumi preview` prints it: `aws:s3/bucket:Bucket` -> `aws:s3:Bucket`."""
    return re.sub(r"^([^:/]+):([^:/]+)/[^:]+:([^:]+)$", r"\1:\2:\3", token)


def resources_table(stack: str, resources: list[dict], wide: bool, console: Console = console) -> Table:
    """Types and names never split: side by side when the terminal holds both whole (Pulumi's
    short type form; 100 columns do), else one cell per resource, the name indented under its
    type. --wide adds the full token and each resource's parent (wider than 80 columns)."""

    title = f"llmfleet-{stack}: {len(resources)} resources"
    # Pulumi registers resources concurrently, so capture order varies run to run: sort.
    ordered = sorted(resources, key=lambda r: (r["type"], r["name"]))
    cols = [Col("type", whole=True), Col("name", whole=True)] + ([Col("parent", whole=True)] if wide else [])
    rows = [
        [r["type"] if wide else short_type(r["type"]), r["name"], *((r["parent"] or "",) if wide else ())]
        for r in ordered
    ]
    if wide or min_width(console, cols, rows) <= console.width:
        return fitted_table(console, cols, rows, title=title)
    stacked = [[Text(f"{t}\n  {n}")] for t, n in rows]
    return fitted_table(console, [Col("type / name", whole=True)], stacked, title=title)


def outputs_table(outputs: dict[str, Any], console: Console = console) -> Table:
    """Keys whole; a value wraps between words and folds only where one word is longer than
    the line (an image reference, an ARN): `--output-key KEY` prints it whole."""

    rows = [[Text(k, style="bold"), Text(output_text(outputs[k]))] for k in sorted(outputs)]
    return fitted_table(
        console,
        [Col("key", whole=True), Col("value")],
        rows,
        title="outputs (one in full: --output-key KEY)",
        show_header=False,
    )


SCHEDULE_TYPE = "aws:autoscaling/schedule:Schedule"


def up_lead_minutes(action_name: str, recurrence: str, schedule: Any) -> int | None:
    """How many minutes a captured scale-up (`llmfleet-up-I`) starts before window I opens,
    read back from its cron (minute hour); None for a scale-down or an unknown window."""
    m = re.fullmatch(r"llmfleet-up-(\d+)", action_name)
    parts = recurrence.split()
    if not m or schedule is None or int(m.group(1)) >= len(schedule.windows) or len(parts) != 5:
        return None
    at = int(parts[1]) * 60 + int(parts[0])
    return (schedule.windows[int(m.group(1))].open_min - at) % (24 * 60)


def scheduled_actions_table(
    resources: list[dict], schedule: Any, cold_start_s: float, console: Console = console
) -> Table | None:
    """The captured scheduled actions, and for each scale-up how far it leads its window's
    opening (read back from the captured cron against llmfleet:schedule), beside the cold start.

    Group, action, cron and time zone never split (a group name is what `aws autoscaling
    describe-scheduled-actions` takes): side by side when the terminal holds them whole, else the
    action under its group, as the resources table does; at 80 columns the desired capacity
    (1 for a scale-up, 0 for a scale-down, as the action's name says) goes, and the title says so."""
    found = sorted((r for r in resources if r["type"] == SCHEDULE_TYPE), key=lambda r: r["name"])
    if not found:
        return None
    rows = []
    for r in found:
        i = r["inputs"]
        lead = up_lead_minutes(str(i.get("scheduledActionName", "")), str(i.get("recurrence", "")), schedule)
        rows.append(
            [
                str(i.get("autoscalingGroupName", "")),
                str(i.get("scheduledActionName", "")),
                str(i.get("recurrence", "")),
                str(i.get("timeZone", "")),
                str(i.get("desiredCapacity", "")),
                "" if lead is None else f"{lead} min",
            ]
        )
    rest = [
        Col("cron", whole=True),
        Col("time zone", whole=True),
        Col("desired", justify="right", drop=1),
        Col("lead (before opening)"),
    ]
    title = f"scheduled actions (modeled cold start {cold_start_s / 60:.1f} min)"
    cols = [Col("group", whole=True), Col("action", whole=True), *rest]
    if min_width(console, cols, rows) > console.width:
        cols = [Col("group / action", whole=True), *rest]
        rows = [[Text(f"{g}\n  {a}"), *more] for g, a, *more in rows]
    t = fitted_table(console, cols, rows, title=title)
    if gone := dropped(t, cols):
        t.title = f"{title}; not shown at this width: {', '.join(gone)} (--json has every field)"
    return t


def preview_cmd(
    stack: StackOpt,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    wide: Annotated[
        bool,
        typer.Option("--wide", help="Full type tokens and each resource's parent (wider than 80 columns)."),
    ] = False,
    output: Annotated[
        str | None,
        typer.Option("--output-key", metavar="KEY", help="Print only this stack output, in full."),
    ] = None,
    old_output: Annotated[
        str | None,
        # before -o meant an output path everywhere: scripts may still say --output KEY
        typer.Option("--output", hidden=True, help="Deprecated: --output-key."),
    ] = None,
) -> None:
    """Run the real Pulumi program offline (mocked cloud) and list what `pulumi up` would create."""
    if old_output is not None:
        err_console.print("[yellow]deprecated:[/] --output KEY is now --output-key KEY", highlight=False)
        output = output or old_output
    cap = capture_or_fail(stack, config)
    if output is not None:
        if output not in cap.outputs:
            keys = sorted(cap.outputs)
            fail(
                f"--output-key: {output!r} is not an output of stack {stack}; "
                f"{suggest.did_you_mean(output, keys)}allowed: {', '.join(keys)}"
            )
        typer.echo(output_text(cap.outputs[output]))
        return

    plan = resolve(cap.config).plan
    if as_json:
        print_json(cap.to_dict())
        return
    console.print(resources_table(cap.config.stack, cap.resources, wide))
    console.print(outputs_table(cap.outputs))
    actions = scheduled_actions_table(cap.resources, cap.config.serving_schedule, plan.cold_start_s or 0.0)
    if actions is not None:
        console.print(actions)
    if plan.context_note:
        console.print(f"context: {plan.context_note}", highlight=False)
    if plan.context_warning:
        console.print(f"[yellow]warning:[/] {plan.context_warning}", highlight=False)
    if not plan.fits:
        console.print(f"[yellow]warning:[/] gpu-fit: {plan.reason}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("preview")(preview_cmd)
