"""Price a captured resource set (Infracost-style). Pure functions; no Pulumi import.

Input: the resource list of the offline engine's Capture (dicts with type, name, parent,
urn, inputs, outputs), or the states of a `pulumi preview --json` file via
`states_from_preview` (new from `newState`, past from `oldState`). Prices come from an
`infra.cost.pricing.PriceBook`, usage from an `infra.cost.usage.Usage` (Infracost's usage file).

Line items (monthly = 730 hours, as Infracost):
- aws:ec2/instance:Instance   instance-hours by type and how they are billed: the instance's own
                               `instanceMarketOptions.marketType` (spot, capacity-block), else the
                               stack's pricing model (on-demand, savings-plan-1y/3y); `monthly_hrs`
                               usage for part-month hosts; root and `ebsBlockDevices` volumes as
                               sub-resources;
- Capacity Blocks              one line per block the workers launch into: the upfront fee spread
                               over the block's hours (its instances then cost nothing more);
- aws:ebs/volume:Volume        GB-month; gp3 IOPS above 3000 and throughput above 125 MB/s;
- aws:ec2/natGateway:NatGateway, aws:ec2/eip:Eip (public IPv4)  per hour; NAT data from usage;
- aws:ec2/vpcEndpoint:VpcEndpoint (Interface)  per hour per AZ (= per subnet), data from usage;
                               Gateway ones are free;
- aws:lb/loadBalancer:LoadBalancer  per hour; LCU-hours from usage (the largest LCU dimension);
- aws:s3/bucket:Bucket / bucketV2  the model checkpoint's size x GB-month for the weights bucket
                               (usage `standard.storage_gb` overrides), requests from usage. When
                               weights live at a user-given URI the stack creates no bucket;
- aws:ecr/repository:Repository  one image of the estimated size x GB-month (usage `storage_gb`);
- aws:kms/key:Key                1 USD per key-month, requests from usage.
A usage-based component with no usage carries a price but no quantity and no cost, as in Infracost.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from infra.cost import usage as usage_mod
from infra.cost.pricing import SAVINGS_PLAN_FRACTIONS, Price, PriceBook, PriceError
from infra.cost.usage import Usage

HOURS_PER_MONTH = Decimal(730)
INFRACOST_JSON_VERSION = "0.2"
CAPACITY_BLOCK_TYPE = "llmfleet:aws:CapacityBlock"  # no cloud resource of ours: the block is bought
# Unknown (computed) values: Pulumi's preview JSON marker, and the offline engine's placeholder.
UNKNOWNS = ("04da6b54-80e4-46f7-96ec-b56ff0331ba9", "[unknown]", "[secret]")
PROVIDER_PACKAGES = {"aws", "random", "docker-build", "docker", "command", "tls", "awsx"}

Resource = Mapping[str, Any]

# Types that exist in our program and cost nothing by themselves (so they are not "unsupported").
FREE_TYPE_PREFIXES = (
    "aws:ec2/vpc:",
    "aws:ec2/subnet:",
    "aws:ec2/securityGroup",
    "aws:vpc/securityGroup",
    "aws:ec2/routeTable",
    "aws:ec2/route:",
    "aws:ec2/mainRouteTableAssociation:",
    "aws:ec2/internetGateway:",
    "aws:ec2/placementGroup:",
    "aws:ec2/networkInterface:",  # ENIs (and EFA interfaces) cost nothing by themselves
    "aws:ec2/vpcDhcpOptions",
    "aws:ec2/defaultSecurityGroup:",
    "aws:ec2/defaultNetworkAcl:",
    "aws:ec2/defaultRouteTable:",
    "aws:iam/",
    "aws:lb/targetGroup",
    "aws:lb/listener",
    "aws:ssm/parameter:",  # standard-tier SecureString parameters are free
    "aws:ecr/lifecyclePolicy:",
    "aws:ecr/repositoryPolicy:",
    "aws:s3/bucketPublicAccessBlock",
    "aws:s3/bucketServerSideEncryption",
    "aws:s3/bucketVersioning",
    "aws:s3/bucketOwnershipControls",
    "aws:s3/bucketPolicy",
    "aws:s3/bucketLifecycle",
    "aws:cloudwatch/logGroup:",  # usage-based ingestion/storage, not estimated
    "random:",
    "docker-build:",
    "command:",
    "tls:",
    "pulumi:",
)
BUCKET_TYPES = usage_mod.BUCKETS


# --- model -------------------------------------------------------------------------------------


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

    @property
    def total_hourly(self) -> Decimal:
        return sum((r.hourly_cost for r in self.resources), Decimal(0))

    @property
    def total_monthly(self) -> Decimal:
        return sum((r.monthly_cost for r in self.resources), Decimal(0))

    @property
    def total_monthly_usage(self) -> Decimal:
        return sum((r.monthly_usage_cost for r in self.resources), Decimal(0))

    @property
    def serving_hours(self) -> Decimal:
        """Hours a month the whole cluster serves: every GPU worker must be up (the pipeline
        spans all of them), so the fewest instance-hours of any worker; 730 without workers."""
        hours = [
            r.components[0].monthly_quantity
            for r in self.resources
            if r.metadata.get("role") == "worker" and r.components and r.components[0].known
        ]
        return min(hours) if hours else HOURS_PER_MONTH


# --- component builders ------------------------------------------------------------------------


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


def _known(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and value in UNKNOWNS)


def _num(value: Any, key: str, res_name: str) -> Decimal:
    try:
        return Decimal(str(value))
    except ArithmeticError:
        raise PriceError(f"{res_name}: {key}={value!r} is not a number") from None


def volume_components(
    book: PriceBook, size_gb: Any, volume_type: Any, iops: Any, throughput: Any, res_name: str
) -> list[CostComponent]:
    """Storage (+ provisioned IOPS / throughput above the free baseline) of one EBS volume."""
    vtype = volume_type if _known(volume_type) else book.assumption("default_volume_type")[0]
    ebs_types = sorted({k.split(".")[1] for k in book.rate_keys() if k.startswith("ebs.")})
    if vtype not in ebs_types:
        raise PriceError(f"{res_name}: volumeType={vtype!r} has no price (allowed: {', '.join(ebs_types)})")
    if _known(size_gb):
        size = _num(size_gb, "volumeSize", res_name)
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
        if _known(iops) and _num(iops, "iops", res_name) > free_iops:
            out.append(
                monthly(
                    "Provisioned IOPS (gp3, above 3000)",
                    "IOPS",
                    _num(iops, "iops", res_name) - free_iops,
                    book.rate("ebs.gp3.iops"),
                )
            )
        if _known(throughput) and _num(throughput, "throughput", res_name) > free_tp:
            out.append(
                monthly(
                    "Provisioned throughput (gp3, above 125 MBps)",
                    "MBps",
                    _num(throughput, "throughput", res_name) - free_tp,
                    book.rate("ebs.gp3.throughput"),
                )
            )
    elif vtype == "io1" and _known(iops):
        out.append(
            monthly("Provisioned IOPS (io1)", "IOPS", _num(iops, "iops", res_name), book.rate("ebs.io1.iops"))
        )
    return out


def _tags(res: Resource) -> Mapping[str, str]:
    tags = res.get("inputs", {}).get("tags") or {}
    return tags if isinstance(tags, Mapping) else {}


# --- Capacity Blocks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CapacityBlock:
    """What is known about one Capacity Block (from EC2, see infra.cost.capacity_block). Any field may
    be None offline; the fee then comes from the snapshot's per-instance-hour rate."""

    reservation_id: str
    instance_type: str | None = None
    availability_zone: str | None = None
    instance_count: int | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    upfront_fee: Decimal | None = None
    fee_source: str = ""
    fee_date: str = ""
    fee_estimate: bool = True

    @property
    def duration_hours(self) -> Decimal | None:
        if self.start is None or self.end is None:
            return None
        return Decimal(str((self.end - self.start).total_seconds())) / 3600

    @property
    def billed_hours(self) -> Decimal:
        """Hours of the block within one 730-hour month: all of a short block, 730 of a long one."""
        d = self.duration_hours
        return HOURS_PER_MONTH if d is None else min(HOURS_PER_MONTH, d)


