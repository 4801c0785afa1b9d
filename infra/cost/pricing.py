"""Price sources for `llmfleet cost`: the bundled dated snapshot, and live AWS prices.

- `snapshot_book(region)`: offline default. Non-instance rates come from
  infra/catalog/prices_aws.yaml, EC2 on-demand prices from the instance catalog.
- `live_book(region)`: EC2 instance prices from the AWS Price List API (on-demand)
  and `describe_spot_price_history` (spot), cached on disk for a day. A failing live
  call falls back to the snapshot and records a warning that says so.

Money is `decimal.Decimal` throughout.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

SNAPSHOT_PATH = Path(__file__).resolve().parent.parent / "catalog" / "prices_aws.yaml"
SNAPSHOT_REGION = "us-east-1"  # the region the instance catalog's on-demand prices are for
CACHE_TTL_S = 24 * 3600
PRICING_API_REGION = "us-east-1"  # Price List API is served only from us-east-1, eu-central-1, ap-south-1


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
    return Snapshot.model_validate(yaml.safe_load(path.read_text()))


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
    from infra.catalog import load_catalog

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


# --- live prices -------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    base = os.environ.get("LLMFLEET_CACHE_DIR") or "~/.cache/llmfleet"
    return Path(base).expanduser() / "prices"


class PriceCache:
    """A JSON file of live prices keyed by query; entries expire after `ttl` seconds."""

    def __init__(
        self, directory: Path | None = None, ttl: float = CACHE_TTL_S, clock: Callable[[], float] = time.time
    ):
        self.path = (directory or default_cache_dir()) / "live.json"
        self.ttl = ttl
        self.clock = clock

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # a missing or corrupt cache is just empty

    def get(self, key: str) -> dict[str, Any] | None:
        entry = self._load().get(key)
        if not isinstance(entry, dict) or not {"usd", "source", "fetched_at"} <= entry.keys():
            return None
        if self.clock() - entry["fetched_at"] >= self.ttl:
            return None
        return entry

    def put(self, key: str, value: dict[str, Any]) -> dict[str, Any]:
        entry = {**value, "fetched_at": self.clock()}
        data = self._load()
        data[key] = entry
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)  # atomic, so a concurrent reader never sees half a file
        except OSError:
            pass  # an unwritable cache only costs a refetch next time
        return entry


def ec2_price_filters(instance_type: str, location: str) -> list[dict[str, str]]:
    """The Price List filters that select one shared-tenancy Linux on-demand price."""
    fields = {
        "instanceType": instance_type,
        "location": location,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
        "licenseModel": "No License required",
    }
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in fields.items()]


def parse_on_demand(price_list: list[str]) -> tuple[Decimal, str]:
    """(USD per hour, publication date) from GetProducts' PriceList (JSON strings)."""
    prices: set[Decimal] = set()
    published = ""
    for item in price_list:
        doc = json.loads(item)
        published = doc.get("publicationDate", published)
        for term in doc.get("terms", {}).get("OnDemand", {}).values():
            for dim in term["priceDimensions"].values():
                if dim.get("unit") == "Hrs":
                    prices.add(Decimal(dim["pricePerUnit"]["USD"]))
    prices.discard(Decimal(0))
    if len(prices) != 1:
        raise PriceError(f"Price List returned {len(prices)} distinct on-demand prices, expected 1")
    return prices.pop().normalize(), published


def parse_spot(history: list[dict[str, Any]], az: str | None) -> tuple[Decimal, str]:
    """(USD per hour, AZ) of the current spot price: the AZ's latest, or the highest AZ's latest.

    With no AZ pinned the highest is taken, so a budget gate never under-estimates.
    """
    latest: dict[str, dict[str, Any]] = {}
    for row in history:
        zone = row["AvailabilityZone"]
        if az and zone != az:
            continue
        if zone not in latest or row["Timestamp"] > latest[zone]["Timestamp"]:
            latest[zone] = row
    if not latest:
        raise PriceError("describe_spot_price_history returned no prices" + (f" in {az}" if az else ""))
    zone, row = max(latest.items(), key=lambda kv: Decimal(kv[1]["SpotPrice"]))
    return Decimal(row["SpotPrice"]).normalize(), zone


def _client_config():
    from botocore.config import Config

    return Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"})


