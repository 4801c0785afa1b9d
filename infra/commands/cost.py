"""`llmfleet cost`: price a stack before it exists (Infracost-style), diff, gate on budget.

    llmfleet cost --stack prod                          # table per resource, with a total
    llmfleet cost --stack prod --json                   # Infracost JSON (schema version 0.2)
    llmfleet cost --stack prod --usage-file usage.yml   # Infracost usage file: data, requests, hours
    llmfleet cost --stack prod --usage-file usage.yml --sync-usage-file   # write every usage key
    llmfleet cost --stack prod --compare-to past.json   # past vs now of this stack, per component
    llmfleet cost --stack prod --from-preview p.json    # `pulumi preview --json`: oldState -> newState
    llmfleet cost --stack prod --diff dev               # a different question: prod minus stack dev
    llmfleet cost --stack prod --live                   # instance prices (and block quotes) from AWS

Exit 4 when the total monthly cost exceeds llmfleet:maxMonthlyUsd (for CI gates).
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from infra.commands import _common
from infra.constants import REPO_ROOT

if TYPE_CHECKING:  # imported where used: `llmfleet --help` and `plan` need none of them
    from infra.cost import infracost
    from infra.cost import model as cost_model
    from infra.cost import preview as cost_preview
    from infra.cost import resources as cost_resources
    from infra.cost import usage as usage_mod
    from infra.cost.pricing import PriceBook

EXIT_OVER_BUDGET = 4


def _user_errors() -> tuple[type[Exception], ...]:
    """Failures that are the user's input (stack, -c, files, region): one line, exit 2."""
    from infra.cost.pricing import PriceError
    from infra.program.offline import OfflineError
    from infra.stack.config import ConfigError

    return (ConfigError, OfflineError, PriceError)


@dataclass(frozen=True)
class Priced:
    estimate: cost_model.Estimate
    tokens_per_s: float | None
    max_monthly_usd: float | None
    source_path: str = "."  # what the project's metadata.path names
    source_type: str = "pulumi_program"
    past: cost_model.Estimate | None = None  # the preview's oldState, priced the same way
    note: str = ""  # what "past" means, for the table title
    cold_start_s: float | None = None  # boot -> first token (infra/stack/coldstart.py), AWS workers only


def _book(region: str, live: bool) -> PriceBook:
    from infra.cost.live_prices import live_book
    from infra.cost.pricing import snapshot_book

    return live_book(region) if live else snapshot_book(region)


def _read(path: Path, flag: str) -> str:
    from infra.cost.pricing import PriceError

    try:
        return path.read_text()
    except OSError as err:
        raise PriceError(f"{flag}: cannot read {str(path)!r}: {err.strerror}") from None


def live_blocks(
    ids: set[str], region: str, today: str, ec2: Any = None
) -> tuple[dict[str, cost_resources.CapacityBlock], list[str]]:
    """Each Capacity Block as EC2 describes it, with a fee quote; a failure is a warning and the
    block is then priced from the snapshot rate."""
    from infra.cost import capacity_block as cb

    out: dict[str, cost_resources.CapacityBlock] = {}
    warnings: list[str] = []
    for rid in sorted(i for i in ids if i.startswith("cr-")):
        try:
            if ec2 is None:
                import boto3

                from infra.cost.live_prices import _client_config

                ec2 = boto3.client("ec2", region_name=region, config=_client_config())
            block = cb.describe_block(ec2, rid).block
            out[rid] = cb.quote_fee(ec2, block, today)
            if out[rid].upfront_fee is None:
                warnings.append(
                    f"Capacity Block {rid}: EC2 quotes no offering of its shape now; fee from the snapshot rate"
                )
        except Exception as err:  # any live failure (credentials, network, shape) falls back
            warnings.append(
                f"Capacity Block {rid}: cannot read it from EC2 ({type(err).__name__}: {err}); fee from the snapshot rate"
            )
    return out, warnings


