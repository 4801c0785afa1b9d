"""Arithmetic of each line-item kind, the Infracost JSON shape, diff and the preview-file path."""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import replace
from decimal import Decimal

import pytest

from infra.cost import estimate as cost
from infra.cost import infracost, infracost_diff
from infra.cost import model as cost_model
from infra.cost import preview as cost_preview
from infra.cost import resources as cost_resources
from infra.cost import usage as usage_mod
from infra.cost.pricing import OnDemand, PriceBook, PriceError, load_snapshot
from infra.stack.resolve import resolve

ON_DEMAND = {
    "g6e.48xlarge": OnDemand(Decimal("30.131"), "test catalog"),
    "m7i.xlarge": OnDemand(Decimal("0.2016"), "test catalog"),
}
H = Decimal(730)


@pytest.fixture
def book() -> PriceBook:
    return PriceBook("us-east-1", ON_DEMAND)


def rate(key: str) -> Decimal:
    return load_snapshot().regions["us-east-1"].rates[key].usd


def instance(name, itype, role, *, spot=False, root=None, ebs=None):
    inputs = {
        "instanceType": itype,
        "tags": {"llmfleet:role": role, "llmfleet:stack": "t"},
        "rootBlockDevice": root
        if root is not None
        else {"volumeSize": 100, "volumeType": "gp3", "encrypted": True},
    }
    if spot:
        inputs["instanceMarketOptions"] = {
            "marketType": "spot",
            "spotOptions": {"spotInstanceType": "one-time"},
        }
    if ebs is not None:
        inputs["ebsBlockDevices"] = ebs
    return {
        "type": "aws:ec2/instance:Instance",
        "name": name,
        "parent": "cluster",
        "urn": "",
        "inputs": inputs,
    }


def res(rtype, name, **inputs):
    return {"type": rtype, "name": name, "parent": None, "urn": "", "inputs": inputs}


def stack(workers: int = 3, *, spot=False):
    return [
        res("llmfleet:cluster:Cluster", "cluster"),
        res("aws:ec2/vpc:Vpc", "vpc", cidrBlock="10.0.0.0/16"),
        instance("head", "m7i.xlarge", "head", root={"volumeSize": 50, "volumeType": "gp3"}),
        *[instance(f"worker-{i}", "g6e.48xlarge", "worker", spot=spot) for i in range(workers)],
        res(
            "aws:ec2/vpcEndpoint:VpcEndpoint",
            "ecr-api",
            vpcEndpointType="Interface",
            serviceName="com.amazonaws.us-east-1.ecr.api",
            subnetIds=["subnet-a", "subnet-b"],
        ),
        res(
            "aws:ec2/vpcEndpoint:VpcEndpoint",
            "s3",
            vpcEndpointType="Gateway",
            serviceName="com.amazonaws.us-east-1.s3",
        ),
        res("aws:lb/loadBalancer:LoadBalancer", "nlb", loadBalancerType="network", internal=True),
        res("aws:lb/targetGroup:TargetGroup", "tg", port=8000),
        res("aws:s3/bucket:Bucket", "weights"),
        res("aws:ecr/repository:Repository", "repo"),
        res("aws:ec2/natGateway:NatGateway", "nat"),
        res("aws:ec2/eip:Eip", "nat-eip", domain="vpc"),
        res("aws:sqs/queue:Queue", "mystery"),
    ]


def by_name(est: cost_model.Estimate) -> dict[str, cost_model.ResourceCost]:
    return {r.name: r for r in est.resources}


def test_instance_on_demand_and_gp3_root(book):
    r = cost_resources.price_instance(instance("w", "g6e.48xlarge", "worker"), book)
    (usage,) = r.components
    assert usage.price.usd == Decimal("30.131") and usage.unit == "hours"
    assert usage.monthly_cost == Decimal("30.131") * H
    root = r.subresources[0]
    assert root.monthly_cost == 100 * rate("ebs.gp3.storage")
    assert r.monthly_cost == Decimal("30.131") * H + 100 * rate("ebs.gp3.storage")
    assert r.metadata["role"] == "worker" and r.metadata["market"] == "on-demand"


def test_gp3_iops_and_throughput_above_free_baseline(book):
    root = {"volumeSize": 900, "volumeType": "gp3", "iops": 16000, "throughput": 1000}
    r = cost_resources.price_instance(instance("w", "g6e.48xlarge", "worker", root=root), book)
    comps = {c.unit: c for c in r.subresources[0].components}
    assert comps["GB"].monthly_cost == 900 * rate("ebs.gp3.storage")
    assert comps["IOPS"].monthly_quantity == 13000
    assert comps["IOPS"].monthly_cost == 13000 * rate("ebs.gp3.iops")
    assert comps["MBps"].monthly_quantity == 875
    assert comps["MBps"].monthly_cost == 875 * rate("ebs.gp3.throughput")


