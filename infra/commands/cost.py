"""`llmfleet cost`: price a stack before it exists (Infracost-style), diff two stacks, gate on budget.

    llmfleet cost --stack prod                     # table per resource, with a total
    llmfleet cost --stack prod --json              # Infracost JSON + usdPerMillionOutputTokens
    llmfleet cost --stack prod --diff dev          # prod minus dev, per resource
    llmfleet cost --stack prod -c llmfleet:spot=true --diff prod   # what spot would save
    llmfleet cost --stack prod --live              # instance prices from the AWS Price List API
    llmfleet cost --stack prod --from-preview preview.json         # a real `pulumi preview --json`

Exit 4 when the total monthly cost exceeds llmfleet:maxMonthlyUsd (for CI gates).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from infra import cost
from infra.commands import _common
from infra.pricing import PriceBook, PriceError, live_book, snapshot_book

EXIT_OVER_BUDGET = 4


def _user_errors() -> tuple[type[Exception], ...]:
    """Failures that are the user's input (stack, -c, preview file, region): one line, exit 2."""
    from infra.config import ConfigError
    from infra.offline import OfflineError

    return (ConfigError, OfflineError, PriceError)


@dataclass(frozen=True)
class Priced:
    estimate: cost.Estimate
    tokens_per_s: float | None
    max_monthly_usd: float | None
    cold_start_s: float | None = None  # boot -> first token (infra/coldstart.py), AWS workers only


def _book(region: str, live: bool) -> PriceBook:
    return live_book(region) if live else snapshot_book(region)


def price_stack(
    stack: str, overrides: list[str], *, live: bool = False, from_preview: Path | None = None
) -> Priced:
    """Capture (or read a preview file), then price. Raises ConfigError/PriceError/... on bad input."""
    from infra.catalog import load_catalog
    from infra.offline import capture, load_config

    if from_preview is not None:
        cfg = load_config(stack, overrides)
        try:
            text = from_preview.read_text()
        except OSError as err:
            raise PriceError(f"--from-preview: cannot read {str(from_preview)!r}: {err.strerror}") from None
        resources, region = cost.load_preview_file(text)
        region = region or cfg.region
    else:
        cap = capture(stack, overrides)
        cfg, resources, region = cap.config, cap.resources, cap.config.region
    weights_gib = load_catalog().models[cfg.model].checkpoint_gib
    est = cost.price_resources(
        resources,
        _book(region, live),
        project=stack,
        weights_gib=weights_gib,
        default_az=cfg.availability_zone,
    )
    if cfg.provider == "existing" and cfg.host_hourly_usd is not None:
        est = cost.with_owned_hosts(
            est, [h.address for h in cfg.worker_hosts], cfg.host_hourly_usd, f"stack config {stack}"
        )
    plan = cfg.plan()
    tps = plan.decode_tokens_per_s_expected if plan.fits else None
    return Priced(est, tps, cfg.max_monthly_usd, _cold_start_s(cfg, plan))


# --- one cold start in dollars (self-contained: the figure, its line, its JSON key) -------------


def _cold_start_s(cfg, plan) -> float | None:
    """Boot -> first token on the stack's own worker type; None for owned hosts or no fit."""
    from infra.catalog import load_catalog
    from infra.coldstart import estimate

    if cfg.provider != "aws" or not plan.fits:
        return None
    cat = load_catalog()
    cold = estimate(
        cat.models[cfg.model],
        cat.instances[cfg.gpu_instance_type],
        plan.pipeline_parallel_size,
        plan.ttft_ms / 1000,
    )
    return cold.total_s


def cold_start_summary(p: Priced) -> dict | None:
    """What one cold start costs: the whole stack is billed from boot to the first token."""
    if p.cold_start_s is None:
        return None
    usd = p.estimate.total_hourly * Decimal(str(p.cold_start_s)) / 3600
    return {
        "seconds": round(p.cold_start_s, 1),
        "usd": f"{usd:.2f}",
        "source": "llmfleet plan (cold_start_terms)",
    }


# --- rendering ---------------------------------------------------------------------------------


def _money(d: Decimal | None, places: int = 2) -> str:
    return "-" if d is None else f"{d:,.{places}f}"


def _qty(d: Decimal | None, unit: str) -> str:
    return "usage-based" if d is None else f"{d.normalize():,f} {unit}"


