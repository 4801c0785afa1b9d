"""What `llmfleet up` prints before it asks: the preview's changes as a tree (80 columns), the
hosts it replaces and the changes that restart serving, the policy pack's verdict, and the cost
before and after, priced as `llmfleet cost --from-preview` prices a preview (the same code)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from infra.commands._cost_stack import price_stack
from infra.cost import estimate as cost_estimate
from infra.cost.preview import states_from_preview
from infra.stack.config import ConfigError
from infra.stack.files import load_config
from infra.stack.resolve import resolve
from infra.up_preview import (
    STACK_TYPE,
    Change,
    PreviewEvents,
    UpPreview,
    preview_document,
    stack_outputs_before,
    worker_type_before,
)

WIDTH = 80
# Pulumi's own marks for each kind of step.
MARKS = {"create": ("+", "green"), "update": ("~", "yellow"), "replace": ("+-", "magenta"),
         "delete": ("-", "red"), "import": ("=", "cyan")}  # fmt: skip
BEFORE_BASIS = "before: the stack as deployed (the preview's old states, refreshed)"
AFTER_BASIS = "after: the preview's new states"


@dataclass(frozen=True)
class Side:
    hourly: Decimal
    monthly: Decimal
    per_million: Decimal | None  # USD per 1M output tokens at the planner's expected decode rate
    tokens_per_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "hourlyUsd": f"{self.hourly:.4f}",
            "monthlyUsd": f"{self.monthly:.2f}",
            "usdPerMillionOutputTokens": None if self.per_million is None else f"{self.per_million:.4f}",
            "decodeTokensPerS": self.tokens_per_s,
        }


@dataclass(frozen=True)
class CostChange:
    before: Side | None  # None: nothing is deployed yet
    after: Side
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "basis": {"before": BEFORE_BASIS, "after": AFTER_BASIS},
            "before": self.before.to_dict() if self.before else None,
            "after": self.after.to_dict(),
            "notes": list(self.notes),
        }


def _tokens_before(stack: str, overrides: list[str], events: PreviewEvents) -> float | None:
    """The planner's decode rate for the layout as deployed: model, quantization, context and
    worker count from the stack's outputs, the worker type from the workers' template, each
    checked by the config model like any -c value."""
    outs = stack_outputs_before(events.steps)
    wtype = worker_type_before(events.steps)
    keys = {"model": "model", "quantization": "quantization", "maxModelLen": "max_model_len",
            "workerCount": "workers", "replicas": "replicas"}  # fmt: skip
    if not wtype or any(outs.get(v) in (None, "") for v in keys.values()):
        return None
    deployed = [f"llmfleet:{k}={outs[v]}" for k, v in keys.items()] + [f"llmfleet:gpuInstanceType={wtype}"]
    try:
        plan = resolve(load_config(stack, [*overrides, *deployed])).plan
    except (ConfigError, ValueError):
        return None
    return plan.decode_tokens_per_s_expected if plan.fits else None


def price(stack: str, overrides: list[str], events: PreviewEvents) -> CostChange:
    """Both sides of the preview, priced by `cost --from-preview`'s code on the engine's states.
    Raises the cost command's user errors (PriceError, ConfigError) on what it cannot price."""

    states = states_from_preview(preview_document(events.steps))
    priced = price_stack(stack, overrides, preview=(states, "pulumi preview (engine events)"))
    est = priced.estimate
    after = Side(
        est.total_hourly,
        est.total_monthly,
        cost_estimate.monthly_usd_per_million_tokens(est, priced.tokens_per_s),
        priced.tokens_per_s,
    )
    notes = list(est.warnings)
    before = None
    if priced.past is not None:
        tps = _tokens_before(stack, overrides, events)
        if tps is None:
            notes.append(
                "before: USD per 1M output tokens unknown (the stack's outputs do not name its layout)"
            )
        before = Side(
            priced.past.total_hourly,
            priced.past.total_monthly,
            cost_estimate.monthly_usd_per_million_tokens(priced.past, tps),
            tps,
        )
    return CostChange(before, after, tuple(notes))


# --- rendering ---------------------------------------------------------------------------------


def _label(c: Change) -> Text:
    mark, style = MARKS.get(c.op, ("?", ""))
    t = Text(f"{mark} ", style=style)
    t.append(f"{c.op} ", style=style)
    t.append(c.name, style="bold")
    t.append(f"  {c.type}", style="dim")
    if c.replace_keys:
        t.append(f"  [forced by {', '.join(c.replace_keys)}]", style="magenta")
    return t