def test_gp3_at_baseline_has_no_extra_components(book):
    root = {"volumeSize": 10, "volumeType": "gp3", "iops": 3000, "throughput": 125}
    r = cost_resources.price_instance(instance("w", "m7i.xlarge", "head", root=root), book)
    assert [c.unit for c in r.subresources[0].components] == ["GB"]


def test_data_volumes_and_standalone_volume(book):
    ebs = [{"deviceName": "/dev/sdf", "volumeSize": 500, "volumeType": "gp2"}]
    r = cost_resources.price_instance(instance("w", "m7i.xlarge", "head", ebs=ebs), book)
    assert r.subresources[1].name == "ebs_block_device[/dev/sdf]"
    assert r.subresources[1].monthly_cost == 500 * rate("ebs.gp2.storage")
    v = cost_resources.price_volume(
        res("aws:ebs/volume:Volume", "data", size=200, type="io1", iops=1000), book
    )
    assert v.monthly_cost == 200 * rate("ebs.io1.storage") + 1000 * rate("ebs.io1.iops")


def test_resources_are_listed_by_name_with_numbers_as_numbers(book):
    # Pulumi registers resources asynchronously, so a capture's order can change between runs;
    # the estimate's cannot.
    names = ["worker-10", "head", "worker-2", "worker-1-alarm", "worker-1"]
    vols = [res("aws:ebs/volume:Volume", n, size=10, type="gp3") for n in names]
    est = cost.price_resources(vols, book)
    assert [r.name for r in est.resources] == ["head", "worker-1", "worker-1-alarm", "worker-2", "worker-10"]
    assert cost.price_resources(vols[::-1], book).resources == est.resources


def test_unset_root_size_is_an_estimate(book):
    r = cost_resources.price_instance(instance("w", "m7i.xlarge", "head", root={}), book)
    storage = r.subresources[0].components[0]
    assert storage.price.estimate
    assert storage.monthly_quantity == Decimal(load_snapshot().assumptions["default_root_volume_gb"].value)


def test_unknown_volume_type_is_a_one_line_error(book):
    with pytest.raises(PriceError, match=r"volumeType='gp9'.*allowed: .*gp3"):
        cost_resources.price_instance(
            instance("w", "m7i.xlarge", "head", root={"volumeSize": 1, "volumeType": "gp9"}), book
        )


def test_spot_read_from_instance_inputs(book):
    r = cost_resources.price_instance(instance("w", "g6e.48xlarge", "worker", spot=True), book)
    usage = r.components[0]
    fraction = Decimal(load_snapshot().assumptions["spot_fraction_of_on_demand"].value)
    assert usage.price.usd == Decimal("30.131") * fraction
    assert usage.price.estimate and "spot" in usage.name and r.metadata["market"] == "spot"


def test_network_line_items(book):
    est = cost.price_resources(stack(1), book, weights_gib=642)
    items = by_name(est)
    # interface endpoint: per hour per AZ (two subnets), gateway endpoint free
    assert items["ecr-api"].hourly_cost == 2 * rate("vpce.interface.hour")
    assert items["ecr-api"].monthly_cost == 2 * rate("vpce.interface.hour") * H
    assert "s3" not in items
    assert items["nlb"].monthly_cost == rate("nlb.hour") * H
    assert items["nat"].monthly_cost == rate("nat.hour") * H
    assert items["nat-eip"].monthly_cost == rate("ipv4.hour") * H
    # usage-based components carry a price but add nothing
    lcu = items["nlb"].components[1]
    assert lcu.usage_based and lcu.price.usd == rate("nlb.lcu") and lcu.monthly_cost == 0


def test_storage_line_items(book):
    items = by_name(cost.price_resources(stack(1), book, weights_gib=642))
    assert items["weights"].monthly_cost == 642 * rate("s3.standard.storage")
    ecr_gb = Decimal(load_snapshot().assumptions["ecr_image_size_gb"].value)
    assert items["repo"].monthly_cost == ecr_gb * rate("ecr.storage")
    assert items["repo"].components[0].price.estimate
    kms = cost_resources.price_kms_key(res("aws:kms/key:Key", "k"), book)
    assert kms.monthly_cost == rate("kms.key") and abs(kms.hourly_cost * H - rate("kms.key")) < Decimal(
        "1e-20"
    )


def test_totals_and_summary(book):
    est = cost.price_resources(stack(3), book, weights_gib=642, project="prod")
    expected_hourly = (
        3 * Decimal("30.131")
        + Decimal("0.2016")
        + 2 * rate("vpce.interface.hour")
        + rate("nlb.hour")
        + rate("nat.hour")
        + rate("ipv4.hour")
        + (3 * 100 + 50) * rate("ebs.gp3.storage") / H
        + 642 * rate("s3.standard.storage") / H
        + Decimal(load_snapshot().assumptions["ecr_image_size_gb"].value) * rate("ecr.storage") / H
    )
    assert abs(est.total_hourly - expected_hourly) < Decimal("1e-20")
    assert abs(est.total_monthly - 730 * est.total_hourly) < Decimal("1e-15")
    assert est.detected == 14  # the component is not a cloud resource
    assert est.unsupported == ("aws:sqs/queue:Queue",)
    assert any("aws:sqs/queue:Queue" in w for w in est.warnings)