def render_table(p: Priced, console: Console) -> None:
    est = p.estimate
    t = Table(title=f"llmfleet cost: stack {est.project} ({est.region}, {est.price_source})")
    t.add_column("Resource", overflow="fold")
    t.add_column("Component")
    t.add_column("Monthly qty", justify="right")
    t.add_column("Price", justify="right")
    t.add_column("USD/month", justify="right", no_wrap=True)
    estimates = False

    def rows(r: cost.ResourceCost, label: str) -> None:
        nonlocal estimates
        for c in r.components:
            estimates |= c.price.estimate
            t.add_row(
                label,
                c.name + ("*" if c.price.estimate else ""),
                _qty(c.monthly_quantity, c.unit),
                f"{c.price.usd.normalize():f}",
                "-" if c.usage_based else _money(c.monthly_cost),
            )
            label = ""

    for r in est.resources:
        role = r.metadata.get("role")
        rows(r, f"[bold]{r.name}[/]" + (f" ({role})" if role else ""))
        for s in r.subresources:
            rows(s, f"  └ {s.name}")
        t.add_section()
    t.add_row("[bold]Total[/]", "", "", "", f"[bold]{_money(est.total_monthly)}[/]")
    console.print(t)
    console.print(
        f"Total: {_money(est.total_hourly, 4)} USD/hour, {_money(est.total_monthly)} USD/month (730 h)"
    )
    if p.tokens_per_s:
        per_m = cost.usd_per_million_tokens(est.total_hourly, p.tokens_per_s)
        console.print(
            f"USD per million output tokens: {_money(per_m, 4)} "
            f"(at the planner's expected {p.tokens_per_s:,.0f} decode tokens/s)"
        )
    if cs := cold_start_summary(p):
        console.print(
            f"One cold start (boot -> first token, ~{cs['seconds']:,.0f} s): {cs['usd']} USD "
            "at the total hourly rate (terms: llmfleet plan)"
        )
    if estimates:
        console.print("* estimate (see priceSource / note in --json)")
    skipped = len(est.no_price) + len(est.unsupported)
    console.print(f"{len(est.resources)} resources priced, {skipped} without a price (free or not estimated)")


def render_diff(p: Priced, past: Priced, console: Console) -> None:
    new, old = p.estimate, past.estimate
    t = Table(title=f"llmfleet cost: {new.project} minus {old.project} (USD/month)")
    for col in ("Resource", "Type", old.project or "past", new.project or "new", "Diff"):
        t.add_column(col, justify="left" if col in ("Resource", "Type") else "right")
    for d in cost.diff_resources(new, old):
        if d.diff_monthly == 0:
            continue
        sign = "+" if d.diff_monthly > 0 else ""
        colour = "red" if d.diff_monthly > 0 else "green"
        t.add_row(
            d.name,
            d.resource_type,
            _money(d.past_monthly),
            _money(d.monthly),
            f"[{colour}]{sign}{_money(d.diff_monthly)}[/]",
        )
    delta = new.total_monthly - old.total_monthly
    t.add_section()
    t.add_row(
        "[bold]Total[/]",
        "",
        _money(old.total_monthly),
        _money(new.total_monthly),
        f"[bold]{'+' if delta > 0 else ''}{_money(delta)}[/]",
    )
    console.print(t)


def budget_message(total_monthly: Decimal, limit: float | None) -> str | None:
    """The one-line over-budget message, or None within budget."""
    if limit is None or total_monthly <= Decimal(str(limit)):
        return None
    return f"total monthly cost {_money(total_monthly)} USD exceeds llmfleet:maxMonthlyUsd {_money(Decimal(str(limit)))} USD"


# --- the command -------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    @app.command("cost")
    def cost_cmd(
        stack: _common.StackOpt,
        config: _common.ConfigOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Infracost-shaped JSON on stdout.")] = False,
        live: Annotated[
            bool, typer.Option("--live", help="EC2 prices from the AWS Price List API / spot history.")
        ] = False,
        diff: Annotated[
            str | None,
            typer.Option(
                "--diff",
                metavar="OTHER",
                help="Show this stack's cost minus stack OTHER's, per resource (-c applies to --stack only).",
            ),
        ] = None,
        from_preview: Annotated[
            Path | None,
            typer.Option(
                "--from-preview", metavar="FILE", help="Price a `pulumi preview --json` file instead."
            ),
        ] = None,
    ) -> None:
        """Price every resource of a stack before it exists; exit 4 over llmfleet:maxMonthlyUsd."""
        overrides = list(config or [])
        try:
            priced = price_stack(stack, overrides, live=live, from_preview=from_preview)
            past = price_stack(diff, [], live=live) if diff else None
        except _user_errors() as err:
            _common.fail(str(err), 2)
        for w in dict.fromkeys(priced.estimate.warnings + (past.estimate.warnings if past else ())):
            _common.err_console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
        if as_json:
            doc = cost.to_infracost_json(
                priced.estimate, tokens_per_s=priced.tokens_per_s, past=past.estimate if past else None
            )
            if cs := cold_start_summary(priced):
                doc["coldStart"] = cs
            _common.print_json(doc)
        elif past:
            render_diff(priced, past, _common.console)
        else:
            render_table(priced, _common.console)
        over = budget_message(priced.estimate.total_monthly, priced.max_monthly_usd)
        if over:
            _common.fail(over, EXIT_OVER_BUDGET)