def capacity_block_target(inputs: Mapping[str, Any]) -> str | None:
    """The reservation id of an instance that launches into a Capacity Block, else None."""
    if (inputs.get("instanceMarketOptions") or {}).get("marketType") != "capacity-block":
        return None
    spec = inputs.get("capacityReservationSpecification") or {}
    rid = (spec.get("capacityReservationTarget") or {}).get("capacityReservationId")
    return rid if _known(rid) else "(unknown block)"


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


# --- resources ---------------------------------------------------------------------------------


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
) -> ResourceCost:
    inputs = res.get("inputs", {})
    name = res["name"]
    u = u or {}
    itype = inputs.get("instanceType")
    if not _known(itype):
        raise PriceError(f"{name}: instanceType is unknown, cannot price it")
    market = instance_market(inputs, pricing_model)
    az = inputs.get("availabilityZone") if _known(inputs.get("availabilityZone")) else default_az
    label = f"Instance usage (Linux/UNIX, {market}, {itype})"
    if market == "capacity-block":
        rid = capacity_block_target(inputs)
        price = Price(Decimal(0), "hours", f"in the upfront fee of Capacity Block {rid}", book.date)
        default_hours = (block or CapacityBlock(str(rid))).billed_hours
    else:
        price = book.instance_hourly(itype, market, az)
        default_hours = HOURS_PER_MONTH
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
    role = _tags(res).get("llmfleet:role", "")
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
        # S3 bills GB-month in binary GB, so the checkpoint's GiB is the billed quantity
        storage = monthly("Storage (S3 Standard)", "GB", weights_gib, rate, usage_key="standard.storage_gb")
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