def test_estimate_monthly_usd_for_the_policy(book):
    total = cost.estimate_monthly_usd(stack(2), "us-east-1", book, weights_gib=642)
    assert total == cost.price_resources(stack(2), book, weights_gib=642).total_monthly
    assert cost.estimate_monthly_usd(stack(3), "us-east-1", book, weights_gib=642) - total == (
        Decimal("30.131") * H + 100 * rate("ebs.gp3.storage")
    )


def test_bucket_not_weights_is_usage_based(book):
    rs = [res("aws:s3/bucket:Bucket", "weights"), res("aws:s3/bucket:Bucket", "logs")]
    items = by_name(cost.price_resources(rs, book, weights_gib=100))
    assert items["weights"].monthly_cost == 100 * rate("s3.standard.storage")
    assert items["logs"].monthly_cost == 0 and items["logs"].components[0].usage_based


def test_owned_hosts_are_user_declared_line_items(book):
    est = cost.with_owned_hosts(
        cost.price_resources([], book), ["10.0.0.5", "10.0.0.6"], 4.5, "stack config x"
    )
    assert est.total_hourly == 9 and est.total_monthly == 9 * H
    assert {r.components[0].price.source for r in est.resources} == {"llmfleet:hostHourlyUsd (user-declared)"}


def test_usd_per_million_tokens():
    assert cost.usd_per_million_tokens(Decimal("36"), 1000) == Decimal(10)
    assert cost.usd_per_million_tokens(Decimal("36"), 0) is None


def test_decimal_strings():
    assert cost_model.dec(Decimal("30.1310000")) == "30.131"
    assert cost_model.dec(Decimal("21995.63")) == "21995.63"
    assert cost_model.dec(Decimal("1E+2")) == "100"
    assert cost_model.dec(Decimal(1) / 3, 4) == "0.3333"
    assert cost_model.dec(None) is None


def doc_of(est, tokens_per_s=None, past=None, name_key=None):
    """The Infracost document `llmfleet cost --json` prints for an estimate (fixed clock)."""
    info = infracost.ProjectInfo(est.project, ".", "pulumi_program", est.project, est.warnings)
    proj = infracost.project(
        info, infracost.breakdown(est, tokens_per_s), infracost.summary(est), past, name_key
    )
    return json.loads(json.dumps(infracost.document([proj], infracost.RunMetadata(), NOW)))


NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def test_infracost_json_shape(book):
    est = cost.price_resources(stack(3), book, weights_gib=642, project="prod")
    doc = doc_of(est, tokens_per_s=1500.0)
    assert doc["version"] == "0.2" and doc["currency"] == "USD"
    assert doc["timeGenerated"] == "2026-11-28T12:00:00Z"
    (project,) = doc["projects"]
    assert project["name"] == project["displayName"] == "prod"
    bd = project["breakdown"]
    assert (
        bd["totalMonthlyCost"] == doc["totalMonthlyCost"] and bd["totalHourlyCost"] == doc["totalHourlyCost"]
    )
    keys = {"name", "unit", "hourlyQuantity", "monthlyQuantity", "price", "hourlyCost", "monthlyCost"}
    for r in bd["resources"]:
        assert {"name", "resourceType", "metadata", "hourlyCost", "monthlyCost", "costComponents"} <= r.keys()
        subs = r.get("subresources", [])
        for holder in [r, *subs]:
            sources = holder["metadata"]["priceSources"]
            assert [s["component"] for s in sources] == [c["name"] for c in holder["costComponents"]]
            assert all(s["priceSource"] and s["priceDate"] for s in sources)
        for c in r["costComponents"] + [c for s in subs for c in s["costComponents"]]:
            assert keys <= c.keys() and c["priceNotFound"] is False
            for k in ("price", "hourlyCost", "monthlyCost", "hourlyQuantity", "monthlyQuantity"):
                assert c[k] is None or isinstance(c[k], str)
            if c["monthlyQuantity"] is None:  # usage-based with no usage: a price, no cost
                assert c["usageBased"] and c["monthlyCost"] is None and c["price"] is not None
            else:
                Decimal(c["monthlyCost"])  # a decimal string
    workers = [r for r in bd["resources"] if r["metadata"].get("role") == "worker"]
    assert len(workers) == 3
    assert all(w["costComponents"][0]["price"] == "30.131" for w in workers)
    total_h, total_m = Decimal(doc["totalHourlyCost"]), Decimal(doc["totalMonthlyCost"])
    assert abs(730 * total_h - total_m) < Decimal("0.005")
    # each resource carries its share of USD per million output tokens; the shares add up
    shares = sum(Decimal(r["metadata"]["usdPerMillionOutputTokens"]) for r in bd["resources"])
    assert abs(shares - total_h / (Decimal(1500) * 3600) * 10**6) < Decimal("0.0001")
    # no past: an empty past breakdown, and the diff is the whole breakdown
    assert project["pastBreakdown"] == {
        "resources": [],
        "totalHourlyCost": "0",
        "totalMonthlyCost": "0",
        "totalMonthlyUsageCost": "0",
    }
    assert doc["pastTotalMonthlyCost"] == "0" and doc["diffTotalMonthlyCost"] == doc["totalMonthlyCost"]
    assert [r["name"] for r in project["diff"]["resources"]] == [r["name"] for r in bd["resources"]]


