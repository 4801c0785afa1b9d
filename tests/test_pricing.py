"""Price sources: the snapshot, the Stubber-driven live path (Price List + spot history),
its on-disk day cache (fake clock) and the fallback to the snapshot on failure."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import boto3
import pytest
from botocore.stub import ANY, Stubber

from infra.cost import estimate as cost
from infra.cost import live_prices, pricing
from infra.cost.live_prices import LivePriceBook, PriceCache
from infra.cost.pricing import OnDemand, PriceBook, PriceError

ON_DEMAND = {"g6e.48xlarge": OnDemand(Decimal("30.131"), "test catalog")}


def price_list_item(instance_type: str, usd: str, location: str = "US East (N. Virginia)") -> str:
    """One PriceList entry in the shape GetProducts returns (a JSON string)."""
    sku = "ABCDEFGH12345678"
    return json.dumps(
        {
            "product": {
                "productFamily": "Compute Instance",
                "attributes": {
                    "instanceType": instance_type,
                    "location": location,
                    "operatingSystem": "Linux",
                    "tenancy": "Shared",
                    "preInstalledSw": "NA",
                    "capacitystatus": "Used",
                    "licenseModel": "No License required",
                    "servicecode": "AmazonEC2",
                },
                "sku": sku,
            },
            "serviceCode": "AmazonEC2",
            "terms": {
                "OnDemand": {
                    f"{sku}.JRTCKXETXF": {
                        "priceDimensions": {
                            f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                                "unit": "Hrs",
                                "endRange": "Inf",
                                "description": f"${usd} per On Demand Linux {instance_type} Instance Hour",
                                "appliesTo": [],
                                "rateCode": f"{sku}.JRTCKXETXF.6YS6EN2CT7",
                                "beginRange": "0",
                                "pricePerUnit": {"USD": usd},
                            }
                        },
                        "sku": sku,
                        "effectiveDate": "2026-11-01T00:00:00Z",
                        "offerTermCode": "JRTCKXETXF",
                        "termAttributes": {},
                    }
                },
                "Reserved": {
                    f"{sku}.4NA7Y494T4": {
                        "priceDimensions": {
                            f"{sku}.4NA7Y494T4.6YS6EN2CT7": {
                                "unit": "Hrs",
                                "pricePerUnit": {"USD": "19.0000000000"},
                                "description": "reserved",
                                "appliesTo": [],
                                "rateCode": "x",
                                "beginRange": "0",
                                "endRange": "Inf",
                            }
                        },
                        "sku": sku,
                        "effectiveDate": "2026-11-01T00:00:00Z",
                        "offerTermCode": "4NA7Y494T4",
                        "termAttributes": {"LeaseContractLength": "1yr"},
                    }
                },
            },
            "version": "20261120000000",
            "publicationDate": "2026-11-20T00:00:00Z",
        }
    )


def spot_row(az: str, usd: str, hour: int) -> dict:
    return {
        "AvailabilityZone": az,
        "InstanceType": "g6e.48xlarge",
        "ProductDescription": "Linux/UNIX",
        "SpotPrice": usd,
        "Timestamp": dt.datetime(2026, 11, 27, hour, tzinfo=dt.UTC),
    }


class Clock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clients():
    pricing_client = boto3.client(
        "pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y"
    )
    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    with Stubber(pricing_client) as ps, Stubber(ec2) as es:
        yield pricing_client, ps, ec2, es
        ps.assert_no_pending_responses()
        es.assert_no_pending_responses()


def make_book(clients, tmp_path, clock=None, region="us-east-1"):
    pricing_client, _, ec2, _ = clients
    return LivePriceBook(
        region,
        ON_DEMAND,
        pricing_client=pricing_client,
        ec2_client=ec2,
        cache=PriceCache(tmp_path, clock=clock or Clock()),
    )


def expect_products(
    stubber, instance_type="g6e.48xlarge", usd="31.5000000000", location="US East (N. Virginia)"
):
    stubber.add_response(
        "get_products",
        {"FormatVersion": "aws_v1", "PriceList": [price_list_item(instance_type, usd, location)]},
        {
            "ServiceCode": "AmazonEC2",
            "Filters": live_prices.ec2_price_filters(instance_type, location),
            "FormatVersion": "aws_v1",
            "MaxResults": 100,
        },
    )


def test_filters_are_the_documented_ones():
    fields = {
        f["Field"]: f["Value"] for f in live_prices.ec2_price_filters("g6e.48xlarge", "US East (N. Virginia)")
    }
    assert fields == {
        "instanceType": "g6e.48xlarge",
        "location": "US East (N. Virginia)",
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
        "licenseModel": "No License required",
    }
    assert pricing.location_name("eu-west-1") == "Europe (Ireland)"


def test_live_on_demand_and_cache(clients, tmp_path):
    _, ps, _, _ = clients
    expect_products(ps)  # exactly one call: the second lookup and the second book hit the cache
    book = make_book(clients, tmp_path)
    p = book.instance_hourly("g6e.48xlarge")
    assert p.usd == Decimal("31.5") and not p.estimate and "Price List" in p.source
    assert p.date == dt.datetime.fromtimestamp(1_800_000_000, dt.UTC).date().isoformat()
    assert make_book(clients, tmp_path).instance_hourly("g6e.48xlarge").usd == Decimal("31.5")
    assert book.warnings == []


def test_cache_expires_after_a_day(clients, tmp_path):
    _, ps, _, _ = clients
    clock = Clock()
    expect_products(ps, usd="31.5")
    assert make_book(clients, tmp_path, clock).instance_hourly("g6e.48xlarge").usd == Decimal("31.5")
    clock.t += 24 * 3600 - 1  # still fresh: no call
    assert make_book(clients, tmp_path, clock).instance_hourly("g6e.48xlarge").usd == Decimal("31.5")
    clock.t += 2  # expired: a new call with a new price
    expect_products(ps, usd="29.0")
    assert make_book(clients, tmp_path, clock).instance_hourly("g6e.48xlarge").usd == Decimal("29")


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMFLEET_CACHE_DIR", str(tmp_path))
    assert PriceCache().path == tmp_path / "prices" / "live.json"


def test_live_spot_takes_the_latest_price_of_the_highest_az(clients, tmp_path):
    _, _, _, es = clients
    es.add_response(
        "describe_spot_price_history",
        {
            "SpotPriceHistory": [
                spot_row("us-east-1a", "12.100000", 1),
                spot_row("us-east-1a", "11.000000", 3),  # latest in 1a
                spot_row("us-east-1b", "13.250000", 2),
            ]
        },
        {"InstanceTypes": ["g6e.48xlarge"], "ProductDescriptions": ["Linux/UNIX"], "StartTime": ANY},
    )
    p = make_book(clients, tmp_path).instance_hourly("g6e.48xlarge", "spot")
    assert p.usd == Decimal("13.25") and "us-east-1b" in p.source and not p.estimate


def test_live_spot_pinned_az(clients, tmp_path):
    _, _, _, es = clients
    es.add_response(
        "describe_spot_price_history",
        {"SpotPriceHistory": [spot_row("us-east-1a", "11.000000", 3)]},
        {
            "InstanceTypes": ["g6e.48xlarge"],
            "ProductDescriptions": ["Linux/UNIX"],
            "StartTime": ANY,
            "AvailabilityZone": "us-east-1a",
        },
    )
    assert make_book(clients, tmp_path).instance_hourly("g6e.48xlarge", "spot", "us-east-1a").usd == 11


def test_spot_workers_priced_from_stubbed_history(clients, tmp_path):
    _, _, _, es = clients
    es.add_response("describe_spot_price_history", {"SpotPriceHistory": [spot_row("us-east-1c", "9.5", 1)]})
    book = make_book(clients, tmp_path)
    worker = {
        "type": "aws:ec2/instance:Instance",
        "name": "w0",
        "inputs": {
            "instanceType": "g6e.48xlarge",
            "instanceMarketOptions": {"marketType": "spot"},
            "rootBlockDevice": {"volumeSize": 1, "volumeType": "gp3"},
        },
    }
    est = cost.price_resources([worker, {**worker, "name": "w1"}], book)  # one API call for both
    assert [r.components[0].price.usd for r in est.resources] == [Decimal("9.5")] * 2


def test_failing_live_call_falls_back_with_a_warning(clients, tmp_path):
    _, ps, _, es = clients
    ps.add_client_error(
        "get_products", "AccessDeniedException", "not authorized to perform pricing:GetProducts"
    )
    es.add_client_error("describe_spot_price_history", "UnauthorizedOperation", "no")
    book = make_book(clients, tmp_path)
    p = book.instance_hourly("g6e.48xlarge")
    assert p.usd == Decimal("30.131") and p.source == "test catalog"
    s = book.instance_hourly("g6e.48xlarge", "spot")
    assert s.estimate
    assert len(book.warnings) == 2
    assert (
        "failed" in book.warnings[0] and "AccessDenied" in book.warnings[0] and "snapshot" in book.warnings[0]
    )
    assert not (tmp_path / "live.json").exists()  # failures are not cached


def test_unparseable_price_list_falls_back(clients, tmp_path):
    _, ps, _, _ = clients
    ps.add_response("get_products", {"PriceList": []})
    book = make_book(clients, tmp_path)
    assert book.instance_hourly("g6e.48xlarge").usd == Decimal("30.131")
    assert "0 distinct on-demand prices" in book.warnings[0]


def test_region_outside_snapshot(clients, tmp_path):
    with pytest.raises(PriceError, match=r"'eu-west-1' is not in the price snapshot.*--live"):
        PriceBook("eu-west-1", ON_DEMAND)
    _, ps, _, _ = clients
    expect_products(ps, usd="34.0", location="Europe (Ireland)")
    pricing_client, _, ec2, _ = clients
    book = LivePriceBook(
        "eu-west-1", ON_DEMAND, pricing_client=pricing_client, ec2_client=ec2, cache=PriceCache(tmp_path)
    )
    assert book.instance_hourly("g6e.48xlarge").usd == 34
    nat = book.rate("nat.hour")
    assert nat.estimate and "us-east-1 price used for eu-west-1" in nat.note
    assert any("eu-west-1" in w for w in book.warnings)


def test_snapshot_rows_have_sources_and_date():
    snap = pricing.load_snapshot()
    assert snap.hours_per_month == 730
    for region in snap.regions.values():
        for key, r in region.rates.items():
            assert r.source.startswith("https://aws.amazon.com/"), key
    book = PriceBook("us-east-1", ON_DEMAND)
    assert book.rate("ebs.gp3.storage").date == snap.snapshot_date.isoformat()
    with pytest.raises(PriceError, match="no on-demand price for 'x9.huge'"):
        book.instance_hourly("x9.huge")


def test_unwritable_or_corrupt_cache_still_prices(clients, tmp_path):
    _, ps, _, _ = clients
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = PriceCache(blocker / "sub")  # mkdir fails: the fetched price is still used
    pricing_client, _, ec2, _ = clients
    expect_products(ps, usd="31.5")
    book = LivePriceBook("us-east-1", ON_DEMAND, pricing_client=pricing_client, ec2_client=ec2, cache=cache)
    assert book.instance_hourly("g6e.48xlarge").usd == Decimal("31.5") and book.warnings == []
    corrupt = PriceCache(tmp_path)
    corrupt.path.write_text(json.dumps({"on-demand|us-east-1|*|g6e.48xlarge": {"usd": "1"}}))
    assert corrupt.get("on-demand|us-east-1|*|g6e.48xlarge") is None


def test_label_says_live_only_for_what_was_live(clients, tmp_path):
    """The table title reads the book's label: all live, partly live, or snapshot with why."""
    _, ps, _, es = clients
    expect_products(ps)
    book = make_book(clients, tmp_path)
    book.instance_hourly("g6e.48xlarge")
    assert book.label.startswith("live (AWS Price List API")
    es.add_client_error("describe_spot_price_history", "UnauthorizedOperation", "no")
    book.instance_hourly("g6e.48xlarge", "spot")
    assert book.label == f"live for 1 instance price(s), snapshot {book.date} for the rest (ClientError)"


def test_no_credentials_is_one_warning_and_a_snapshot_label(tmp_path):
    """botocore's NoCredentialsError (a real client with no credentials anywhere) ends the live
    attempts: one warning with the fix, and the label says snapshot."""
    from botocore.config import Config
    from botocore.session import Session

    session = Session()
    session.get_credentials = lambda: None  # what an account without any configured credentials gives
    cfg = Config(retries={"max_attempts": 1})
    pricing_client = session.create_client("pricing", region_name="us-east-1", config=cfg)
    ec2 = session.create_client("ec2", region_name="us-east-1", config=cfg)
    book = LivePriceBook(
        "us-east-1", ON_DEMAND, pricing_client=pricing_client, ec2_client=ec2, cache=PriceCache(tmp_path)
    )
    assert book.instance_hourly("g6e.48xlarge").source == "test catalog"
    book.instance_hourly("g6e.48xlarge", "spot")
    (warning,) = book.warnings
    assert warning.startswith("no AWS credentials found; configure them with `aws configure`")
    assert book.label == f"snapshot {book.date}: live prices unavailable (no AWS credentials)"