def price_stack(
    stack: str,
    overrides: list[str],
    *,
    live: bool = False,
    from_preview: Path | None = None,
    usage: usage_mod.Usage | None = None,
) -> Priced:
    """Capture (or read a preview file), then price. Raises ConfigError/PriceError/... on bad input."""
    from infra.catalog import load_catalog
    from infra.cost import estimate as cost
    from infra.cost import preview as cost_preview
    from infra.cost import resources as cost_resources
    from infra.cost import usage as usage_mod
    from infra.program.offline import capture
    from infra.stack.files import load_config
    from infra.stack.resolve import resolve
    from infra.worker_groups import with_group_instances

    usage = usage or usage_mod.Usage()
    states: cost_preview.PreviewStates | None = None
    if from_preview is not None:
        cfg = load_config(stack, overrides)
        states = cost_preview.parse_preview(_read(from_preview, "--from-preview"))
        resources, region = states.new, states.region or cfg.region
    else:
        cap = capture(stack, overrides)
        cfg, resources, region = cap.config, cap.resources, cap.config.region
    weights_gib = load_catalog().models[cfg.model].checkpoint_gib
    book = _book(region, live)
    block_ids = {
        rid
        # with_group_instances: a worker group's instances launch into the block, as instances did
        for r in with_group_instances(resources + (states.past if states else []))
        if r.get("type") == "aws:ec2/instance:Instance"
        and (rid := cost_resources.capacity_block_target(r.get("inputs") or {}))
    }
    blocks, block_warnings = (
        live_blocks(block_ids, region, dt.date.today().isoformat()) if live and block_ids else ({}, [])
    )
    common = {
        "project": stack,
        "weights_gib": weights_gib,
        "default_az": cfg.availability_zone,
        "pricing_model": cfg.effective_pricing_model,
        "capacity_blocks": blocks,
    }
    est = cost.price_resources(resources, book, usage=usage, **common)
    past = None
    if states is not None and states.has_past:
        # the same usage on both sides, as Infracost does: the diff shows what the update changes
        past = cost.price_resources(states.past, book, usage=usage, **common)
    extra = list(block_warnings)
    if states is not None and states.has_past and not states.has_sames:
        extra.append(
            "the preview lists only changed resources, so the breakdowns cover only those (the diff "
            "is complete); run `pulumi preview --json --show-sames` for the stack's totals"
        )
    if cfg.provider == "existing" and cfg.host_hourly_usd is not None:
        est = cost.with_owned_hosts(
            est, [h.address for h in cfg.worker_hosts], cfg.host_hourly_usd, f"stack config {stack}"
        )
    est = replace(est, warnings=tuple(dict.fromkeys(est.warnings + tuple(extra))))
    plan = resolve(cfg).plan
    tps = plan.decode_tokens_per_s_expected if plan.fits else None
    if from_preview is not None:
        return Priced(
            est,
            tps,
            cfg.max_monthly_usd,
            str(from_preview),
            "pulumi_preview_json",
            past,
            "preview: before -> after the update",
            _cold_start_s(cfg, plan),
        )
    return Priced(est, tps, cfg.max_monthly_usd, ".", "pulumi_program", cold_start_s=_cold_start_s(cfg, plan))


# --- usage-file template -----------------------------------------------------------------------

# Keys whose default is a quantity of the key's own unit (hours, GB); the rest default to no usage.
_QUANTITY_KEYS = {"monthly_hrs", "storage_gb", "standard.storage_gb"}


def usage_template(est: cost_model.Estimate) -> list[usage_mod.TemplateEntry]:
    from infra.cost import usage as usage_mod

    entries = []
    for r in est.resources:
        keys = usage_mod.keys_for(r.resource_type)
        if not keys:
            continue
        if r.metadata.get("kind") == "network":  # a network load balancer evaluates no rules
            keys = tuple(k for k in keys if k.path != "rule_evaluations")
        assumed: dict[str, Decimal | None] = {k.path: None for k in keys}
        for c in r.components:
            if c.usage_key in _QUANTITY_KEYS and c.known:
                assumed[c.usage_key] = c.monthly_quantity
        entries.append(usage_mod.TemplateEntry(r.name, r.resource_type, assumed, tuple(k.path for k in keys)))
    return entries


