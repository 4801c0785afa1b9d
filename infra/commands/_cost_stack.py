"""`llmfleet cost`'s pricing of one stack: capture (or a preview file), price book, blocks,
usage, the cold start; what the command prints comes from infra/commands/_cost_tables.py."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.catalog import load_catalog
from infra.cost import capacity_block as cb
from infra.cost import estimate as cost
from infra.cost import preview as cost_preview
from infra.cost import resources as cost_resources
from infra.cost import usage as usage_mod
from infra.cost.live_prices import _client_config, live_book
from infra.cost.pricing import PriceError, snapshot_book
from infra.errors import OfflineError
from infra.rayconf.serving import deployment_options
from infra.stack import coldstart
from infra.stack.config import AwsStackConfig, ConfigError, OwnedStackConfig
from infra.stack.files import load_config
from infra.stack.resolve import resolve
from infra.stack.serve_autoscaling import KEY, describe
from infra.worker_groups import with_group_instances

if TYPE_CHECKING:  # imported where used: `llmfleet --help` and `plan` need none of them
    from infra.cost import model as cost_model
    from infra.cost import preview as cost_preview
    from infra.cost import usage as usage_mod
    from infra.cost.capacity_block import CapacityBlock
    from infra.cost.pricing import PriceBook


def user_errors() -> tuple[type[Exception], ...]:
    """Failures that are the user's input (stack, -c, files, region): one line, exit 2."""

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
    autoscaling_note: str = ""  # serveOptions.autoscaling_config: its bounds, and that the bill stays


def _book(region: str, live: bool) -> PriceBook:

    return live_book(region) if live else snapshot_book(region)


def read_file(path: Path, flag: str) -> str:

    try:
        return path.read_text()
    except OSError as err:
        raise PriceError(f"{flag}: cannot read {str(path)!r}: {err.strerror}") from None


def live_blocks(
    ids: set[str], region: str, today: str, ec2: Any = None
) -> tuple[dict[str, CapacityBlock], list[str]]:
    """Each Capacity Block as EC2 describes it, with a fee quote; a failure is a warning and the
    block is then priced from the snapshot rate."""

    out: dict[str, CapacityBlock] = {}
    warnings: list[str] = []
    for rid in sorted(i for i in ids if i.startswith("cr-")):
        try:
            if ec2 is None:
                import boto3

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
    preview: tuple[cost_preview.PreviewStates, str] | None = None,
) -> Priced:
    """Capture (or read a preview file, or take a preview's states and what they came from),
    then price. Raises ConfigError/PriceError/... on bad input."""
    # start-up: the offline engine loads Pulumi and the program (~0.5 s); every command that
    # prices (cost, up, plan's cost line) imports this module, not all of them capture
    from infra.program.offline import capture

    usage = usage or usage_mod.Usage()
    states: cost_preview.PreviewStates | None = None
    if preview is not None:  # `llmfleet up`: the states of the preview it just ran
        cfg = load_config(stack, overrides)
        states = preview[0]
        resources, region = states.new, states.region or cfg.region
    elif from_preview is not None:
        cfg = load_config(stack, overrides)
        states = cost_preview.parse_preview(read_file(from_preview, "--from-preview"))
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
        "worker_schedule": cost.worker_schedule(cfg, resolve(cfg).plan),
        "project": stack,
        "weights_gib": weights_gib,
        "default_az": cfg.availability_zone if isinstance(cfg, AwsStackConfig) else None,
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
    if isinstance(cfg, OwnedStackConfig) and cfg.host_hourly_usd is not None:
        est = cost.with_owned_hosts(
            est, [h.address for h in cfg.worker_hosts], cfg.host_hourly_usd, f"stack config {stack}"
        )
    est = replace(est, warnings=tuple(dict.fromkeys(est.warnings + tuple(extra))))
    plan = resolve(cfg).plan
    tps = plan.decode_tokens_per_s_expected if plan.fits else None
    if from_preview is not None or preview is not None:
        return Priced(
            est,
            tps,
            cfg.max_monthly_usd,
            preview[1] if preview is not None else str(from_preview),
            "pulumi_preview_json",
            past,
            "preview: before -> after the update",
            _cold_start_s(cfg, plan),
            _autoscaling_note(cfg, plan),
        )
    return Priced(
        est, tps, cfg.max_monthly_usd, ".", "pulumi_program",
        cold_start_s=_cold_start_s(cfg, plan), autoscaling_note=_autoscaling_note(cfg, plan),
    )  # fmt: skip


def _autoscaling_note(cfg, plan) -> str:
    """Serve's autoscaling releases a replica's GPUs, not its hosts: the priced hours stay."""

    if not plan.fits:
        return ""
    return describe(deployment_options(cfg, plan, cfg.replicas).get(KEY))


# --- usage-file template -----------------------------------------------------------------------

# Keys whose default is a quantity of the key's own unit (hours, GB); the rest default to no usage.
_QUANTITY_KEYS = {"monthly_hrs", "storage_gb", "standard.storage_gb"}


def usage_template(est: cost_model.Estimate) -> list[usage_mod.TemplateEntry]:

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

    if path is None:
        return usage_mod.Usage()
    if sync and not path.exists():
        return usage_mod.Usage(str(path))  # --sync-usage-file creates it
    return usage_mod.parse(read_file(path, "--usage-file"), str(path))


# --- one cold start in dollars ----------------------------------------------------------------


def _cold_start_s(cfg, plan) -> float | None:
    """Boot -> first token on the stack's own worker type; None for owned hosts or no fit."""
    if cfg.provider != "aws" or not plan.fits:
        return None
    cat = load_catalog()
    cold = coldstart.estimate(
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
    usd = p.estimate.running_hourly * Decimal(str(p.cold_start_s)) / 3600
    return {
        "seconds": round(p.cold_start_s, 1),
        "usd": f"{usd:.2f}",
        "source": "llmfleet plan (cold_start_terms)",
    }
