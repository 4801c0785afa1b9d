"""The usage file (Infracost's format): parsing with one-line errors, what each key prices, the
exact change it makes to the total, and --sync-usage-file's round trip."""

from __future__ import annotations

import functools
import json
import re
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from infra.cli import app
from infra.commands.cost import usage_template
from infra.cost import estimate as cost
from infra.cost import infracost, usage
from infra.cost.pricing import OnDemand, PriceBook, load_snapshot
from tests.test_cost import H, by_name, rate, stack

ON_DEMAND = {
    "g6e.48xlarge": OnDemand(Decimal("30.131"), "test catalog"),
    "m7i.xlarge": OnDemand(Decimal("0.2016"), "test catalog"),
}
TINY = Decimal("1e-18")  # x / 730 x 730 at 28 significant digits


@pytest.fixture
def book() -> PriceBook:
    return PriceBook("us-east-1", ON_DEMAND)


def assumption(key: str) -> Decimal:
    return Decimal(load_snapshot().assumptions[key].value)


USAGE = """
version: 0.1
resource_type_default_usage:
  "aws:ec2/vpcEndpoint:VpcEndpoint":
    monthly_data_processed_gb: 100
resource_usage:
  nlb:
    processed_bytes_gb: 2000
  nat:
    monthly_data_processed_gb: 500
  ecr-api:
    monthly_data_processed_gb: 300   # wins over the type default
  weights:
    standard:
      monthly_tier_1_requests: 100000
      monthly_tier_2_requests: 2_000_000
  worker-1:
    monthly_hrs: 200
"""


def test_usage_changes_the_total_by_exactly_the_priced_usage(book):
    base = cost.price_resources(stack(3), book, weights_gib=642)
    u = usage.parse(USAGE, "usage.yml")
    with_usage = cost.price_resources(stack(3), book, weights_gib=642, usage=u)
    # each usage-priced line, from the published rates (independently of the estimator)
    expected = {
        ("nlb", "Load balancer capacity units"): Decimal(2000)
        / assumption("nlb_lcu_processed_gb_per_h")
        * rate("nlb.lcu"),
        ("nat", "Data processed"): 500 * rate("nat.data"),
        ("ecr-api", "Data processed"): 300 * rate("vpce.interface.data"),
        ("weights", "PUT, COPY, POST, LIST requests"): 100 * rate("s3.standard.requests.tier1"),
        ("weights", "GET, SELECT, and all other requests"): 2000 * rate("s3.standard.requests.tier2"),
    }
    items = by_name(with_usage)
    for (name, comp), usd in expected.items():
        c = next(c for c in items[name].components if c.name == comp)
        assert c.usage_based and abs(c.monthly_cost - usd) < TINY, (name, comp)
    hours_delta = (200 - H) * Decimal("30.131")  # worker-1 runs 200 of 730 hours
    assert (
        abs((with_usage.total_monthly - base.total_monthly) - (sum(expected.values()) + hours_delta)) < TINY
    )
    # the usage-based part of the total is exactly those lines plus worker-1's hours
    assert abs(with_usage.total_monthly_usage - (sum(expected.values()) + 200 * Decimal("30.131"))) < TINY
    assert base.total_monthly_usage == 0
    # the JSON says the same
    bd = infracost.breakdown(with_usage)
    assert Decimal(bd["totalMonthlyUsageCost"]) == Decimal(infracost.dec(with_usage.total_monthly_usage))


def test_type_defaults_apply_to_every_resource_of_the_type(book):
    endpoints = [
        {
            "type": "aws:ec2/vpcEndpoint:VpcEndpoint",
            "name": n,
            "inputs": {
                "vpcEndpointType": "Interface",
                "serviceName": f"com.amazonaws.us-east-1.{n}",
                "subnetIds": ["a"],
            },
        }
        for n in ("ssm", "logs")
    ]
    u = usage.parse(USAGE)
    items = by_name(cost.price_resources(endpoints, book, usage=u))
    for n in ("ssm", "logs"):
        assert items[n].components[1].monthly_cost == 100 * rate("vpce.interface.data")