def test_diff_per_resource_and_component(book):
    prod = cost.price_resources(stack(3), book, weights_gib=642, project="prod")
    dev = cost.price_resources(stack(1), book, weights_gib=642, project="dev")
    past = infracost.breakdown(dev)
    doc = doc_of(prod, past=past, name_key=infracost_diff.other_stack_key("dev", "prod"))
    rows = {r["name"]: r for r in doc["projects"][0]["diff"]["resources"]}
    assert set(rows) == {"worker-1", "worker-2"}  # identical resources are not listed
    w2 = rows["worker-2"]
    assert Decimal(w2["monthlyCost"]) == by_name(prod)["worker-2"].monthly_cost
    (usage,) = w2["costComponents"]
    assert usage["monthlyQuantity"] == "730" and usage["price"] == "30.131"
    assert w2["subresources"][0]["name"] == "root_block_device"
    assert w2["metadata"]["pastMonthlyCost"] is None
    assert Decimal(doc["diffTotalMonthlyCost"]) == Decimal(doc["totalMonthlyCost"]) - Decimal(
        doc["pastTotalMonthlyCost"]
    )
    # logical names prefixed with the stack name still pair up
    renamed = cost_model.Estimate(
        "dev", "us-east-1", "x", tuple(replace(r, name=f"dev-{r.name}") for r in dev.resources), 0, (), ()
    )
    again = infracost_diff.diff_breakdown(
        infracost.breakdown(renamed), infracost.breakdown(prod), infracost_diff.other_stack_key("dev", "prod")
    )
    assert {r["name"] for r in again["resources"]} == {"worker-1", "worker-2"}
    # removed resources show as negative, with their components negated
    back = infracost_diff.diff_breakdown(infracost.breakdown(prod), infracost.breakdown(dev))
    gone = {r["name"]: r for r in back["resources"]}["worker-2"]
    assert Decimal(gone["monthlyCost"]) == -by_name(prod)["worker-2"].monthly_cost
    assert gone["costComponents"][0]["monthlyQuantity"] == "-730"


def test_diff_matches_by_urn_then_name_and_lists_only_changed_components(book):
    old = [instance("w", "g6e.48xlarge", "worker", spot=True), res("aws:ec2/natGateway:NatGateway", "nat")]
    old[0]["urn"] = "urn:pulumi:prod::llmfleet::aws:ec2/instance:Instance::w"
    new = [instance("renamed", "g6e.48xlarge", "worker", root={"volumeSize": 300, "volumeType": "gp3"})]
    new[0]["urn"] = old[0]["urn"]  # an alias keeps the URN: the same resource under a new name
    past = cost.price_resources(old, book, project="prod")
    now = cost.price_resources(new, book, project="prod")
    d = infracost_diff.diff_breakdown(infracost.breakdown(past), infracost.breakdown(now))
    rows = {r["name"]: r for r in d["resources"]}
    assert set(rows) == {"renamed", "nat"}  # paired by URN although the names differ
    comps = {c["name"]: c for c in rows["renamed"]["costComponents"]}
    fraction = Decimal(load_snapshot().assumptions["spot_fraction_of_on_demand"].value)
    assert Decimal(comps["Instance usage (Linux/UNIX, spot, g6e.48xlarge)"]["monthlyCost"]) == -(
        Decimal("30.131") * fraction * H
    )
    assert Decimal(comps["Instance usage (Linux/UNIX, on-demand, g6e.48xlarge)"]["monthlyCost"]) == (
        Decimal("30.131") * H
    )
    (root,) = rows["renamed"]["subresources"]
    (storage,) = root["costComponents"]
    assert storage["monthlyQuantity"] == "200" and Decimal(storage["monthlyCost"]) == 200 * rate(
        "ebs.gp3.storage"
    )
    assert Decimal(rows["nat"]["monthlyCost"]) == -rate("nat.hour") * H
    assert Decimal(d["totalMonthlyCost"]) == now.total_monthly - past.total_monthly


