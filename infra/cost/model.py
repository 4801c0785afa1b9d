"""The cost model (pure): line items (CostComponent), per-resource costs, the Estimate total,
and the helpers that build line items from a price and a quantity or a usage key."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from infra.cost.pricing import Price, PriceError

HOURS_PER_MONTH = Decimal(730)


INFRACOST_JSON_VERSION = "0.2"


# Unknown (computed) values: Pulumi's preview JSON marker, and the offline engine's placeholder.
UNKNOWNS = ("04da6b54-80e4-46f7-96ec-b56ff0331ba9", "[unknown]", "[secret]")


Resource = Mapping[str, Any]


@dataclass(frozen=True)
class CostComponent:
    name: str
    unit: str
    hourly_quantity: Decimal | None
    monthly_quantity: Decimal | None  # None = usage-based with no usage given: price, no cost
    price: Price
    usage_based: bool = False  # the quantity is usage: usage-priced, or set by the usage file
    usage_key: str = ""  # the usage-file key that sets the quantity ("" = none)

    @property
    def known(self) -> bool:
        return self.monthly_quantity is not None

    @property
    def hourly_cost(self) -> Decimal:
        return Decimal(0) if self.hourly_quantity is None else self.hourly_quantity * self.price.usd

    @property
    def monthly_cost(self) -> Decimal:
        return Decimal(0) if self.monthly_quantity is None else self.monthly_quantity * self.price.usd


@dataclass(frozen=True)
class ResourceCost:
    name: str
    resource_type: str
    components: tuple[CostComponent, ...]
    subresources: tuple[ResourceCost, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    urn: str = ""

    def _all(self) -> Iterable[CostComponent]:
        yield from self.components
        for s in self.subresources:
            yield from s._all()

    @property
    def hourly_cost(self) -> Decimal:
        return sum((c.hourly_cost for c in self._all()), Decimal(0))

    @property
    def monthly_cost(self) -> Decimal:
        return sum((c.monthly_cost for c in self._all()), Decimal(0))

    @property
    def monthly_usage_cost(self) -> Decimal:
        return sum((c.monthly_cost for c in self._all() if c.usage_based), Decimal(0))


@dataclass(frozen=True)
class WorkerSchedule:
    """How a serving schedule bills each GPU worker (infra/stack/serving_hours.py computes it)."""

    hours_per_month: Decimal  # the windows plus one cold start per opening
    serving_hours_per_month: Decimal  # the windows alone: the hours that produce tokens
    note: str


@dataclass(frozen=True)
class Estimate:
    project: str
    region: str
    price_source: str
    resources: tuple[ResourceCost, ...]
    detected: int  # cloud resources seen (components excluded)
    no_price: tuple[str, ...]  # types known to cost nothing
    unsupported: tuple[str, ...]  # types this estimator does not price
    warnings: tuple[str, ...] = ()
    pricing_model: str = "on-demand"
    # llmfleet:schedule: the hours a month the workers serve (their windows, no warm-up) and
    # how their instance-hours were counted; None/"" = around the clock
    scheduled_serving_hours: Decimal | None = None
    schedule_note: str = ""

    @property
    def total_hourly(self) -> Decimal:
        return sum((r.hourly_cost for r in self.resources), Decimal(0))

    @property
    def total_monthly(self) -> Decimal:
        return sum((r.monthly_cost for r in self.resources), Decimal(0))

    @property
    def running_hourly(self) -> Decimal:
        """USD an hour while every host runs: the hourly total with scheduled workers at their
        full rate (total_hourly spreads their part-time hours over the month)."""
        if self.scheduled_serving_hours is None:
            return self.total_hourly
        extra = sum(
            (
                r.components[0].price.usd - r.components[0].hourly_cost
                for r in self.resources
                if r.metadata.get("role") == "worker" and r.components and r.components[0].known
            ),
            Decimal(0),
        )
        return self.total_hourly + extra

    @property
    def total_monthly_usage(self) -> Decimal:
        return sum((r.monthly_usage_cost for r in self.resources), Decimal(0))

    @property
    def serving_hours(self) -> Decimal:
        """Hours a month the whole cluster serves: every GPU worker must be up (the pipeline
        spans all of them), so the fewest instance-hours of any worker; 730 without workers.
        Under a schedule: the windows' hours (a cold start bills but serves nothing)."""
        if self.scheduled_serving_hours is not None:
            return self.scheduled_serving_hours
        hours = [
            q
            for r in self.resources
            if r.metadata.get("role") == "worker" and r.components
            if (q := r.components[0].monthly_quantity) is not None  # known
        ]
        return min(hours) if hours else HOURS_PER_MONTH


def hourly(name: str, count: Decimal | int, price: Price, unit: str = "hours") -> CostComponent:
    n = Decimal(count)
    return CostComponent(name, unit, n, n * HOURS_PER_MONTH, price)


def monthly(name: str, unit: str, quantity: Decimal | int, price: Price, **kw: Any) -> CostComponent:
    q = Decimal(quantity)
    return CostComponent(name, unit, q / HOURS_PER_MONTH, q, price, **kw)


def from_usage(
    name: str, unit: str, price: Price, key: str, u: Mapping[str, Decimal], scale: Decimal = Decimal(1)
) -> CostComponent:
    """A usage-based component: quantity = usage[key] x scale (in the price's unit), or unknown."""
    if key not in u:
        return CostComponent(name, unit, None, None, price, usage_based=True, usage_key=key)
    return monthly(name, unit, u[key] * scale, price, usage_based=True, usage_key=key)


def is_known(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and value in UNKNOWNS)


def input_decimal(value: Any, key: str, res_name: str) -> Decimal:
    try:
        return Decimal(str(value))
    except ArithmeticError:
        raise PriceError(f"{res_name}: {key}={value!r} is not a number") from None


def tags_of(res: Resource) -> Mapping[str, str]:
    tags = res.get("inputs", {}).get("tags") or {}
    return tags if isinstance(tags, Mapping) else {}


def dec(value: Decimal | None, places: int = 10) -> str | None:
    """A decimal string without exponent or trailing zeros ("30.131", "21995.63")."""
    if value is None:
        return None
    q = value.quantize(Decimal(1).scaleb(-places))
    text = format(q, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def as_decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise PriceError(f"cost JSON: {value!r} is not a decimal string") from None