def load_usage(path: Path | None, sync: bool) -> usage_mod.Usage:
    from infra.cost import usage as usage_mod

    if path is None:
        return usage_mod.Usage()
    if sync and not path.exists():
        return usage_mod.Usage(str(path))  # --sync-usage-file creates it
    return usage_mod.parse(_read(path, "--usage-file"), str(path))


# --- JSON --------------------------------------------------------------------------------------


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def vcs_metadata(command: str, usage_path: str = "") -> infracost.RunMetadata:
    """The commit the estimate was made on, as Infracost's VCS fields (empty outside git)."""
    from infra.cost import infracost

    fields = _git("log", "-1", "--format=%H%x00%an%x00%ae%x00%cI%x00%s").split("\x00")
    sha, name, email, stamp, subject = (fields + [""] * 5)[:5]
    if stamp:
        stamp = dt.datetime.fromisoformat(stamp).astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return infracost.RunMetadata(
        command=command,
        branch=_git("rev-parse", "--abbrev-ref", "HEAD"),
        commit_sha=sha,
        author_name=name,
        author_email=email,
        commit_timestamp=stamp or infracost.ZERO_TIME,
        commit_message=subject,
        usage_file_path=usage_path,
    )


def build_json(
    p: Priced,
    past: dict[str, Any] | None,
    name_key: Callable[[dict[str, Any]], Any] | None,
    run: infracost.RunMetadata,
    now: dt.datetime,
) -> dict[str, Any]:
    from infra.cost import infracost

    est = p.estimate
    info = infracost.ProjectInfo(est.project, p.source_path, p.source_type, est.project, est.warnings)
    proj = infracost.project(
        info, infracost.breakdown(est, p.tokens_per_s), infracost.summary(est), past, name_key
    )
    return infracost.document([proj], run, now)


# --- one cold start in dollars (self-contained: the figure, its line, its JSON key) -------------


