"""Capacity Blocks for ML: the workers' market options in the real program, the config rules,
preflight against EC2's answers (botocore Stubber with the API's own shapes: moto has no
capacity reservations), and `cost` pricing the block's fee."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
from decimal import Decimal

import boto3
import pytest
from botocore.stub import Stubber
from typer.testing import CliRunner

from infra.account_check import capacity as ac_capacity
from infra.account_check import model as ac_model
from infra.account_check import run as ac_run
from infra.cli import app
from infra.cost import capacity_block as cb
from infra.cost.pricing import load_snapshot
from infra.stack.config import ConfigError
from infra.stack.files import load_config
from infra.stack.resolve import resolve
from policy.runner import run_for_stack, run_policies, stack_policy_config
from tests.captures import capture
from tests.hosts import hosts

BLOCK = "cr-0a1b2c3d4e5f60718"  # the block-h100 stack's placeholder
NOW = dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.UTC)
START = dt.datetime(2026, 12, 1, 11, 30, tzinfo=dt.UTC)
RUNNER = CliRunner()


@functools.cache
def block_capture():
    return capture("block-h100")


def test_workers_launch_into_the_block():
    cap = block_capture()
    cfg = cap.config
    workers = hosts(cap, "worker")
    assert len(workers) == resolve(cfg).plan.nodes == 2
    for w in workers:
        i = w["inputs"]
        assert i["instanceMarketOptions"] == {"marketType": "capacity-block"}
        assert i["capacityReservationSpecification"] == {
            "capacityReservationTarget": {"capacityReservationId": BLOCK}
        }
        assert i["instanceType"] == "p5.48xlarge" and i["subnetId"] == cap.named("net-private")["id"]
        assert cap.named("net-private")["inputs"]["availabilityZone"] == "us-east-1a"
        assert "placementGroup" not in i  # EC2 places a block's instances together itself
        assert i["tags"]["llmfleet:capacityBlock"] == BLOCK
    (head,) = hosts(cap, "head")  # the head group's instance, as its launch template makes it
    assert (
        "instanceMarketOptions" not in head["inputs"]
        and "capacityReservationSpecification" not in head["inputs"]
    )
    assert cap.of_type("aws:ec2/placementGroup:PlacementGroup") == []
    # prod, without a block, keeps its cluster placement group
    assert load_config("prod").capacity_block_id is None


def test_block_stack_passes_the_policy_pack():
    cap = block_capture()
    report = run_policies(cap.resources, stack_policy_config(cap.config), stack=cap.config)
    assert report.mandatory == 0, report.violations


def test_budget_policy_prices_the_block_as_cost_does():
    """The budget policy and `llmfleet cost` (no usage file, snapshot) agree on the total."""
    _, report = run_for_stack("block-h100", ["llmfleet:maxMonthlyUsd=1000"])
    (budget,) = [v for v in report.violations if v.policy == "monthly-budget"]
    r = RUNNER.invoke(app, ["cost", "--stack", "block-h100", "--json", "-c", "llmfleet:maxMonthlyUsd=1000"])
    assert r.exit_code == 4
    total = Decimal(json.loads(r.stdout)["totalMonthlyCost"])
    assert (
        f"estimated ${total:,.2f}/month" in budget.message
        and "savings-plan-1y snapshot prices" in budget.message
    )


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["llmfleet:availabilityZone="],
            "llmfleet:availabilityZone = (unset): workers must launch in the Capacity Block's AZ",
        ),
        (["llmfleet:spot=true", "llmfleet:pricingModel="], "workers in a Capacity Block are not spot"),
        (
            ["llmfleet:capacityReservationId=cr-0123456789abcdef0"],
            "capacityBlockId or capacityReservationId, not both",
        ),
        (
            ["llmfleet:capacityBlockId=cb-0123"],
            "llmfleet:capacityBlockId = 'cb-0123': allowed: the Capacity Block's capacity reservation id",
        ),
        (
            ["llmfleet:pricingModel=yearly"],
            "llmfleet:pricingModel = 'yearly': allowed: 'on-demand', 'spot', 'savings-plan-1y' or 'savings-plan-3y'",
        ),
    ],
)
def test_config_rules_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("block-h100", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


# --- preflight ---------------------------------------------------------------------------------


def reservation(**over) -> dict:
    """One DescribeCapacityReservations entry as EC2 returns it for a Capacity Block."""
    base = {
        "CapacityReservationId": BLOCK,
        "OwnerId": "123456789012",
        "CapacityReservationArn": f"arn:aws:ec2:us-east-1:123456789012:capacity-reservation/{BLOCK}",
        "AvailabilityZoneId": "use1-az4",
        "InstanceType": "p5.48xlarge",
        "InstancePlatform": "Linux/UNIX",
        "AvailabilityZone": "us-east-1a",
        "Tenancy": "default",
        "TotalInstanceCount": 2,
        "AvailableInstanceCount": 2,
        "EbsOptimized": True,
        "EphemeralStorage": False,
        "State": "active",
        "StartDate": START,
        "EndDate": START + dt.timedelta(days=14),
        "EndDateType": "limited",
        "InstanceMatchCriteria": "targeted",
        "CreateDate": START - dt.timedelta(days=3),
        "Tags": [],
        "ReservationType": "capacity-block",
    }
    return {**base, **over}


def offering(**over) -> dict:
    base = {
        "CapacityBlockOfferingId": "cb-0f1e2d3c4b5a69788",
        "InstanceType": "p5.48xlarge",
        "AvailabilityZone": "us-east-1a",
        "InstanceCount": 2,
        "StartDate": START,
        "EndDate": START + dt.timedelta(days=14),
        "CapacityBlockDurationHours": 336,
        "UpfrontFee": "26431.76",
        "CurrencyCode": "USD",
        "Tenancy": "default",
    }
    return {**base, **over}


def ec2_client():
    return boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")


def block_inputs(**cfg_over: str) -> ac_model.PreflightInputs:
    cfg = load_config("block-h100", [f"{k}={v}" for k, v in cfg_over.items()])
    return ac_model.inputs_for_stack(cfg)


def run_check(inp, reservations, offerings=None, now=NOW):
    ec2 = ec2_client()
    with Stubber(ec2) as stub:
        stub.add_response(
            "describe_capacity_reservations",
            {"CapacityReservations": reservations},
            {"CapacityReservationIds": [inp.capacity_block_id]},
        )
        if offerings is not None:
            stub.add_response(
                "describe_capacity_block_offerings",
                {"CapacityBlockOfferings": offerings},
                {
                    "InstanceType": inp.instance_type,
                    "InstanceCount": inp.workers,
                    "CapacityDurationHours": 336,
                },
            )
        check = ac_capacity.check_capacity_block(ec2, inp, now)
        stub.assert_no_pending_responses()
    return check


def test_matching_block_passes():
    inp = block_inputs()
    assert inp.capacity_block_id == BLOCK and inp.workers == 2
    c = run_check(inp, [reservation()])
    assert c.status == "pass"
    assert c.message.startswith(
        f"{BLOCK}: 2 x p5.48xlarge in us-east-1a, 2026-12-01 11:30 to 2026-12-15 11:30 UTC"
    )


@pytest.mark.parametrize(
    "over,expected",
    [
        ({"InstanceType": "p4d.24xlarge"}, "it reserves p4d.24xlarge, the plan uses p5.48xlarge"),
        ({"AvailabilityZone": "us-east-1b"}, "it is in us-east-1b, the plan uses us-east-1a"),
        ({"TotalInstanceCount": 1, "AvailableInstanceCount": 1}, "it holds 1 instances, the plan needs 2"),
        ({"ReservationType": "default"}, "not a Capacity Block (use llmfleet:capacityReservationId)"),
    ],
)
def test_mismatching_block_fails_in_one_line(over, expected):
    c = run_check(
        block_inputs(), [reservation(**over)], offerings=[offering(UpfrontFee="30000.00"), offering()]
    )
    assert c.status == "fail" and expected in c.message
    assert "\n" not in c.message
    # the cheapest offering that would fit is named, from describe_capacity_block_offerings
    assert (
        "offering cb-0f1e2d3c4b5a69788: 2 x p5.48xlarge in us-east-1a" in c.message
        and "26431.76 USD" in c.message
    )
    assert ac_run.exit_code([c]) == 1


def test_block_not_found_or_over_or_not_started():
    inp = block_inputs()
    ec2 = ec2_client()
    with Stubber(ec2) as stub:
        stub.add_client_error(
            "describe_capacity_reservations",
            "InvalidCapacityReservationId.NotFound",
            f"The capacity reservation ID '{BLOCK}' does not exist",
        )
        c = ac_capacity.check_capacity_block(ec2, inp, NOW)
    assert c.status == "fail" and c.message.startswith(
        f"{BLOCK} not found (InvalidCapacityReservationId.NotFound"
    )
    late = run_check(inp, [reservation(State="expired")], offerings=[], now=START + dt.timedelta(days=20))
    assert (
        late.status == "fail"
        and "its state is expired" in late.message
        and "ended at 2026-12-15 11:30 UTC" in late.message
    )
    assert "EC2 offers none now for 2 x p5.48xlarge for 336 h" in late.message
    early = run_check(inp, [reservation(State="scheduled")], now=START - dt.timedelta(hours=30))
    assert early.status == "warn" and "starts at 2026-12-01 11:30 UTC (in 30 h)" in early.message
    assert ac_run.exit_code([early]) == 0


def test_run_checks_includes_the_block_only_when_set(monkeypatch):
    seen = []
    ok = ac_model.Check("x", "pass", "")
    for name in ("check_offered", "check_gpu_facts", "check_quota", "check_ami", "check_weights"):
        monkeypatch.setattr(ac_run, name, lambda *a, **k: ok)  # the other checks have their own tests
    monkeypatch.setattr(
        ac_run, "check_capacity_block", lambda ec2, i, now=None: seen.append(i.capacity_block_id) or ok
    )
    inp = block_inputs()
    ac_run.run_checks(inp, ac_model.Clients(None, None, None))
    ac_run.run_checks(dataclasses.replace(inp, capacity_block_id=None), ac_model.Clients(None, None, None))
    assert seen == [BLOCK]


# --- cost --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_real_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMFLEET_CACHE_DIR", str(tmp_path / "cache"))


def block_rows(doc):
    return {r["name"]: r for r in doc["projects"][0]["breakdown"]["resources"]}


def test_cost_offline_prices_the_block_from_the_snapshot_rate():
    r = RUNNER.invoke(app, ["cost", "--stack", "block-h100", "--json"])
    assert r.exit_code == 0, r.stderr
    rows = block_rows(json.loads(r.stdout))
    rate = load_snapshot().regions["us-east-1"].rates["capacity_block.p5.48xlarge"]
    (fee,) = rows[BLOCK]["costComponents"]
    assert Decimal(fee["monthlyCost"]) == 2 * rate.usd * 730
    src = rows[BLOCK]["metadata"]["priceSources"][0]
    assert src["estimate"] is True and src["priceSource"] == rate.source and "--live" in src["note"]
    for w in ("cluster-worker-0", "cluster-worker-1"):
        usage = rows[w]["costComponents"][0]
        assert usage["price"] == "0" and "capacity-block" in usage["name"]
        assert (
            rows[w]["metadata"]["priceSources"][0]["priceSource"]
            == f"in the upfront fee of Capacity Block {BLOCK}"
        )
    head = rows["cluster-head"]
    assert head["metadata"]["market"] == "savings-plan-1y"  # the stack's pricing model, for the head


def test_cost_live_prices_the_blocks_fee_over_its_duration(monkeypatch):
    from tests.test_pricing import price_list_item

    ec2 = ec2_client()
    pricing = boto3.client(
        "pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y"
    )
    clients = {"ec2": ec2, "pricing": pricing}
    monkeypatch.setattr(boto3, "client", lambda name, **kw: clients[name])
    end = START + dt.timedelta(days=14)
    with Stubber(ec2) as es, Stubber(pricing) as ps:
        es.add_response(
            "describe_capacity_reservations",
            {"CapacityReservations": [reservation()]},
            {"CapacityReservationIds": [BLOCK]},
        )
        es.add_response(
            "describe_capacity_block_offerings",
            {
                "CapacityBlockOfferings": [
                    offering(AvailabilityZone="us-east-1b", UpfrontFee="1.00"),
                    offering(),
                ]
            },
            {
                "InstanceType": "p5.48xlarge",
                "InstanceCount": 2,
                "CapacityDurationHours": 336,
                "StartDateRange": START,
                "EndDateRange": end,
            },
        )
        ps.add_response("get_products", {"PriceList": [price_list_item("m7i.2xlarge", "0.4032000000")]})
        r = RUNNER.invoke(app, ["cost", "--stack", "block-h100", "--json", "--live"])
        es.assert_no_pending_responses()
        ps.assert_no_pending_responses()
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    rows = block_rows(doc)
    (fee,) = rows[BLOCK]["costComponents"]
    # a 336-hour block lies within one 730-hour month: the month carries the whole fee
    # JSON decimals carry 10 places
    assert (
        abs(Decimal(fee["price"]) - Decimal("26431.76") / 336) < Decimal("1e-9")
        and fee["monthlyQuantity"] == "336"
    )
    assert Decimal(fee["monthlyCost"]) == Decimal("26431.76")
    meta = rows[BLOCK]["metadata"]
    assert meta["durationHours"] == "336" and meta["availabilityZone"] == "us-east-1a"
    assert "describe_capacity_block_offerings (cb-0f1e2d3c4b5a69788" in meta["priceSources"][0]["priceSource"]
    # the workers serve for the block's hours; cost per token is the month's cost over those hours
    assert rows["cluster-worker-0"]["costComponents"][0]["monthlyQuantity"] == "336"
    assert rows["cluster-worker-0"]["metadata"]["servingHoursPerMonth"] == "336"
    head = rows["cluster-head"]["costComponents"][0]
    fraction = Decimal(load_snapshot().assumptions["savings_plan_1y_fraction_of_on_demand"].value)
    assert Decimal(head["price"]) == Decimal("0.4032") * fraction


def test_cost_live_falls_back_when_ec2_cannot_say():
    from infra.commands.cost import live_blocks

    ec2 = ec2_client()
    with Stubber(ec2) as es:
        es.add_client_error("describe_capacity_reservations", "UnauthorizedOperation", "not allowed")
        blocks, warnings = live_blocks({BLOCK}, "us-east-1", "2026-12-02", ec2)
    assert blocks == {} and len(warnings) == 1
    assert "UnauthorizedOperation" in warnings[0] and "fee from the snapshot rate" in warnings[0]


def test_timing_is_pure():
    facts = cb.BlockFacts(
        cb.CapacityBlock(BLOCK, "p5.48xlarge", "us-east-1a", 2, START, START + dt.timedelta(days=1)),
        "active",
        "capacity-block",
        2,
        2,
    )
    assert cb.timing(facts, START + dt.timedelta(hours=20))[0] == "warn"  # 4 h left
    assert cb.timing(facts, START - dt.timedelta(days=1))[0] == "warn"  # not started yet
    assert cb.timing(facts, START + dt.timedelta(hours=1))[1].startswith("it ends at")
    assert cb.timing(facts, START + dt.timedelta(days=2))[0] == "fail"
