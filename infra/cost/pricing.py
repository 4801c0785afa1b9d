"""Price sources for `llmfleet cost`: the bundled dated snapshot, and live AWS prices.

- `snapshot_book(region)`: offline default. Non-instance rates come from
  infra/catalog/prices_aws.yaml, EC2 on-demand prices from the instance catalog.
- `infra.cost.live_prices.live_book(region)`: EC2 instance prices from the AWS Price List API
  (on-demand) and `describe_spot_price_history` (spot), cached on disk for a day; a failing
  live call falls back to the snapshot and records a warning that says so.

Money is `decimal.Decimal` throughout.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from infra import yaml_files
from infra.catalog import load_catalog

SNAPSHOT_PATH = Path(__file__).resolve().parent.parent / "catalog" / "prices_aws.yaml"
SNAPSHOT_REGION = "us-east-1"  # the region the instance catalog's on-demand prices are for


class PriceError(ValueError):
    """A price that cannot be found; str() is one line for the CLI."""


# How instance-hours are billed (llmfleet:pricingModel). Savings Plans are a discount on the
# on-demand rate; the fraction is a snapshot planning figure with its source.
PRICING_MODELS = ("on-demand", "spot", "savings-plan-1y", "savings-plan-3y")
SAVINGS_PLAN_FRACTIONS = {
    "savings-plan-1y": "savings_plan_1y_fraction_of_on_demand",
    "savings-plan-3y": "savings_plan_3y_fraction_of_on_demand",
}


# --- the snapshot file -------------------------------------------------------------------------


class _Rate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    usd: Decimal
    unit: str
    source: str
    note: str = ""
    estimate: bool = False


class _Region(BaseModel):
    model_config = ConfigDict(extra="forbid")
    location: str
    rates: dict[str, _Rate]


class _Assumption(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str
    source: str
    estimate: bool = False


class Snapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    snapshot_date: dt.date
    currency: str
    hours_per_month: int
    regions: dict[str, _Region]
    assumptions: dict[str, _Assumption]


@cache
def load_snapshot(path: Path = SNAPSHOT_PATH) -> Snapshot:
    return Snapshot.model_validate(yaml_files.safe_load(path.read_text()))


# --- prices ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Price:
    """One unit price with where it came from and when."""

    usd: Decimal
    unit: str
    source: str
    date: str
    estimate: bool = False
    note: str = ""


@dataclass(frozen=True)
class OnDemand:
    """An on-demand EC2 price as the instance catalog holds it (us-east-1 Linux)."""

    usd_per_hour: Decimal
    source: str


def catalog_on_demand() -> dict[str, OnDemand]:
    """On-demand prices from the lead's instance catalog (the one place they live)."""

    return {
        name: OnDemand(Decimal(str(it.on_demand_usd_per_hour)), it.source)
        for name, it in load_catalog().instances.items()
        if it.on_demand_usd_per_hour is not None
    }


def location_name(region: str) -> str:
    """Price List `location` for a region, from botocore's own endpoint data."""
    import botocore.session

    for partition in botocore.session.get_session().get_data("endpoints")["partitions"]:
        if region in partition["regions"]:
            return partition["regions"][region]["description"]
    raise PriceError(f"region: unknown AWS region {region!r}")