def test_pricing_models(book):
    head = instance("head", "m7i.xlarge", "head")
    spot_worker = instance("w", "g6e.48xlarge", "worker", spot=True)
    for model, key in (
        ("savings-plan-1y", "savings_plan_1y_fraction_of_on_demand"),
        ("savings-plan-3y", "savings_plan_3y_fraction_of_on_demand"),
    ):
        r = cost_resources.price_instance(head, book, pricing_model=model)
        fraction = Decimal(load_snapshot().assumptions[key].value)
        usage = r.components[0]
        assert usage.price.usd == Decimal("0.2016") * fraction and usage.price.estimate
        assert usage.price.source == load_snapshot().assumptions[key].source
        assert model in usage.name and r.metadata["market"] == model
    # the instance's own market wins: spot stays spot, and a spot model leaves the head on-demand
    assert (
        cost_resources.price_instance(spot_worker, book, pricing_model="savings-plan-1y").metadata["market"]
        == "spot"
    )
    assert cost_resources.price_instance(head, book, pricing_model="spot").components[0].price.usd == Decimal(
        "0.2016"
    )


def block_instance(name, rid="cr-0123456789abcdef0", itype="p5.48xlarge"):
    r = instance(name, itype, "worker")
    r["inputs"]["instanceMarketOptions"] = {"marketType": "capacity-block"}
    r["inputs"]["capacityReservationSpecification"] = {
        "capacityReservationTarget": {"capacityReservationId": rid}
    }
    return r


BLOCK_BOOK = {**ON_DEMAND, "p5.48xlarge": OnDemand(Decimal("55.04"), "test catalog")}


@pytest.mark.parametrize("days", [14, 182])
def test_capacity_block_fee_over_its_duration(days):
    book = PriceBook("us-east-1", BLOCK_BOOK)
    start = dt.datetime(2026, 12, 1, 11, 30, tzinfo=dt.UTC)
    fee = Decimal("26431.76")
    block = cost_resources.CapacityBlock(
        "cr-0123456789abcdef0",
        "p5.48xlarge",
        "us-east-1a",
        2,
        start,
        start + dt.timedelta(days=days),
        fee,
        "quote",
        "2026-11-28",
        True,
    )
    rs = [block_instance("w0"), block_instance("w1")]
    est = cost.price_resources(rs, book, capacity_blocks={block.reservation_id: block})
    items = by_name(est)
    hours = Decimal(days * 24)
    (fee_line,) = items["cr-0123456789abcdef0"].components
    assert fee_line.price.usd == fee / hours  # per hour of the block
    in_month = min(hours, H)
    assert fee_line.monthly_quantity == in_month
    tiny = Decimal("1e-20")  # (fee / hours) x 730 and fee x 730 / hours round differently at 28 digits
    assert abs(items["cr-0123456789abcdef0"].monthly_cost - fee * in_month / hours) < tiny
    # the instances cost nothing on top of the fee; their volumes still do
    for w in ("w0", "w1"):
        usage = items[w].components[0]
        assert usage.price.usd == 0 and "capacity-block" in usage.name and usage.monthly_quantity == in_month
    assert abs(est.total_monthly - (fee * in_month / hours + 2 * 100 * rate("ebs.gp3.storage"))) < tiny
    assert est.serving_hours == in_month


def test_capacity_block_without_ec2_uses_the_snapshot_rate():
    book = PriceBook("us-east-1", BLOCK_BOOK)
    est = cost.price_resources([block_instance("w0"), block_instance("w1")], book)
    (line,) = by_name(est)["cr-0123456789abcdef0"].components
    per_instance_hour = rate("capacity_block.p5.48xlarge")
    assert line.price.usd == 2 * per_instance_hour and line.price.estimate
    assert line.monthly_cost == 2 * per_instance_hour * H
    with pytest.raises(
        PriceError, match=r"no Capacity Block rate for 'g6e.48xlarge'.*has: p5.48xlarge.*--live"
    ):
        cost.price_resources([block_instance("w0", itype="g6e.48xlarge")], book)


def test_usd_per_million_tokens_uses_serving_hours(book):
    est = cost.price_resources(stack(2), book, weights_gib=642)
    assert cost.monthly_usd_per_million_tokens(est, 1000) == cost.usd_per_million_tokens(
        est.total_hourly, 1000
    )
    part = usage_mod.parse("resource_usage: {worker-0: {monthly_hrs: 365}, worker-1: {monthly_hrs: 400}}")
    short = cost.price_resources(stack(2), book, weights_gib=642, usage=part)
    assert short.serving_hours == 365  # the pipeline needs every worker
    assert (
        cost.monthly_usd_per_million_tokens(short, 1000)
        == short.total_monthly / (Decimal(1000) * 3600 * 365) * 10**6
    )