class LivePriceBook(PriceBook):
    """Instance prices from AWS; every other rate, and any failure, from the snapshot."""

    kind = "live"

    def __init__(
        self,
        region: str,
        on_demand: Mapping[str, OnDemand],
        *,
        pricing_client: Any = None,
        ec2_client: Any = None,
        cache: PriceCache | None = None,
        snapshot: Snapshot | None = None,
    ) -> None:
        super().__init__(region, on_demand, snapshot, allow_foreign_rates=True)
        self._pricing = pricing_client
        self._ec2 = ec2_client
        self.cache = cache or PriceCache()
        self._memo: dict[tuple[str, str, str | None], Price] = {}

    @property
    def label(self) -> str:
        return f"live (AWS Price List API; other rates from snapshot {self.date})"

    def _pricing_client(self):
        if self._pricing is None:
            import boto3

            self._pricing = boto3.client("pricing", region_name=PRICING_API_REGION, config=_client_config())
        return self._pricing

    def _ec2_client(self):
        if self._ec2 is None:
            import boto3

            self._ec2 = boto3.client("ec2", region_name=self.region, config=_client_config())
        return self._ec2

    def _fetch_on_demand(self, instance_type: str) -> dict[str, Any]:
        resp = self._pricing_client().get_products(
            ServiceCode="AmazonEC2",
            Filters=ec2_price_filters(instance_type, location_name(self.region)),
            FormatVersion="aws_v1",
            MaxResults=100,
        )
        usd, published = parse_on_demand(resp["PriceList"])
        return {"usd": str(usd), "source": f"AWS Price List API (AmazonEC2, published {published})".strip()}

    def _fetch_spot(self, instance_type: str, az: str | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "InstanceTypes": [instance_type],
            "ProductDescriptions": ["Linux/UNIX"],
            "StartTime": dt.datetime.now(dt.UTC),  # StartTime=now returns the price in effect now
        }
        if az:
            kwargs["AvailabilityZone"] = az
        history: list[dict[str, Any]] = []
        for page in self._ec2_client().get_paginator("describe_spot_price_history").paginate(**kwargs):
            history.extend(page["SpotPriceHistory"])
        usd, zone = parse_spot(history, az)
        return {"usd": str(usd), "source": f"EC2 describe_spot_price_history ({zone})"}

    def instance_hourly(self, instance_type: str, market: str = "on-demand", az: str | None = None) -> Price:
        if market in SAVINGS_PLAN_FRACTIONS:  # the live on-demand rate times the snapshot fraction
            return self.savings_plan(self.instance_hourly(instance_type, "on-demand", az), market)
        memo_key = (instance_type, market, az)
        if memo_key not in self._memo:
            self._memo[memo_key] = self._live(instance_type, market, az)
        return self._memo[memo_key]

    def _live(self, instance_type: str, market: str, az: str | None) -> Price:
        key = f"{market}|{self.region}|{az or '*'}|{instance_type}"
        entry = self.cache.get(key)
        if entry is None:
            try:
                if market == "spot":
                    value = self._fetch_spot(instance_type, az)
                else:
                    value = self._fetch_on_demand(instance_type)
            except Exception as err:  # any live failure (credentials, network, throttling, shape) falls back
                fallback = super().instance_hourly(instance_type, market, az)
                self.warnings.append(
                    f"live {market} price for {instance_type} in {self.region} failed "
                    f"({type(err).__name__}: {_one_line(err)}); using the snapshot price {fallback.usd}/h "
                    f"(snapshot {self.date}{', estimate' if fallback.estimate else ''})"
                )
                return fallback
            entry = self.cache.put(key, value)
        fetched = dt.datetime.fromtimestamp(entry["fetched_at"], dt.UTC).date().isoformat()
        return Price(Decimal(entry["usd"]), "hours", entry["source"], fetched, False, f"live {market}")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] or type(err).__name__


def live_book(region: str, on_demand: Mapping[str, OnDemand] | None = None, **kwargs: Any) -> LivePriceBook:
    return LivePriceBook(region, catalog_on_demand() if on_demand is None else on_demand, **kwargs)


__all__ = [
    "OnDemand",
    "PRICING_MODELS",
    "Price",
    "PriceBook",
    "LivePriceBook",
    "PriceCache",
    "PriceError",
    "Snapshot",
    "catalog_on_demand",
    "ec2_price_filters",
    "live_book",
    "load_snapshot",
    "location_name",
    "parse_on_demand",
    "parse_spot",
    "snapshot_book",
]