class PriceBook:
    """Snapshot prices for one region. Subclasses may override `instance_hourly`."""

    kind = "snapshot"

    def __init__(
        self,
        region: str,
        on_demand: Mapping[str, OnDemand],
        snapshot: Snapshot | None = None,
        *,
        allow_foreign_rates: bool = False,
    ) -> None:
        self.snapshot = snapshot or load_snapshot()
        self.region = region
        self.date = self.snapshot.snapshot_date.isoformat()
        self.hours_per_month = Decimal(self.snapshot.hours_per_month)
        self.warnings: list[str] = []
        self._on_demand = dict(on_demand)
        self._foreign = region not in self.snapshot.regions
        if self._foreign and not allow_foreign_rates:
            have = ", ".join(sorted(self.snapshot.regions))
            raise PriceError(
                f"aws:region: {region!r} is not in the price snapshot (has: {have}); "
                "use --live to price its instances from the AWS Price List API"
            )
        if self._foreign:
            self.warnings.append(
                f"non-instance prices for {region} are the {SNAPSHOT_REGION} snapshot's, labelled estimates"
            )
        self._rates_region = SNAPSHOT_REGION if self._foreign else region

    @property
    def label(self) -> str:
        return f"snapshot {self.date}"

    def rate(self, key: str) -> Price:
        rates = self.snapshot.regions[self._rates_region].rates
        if key not in rates:
            raise PriceError(f"price snapshot: no rate {key!r} for {self._rates_region}")
        r = rates[key]
        note = r.note
        if self._foreign:
            note = f"{SNAPSHOT_REGION} price used for {self.region}" + (f"; {note}" if note else "")
        return Price(r.usd, r.unit, r.source, self.date, r.estimate or self._foreign, note)

    def rate_keys(self) -> list[str]:
        return list(self.snapshot.regions[self._rates_region].rates)

    def assumption(self, key: str) -> tuple[str, str, bool]:
        """(value, source, is_estimate) of a planning assumption."""
        a = self.snapshot.assumptions[key]
        return a.value, a.source, a.estimate

    def _snapshot_on_demand(self, instance_type: str) -> Price:
        od = self._on_demand.get(instance_type)
        if od is None:
            have = ", ".join(sorted(self._on_demand)) or "none"
            raise PriceError(
                f"instanceType: no on-demand price for {instance_type!r} in the instance catalog (has: {have})"
            )
        foreign = self.region != SNAPSHOT_REGION
        note = f"{SNAPSHOT_REGION} price used for {self.region}" if foreign else ""
        return Price(od.usd_per_hour, "hours", od.source, self.date, foreign, note)

    def _snapshot_spot(self, instance_type: str) -> Price:
        od = self._snapshot_on_demand(instance_type)
        value, source, _ = self.assumption("spot_fraction_of_on_demand")
        fraction = Decimal(value)
        note = f"estimate: {fraction} x on-demand {od.usd}/h" + (f"; {od.note}" if od.note else "")
        return Price(od.usd * fraction, "hours", source, self.date, True, note)

    def savings_plan(self, on_demand: Price, market: str) -> Price:
        """The Savings Plan rate for `market` (savings-plan-1y/3y) from an on-demand price."""
        value, source, _ = self.assumption(SAVINGS_PLAN_FRACTIONS[market])
        fraction = Decimal(value)
        note = f"estimate: {fraction} x on-demand {on_demand.usd}/h" + (
            f"; {on_demand.note}" if on_demand.note else ""
        )
        return Price(on_demand.usd * fraction, "hours", source, on_demand.date, True, note)

    def instance_hourly(self, instance_type: str, market: str = "on-demand", az: str | None = None) -> Price:
        if market in SAVINGS_PLAN_FRACTIONS:
            return self.savings_plan(self.instance_hourly(instance_type, "on-demand", az), market)
        if market == "spot":
            return self._snapshot_spot(instance_type)
        if market != "on-demand":
            raise PriceError(f"market {market!r} has no price; allowed: {', '.join(PRICING_MODELS)}")
        return self._snapshot_on_demand(instance_type)

    def capacity_block_rate(self, instance_type: str) -> Price:
        """A Capacity Block's reservation fee per instance-hour, from the snapshot (an estimate:
        the fee is fixed at purchase at the rate then in effect)."""
        key = f"capacity_block.{instance_type}"
        if key not in self.rate_keys():
            have = ", ".join(k.split(".", 1)[1] for k in self.rate_keys() if k.startswith("capacity_block."))
            raise PriceError(
                f"instanceType: no Capacity Block rate for {instance_type!r} in the {self._rates_region} "
                f"snapshot (has: {have or 'none'}); use --live to ask EC2 for the block's quote"
            )
        return self.rate(key)


def snapshot_book(region: str, on_demand: Mapping[str, OnDemand] | None = None) -> PriceBook:
    return PriceBook(region, catalog_on_demand() if on_demand is None else on_demand)