PREVIEW = {
    "config": {"aws:region": "us-east-1"},
    "steps": [
        {
            "op": "same",
            "urn": "urn:pulumi:prod::llmfleet::pulumi:providers:aws::default_7_51_0",
            "newState": {
                "urn": "urn:pulumi:prod::llmfleet::pulumi:providers:aws::default_7_51_0",
                "custom": True,
                "type": "pulumi:providers:aws",
                "inputs": {"region": "us-east-1", "version": "7.51.0"},
            },
        },
        {
            "op": "create",
            "urn": "urn:pulumi:prod::llmfleet::llmfleet:cluster:Cluster$aws:ec2/instance:Instance::prod-worker-0",
            "newState": {
                "urn": "urn:pulumi:prod::llmfleet::llmfleet:cluster:Cluster$aws:ec2/instance:Instance::prod-worker-0",
                "custom": True,
                "type": "aws:ec2/instance:Instance",
                "parent": "urn:pulumi:prod::llmfleet::llmfleet:cluster:Cluster::cluster",
                "inputs": {
                    "instanceType": "g6e.48xlarge",
                    "subnetId": "04da6b54-80e4-46f7-96ec-b56ff0331ba9",
                    "rootBlockDevice": {"volumeSize": 200, "volumeType": "gp3", "encrypted": True},
                    "tags": {"llmfleet:role": "worker"},
                },
            },
        },
        {
            "op": "create",
            "urn": "urn:pulumi:prod::llmfleet::llmfleet:components:Network::net",
            "newState": {
                "urn": "urn:pulumi:prod::llmfleet::llmfleet:components:Network::net",
                "custom": False,
                "type": "llmfleet:components:Network",
                "inputs": {},
            },
        },
        {
            "op": "create",
            "urn": "urn:pulumi:prod::llmfleet::llmfleet:components:Network$aws:ec2/vpcEndpoint:VpcEndpoint::net-ssm",
            "newState": {
                "urn": "urn:pulumi:prod::llmfleet::llmfleet:components:Network$aws:ec2/vpcEndpoint:VpcEndpoint::net-ssm",
                "custom": True,
                "type": "aws:ec2/vpcEndpoint:VpcEndpoint",
                "parent": "urn:pulumi:prod::llmfleet::llmfleet:components:Network::net",
                "inputs": {
                    "serviceName": "com.amazonaws.us-east-1.ssm",
                    "vpcEndpointType": "Interface",
                    "privateDnsEnabled": True,
                    # computed ids are unknown at preview time; the list length (AZs) is known
                    "subnetIds": ["04da6b54-80e4-46f7-96ec-b56ff0331ba9"],
                    "vpcId": "04da6b54-80e4-46f7-96ec-b56ff0331ba9",
                },
            },
        },
        {
            "op": "delete",
            "urn": "urn:pulumi:prod::llmfleet::aws:ec2/natGateway:NatGateway::old-nat",
            "oldState": {"type": "aws:ec2/natGateway:NatGateway", "inputs": {}},
        },
        {
            "op": "read",
            "urn": "urn:pulumi:prod::llmfleet::aws:ec2/instance:Instance::looked-up",
            "newState": {"type": "aws:ec2/instance:Instance", "inputs": {"instanceType": "m7i.xlarge"}},
        },
    ],
    "changeSummary": {"create": 1, "delete": 1, "same": 1},
}


def test_load_preview_file(book):
    resources, region = cost_preview.load_preview_file(json.dumps(PREVIEW))
    assert region == "us-east-1"
    assert [r["name"] for r in resources] == ["default_7_51_0", "prod-worker-0", "net", "net-ssm"]
    assert resources[1]["parent"] == "cluster" and resources[3]["parent"] == "net"
    est = cost.price_resources(resources, book)
    ssm, worker = est.resources  # by name, whatever the preview's order
    assert cost.price_resources(resources[::-1], book).resources == est.resources
    assert worker.monthly_cost == Decimal("30.131") * H + 200 * rate("ebs.gp3.storage")
    assert ssm.monthly_cost == rate("vpce.interface.hour") * H
    assert est.detected == 2  # the provider and the component are not cloud resources


def test_bad_preview_file():
    with pytest.raises(PriceError, match="not JSON"):
        cost_preview.load_preview_file("{nope")
    with pytest.raises(PriceError, match="steps"):
        cost_preview.load_preview_file("{}")


# --- `llmfleet cost` end to end on the real stacks (offline engine) ----------------------------

from typer.testing import CliRunner  # noqa: E402

from infra.cli import app  # noqa: E402

RUNNER = CliRunner()


@pytest.fixture(autouse=True)
def _no_real_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMFLEET_CACHE_DIR", str(tmp_path / "cache"))


def run_cost(*args: str):
    return RUNNER.invoke(app, ["cost", *args])


@functools.cache  # each run captures the real program (seconds); results are deterministic
def _cost_json_text(*args: str) -> str:
    result = run_cost(*args, "--json")
    assert result.exit_code == 0, result.stderr
    return result.stdout


def cost_json(*args: str) -> dict:
    return json.loads(_cost_json_text(*args))


