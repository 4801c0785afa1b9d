"""The Infracost `diff` of two breakdowns: resources paired by URN (or by name across stacks),
each cost component's delta, and the totals' delta."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from infra.cost.model import as_decimal, dec

Json = dict[str, Any]


def totals(resources: Iterable[Json]) -> Json:
    rs = list(resources)

    def total(key: str) -> str:
        return dec(sum((as_decimal(r.get(key)) or Decimal(0) for r in rs), Decimal(0))) or "0"

    return {
        "totalHourlyCost": total("hourlyCost"),
        "totalMonthlyCost": total("monthlyCost"),
        "totalMonthlyUsageCost": total("monthlyUsageCost"),
    }


def _minus(new: Any, past: Any) -> str:
    """Infracost's diffDecimals: a missing side counts as zero."""
    return dec((as_decimal(new) or Decimal(0)) - (as_decimal(past) or Decimal(0))) or "0"


def _diff_component(past: Json | None, new: Json | None) -> Json | None:
    base = new or past
    assert base is not None
    p, n = past or {}, new or {}
    out = {
        "name": base["name"],
        "unit": base.get("unit", ""),
        "hourlyQuantity": _minus(n.get("hourlyQuantity"), p.get("hourlyQuantity")),
        "monthlyQuantity": _minus(n.get("monthlyQuantity"), p.get("monthlyQuantity")),
        "price": _minus(n.get("price"), p.get("price")),
        "hourlyCost": _minus(n.get("hourlyCost"), p.get("hourlyCost")),
        "monthlyCost": _minus(n.get("monthlyCost"), p.get("monthlyCost")),
        "usageBased": bool(base.get("usageBased", False)),
        "priceNotFound": bool(base.get("priceNotFound", False)),
    }
    changed = any(
        Decimal(out[k]) != 0
        for k in ("hourlyQuantity", "monthlyQuantity", "price", "hourlyCost", "monthlyCost")
    )
    return out if changed else None


def _pair_by_name(
    past: Sequence[Json], new: Sequence[Json], key: Callable[[Json], Any]
) -> list[tuple[Json | None, Json | None]]:
    """Infracost's order: every past item (with its new match, if any), then the new-only ones."""
    new_by_key: dict[Any, Json] = {}
    for n in new:
        new_by_key.setdefault(key(n), n)
    used: set[int] = set()
    pairs: list[tuple[Json | None, Json | None]] = []
    for p in past:
        n = new_by_key.get(key(p))
        if n is not None and id(n) not in used:
            used.add(id(n))
            pairs.append((p, n))
        else:
            pairs.append((p, None))
    pairs += [(None, n) for n in new if id(n) not in used]
    return pairs


def _urn(r: Json) -> str:
    meta = r.get("metadata") or {}
    urn = meta.get("urn") if isinstance(meta, Mapping) else None
    return urn if isinstance(urn, str) else ""


def pair_resources(
    past: Sequence[Json], new: Sequence[Json], name_key: Callable[[Json], Any] | None = None
) -> list[tuple[Json | None, Json | None]]:
    """Match past and new top-level resources: by Pulumi URN when both carry one, else by
    `name_key` (the logical name by default)."""
    name_key = name_key or (lambda r: r.get("name"))
    by_urn = {_urn(n): n for n in new if _urn(n)}
    urn_pairs: dict[int, Json] = {}
    for p in past:
        n = by_urn.get(_urn(p)) if _urn(p) else None
        if n is not None:
            urn_pairs[id(p)] = n
    matched_new = {id(n) for n in urn_pairs.values()}
    rest_past = [p for p in past if id(p) not in urn_pairs]
    rest_new = [n for n in new if id(n) not in matched_new]
    by_name = {
        id(p): n for p, n in _pair_by_name(rest_past, rest_new, name_key) if p is not None and n is not None
    }
    pairs: list[tuple[Json | None, Json | None]] = []
    used: set[int] = set()
    for p in past:
        n = urn_pairs.get(id(p)) or by_name.get(id(p))
        if n is not None:
            used.add(id(n))
        pairs.append((p, n))
    pairs += [(None, n) for n in new if id(n) not in used]
    return pairs


def _diff_resource(past: Json | None, new: Json | None) -> Json | None:
    base = new or past
    assert base is not None
    p, n = past or {}, new or {}
    comps = [
        d
        for pc, nc in _pair_by_name(
            p.get("costComponents") or [], n.get("costComponents") or [], lambda c: c.get("name")
        )
        if (d := _diff_component(pc, nc)) is not None
    ]
    subs = [
        d
        for ps, ns in _pair_by_name(
            p.get("subresources") or [], n.get("subresources") or [], lambda s: s.get("name")
        )
        if (d := _diff_resource(ps, ns)) is not None
    ]
    if not comps and not subs:
        return None
    meta: Json = {
        "pastMonthlyCost": dec(as_decimal(p.get("monthlyCost"))),
        "newMonthlyCost": dec(as_decimal(n.get("monthlyCost"))),
    }
    if _urn(base):
        meta["urn"] = _urn(base)
    out: Json = {"name": base["name"]}
    if base.get("resourceType"):
        out["resourceType"] = base["resourceType"]
    out.update(
        {
            "metadata": meta,
            "hourlyCost": _minus(n.get("hourlyCost"), p.get("hourlyCost")),
            "monthlyCost": _minus(n.get("monthlyCost"), p.get("monthlyCost")),
            "monthlyUsageCost": _minus(n.get("monthlyUsageCost"), p.get("monthlyUsageCost")),
            "costComponents": comps,
            "subresources": subs,
        }
    )
    return out


def diff_breakdown(past: Json, new: Json, name_key: Callable[[Json], Any] | None = None) -> Json:
    """The diff breakdown new minus past (both breakdown dicts), as `infracost diff` computes it."""
    pairs = pair_resources(past.get("resources") or [], new.get("resources") or [], name_key)
    resources = [d for p, n in pairs if (d := _diff_resource(p, n)) is not None]
    return {"resources": resources, **totals(resources)}


def other_stack_key(past_stack: str, new_stack: str) -> Callable[[Json], Any]:
    """`--diff OTHER`: resources of two stacks pair by type and logical name without a leading
    "<stack>-" (prod-worker-0 pairs with dev-worker-0); their URNs differ by stack."""

    def key(r: Json) -> Any:
        name = str(r.get("name", ""))
        for stack in (past_stack, new_stack):
            if stack and name.startswith(f"{stack}-"):
                name = name[len(stack) + 1 :]
                break
        return (r.get("resourceType"), name)

    return key