def _cold_start_s(cfg, plan) -> float | None:
    """Boot -> first token on the stack's own worker type; None for owned hosts or no fit."""
    from infra.catalog import load_catalog
    from infra.stack.coldstart import estimate

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
    from infra.cost import estimate as cost
    from infra.cost import model as cost_model

    est = p.estimate
    names = [_label(r) for r in est.resources] + ["Total"]
    t = Table(
        title=f"llmfleet cost: stack {est.project} ({est.region}, {est.price_source})",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        title_justify="left",
    )
    # The first column is at least as wide as the longest resource name, so no name is ever
    # split; component names wrap inside it instead.
    t.add_column("Resource / component", min_width=max(map(len, names)), overflow="fold")
    t.add_column("Qty", justify="right", no_wrap=True)
    t.add_column("Unit", no_wrap=True)
    t.add_column("Price", justify="right", no_wrap=True)
    t.add_column("USD/month", justify="right", no_wrap=True)
    marks = {"estimate": False, "usage": False}

    def components(r: cost_model.ResourceCost, indent: str) -> None:
        items: list[Any] = [*r.components, *r.subresources]
        for i, item in enumerate(items):
            last = i == len(items) - 1
            branch = indent + ("└─ " if last else "├─ ")
            if isinstance(item, cost_model.ResourceCost):
                t.add_row(Text(branch + item.name, no_wrap=True))
                components(item, indent + ("   " if last else "│  "))
                continue
            marks["estimate"] |= item.price.estimate
            marks["usage"] |= not item.known
            t.add_row(
                branch + item.name + ("*" if item.price.estimate else ""),
                _qty(item.monthly_quantity),
                item.unit,
                _price(item.price.usd),
                _money(item.monthly_cost) if item.known else "-",
            )

    # The capture's order follows Pulumi's concurrent registration and varies run to run.
    for r in sorted(est.resources, key=lambda r: r.name):
        t.add_row(Text(_label(r), style="bold", no_wrap=True))
        components(r, "")
    t.add_section()
    t.add_row(Text("Total", style="bold"), "", "", "", Text(_money(est.total_monthly), style="bold"))
    console.print(t)
    usage_part = f", {_money(est.total_monthly_usage)} of it usage-based" if est.total_monthly_usage else ""
    console.print(
        f"Total: {_money(est.total_hourly, 4)} USD/hour, {_money(est.total_monthly)} USD/month (730 h){usage_part}"
    )
    per_m = cost.monthly_usd_per_million_tokens(est, p.tokens_per_s)
    if per_m is not None:
        hours = est.serving_hours
        served = "" if hours == cost_model.HOURS_PER_MONTH else f", serving {_qty(hours)} h a month"
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
    labels = [r["name"] for r in rows] + ["Total"]
    t = Table(
        title=f"llmfleet cost: stack {p.estimate.project}, {past_label}, USD/month",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        title_justify="left",
    )
    t.add_column("Resource / component", min_width=max(map(len, labels)), overflow="fold")
    t.add_column("Past", justify="right", no_wrap=True)
    t.add_column("New", justify="right", no_wrap=True)
    t.add_column("Diff", justify="right", no_wrap=True)

    def colour(d: Decimal) -> Text:
        return Text(_signed(d), style="red" if d > 0 else "green" if d < 0 else "")

    def components(r: dict[str, Any], indent: str) -> None:
        items = [*r.get("costComponents", []), *r.get("subresources", [])]
        for i, item in enumerate(items):
            last = i == len(items) - 1
            branch = indent + ("└─ " if last else "├─ ")
            if "costComponents" in item:
                t.add_row(
                    Text(branch + item["name"], no_wrap=True), "", "", colour(Decimal(item["monthlyCost"]))
                )
                components(item, indent + ("   " if last else "│  "))
            else:
                t.add_row(branch + item["name"], "", "", colour(Decimal(item["monthlyCost"])))

    for r in rows:
        meta = r["metadata"]
        past = Decimal(meta["pastMonthlyCost"]) if meta.get("pastMonthlyCost") is not None else None
        new = Decimal(meta["newMonthlyCost"]) if meta.get("newMonthlyCost") is not None else None
        t.add_row(
            Text(r["name"], style="bold", no_wrap=True),
            _money(past),
            _money(new),
            colour(Decimal(r["monthlyCost"])),
        )
        components(r, "")
    t.add_section()
    t.add_row(
        Text("Total", style="bold"),
        _money(Decimal(doc["pastTotalMonthlyCost"])),
        _money(Decimal(doc["totalMonthlyCost"])),
        colour(Decimal(doc["diffTotalMonthlyCost"])),
    )
    console.print(t)
    if not rows:
        console.print("No cost change.")


def budget_message(total_monthly: Decimal, limit: float | None) -> str | None:
    """The one-line over-budget message, or None within budget."""
    if limit is None or total_monthly <= Decimal(str(limit)):
        return None
    return f"total monthly cost {_money(total_monthly)} USD exceeds llmfleet:maxMonthlyUsd {_money(Decimal(str(limit)))} USD"


# --- the command -------------------------------------------------------------------------------


def _price_other(diff: str, live: bool) -> Priced:
    """Stack OTHER of --diff; its failures name --diff, not --stack."""
    from infra.stack import suggest
    from infra.stack.files import available_stacks

    stacks = available_stacks()
    if diff not in stacks:
        _common.fail(
            f"--diff: {diff!r} is not a stack (no stacks/Pulumi.{diff}.yaml); "
            f"{suggest.did_you_mean(diff, stacks)}allowed: {', '.join(stacks)}"
        )
    try:
        return price_stack(diff, [], live=live)
    except _user_errors() as err:
        _common.fail(f"--diff {diff}: {err}")


