"""Live AWS prices: EC2 on-demand from the Price List API, spot from
`describe_spot_price_history`, cached on disk for a day. A failing live call falls back to
the snapshot book and records a warning that says so."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from infra import aws_credentials
from infra.cost.pricing import (
    SAVINGS_PLAN_FRACTIONS,
    OnDemand,
    Price,
    PriceBook,
    PriceError,
    Snapshot,
    catalog_on_demand,
    location_name,
)

CACHE_TTL_S = 24 * 3600
PRICING_API_REGION = "us-east-1"  # Price List API is served only from us-east-1, eu-central-1, ap-south-1


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
        self._live_n = 0  # instance prices that did come from AWS (or its day cache)
        self._fallbacks: list[str] = []  # why the others came from the snapshot
        self._no_credentials = False

    @property
    def label(self) -> str:
        """Where the numbers came from, as the table title says it: live only if they were."""
        if not self._fallbacks:
            return f"live (AWS Price List API; other rates from snapshot {self.date})"
        why = self._fallbacks[0]
        if not self._live_n:
            return f"snapshot {self.date}: live prices unavailable ({why})"
        return f"live for {self._live_n} instance price(s), snapshot {self.date} for the rest ({why})"

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
            if self._no_credentials:  # every further call would fail the same way
                return super().instance_hourly(instance_type, market, az)
            try:
                if market == "spot":
                    value = self._fetch_spot(instance_type, az)
                else:
                    value = self._fetch_on_demand(instance_type)
            except Exception as err:  # any live failure (credentials, network, throttling, shape) falls back
                fallback = super().instance_hourly(instance_type, market, az)
                if aws_credentials.missing(err):
                    self._no_credentials = True
                    self._fallbacks.append("no AWS credentials")
                    self.warnings.append(
                        f"{aws_credentials.MESSAGE}; every instance price is from the snapshot {self.date}"
                    )
                    return fallback
                self._fallbacks.append(type(err).__name__)
                self.warnings.append(
                    f"live {market} price for {instance_type} in {self.region} failed "
                    f"({type(err).__name__}: {_one_line(err)}); using the snapshot price {fallback.usd}/h "
                    f"(snapshot {self.date}{', estimate' if fallback.estimate else ''})"
                )
                return fallback
            entry = self.cache.put(key, value)
        self._live_n += 1
        fetched = dt.datetime.fromtimestamp(entry["fetched_at"], dt.UTC).date().isoformat()
        return Price(Decimal(entry["usd"]), "hours", entry["source"], fetched, False, f"live {market}")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] or type(err).__name__


def live_book(region: str, on_demand: Mapping[str, OnDemand] | None = None, **kwargs: Any) -> LivePriceBook:
    return LivePriceBook(region, catalog_on_demand() if on_demand is None else on_demand, **kwargs)