def _is_weights_bucket(res: Resource, buckets: Sequence[Resource]) -> bool:
    if len(buckets) == 1:
        return True
    tags = _tags(res)
    return tags.get("llmfleet:role") == "weights" or "weights" in res["name"]


# --- the estimate ------------------------------------------------------------------------------


def _is_cloud_resource(res: Resource) -> bool:
    """Custom resources only, not components or providers (by the `custom` flag when the
    capture or preview carries it, else by the type's package)."""
    rtype = res["type"]
    if rtype.startswith("pulumi:"):
        return False
    if "custom" in res:
        return bool(res["custom"])
    return rtype.split(":", 1)[0] in PROVIDER_PACKAGES


def price_resources(
    resources: Iterable[Resource],
    book: PriceBook,
    *,
    project: str = "",
    weights_gib: Decimal | float | None = None,
    default_az: str | None = None,
    usage: Usage | None = None,
    pricing_model: str = "on-demand",
    capacity_blocks: Mapping[str, CapacityBlock] | None = None,
) -> Estimate:
    """Price every resource; the pure core of `llmfleet cost` and the budget policy."""
    usage = usage or Usage()
    blocks_known = dict(capacity_blocks or {})
    res_list = [r for r in resources if _is_cloud_resource(r)]
    buckets = [r for r in res_list if r["type"] in BUCKET_TYPES]
    wgib = None if weights_gib is None else Decimal(str(weights_gib))
    priced: list[ResourceCost] = []
    no_price: list[str] = []
    unsupported: list[str] = []
    in_blocks: dict[str, list[str]] = {}  # reservation id -> instance types launching into it
    for res in res_list:
        rtype = res["type"]
        u = usage.for_resource(rtype, res["name"], res.get("urn", "")) if usage_mod.keys_for(rtype) else {}
        item: ResourceCost | None
        if rtype == "aws:ec2/instance:Instance":
            rid = capacity_block_target(res.get("inputs", {}))
            if rid is not None:
                in_blocks.setdefault(rid, []).append(res["inputs"].get("instanceType"))
            block = blocks_known.get(rid) if rid else None
            item = price_instance(res, book, default_az, u=u, pricing_model=pricing_model, block=block)
        elif rtype == "aws:ebs/volume:Volume":
            item = price_volume(res, book)
        elif rtype == "aws:ec2/natGateway:NatGateway":
            item = price_nat(res, book, u)
        elif rtype == "aws:ec2/eip:Eip":
            item = price_eip(res, book)
        elif rtype == "aws:ec2/vpcEndpoint:VpcEndpoint":
            item = price_vpc_endpoint(res, book, u)
        elif rtype in usage_mod.LOAD_BALANCERS:
            item = price_load_balancer(res, book, u)
        elif rtype in BUCKET_TYPES:
            item = price_bucket(res, book, wgib if _is_weights_bucket(res, buckets) else None, u)
        elif rtype == "aws:ecr/repository:Repository":
            item = price_ecr(res, book, u)
        elif rtype == "aws:kms/key:Key":
            item = price_kms_key(res, book, u)
        elif rtype.startswith(FREE_TYPE_PREFIXES):
            no_price.append(rtype)
            continue
        else:
            unsupported.append(rtype)
            continue
        if item is None:
            no_price.append(rtype)
        else:
            priced.append(item)
    for rid, types in in_blocks.items():
        block = blocks_known.get(rid, CapacityBlock(rid))
        priced.append(price_capacity_block(block, str(types[0]), len(types), book))
    warnings = list(book.warnings)
    if unsupported:
        kinds = ", ".join(sorted(set(unsupported)))
        warnings.append(f"not priced (no estimator for these types): {kinds}")
    for key in usage.unmatched():
        warnings.append(f"usage file resource_usage.{key}: matches no priced resource of this stack")
    return Estimate(
        project=project,
        region=book.region,
        price_source=book.label,
        resources=tuple(priced),
        detected=len(res_list),
        no_price=tuple(no_price),
        unsupported=tuple(unsupported),
        warnings=tuple(warnings),
        pricing_model=pricing_model,
    )