def register(app: typer.Typer) -> None:
    @app.command("cost")
    def cost_cmd(
        stack: _common.StackOpt,
        config: _common.ConfigOpt = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Infracost JSON (version 0.2) on stdout.")
        ] = False,
        live: Annotated[
            bool,
            typer.Option(
                "--live", help="EC2 prices from the AWS Price List API / spot history; block quotes."
            ),
        ] = False,
        usage_file: Annotated[
            Path | None,
            typer.Option(
                "--usage-file", metavar="FILE", help="Usage estimates, Infracost's usage-file format."
            ),
        ] = None,
        sync_usage_file: Annotated[
            bool,
            typer.Option(
                "--sync-usage-file",
                help="Write every usage key of the stack into --usage-file (keeps set values).",
            ),
        ] = False,
        compare_to: Annotated[
            Path | None,
            typer.Option(
                "--compare-to",
                metavar="PAST",
                help="Diff against an earlier `llmfleet cost --json` (or Infracost JSON) of this stack.",
            ),
        ] = None,
        diff: Annotated[
            str | None,
            typer.Option(
                "--diff",
                metavar="OTHER",
                help="This stack's cost minus stack OTHER's (two stacks, not two states; -c applies to --stack only).",
            ),
        ] = None,
        from_preview: Annotated[
            Path | None,
            typer.Option(
                "--from-preview",
                metavar="FILE",
                help="Price a `pulumi preview --json` file: past from oldState, new from newState.",
            ),
        ] = None,
    ) -> None:
        """Price every resource of a stack before it exists; exit 4 over llmfleet:maxMonthlyUsd."""
        from infra.cost import infracost, infracost_diff
        from infra.cost import usage as usage_mod

        overrides = list(config or [])
        if sync_usage_file and usage_file is None:
            _common.fail("--sync-usage-file: needs --usage-file FILE (the file to write)", 2)
        if compare_to is not None and diff is not None:
            _common.fail("--compare-to and --diff: allowed: one of them (a past state, or another stack)", 2)
        try:
            usage = load_usage(usage_file, sync_usage_file)
            priced = price_stack(stack, overrides, live=live, from_preview=from_preview, usage=usage)
            past_bd, name_key, past_label = None, None, ""
            if diff:
                other = _price_other(diff, live)
                past_bd = infracost.breakdown(other.estimate, other.tokens_per_s)
                name_key = infracost_diff.other_stack_key(diff, stack)
                past_label = f"minus stack {diff}"
                priced = replace(
                    priced,
                    estimate=replace(
                        priced.estimate, warnings=priced.estimate.warnings + other.estimate.warnings
                    ),
                )
            elif compare_to is not None:
                past_bd, from_name = infracost.past_breakdown_from(
                    _read(compare_to, "--compare-to"), stack, str(compare_to)
                )
                past_label = f"past: {compare_to.name} ({from_name})"
            elif priced.past is not None:
                past_bd = infracost.breakdown(priced.past, priced.tokens_per_s)
                past_label = priced.note
        except _user_errors() as err:
            _common.fail(str(err), 2)
        if sync_usage_file:
            assert usage_file is not None
            text = usage_mod.sync_text(usage_template(priced.estimate), usage)
            try:
                usage_file.write_text(text)
            except OSError as err:
                _common.fail(f"--usage-file: cannot write {str(usage_file)!r}: {err.strerror}", 2)
            n = len(usage_template(priced.estimate))
            _common.err_console.print(f"synced {usage_file}: {n} resources with usage keys", highlight=False)
        for w in priced.estimate.warnings:
            _common.err_console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
        doc = build_json(
            priced,
            past_bd,
            name_key,
            vcs_metadata("diff" if past_bd is not None else "breakdown", str(usage_file or "")),
            dt.datetime.now(dt.UTC),
        )
        if as_json:
            _common.print_json(doc)
        elif past_bd is not None:
            render_diff(priced, doc, past_label, _common.console)
        else:
            render_table(priced, _common.console)
        over = budget_message(priced.estimate.total_monthly, priced.max_monthly_usd)
        if over:
            _common.fail(over, EXIT_OVER_BUDGET)