def test_lcu_hours_take_the_largest_dimension(book):
    lb = [
        {"type": "aws:lb/loadBalancer:LoadBalancer", "name": "nlb", "inputs": {"loadBalancerType": "network"}}
    ]
    # 1,600 new flows/s = 2 LCU; 730 GB a month = 1 GB/h = 1 LCU; 50,000 active flows/min = 0.5 LCU
    u = usage.parse(
        "resource_usage: {nlb: {new_connections: 1600, processed_bytes_gb: 730, active_connections: 50000}}"
    )
    (lcu,) = [
        c for c in by_name(cost.price_resources(lb, book, usage=u))["nlb"].components if c.unit == "LCU-hours"
    ]
    per_lcu = assumption("nlb_lcu_new_flows_per_s")
    assert lcu.monthly_quantity == Decimal(1600) / per_lcu * H
    assert lcu.monthly_cost == Decimal(1600) / per_lcu * H * rate("nlb.lcu")


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "resource_usage: {nlb: {processed_gb: 1}}",
            "resource_usage.nlb.processed_gb: unknown key for aws:lb/loadBalancer:LoadBalancer; allowed: active_connections, new_connections, processed_bytes_gb",
        ),
        (
            "resource_usage: {nat: {monthly_data_processed_gb: -5}}",
            "resource_usage.nat.monthly_data_processed_gb = -5: allowed: a number >= 0",
        ),
        (
            "resource_usage: {nat: {monthly_data_processed_gb: lots}}",
            "resource_usage.nat.monthly_data_processed_gb = 'lots': allowed: a number >= 0",
        ),
        (
            "resource_usage: {worker-0: {monthly_hrs: 800}}",
            "monthly_hrs of worker-0 = 800: allowed: 0 to 730",
        ),
        (
            "resource_usage: {nlb: {rule_evaluations: 5}}",
            "resource_usage.nlb.rule_evaluations: a network load balancer evaluates no rules",
        ),
    ],
)
def test_bad_usage_is_one_line_naming_the_key(book, text, message):
    with pytest.raises(usage.UsageError) as err:
        cost.price_resources(stack(1), book, usage=usage.parse(text))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text,message",
    [
        ("version: 0.2\n", "usage file version = 0.2: allowed: 0.1"),
        ("resource_usages: {}\n", "resource_usages: unknown top-level key"),
        (
            "resource_type_default_usage: {'aws:sqs/queue:Queue': {monthly_requests: 1}}\n",
            "no usage keys for this type",
        ),
        ("resource_usage: [1, 2]\n", "resource_usage = [1, 2]: allowed: a mapping"),
        ("resource_usage: {nat: [1]}\n", "resource_usage.nat = [1]: allowed: a mapping of usage keys"),
        ("a: [\n", "not YAML at line"),
    ],
)
def test_bad_file_shape_is_one_line(text, message):
    with pytest.raises(usage.UsageError, match=re.escape(message)):
        usage.parse(text)


def test_unmatched_resource_is_a_warning(book):
    est = cost.price_resources(
        stack(1), book, usage=usage.parse("resource_usage: {no-such: {monthly_hrs: 1}}")
    )
    assert any("resource_usage.no-such: matches no priced resource" in w for w in est.warnings)


def _uncomment(text: str) -> str:
    return re.sub(r"^(\s+)# (\w+: )", r"\1\2", text, flags=re.M)