def change_tree(report: UpPreview, steps: list[Any]) -> Tree:
    """The changed resources under their parents (components), as Pulumi's preview nests them;
    each changed property under its resource, the ones that force a replacement marked."""
    types = {}
    parents = {}
    for m in steps:
        s = m.new or m.old
        if s is not None:
            types[m.urn] = s.type
            parents[m.urn] = s.parent or ""
    summary = ", ".join(f"{n} to {k}" for k, n in report.counts.items())
    root = Tree(Text(f"stack {report.stack}: {summary}", style="bold"))
    nodes: dict[str, Tree] = {}

    def node_for(urn: str) -> Tree:
        if not urn or types.get(urn) == STACK_TYPE or urn not in types:
            return root
        if urn not in nodes:
            label = Text(urn.rsplit("::", 1)[-1], style="bold")
            label.append(f"  {types[urn]}", style="dim")
            nodes[urn] = node_for(parents.get(urn, "")).add(label)
        return nodes[urn]

    for c in report.changes:
        node = node_for(c.parent).add(_label(c))
        nodes[c.urn] = node
        props = list(c.detailed) or list(c.diffs)
        for p in props:
            kind = c.detailed.get(p, "update")
            forced = kind.endswith("-replace") or p.split(".")[0] in c.replace_keys
            text = Text(f"{p}: {kind.removesuffix('-replace')}")
            if forced:
                text.append("  (forces replacement)", style="magenta")
            node.add(text)
    return root


def _money(d: Decimal | None, places: int = 2) -> str:
    return "-" if d is None else f"{d:,.{places}f}"


def _delta(a: Decimal | None, b: Decimal | None, places: int = 2) -> str:
    if a is None or b is None:
        return "-"
    d = b - a
    return ("+" if d > 0 else "") + f"{d:,.{places}f}"


def cost_table(c: CostChange) -> Table:
    t = Table(title="cost before -> after", box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    t.add_column("USD", no_wrap=True)
    for name in ("before", "after", "change"):
        t.add_column(name, justify="right", no_wrap=True)
    b = c.before
    rows = [
        ("per hour", b and b.hourly, c.after.hourly, 4),
        ("per month (730 h)", b and b.monthly, c.after.monthly, 2),
        ("per 1M output tokens", b and b.per_million, c.after.per_million, 4),
    ]
    for label, before, after, places in rows:
        t.add_row(label, _money(before, places), _money(after, places), _delta(before, after, places))
    return t


def render(
    report: UpPreview,
    steps: list[Any],
    cost: CostChange | None,
    cost_error: str | None,
    out: Console,
) -> None:
    """The tree, the call-outs, the policy verdict and the cost, each within 80 columns."""
    width = min(out.width, WIDTH)
    out.print(change_tree(report, steps), width=width, highlight=False)
    if report.callouts:
        hosts = Tree(Text("what it does to the hosts and to serving", style="bold"))
        for c in report.callouts:
            loud = c.kind in ("replaces-host", "removes-host", "restarts-serving")
            hosts.add(Text("! " + c.line, style="bold yellow" if loud else ""))
        out.print(hosts, width=width, highlight=False)
    v = report.verdict
    policy = Tree(
        Text(
            f"policy pack: {len(v.mandatory)} mandatory, {len(v.advisory)} advisory",
            style="bold red" if v.mandatory else "bold",
        )
    )
    for x in [*v.mandatory, *v.advisory]:
        where = f" ({x.resource})" if x.resource else ""
        policy.add(Text(f"{x.enforcement} {x.policy}{where}: {x.message}"))
    out.print(policy, width=width, highlight=False)
    out.print()
    if cost is None:
        out.print(f"cost: not priced: {cost_error}", width=width, highlight=False, markup=False)
        return
    out.print(cost_table(cost), width=width)
    out.print(BEFORE_BASIS + "; " + AFTER_BASIS, width=width, highlight=False)
    if cost.before is None:
        out.print("before: nothing deployed yet", width=width, highlight=False)
    for n in cost.notes:
        out.print(f"note: {n}", width=width, highlight=False, markup=False)


def document(report: UpPreview, cost: CostChange | None, cost_error: str | None) -> dict[str, Any]:
    """The one JSON document `up --json` prints: the same facts as the rendered preview."""
    return {**report.to_dict(), "cost": cost.to_dict() if cost else None, "costError": cost_error}
