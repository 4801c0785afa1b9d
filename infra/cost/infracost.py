"""Infracost's JSON output (version "0.2"): breakdowns, the past/new diff, and reading a past file.

The document validates against Infracost's published schema (`schema/infracost.schema.json`;
tests/schemas/ holds our transcription of its field list). Our own figures live only where the
schema allows free-form data, a resource's `metadata`: USD per million output tokens (that
resource's share; the shares add up to the stack's figure), price source and date per cost
component, estimate notes, the Pulumi URN. Warnings go to the project's `metadata.warnings`.

Diffs follow Infracost's own algorithm (internal/schema/diff.go): resources are matched past to
new, sub-resources by "parent.child" name, cost components by name; a diff item carries new minus
past for quantities, price and costs, and only changed items are listed (past order first, then
what is new). We match by Pulumi URN when both sides carry one, else by logical name. Pure
functions over plain dicts, so a past breakdown read from a file diffs the same as one priced now.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from infra.cost.estimate import usd_per_million_tokens
from infra.cost.infracost_diff import Json, diff_breakdown, totals
from infra.cost.model import INFRACOST_JSON_VERSION, CostComponent, Estimate, ResourceCost, as_decimal, dec
from infra.cost.pricing import PriceError

ZERO_TIME = "0001-01-01T00:00:00Z"  # what Infracost writes for an unknown commit time (Go's zero time)


@dataclass(frozen=True)
class RunMetadata:
    """The root `metadata`: which command ran and the commit it ran on (Infracost's VCS fields)."""

    command: str = "breakdown"  # "breakdown" (no past) or "diff"
    branch: str = ""
    commit_sha: str = ""
    author_name: str = ""
    author_email: str = ""
    commit_timestamp: str = ZERO_TIME
    commit_message: str = ""
    repository_url: str = ""
    usage_file_path: str = ""

    def to_json(self) -> Json:
        out: Json = {
            "infracostCommand": self.command,
            "vcsBranch": self.branch,
            "vcsCommitSha": self.commit_sha,
            "vcsCommitAuthorName": self.author_name,
            "vcsCommitAuthorEmail": self.author_email,
            "vcsCommitTimestamp": self.commit_timestamp or ZERO_TIME,
            "vcsCommitMessage": self.commit_message,
        }
        if self.repository_url:
            out["vcsRepositoryUrl"] = self.repository_url
        if self.usage_file_path:
            out["usageFilePath"] = self.usage_file_path
        return out


@dataclass(frozen=True)
class ProjectInfo:
    name: str  # the stack
    path: str  # the Pulumi project directory, or the preview file
    type: str  # "pulumi_program" (the offline engine ran the program) or "pulumi_preview_json"
    display_name: str = ""
    warnings: Sequence[str] = field(default_factory=tuple)


# --- breakdowns --------------------------------------------------------------------------------


def _component(c: CostComponent) -> Json:
    return {
        "name": c.name,
        "unit": c.unit,
        "hourlyQuantity": dec(c.hourly_quantity),
        "monthlyQuantity": dec(c.monthly_quantity),
        "price": dec(c.price.usd),
        # as Infracost: a usage-based component with no usage has a price but no cost
        "hourlyCost": dec(c.hourly_cost) if c.known else None,
        "monthlyCost": dec(c.monthly_cost) if c.known else None,
        "usageBased": c.usage_based,
        "priceNotFound": False,
    }


def _price_sources(r: ResourceCost) -> list[Json]:
    return [
        {
            "component": c.name,
            "priceSource": c.price.source,
            "priceDate": c.price.date,
            "estimate": c.price.estimate,
            "note": c.price.note,
            **({"usageKey": c.usage_key} if c.usage_key else {}),
        }
        for c in r.components
    ]


@dataclass(frozen=True)
class TokenBasis:
    """What USD per million output tokens is computed from: the planner's expected decode
    tokens per second and the hours a month the cluster serves."""

    tokens_per_s: float | None
    serving_hours: Decimal


def _resource(r: ResourceCost, region: str, tokens: TokenBasis | None, top: bool) -> Json:
    meta: Json = {k: v for k, v in r.metadata.items() if v != ""}
    if r.urn:
        meta["urn"] = r.urn
    if top:
        meta["region"] = region
    meta["priceSources"] = _price_sources(r)
    if top and tokens is not None:
        share = usd_per_million_tokens(r.monthly_cost, tokens.tokens_per_s, tokens.serving_hours)
        meta["usdPerMillionOutputTokens"] = dec(share, 6)
        meta["decodeTokensPerSecondExpected"] = tokens.tokens_per_s
        meta["servingHoursPerMonth"] = dec(tokens.serving_hours)
    return {
        "name": r.name,
        "resourceType": r.resource_type,
        "metadata": meta,
        "hourlyCost": dec(r.hourly_cost),
        "monthlyCost": dec(r.monthly_cost),
        "monthlyUsageCost": dec(r.monthly_usage_cost),
        "costComponents": [_component(c) for c in r.components],
        "subresources": [_resource(s, region, tokens, False) for s in r.subresources],
    }


def breakdown(est: Estimate, tokens_per_s: float | None = None) -> Json:
    tokens = TokenBasis(tokens_per_s, est.serving_hours) if tokens_per_s else None
    resources = [_resource(r, est.region, tokens, True) for r in est.resources]
    return {"resources": resources, **totals(resources)}


def empty_breakdown() -> Json:
    return {"resources": [], **totals([])}


def summary(est: Estimate) -> Json:
    def counts(types: Iterable[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in types:
            out[t] = out.get(t, 0) + 1
        return dict(sorted(out.items()))

    usage_based = sum(any(c.usage_based for c in r._all()) for r in est.resources)
    return {
        "totalDetectedResources": est.detected,
        "totalSupportedResources": len(est.resources),
        "totalUnsupportedResources": len(est.unsupported),
        "totalUsageBasedResources": usage_based,
        "totalNoPriceResources": len(est.no_price),
        "unsupportedResourceCounts": counts(est.unsupported),
        "noPriceResourceCounts": counts(est.no_price),
    }


# --- the document ------------------------------------------------------------------------------


def project(
    info: ProjectInfo,
    new: Json,
    proj_summary: Json,
    past: Json | None = None,
    name_key: Callable[[Json], Any] | None = None,
) -> Json:
    """One project: its breakdown, the past breakdown (empty without a past, as Infracost
    writes it), and the diff (= the breakdown's changes from nothing when there is no past)."""
    past_bd = past if past is not None else empty_breakdown()
    meta: Json = {"path": info.path, "type": info.type}
    if info.warnings:
        meta["warnings"] = [
            {"code": 0, "message": w, "data": None, "isError": False} for w in dict.fromkeys(info.warnings)
        ]
    return {
        "name": info.name,
        "displayName": info.display_name or info.name,
        "metadata": meta,
        "pastBreakdown": past_bd,
        "breakdown": new,
        "diff": diff_breakdown(past_bd, new, name_key),
        "summary": proj_summary,
    }


def document(projects: Sequence[Json], run: RunMetadata, time_generated: dt.datetime) -> Json:
    def total(part: str, key: str) -> str:
        return dec(sum((as_decimal(p[part][key]) or Decimal(0) for p in projects), Decimal(0))) or "0"

    merged: Json = {}
    for p in projects:
        for k, v in p["summary"].items():
            if isinstance(v, int):
                merged[k] = merged.get(k, 0) + v
            else:
                acc = merged.setdefault(k, {})
                for t, n in v.items():
                    acc[t] = acc.get(t, 0) + n
    stamp = time_generated.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return {
        "version": INFRACOST_JSON_VERSION,
        "metadata": run.to_json(),
        "currency": "USD",
        "projects": list(projects),
        "totalHourlyCost": total("breakdown", "totalHourlyCost"),
        "totalMonthlyCost": total("breakdown", "totalMonthlyCost"),
        "totalMonthlyUsageCost": total("breakdown", "totalMonthlyUsageCost"),
        "pastTotalHourlyCost": total("pastBreakdown", "totalHourlyCost"),
        "pastTotalMonthlyCost": total("pastBreakdown", "totalMonthlyCost"),
        "pastTotalMonthlyUsageCost": total("pastBreakdown", "totalMonthlyUsageCost"),
        "diffTotalHourlyCost": total("diff", "totalHourlyCost"),
        "diffTotalMonthlyCost": total("diff", "totalMonthlyCost"),
        "diffTotalMonthlyUsageCost": total("diff", "totalMonthlyUsageCost"),
        "timeGenerated": stamp,
        "summary": merged,
    }


# --- --compare-to ------------------------------------------------------------------------------


def past_breakdown_from(text: str, project_name: str, path: str = "") -> tuple[Json, str]:
    """(the past breakdown, the project it came from) of an earlier `llmfleet cost --json` or
    `infracost breakdown --format json` file: the project named like this stack, else the only one."""
    where = f"--compare-to {path}" if path else "--compare-to"
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise PriceError(f"{where}: not JSON ({err.msg} at line {err.lineno})") from None
    projects = doc.get("projects") if isinstance(doc, Mapping) else None
    if not isinstance(projects, list) or not projects:
        raise PriceError(f"{where}: expected Infracost JSON with a non-empty `projects` list")
    names = [str(p.get("name", "")) for p in projects if isinstance(p, Mapping)]
    chosen = [p for p in projects if isinstance(p, Mapping) and p.get("name") == project_name]
    if not chosen and len(projects) == 1 and isinstance(projects[0], Mapping):
        chosen = [projects[0]]
    if not chosen:
        raise PriceError(f"{where}: no project named {project_name!r}; it has: {', '.join(names) or 'none'}")
    bd = chosen[0].get("breakdown")
    if not isinstance(bd, Mapping) or not isinstance(bd.get("resources"), list):
        raise PriceError(f"{where}: project {chosen[0].get('name')!r} has no breakdown.resources list")
    for r in bd["resources"]:
        if not isinstance(r, Mapping) or not isinstance(r.get("name"), str):
            raise PriceError(f"{where}: every breakdown resource needs a name")
        for c in r.get("costComponents") or []:
            for k in ("hourlyQuantity", "monthlyQuantity", "price", "hourlyCost", "monthlyCost"):
                as_decimal(c.get(k))  # fail here, in one line, not halfway through the diff
    return dict(bd), str(chosen[0].get("name", ""))
