"""`llmfleet cost`'s tables: the per-resource breakdown and the diff, at 80 columns."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, RenderableType
from rich.text import Text

from infra.commands._cost_stack import Priced, cold_start_summary
from infra.commands._fit import Col, fitted_table
from infra.cost import estimate as cost
from infra.cost import model as cost_model

if TYPE_CHECKING:
    from infra.cost import model as cost_model


def _print_priced_table(
    console: Console, cols: Sequence[Col], rows: Sequence[Sequence[RenderableType]], title: str
) -> None:
    """Both cost tables (the estimate, the diff): the same frame, and a rule above the Total row
    (their last row)."""
    t = fitted_table(
        console,
        cols,
        rows,
        end_sections={len(rows) - 2},
        title=title,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        title_justify="left",
    )
    console.print(t)


def _money(d: Decimal | None, places: int = 2) -> str:
    return "-" if d is None else f"{d:,.{places}f}"


def _price(d: Decimal) -> str:
    return f"{d:,.4f}"  # every unit price to 4 places, so the column lines up and reads alike


def _qty(d: Decimal | None) -> str:
    if d is None:
        return "-"
    return f"{int(d):,}" if d == d.to_integral_value() else f"{d:,.2f}"


def _label(r: cost_model.ResourceCost) -> str:
    role = r.metadata.get("role")
    return r.name + (f" ({role})" if role in ("head", "worker") else "")


def render_table(p: Priced, console: Console) -> None:

    est = p.estimate
    cols = [
        Col("Resource / component"),
        Col("Qty", whole=True, justify="right"),
        Col("Unit", whole=True),
        Col("Price", whole=True, justify="right"),
        Col("USD/month", whole=True, justify="right"),
    ]
    rows: list[list[Any]] = []
    marks = {"estimate": False, "usage": False}

    def components(r: cost_model.ResourceCost, indent: str) -> None:
        items: list[Any] = [*r.components, *r.subresources]
        for i, item in enumerate(items):
            last = i == len(items) - 1
            branch = indent + ("└─ " if last else "├─ ")
            if isinstance(item, cost_model.ResourceCost):
                rows.append([Text(branch + item.name, no_wrap=True)])
                components(item, indent + ("   " if last else "│  "))
                continue
            marks["estimate"] |= item.price.estimate
            marks["usage"] |= not item.known
            rows.append(
                [
                    branch + item.name + ("*" if item.price.estimate else ""),
                    _qty(item.monthly_quantity),
                    item.unit,
                    _price(item.price.usd),
                    _money(item.monthly_cost) if item.known else "-",
                ]
            )

    # The capture's order follows Pulumi's concurrent registration and varies run to run.
    for r in sorted(est.resources, key=lambda r: r.name):
        # resource names never wrap (no_wrap Text): the first column is at least the longest one
        rows.append([Text(_label(r), style="bold", no_wrap=True)])
        components(r, "")
    rows.append([Text("Total", style="bold"), "", "", "", Text(_money(est.total_monthly), style="bold")])
    _print_priced_table(
        console, cols, rows, f"llmfleet cost: stack {est.project} ({est.region}, {est.price_source})"
    )
    usage_part = f", {_money(est.total_monthly_usage)} of it usage-based" if est.total_monthly_usage else ""
    console.print(
        f"Total: {_money(est.total_hourly, 4)} USD/hour, {_money(est.total_monthly)} USD/month (730 h){usage_part}"
    )
    if est.schedule_note:
        console.print(f"Workers (scheduled): {est.schedule_note}", highlight=False)
    if p.autoscaling_note:
        console.print(p.autoscaling_note, highlight=False)
    per_m = cost.monthly_usd_per_million_tokens(est, p.tokens_per_s)
    if per_m is not None:
        hours = est.serving_hours
        served = "" if hours == cost_model.HOURS_PER_MONTH else f", serving {_qty(hours)} h a month"
        served += " in the schedule's windows" if est.schedule_note else ""
        console.print(
            f"USD per million output tokens: {_money(per_m, 4)} "
            f"(planner's expected {p.tokens_per_s:,.0f} decode tokens/s{served})"
        )
    if cs := cold_start_summary(p):
        console.print(
            f"One cold start (boot -> first token, ~{cs['seconds']:,.0f} s): {cs['usd']} USD "
            "at the total hourly rate (terms: llmfleet plan)"
        )
    if marks["estimate"]:
        console.print("* estimate (priceSources in --json say why)")
    if marks["usage"]:
        console.print("- usage-based: set it with --usage-file (--sync-usage-file writes every key)")
    skipped = len(est.no_price) + len(est.unsupported)
    console.print(f"{len(est.resources)} resources priced, {skipped} without a price (free or not estimated)")


def _signed(d: Decimal) -> str:
    return ("+" if d > 0 else "") + _money(d)


def render_diff(p: Priced, doc: dict[str, Any], past_label: str, console: Console) -> None:
    """The diff of the JSON document (the same numbers --json prints), one row per changed
    resource and one per changed cost component."""
    proj = doc["projects"][0]
    rows = proj["diff"]["resources"]
    cols = [
        Col("Resource / component"),
        Col("Past", whole=True, justify="right"),
        Col("New", whole=True, justify="right"),
        Col("Diff", whole=True, justify="right"),
    ]
    cells: list[list[Any]] = []

    def colour(d: Decimal) -> Text:
        return Text(_signed(d), style="red" if d > 0 else "green" if d < 0 else "")

    def components(r: dict[str, Any], indent: str) -> None:
        items = [*r.get("costComponents", []), *r.get("subresources", [])]
        for i, item in enumerate(items):
            last = i == len(items) - 1
            branch = indent + ("└─ " if last else "├─ ")
            if "costComponents" in item:
                cells.append(
                    [Text(branch + item["name"], no_wrap=True), "", "", colour(Decimal(item["monthlyCost"]))]
                )
                components(item, indent + ("   " if last else "│  "))
            else:
                cells.append([branch + item["name"], "", "", colour(Decimal(item["monthlyCost"]))])

    for r in rows:
        meta = r["metadata"]
        past = Decimal(meta["pastMonthlyCost"]) if meta.get("pastMonthlyCost") is not None else None
        new = Decimal(meta["newMonthlyCost"]) if meta.get("newMonthlyCost") is not None else None
        cells.append(
            [
                Text(r["name"], style="bold", no_wrap=True),
                _money(past),
                _money(new),
                colour(Decimal(r["monthlyCost"])),
            ]
        )
        components(r, "")
    cells.append(
        [
            Text("Total", style="bold"),
            _money(Decimal(doc["pastTotalMonthlyCost"])),
            _money(Decimal(doc["totalMonthlyCost"])),
            colour(Decimal(doc["diffTotalMonthlyCost"])),
        ]
    )
    _print_priced_table(
        console, cols, cells, f"llmfleet cost: stack {p.estimate.project}, {past_label}, USD/month"
    )
    if not rows:
        console.print("No cost change.")


def budget_message(total_monthly: Decimal, limit: float | None) -> str | None:
    """The one-line over-budget message, or None within budget."""
    if limit is None or total_monthly <= Decimal(str(limit)):
        return None
    return f"total monthly cost {_money(total_monthly)} USD exceeds llmfleet:maxMonthlyUsd {_money(Decimal(str(limit)))} USD"