def test_synced_template_reads_back_to_the_same_total(book):
    resources = stack(3)
    kept = usage.parse("resource_usage: {nat: {monthly_data_processed_gb: 42}, gone: {monthly_hrs: 1}}")
    est = cost.price_resources(resources, book, weights_gib=642, usage=kept)
    text = usage.sync_text(usage_template(est), kept)
    synced = usage.parse(text)

    # every usage key of every priced resource that has any is there, set or commented
    def block(name: str) -> str:  # the lines of one resource entry
        return re.split(r"\n  (?=\S)", text.split(f"\n  {name}:\n", 1)[1], maxsplit=1)[0]

    for entry in usage_template(est):
        for key in entry.keys:
            assert key.rsplit(".", 1)[-1] + ":" in block(entry.name), (entry.name, key)
    assert "processed_bytes_gb" in block("nlb") and "rule_evaluations" not in block("nlb")
    assert "gone" not in text  # entries that match nothing are dropped, as Infracost's sync does
    assert synced.resources["nat"] == {"monthly_data_processed_gb": 42}  # the value set is kept
    again = cost.price_resources(resources, book, weights_gib=642, usage=synced)
    assert again.total_monthly == est.total_monthly
    # uncommenting every key pins what the estimate assumed: still the same total
    pinned = usage.parse(_uncomment(text))
    assert pinned.resources["worker-0"] == {"monthly_hrs": 730}
    assert pinned.resources["weights"]["standard.storage_gb"] == 642
    every = cost.price_resources(resources, book, weights_gib=642, usage=pinned)
    assert every.total_monthly == est.total_monthly
    assert every.total_monthly_usage > 0  # the pinned keys now count as usage


# --- CLI ---------------------------------------------------------------------------------------

RUNNER = CliRunner()


@pytest.fixture(autouse=True)
def _no_real_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMFLEET_CACHE_DIR", str(tmp_path / "cache"))


@functools.cache
def base_total() -> Decimal:
    r = RUNNER.invoke(app, ["cost", "--stack", "prod", "--json"])
    assert r.exit_code == 0, r.stderr
    return Decimal(json.loads(r.stdout)["totalMonthlyCost"])


def test_cli_usage_file_and_sync(tmp_path):
    path = tmp_path / "usage.yml"
    path.write_text(
        "resource_usage:\n  endpoint-nlb:\n    processed_bytes_gb: 7300\n  cluster-worker-2:\n    monthly_hrs: 365\n"
    )
    r = RUNNER.invoke(app, ["cost", "--stack", "prod", "--json", "--usage-file", str(path)])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["metadata"]["usageFilePath"] == str(path)
    lcu = Decimal(7300) / assumption("nlb_lcu_processed_gb_per_h") * rate("nlb.lcu")
    hours = (365 - H) * Decimal("30.131")
    assert abs(Decimal(doc["totalMonthlyCost"]) - (base_total() + lcu + hours)) < Decimal("0.0000001")
    # sync keeps the two values and adds every other key, commented
    r = RUNNER.invoke(
        app, ["cost", "--stack", "prod", "--usage-file", str(path), "--sync-usage-file", "--json"]
    )
    assert r.exit_code == 0, r.stderr
    synced = path.read_text()
    assert "processed_bytes_gb: 7300" in synced and "monthly_hrs: 365" in synced
    assert "# monthly_data_processed_gb: 0" in synced and "    # monthly_hrs: 730" in synced
    again = RUNNER.invoke(app, ["cost", "--stack", "prod", "--json", "--usage-file", str(path)])
    assert json.loads(again.stdout)["totalMonthlyCost"] == doc["totalMonthlyCost"]


def test_cli_sync_creates_a_template_that_prices_the_same(tmp_path):
    path = tmp_path / "new.yml"
    r = RUNNER.invoke(
        app, ["cost", "--stack", "prod", "--json", "--usage-file", str(path), "--sync-usage-file"]
    )
    assert r.exit_code == 0, r.stderr
    assert path.exists() and "resources with usage keys" in r.stderr
    back = RUNNER.invoke(app, ["cost", "--stack", "prod", "--json", "--usage-file", str(path)])
    assert Decimal(json.loads(back.stdout)["totalMonthlyCost"]) == base_total()


def test_cli_usage_errors_are_one_line(tmp_path):
    r = RUNNER.invoke(app, ["cost", "--stack", "prod", "--sync-usage-file"])
    assert r.exit_code == 2 and "--sync-usage-file: needs --usage-file" in r.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("resource_usage: {endpoint-nlb: {processed_gb: 1}}\n")
    r = RUNNER.invoke(app, ["cost", "--stack", "prod", "--usage-file", str(bad)])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "endpoint-nlb.processed_gb: unknown key" in r.stderr
    r = RUNNER.invoke(app, ["cost", "--stack", "prod", "--usage-file", str(tmp_path / "none.yml")])
    assert r.exit_code == 2 and "none.yml" in r.stderr and "Traceback" not in r.output