def with_owned_hosts(est: Estimate, addresses: Sequence[str], usd_per_hour: float, date: str) -> Estimate:
    """Add user-declared hourly costs of existing (owned) GPU hosts (llmfleet:provider=existing),
    which no cloud resource represents, so cost per token still means something."""
    price = Price(Decimal(str(usd_per_hour)), "hours", "llmfleet:hostHourlyUsd (user-declared)", date)
    hosts = tuple(
        ResourceCost(
            a, "llmfleet:existing:Host", (hourly("Owned GPU host", 1, price),), metadata={"role": "worker"}
        )
        for a in addresses
    )
    return replace(est, resources=est.resources + hosts)


def estimate_monthly_usd(
    resources: Iterable[Resource],
    region: str,
    price_book: PriceBook | None = None,
    *,
    weights_gib: Decimal | float | None = None,
    pricing_model: str = "on-demand",
) -> Decimal:
    """Total monthly USD of a resource set: the number the budget policy compares with
    `llmfleet:maxMonthlyUsd`. Uses the bundled snapshot unless a price book is given."""
    if price_book is None:
        from infra.cost.pricing import snapshot_book

        price_book = snapshot_book(region)
    return price_resources(
        resources, price_book, weights_gib=weights_gib, pricing_model=pricing_model
    ).total_monthly


def usd_per_million_tokens(
    cost_usd: Decimal, tokens_per_s: float | None, hours: Decimal = Decimal(1)
) -> Decimal | None:
    """Cost over `hours` of serving / (tokens per second x 3600 x hours) x 1e6; None when there
    is no throughput. With the hourly cost and hours=1 this is the per-hour figure."""
    if not tokens_per_s or tokens_per_s <= 0 or hours <= 0:
        return None
    return cost_usd / (Decimal(str(tokens_per_s)) * 3600 * hours) * Decimal(1_000_000)


