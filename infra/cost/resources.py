"""One price function per billable resource type (Infracost-style line items); each takes a
captured resource (type, name, inputs, outputs), a PriceBook and usage."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from infra.cost import usage as usage_mod
from infra.cost.capacity_block import CapacityBlock
from infra.cost.model import (
    HOURS_PER_MONTH,
    CostComponent,
    Resource,
    ResourceCost,
    from_usage,
    hourly,
    input_decimal,
    is_known,
    monthly,
    tags_of,
)
from infra.cost.pricing import SAVINGS_PLAN_FRACTIONS, Price, PriceBook, PriceError

CAPACITY_BLOCK_TYPE = "llmfleet:aws:CapacityBlock"  # no cloud resource of ours: the block is bought


BUCKET_TYPES = usage_mod.BUCKETS


def volume_components(
    book: PriceBook, size_gb: Any, volume_type: Any, iops: Any, throughput: Any, res_name: str
) -> list[CostComponent]:
    """Storage (+ provisioned IOPS / throughput above the free baseline) of one EBS volume."""
    vtype = volume_type if is_known(volume_type) else book.assumption("default_volume_type")[0]
    ebs_types = sorted({k.split(".")[1] for k in book.rate_keys() if k.startswith("ebs.")})
    if vtype not in ebs_types:
        raise PriceError(f"{res_name}: volumeType={vtype!r} has no price (allowed: {', '.join(ebs_types)})")
    if is_known(size_gb):
        size = input_decimal(size_gb, "volumeSize", res_name)
        storage = book.rate(f"ebs.{vtype}.storage")
    else:  # the AMI decides; price the documented default and say it is an estimate
        value, source, _ = book.assumption("default_root_volume_gb")
        size = Decimal(value)
        base = book.rate(f"ebs.{vtype}.storage")
        storage = Price(base.usd, base.unit, base.source, base.date, True, f"size assumed: {source}")
    out = [monthly(f"Storage (EBS {vtype})", "GB", size, storage)]
    if vtype == "gp3":
        free_iops = Decimal(book.assumption("gp3_free_iops")[0])
        free_tp = Decimal(book.assumption("gp3_free_throughput_mbps")[0])
        if is_known(iops) and input_decimal(iops, "iops", res_name) > free_iops:
            out.append(
                monthly(
                    "Provisioned IOPS (gp3, above 3000)",
                    "IOPS",
                    input_decimal(iops, "iops", res_name) - free_iops,
                    book.rate("ebs.gp3.iops"),
                )
            )
        if is_known(throughput) and input_decimal(throughput, "throughput", res_name) > free_tp:
            out.append(
                monthly(
                    "Provisioned throughput (gp3, above 125 MBps)",
                    "MBps",
                    input_decimal(throughput, "throughput", res_name) - free_tp,
                    book.rate("ebs.gp3.throughput"),
                )
            )
    elif vtype == "io1" and is_known(iops):
        out.append(
            monthly(
                "Provisioned IOPS (io1)",
                "IOPS",
                input_decimal(iops, "iops", res_name),
                book.rate("ebs.io1.iops"),
            )
        )
    return out


def capacity_block_target(inputs: Mapping[str, Any]) -> str | None:
    """The reservation id of an instance that launches into a Capacity Block, else None."""
    if (inputs.get("instanceMarketOptions") or {}).get("marketType") != "capacity-block":
        return None
    spec = inputs.get("capacityReservationSpecification") or {}
    rid = (spec.get("capacityReservationTarget") or {}).get("capacityReservationId")
    return rid if is_known(rid) else "(unknown block)"


def price_capacity_block(
    block: CapacityBlock, instance_type: str, instances: int, book: PriceBook
) -> ResourceCost:
    """The block's upfront fee over its duration: fee / duration per hour of the block, for the
    block's hours within the month. Without EC2's figures: the snapshot rate per instance-hour."""
    d = block.duration_hours
    count = block.instance_count or instances
    itype = block.instance_type or instance_type
    if block.upfront_fee is not None and d:
        note = f"upfront fee {block.upfront_fee} USD for {d.normalize():f} h"
        if block.start and block.end:
            note += f" ({block.start:%Y-%m-%d %H:%M} to {block.end:%Y-%m-%d %H:%M} UTC)"
        price = Price(
            block.upfront_fee / d, "hours", block.fee_source, block.fee_date, block.fee_estimate, note
        )
    else:
        rate = book.capacity_block_rate(itype)
        why = "no fee from EC2 (run with --live)" if block.upfront_fee is None else "no block dates"
        price = Price(
            rate.usd * count,
            "hours",
            rate.source,
            rate.date,
            True,
            f"{count} x {rate.usd}/instance-hour; {why}" + (f"; {rate.note}" if rate.note else ""),
        )
    hours = block.billed_hours
    comp = monthly(f"Upfront fee over the block ({count} x {itype})", "hours", hours, price)
    meta = {
        "role": "capacity-block",
        "instanceType": itype,
        "instanceCount": str(count),
        "availabilityZone": block.availability_zone or "",
        "durationHours": "" if d is None else f"{d.normalize():f}",
        "start": block.start.isoformat() if block.start else "",
        "end": block.end.isoformat() if block.end else "",
    }
    return ResourceCost(block.reservation_id, CAPACITY_BLOCK_TYPE, (comp,), metadata=meta)


def instance_market(inputs: Mapping[str, Any], pricing_model: str) -> str:
    """How an instance's hours are billed: its own market type first (spot or capacity-block
    instances say so in their inputs), else the stack's pricing model; a spot pricing model does
    not make an on-demand instance (the head) spot."""
    mtype = (inputs.get("instanceMarketOptions") or {}).get("marketType")
    if mtype in ("spot", "capacity-block"):
        return mtype
    return pricing_model if pricing_model in SAVINGS_PLAN_FRACTIONS else "on-demand"


def price_instance(
    res: Resource,
    book: PriceBook,
    default_az: str | None = None,
    *,
    u: Mapping[str, Decimal] | None = None,
    pricing_model: str = "on-demand",
    block: CapacityBlock | None = None,
    scheduled: tuple[Decimal, str] | None = None,
) -> ResourceCost:
    """`scheduled`: (hours a month, why) for a worker that a serving schedule runs part-time
    (infra/stack/serving_hours.py); the usage file's monthly_hrs still wins (idle stop's busy hours)."""
    inputs = res.get("inputs", {})
    name = res["name"]
    u = u or {}
    itype = inputs.get("instanceType")
    if not is_known(itype):
        raise PriceError(f"{name}: instanceType is unknown, cannot price it")
    market = instance_market(inputs, pricing_model)
    az = inputs.get("availabilityZone") if is_known(inputs.get("availabilityZone")) else default_az
    label = f"Instance usage (Linux/UNIX, {market}, {itype})"
    if market == "capacity-block":
        rid = capacity_block_target(inputs)
        price = Price(Decimal(0), "hours", f"in the upfront fee of Capacity Block {rid}", book.date)
        default_hours = (block or CapacityBlock(str(rid))).billed_hours
    else:
        price = book.instance_hourly(itype, market, az)
        default_hours = HOURS_PER_MONTH
        if scheduled is not None:
            default_hours = scheduled[0]
            label = f"{label[:-1]}, scheduled)"
    if "monthly_hrs" in u:
        hours = u["monthly_hrs"]
        if hours > HOURS_PER_MONTH:
            raise usage_mod.UsageError(
                f"usage file monthly_hrs of {name} = {hours.normalize():f}: allowed: 0 to 730 "
                "(the hours of a month, as every monthly figure here)"
            )
        usage = monthly(label, "hours", hours, price, usage_based=True, usage_key="monthly_hrs")
    else:
        usage = monthly(label, "hours", default_hours, price, usage_key="monthly_hrs")
    subs: list[ResourceCost] = []
    root = inputs.get("rootBlockDevice") or {}
    subs.append(
        ResourceCost(
            "root_block_device",
            "aws:ec2/instance:Instance#rootBlockDevice",
            tuple(
                volume_components(
                    book,
                    root.get("volumeSize"),
                    root.get("volumeType"),
                    root.get("iops"),
                    root.get("throughput"),
                    f"{name}.rootBlockDevice",
                )
            ),
        )
    )
    for i, dev in enumerate(inputs.get("ebsBlockDevices") or []):
        label_dev = dev.get("deviceName") or str(i)
        subs.append(
            ResourceCost(
                f"ebs_block_device[{label_dev}]",
                "aws:ec2/instance:Instance#ebsBlockDevices",
                tuple(
                    volume_components(
                        book,
                        dev.get("volumeSize"),
                        dev.get("volumeType"),
                        dev.get("iops"),
                        dev.get("throughput"),
                        f"{name}.ebsBlockDevices[{i}]",
                    )
                ),
            )
        )
    role = tags_of(res).get("llmfleet:role", "")
    meta = {"role": role, "instanceType": itype, "market": market}
    return ResourceCost(name, res["type"], (usage,), tuple(subs), meta, res.get("urn", ""))


def price_volume(res: Resource, book: PriceBook) -> ResourceCost:
    i = res.get("inputs", {})
    comps = volume_components(
        book, i.get("size"), i.get("type"), i.get("iops"), i.get("throughput"), res["name"]
    )
    return ResourceCost(res["name"], res["type"], tuple(comps), urn=res.get("urn", ""))


def price_nat(res: Resource, book: PriceBook, u: Mapping[str, Decimal]) -> ResourceCost:
    comps = (
        hourly("NAT gateway", 1, book.rate("nat.hour")),
        from_usage("Data processed", "GB", book.rate("nat.data"), "monthly_data_processed_gb", u),
    )
    return ResourceCost(res["name"], res["type"], comps, urn=res.get("urn", ""))


def price_eip(res: Resource, book: PriceBook) -> ResourceCost:
    comps = (hourly("Public IPv4 address", 1, book.rate("ipv4.hour")),)
    return ResourceCost(res["name"], res["type"], comps, urn=res.get("urn", ""))


def is_interface_endpoint(res: Resource) -> bool:
    return (res.get("inputs", {}).get("vpcEndpointType") or "Gateway") == "Interface"


def price_vpc_endpoint(res: Resource, book: PriceBook, u: Mapping[str, Decimal]) -> ResourceCost | None:
    inputs = res.get("inputs", {})
    if not is_interface_endpoint(res):
        return None  # gateway endpoints (S3, DynamoDB) are free
    subnets = inputs.get("subnetIds") or []
    azs = max(len(subnets), 1)  # one ENI per subnet, one subnet per AZ
    # com.amazonaws.<region>.ecr.api -> ecr.api
    service = str(inputs.get("serviceName", "")).split(".", 3)[-1] or "interface"
    comps = (
        hourly(f"Endpoint ({service}) x {azs} AZ", azs, book.rate("vpce.interface.hour"), unit="hours"),
        from_usage("Data processed", "GB", book.rate("vpce.interface.data"), "monthly_data_processed_gb", u),
    )
    return ResourceCost(res["name"], res["type"], comps, metadata={"azs": str(azs)}, urn=res.get("urn", ""))


def lcu_hours(u: Mapping[str, Decimal], book: PriceBook, kind: str) -> Decimal | None:
    """LCU-hours a month from usage: each hour bills the largest LCU dimension; the usage gives
    monthly averages, so LCU-hours = 730 x max(per-hour LCUs of each dimension)."""
    keys = ("new_connections", "active_connections", "processed_bytes_gb", "rule_evaluations")
    if not any(k in u for k in keys):
        return None
    a = book.assumption
    if kind == "network":
        per = {
            "new_connections": a("nlb_lcu_new_flows_per_s")[0],
            "active_connections": a("nlb_lcu_active_flows_per_min")[0],
            "processed_bytes_gb": a("nlb_lcu_processed_gb_per_h")[0],
        }
    else:
        per = {
            "new_connections": a("alb_lcu_new_connections_per_s")[0],
            "active_connections": a("alb_lcu_active_connections_per_min")[0],
            "processed_bytes_gb": a("alb_lcu_processed_gb_per_h")[0],
            "rule_evaluations": a("alb_lcu_rule_evaluations_per_s")[0],
        }
    lcus = []
    for key, cap in per.items():
        if key in u:
            value = (
                u[key] / HOURS_PER_MONTH if key == "processed_bytes_gb" else u[key]
            )  # GB a month -> per hour
            lcus.append(value / Decimal(cap))
    return max(lcus, default=Decimal(0)) * HOURS_PER_MONTH


def price_load_balancer(res: Resource, book: PriceBook, u: Mapping[str, Decimal]) -> ResourceCost:
    kind = res.get("inputs", {}).get("loadBalancerType") or "application"
    if kind == "network" and "rule_evaluations" in u:
        raise usage_mod.UsageError(
            f"usage file resource_usage.{res['name']}.rule_evaluations: a network load balancer "
            "evaluates no rules; allowed: new_connections, active_connections, processed_bytes_gb"
        )
    prefix = "nlb" if kind == "network" else "alb"
    label = "Network" if kind == "network" else "Application"
    lcu_rate = book.rate(f"{prefix}.lcu")
    hours = lcu_hours(u, book, kind)
    name = "Load balancer capacity units"
    if hours is None:
        lcu = CostComponent(
            name, "LCU-hours", None, None, lcu_rate, usage_based=True, usage_key="processed_bytes_gb"
        )
    else:
        lcu = monthly(name, "LCU-hours", hours, lcu_rate, usage_based=True, usage_key="processed_bytes_gb")
    comps = (hourly(f"{label} load balancer", 1, book.rate(f"{prefix}.hour")), lcu)
    return ResourceCost(res["name"], res["type"], comps, metadata={"kind": kind}, urn=res.get("urn", ""))


def price_bucket(
    res: Resource, book: PriceBook, weights_gib: Decimal | None, u: Mapping[str, Decimal] | None = None
) -> ResourceCost:
    u = u or {}
    rate = book.rate("s3.standard.storage")
    if "standard.storage_gb" in u:
        storage = monthly(
            "Storage (S3 Standard)",
            "GB",
            u["standard.storage_gb"],
            rate,
            usage_based=True,
            usage_key="standard.storage_gb",
        )
    elif weights_gib is None:
        storage = CostComponent(
            "Storage (S3 Standard)", "GB", None, None, rate, usage_based=True, usage_key="standard.storage_gb"
        )
    else:
        # S3 bills GB-month in binary GB, so the checkpoint's GiB is the billed quantity, and the
        # line says GiB as `plan` and the cold-start table do (the same 642 GiB everywhere)
        storage = monthly("Storage (S3 Standard)", "GiB", weights_gib, rate, usage_key="standard.storage_gb")
    thousand = Decimal("0.001")  # request prices are per 1,000
    comps = (
        storage,
        from_usage(
            "PUT, COPY, POST, LIST requests",
            "1k requests",
            book.rate("s3.standard.requests.tier1"),
            "standard.monthly_tier_1_requests",
            u,
            thousand,
        ),
        from_usage(
            "GET, SELECT, and all other requests",
            "1k requests",
            book.rate("s3.standard.requests.tier2"),
            "standard.monthly_tier_2_requests",
            u,
            thousand,
        ),
    )
    meta = {"contents": "model checkpoint"} if weights_gib is not None else {}
    return ResourceCost(res["name"], res["type"], comps, metadata=meta, urn=res.get("urn", ""))


def price_ecr(res: Resource, book: PriceBook, u: Mapping[str, Decimal] | None = None) -> ResourceCost:
    u = u or {}
    base = book.rate("ecr.storage")
    name = "Storage (one image, estimated size)"
    if "storage_gb" in u:
        comp = monthly("Storage", "GB", u["storage_gb"], base, usage_based=True, usage_key="storage_gb")
    else:
        value, source, _ = book.assumption("ecr_image_size_gb")
        price = Price(base.usd, base.unit, base.source, base.date, True, f"size: {source}")
        comp = monthly(name, "GB", Decimal(value), price, usage_key="storage_gb")
    return ResourceCost(res["name"], res["type"], (comp,), urn=res.get("urn", ""))


def price_kms_key(res: Resource, book: PriceBook, u: Mapping[str, Decimal] | None = None) -> ResourceCost:
    comps = (
        monthly("Customer managed key", "months", 1, book.rate("kms.key")),
        from_usage(
            "Requests",
            "10k requests",
            book.rate("kms.requests"),
            "monthly_requests",
            u or {},
            Decimal("0.0001"),
        ),
    )
    return ResourceCost(res["name"], res["type"], comps, urn=res.get("urn", ""))


def price_metric_alarm(res: Resource, book: PriceBook) -> ResourceCost:
    comps = (monthly("Standard-resolution alarm", "alarm-months", 1, book.rate("cloudwatch.alarm.standard")),)
    return ResourceCost(res["name"], res["type"], comps, urn=res.get("urn", ""))


def price_ssm_parameter(res: Resource, book: PriceBook) -> ResourceCost | None:
    """Advanced-tier parameters (the node scripts, over 4 KB) cost storage; standard ones are free."""
    if (res.get("inputs") or {}).get("tier") != "Advanced":
        return None
    comps = (
        monthly("Advanced parameter storage", "parameter-months", 1, book.rate("ssm.parameter.advanced")),
    )
    return ResourceCost(res["name"], res["type"], comps, urn=res.get("urn", ""))


def price_elasticache(res: Resource, book: PriceBook) -> ResourceCost | None:
    """An ElastiCache replication group (the GCS store, llmfleet:gcsRedis): its node type per
    node-hour times the nodes it keeps (numCacheClusters); None for a type the book lacks."""
    i = res.get("inputs") or {}
    node_type = i.get("nodeType")
    key = f"elasticache.{node_type}"
    if not isinstance(node_type, str) or key not in book.rate_keys():
        return None
    nodes = int(i.get("numCacheClusters") or 1)
    comps = (hourly(f"Cache node ({node_type})", nodes, book.rate(key)),)
    return ResourceCost(res["name"], res["type"], comps, urn=res.get("urn", ""))