def _uncached_cost_json(*args: str) -> dict:
    result = run_cost(*args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def resources_of(doc: dict, key: str = "breakdown") -> list[dict]:
    return doc["projects"][0][key]["resources"]


def test_cli_prod_json():
    from infra.stack.files import load_config

    doc = cost_json("--stack", "prod")
    rs = resources_of(doc)
    cfg = load_config("prod")
    plan = resolve(cfg).plan
    workers = [r for r in rs if r["metadata"].get("role") == "worker"]
    assert len(workers) == plan.nodes == 3
    for w in workers:
        usage = w["costComponents"][0]
        assert usage["price"] == "30.131" and usage["unit"] == "hours" and usage["hourlyCost"] == "30.131"
        assert w["subresources"][0]["name"] == "root_block_device"  # its volume, as its own line item
    (head,) = [r for r in rs if r["metadata"].get("role") == "head"]
    assert head["metadata"]["instanceType"] == cfg.head_instance_type
    types = {r["resourceType"] for r in rs}
    assert "aws:ec2/vpcEndpoint:VpcEndpoint" in types
    assert "aws:lb/loadBalancer:LoadBalancer" in types
    total_h, total_m = Decimal(doc["totalHourlyCost"]), Decimal(doc["totalMonthlyCost"])
    assert abs(730 * total_h - total_m) < Decimal("0.005")
    assert total_m > 3 * Decimal("30.131") * 730
    per_m = sum(Decimal(r["metadata"]["usdPerMillionOutputTokens"]) for r in rs)
    tps = Decimal(str(plan.decode_tokens_per_s_expected))
    assert abs(per_m - total_h / (tps * 3600) * 10**6) < Decimal("0.0001")
    assert all(
        r["metadata"]["decodeTokensPerSecondExpected"] == plan.decode_tokens_per_s_expected for r in rs
    )


def test_cli_table_has_a_total():
    result = run_cost("--stack", "prod")
    assert result.exit_code == 0, result.stderr
    assert "Total" in result.stdout and "30.1310" in result.stdout  # unit prices to 4 places


def test_cli_spot_from_stubbed_spot_history(monkeypatch):
    import boto3
    from botocore.stub import Stubber

    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    pricing_client = boto3.client(
        "pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y"
    )
    clients = {"ec2": ec2, "pricing": pricing_client}
    monkeypatch.setattr(boto3, "client", lambda name, **kw: clients[name])
    history = [
        {
            "AvailabilityZone": "us-east-1a",
            "InstanceType": "g6e.48xlarge",
            "ProductDescription": "Linux/UNIX",
            "SpotPrice": "10.250000",
            "Timestamp": "2026-11-27T10:00:00Z",
        }
    ]
    from tests.test_pricing import price_list_item

    with Stubber(ec2) as es, Stubber(pricing_client) as ps:
        es.add_response("describe_spot_price_history", {"SpotPriceHistory": history})
        # the head stays on-demand: one Price List lookup for its type
        ps.add_response("get_products", {"PriceList": [price_list_item("m7i.2xlarge", "0.4032000000")]})
        doc = _uncached_cost_json("--stack", "prod", "-c", "llmfleet:spot=true", "--live")
        es.assert_no_pending_responses()
    rs = resources_of(doc)
    workers = [r for r in rs if r["metadata"].get("role") == "worker"]
    assert workers and all(w["costComponents"][0]["price"] == "10.25" for w in workers)
    assert all(w["metadata"]["market"] == "spot" for w in workers)
    (head,) = [r for r in rs if r["metadata"].get("role") == "head"]
    assert head["metadata"]["market"] == "on-demand" and head["costComponents"][0]["price"] == "0.4032"


def test_cli_spot_snapshot_is_a_labelled_estimate():
    doc = cost_json("--stack", "prod", "-c", "llmfleet:spot=true")
    workers = [r for r in resources_of(doc) if r["metadata"].get("role") == "worker"]
    fraction = Decimal(load_snapshot().assumptions["spot_fraction_of_on_demand"].value)
    for w in workers:
        usage = w["costComponents"][0]
        assert Decimal(usage["price"]) == Decimal("30.131") * fraction
        assert w["metadata"]["priceSources"][0]["estimate"] is True


def test_cli_diff_prod_minus_dev():
    prod, dev = cost_json("--stack", "prod"), cost_json("--stack", "dev")
    doc = cost_json("--stack", "prod", "--diff", "dev")
    assert Decimal(doc["diffTotalMonthlyCost"]) == Decimal(prod["totalMonthlyCost"]) - Decimal(
        dev["totalMonthlyCost"]
    )
    assert doc["pastTotalMonthlyCost"] == dev["totalMonthlyCost"]
    past = {(r["resourceType"], r["name"]): Decimal(r["monthlyCost"]) for r in resources_of(dev)}
    now = {(r["resourceType"], r["name"]): Decimal(r["monthlyCost"]) for r in resources_of(prod)}
    for r in doc["projects"][0]["diff"]["resources"]:
        key = (r["resourceType"], r["name"])
        assert Decimal(r["monthlyCost"]) == now.get(key, 0) - past.get(key, 0)
    table = run_cost("--stack", "prod", "--diff", "dev")
    assert table.exit_code == 0 and "stack prod, minus stack dev" in table.stdout


def test_cli_budget_gate_exits_4():
    result = run_cost("--stack", "prod", "-c", "llmfleet:maxMonthlyUsd=1000", "--json")
    assert result.exit_code == 4
    total = Decimal(json.loads(result.stdout)["totalMonthlyCost"])
    (line,) = result.stderr.strip().splitlines()
    assert f"{total:,.2f}" in line and "1,000.00" in line and "llmfleet:maxMonthlyUsd" in line


def test_cli_budget_gate_is_exact_at_the_limit():
    """Over llmfleet:maxMonthlyUsd by one cent exits 4; exactly at it, or with no limit, passes."""
    total = Decimal(json.loads(_cost_json_text("--stack", "prod"))["totalMonthlyCost"])
    over = run_cost("--stack", "prod", "-c", f"llmfleet:maxMonthlyUsd={total - Decimal('0.01')}", "--json")
    assert over.exit_code == 4
    # with --json the cost document is stdout's one document; the gate's error is one JSON object on stderr
    (line,) = over.stderr.strip().splitlines()
    json.loads(over.stdout)
    assert json.loads(line)["error"]["message"].endswith(
        f"total monthly cost {total:,.2f} USD exceeds llmfleet:maxMonthlyUsd {total - Decimal('0.01'):,.2f} USD"
    )
    at = run_cost("--stack", "prod", "-c", f"llmfleet:maxMonthlyUsd={total}", "--json")
    assert at.exit_code == 0 and "exceeds" not in at.stderr
    unset = run_cost("--stack", "prod", "-c", "llmfleet:maxMonthlyUsd=0", "--json")  # 0 unsets the limit
    assert unset.exit_code == 0 and "exceeds" not in unset.stderr


def test_cli_region_outside_snapshot_is_one_line():
    result = run_cost("--stack", "prod", "-c", "aws:region=eu-west-1")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "eu-west-1" in line and "--live" in line


def test_cli_from_preview(tmp_path):
    path = tmp_path / "preview.json"
    path.write_text(json.dumps(PREVIEW))
    doc = cost_json("--stack", "prod", "--from-preview", str(path))
    ssm, worker = resources_of(doc)  # by name, as Infracost lists them
    assert worker["name"] == "prod-worker-0" and worker["costComponents"][0]["price"] == "30.131"
    assert ssm["name"] == "net-ssm" and ssm["costComponents"][0]["name"] == "Endpoint (ssm) x 1 AZ"
    bad = run_cost("--stack", "prod", "--from-preview", str(tmp_path / "missing.json"))
    assert bad.exit_code == 2 and "missing.json" in bad.stderr


def test_cli_existing_hosts_priced_from_host_hourly_usd():
    from infra.stack.files import load_config

    cfg = load_config("onprem-l20")
    doc = cost_json("--stack", "onprem-l20")
    hosts = [r for r in resources_of(doc) if r["resourceType"] == "llmfleet:existing:Host"]
    assert sorted(h["name"] for h in hosts) == sorted(h.address for h in cfg.worker_hosts)
    assert all(Decimal(h["costComponents"][0]["price"]) == Decimal(str(cfg.host_hourly_usd)) for h in hosts)


@pytest.mark.parametrize("stack_name", ["prod", "block-h100"])
def test_table_at_80_columns_keeps_every_resource_name_on_one_line(stack_name, tmp_path):
    """`COLUMNS=80 llmfleet cost --stack prod`, as a terminal runs it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "COLUMNS": "80",
        "PYTHONPATH": str(root),
        "LLMFLEET_CACHE_DIR": str(tmp_path),
        "TERM": "dumb",
    }
    env.pop("LINES", None)
    cmd = [sys.executable, "-m", "infra.cli", "cost", "--stack", stack_name]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=root)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    rs = resources_of(cost_json("--stack", stack_name))
    labels = [
        r["name"] + (f" ({r['metadata']['role']})" if r["metadata"].get("role") in ("head", "worker") else "")
        for r in rs
    ]
    assert len(labels) > 10
    for label in labels:  # the whole label, with its role, at the start of one line
        assert any(line.strip() == label for line in lines), label
    subs = {s["name"] for r in rs for s in r["subresources"]}
    for sub in subs:
        assert any(line.strip().endswith(f"─ {sub}") for line in lines), sub
    # money columns are never cut: every priced line ends in a 2-place amount or "-"
    total = cost_json("--stack", stack_name)["totalMonthlyCost"]
    assert any(line.strip().endswith(f"{Decimal(total):,.2f}") for line in lines if "Total" in line)