def monthly_usd_per_million_tokens(est: Estimate, tokens_per_s: float | None) -> Decimal | None:
    """The stack's USD per million output tokens: a month's cost over the tokens of the hours the
    cluster serves (all 730 unless workers run part of the month or in a shorter block)."""
    return usd_per_million_tokens(est.total_monthly, tokens_per_s, est.serving_hours)


# --- `pulumi preview --json` -------------------------------------------------------------------


def _name_of(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


# Steps whose resource does not exist after the update (newState) or did not before (oldState).
_NOT_AFTER = ("read", "delete", "delete-replaced", "discard", "discard-replaced", "remove-pending-replace")
_NOT_BEFORE = ("read", "create", "create-replacement", "import", "import-replacement")


@dataclass(frozen=True)
class PreviewStates:
    new: list[dict[str, Any]]
    past: list[dict[str, Any]]
    region: str | None
    ops: Mapping[str, int]
    has_sames: bool  # `pulumi preview --json --show-sames`: unchanged resources are in the file

    @property
    def has_past(self) -> bool:
        return bool(self.past)


def _resource_of(state: Mapping[str, Any], urn: str) -> dict[str, Any]:
    return {
        "type": state.get("type", ""),
        "name": _name_of(state.get("urn", urn)),
        "parent": _name_of(state["parent"]) if state.get("parent") else None,
        "urn": state.get("urn", urn),
        "custom": bool(state.get("custom", True)),
        "inputs": state.get("inputs") or {},
        "outputs": state.get("outputs") or {},
    }


def states_from_preview(doc: Mapping[str, Any]) -> PreviewStates:
    """The resources after the update (`newState`) and before it (`oldState`) of a
    `pulumi preview --json` document, each URN once; reads (data sources) are neither."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("steps"), list):
        raise PriceError("preview file: expected a `pulumi preview --json` document with a `steps` list")
    new: dict[str, dict[str, Any]] = {}
    past: dict[str, dict[str, Any]] = {}
    region: str | None = None
    ops: dict[str, int] = {}
    sames = 0  # unchanged resources; the root stack's step is always there, --show-sames or not
    for step in doc["steps"]:
        if not isinstance(step, Mapping):
            raise PriceError("preview file: every entry of `steps` must be an object")
        op = str(step.get("op", ""))
        urn = str(step.get("urn", ""))
        ops[op] = ops.get(op, 0) + 1
        after, before = step.get("newState"), step.get("oldState")
        state_type = (after or before or {}).get("type", "")
        if op == "same" and state_type != "pulumi:pulumi:Stack":
            sames += 1
        if after and op not in _NOT_AFTER:
            if after.get("type") == "pulumi:providers:aws" and _known(
                (after.get("inputs") or {}).get("region")
            ):
                region = after["inputs"]["region"]
            new.setdefault(after.get("urn", urn), _resource_of(after, urn))
        if before and op not in _NOT_BEFORE:
            past.setdefault(before.get("urn", urn), _resource_of(before, urn))
    return PreviewStates(list(new.values()), list(past.values()), region, ops, sames > 0)


def resources_from_preview(doc: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """(resources after the update, region or None) of a `pulumi preview --json` document."""
    states = states_from_preview(doc)
    return states.new, states.region


def parse_preview(text: str) -> PreviewStates:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise PriceError(f"preview file: not JSON ({err.msg} at line {err.lineno})") from None
    return states_from_preview(doc)


def load_preview_file(text: str) -> tuple[list[dict[str, Any]], str | None]:
    states = parse_preview(text)
    return states.new, states.region


# --- decimal strings ---------------------------------------------------------------------------


def dec(value: Decimal | None, places: int = 10) -> str | None:
    """A decimal string without exponent or trailing zeros ("30.131", "21995.63")."""
    if value is None:
        return None
    q = value.quantize(Decimal(1).scaleb(-places))
    text = format(q, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
