"""Price a captured resource set (Infracost-style). Pure functions; no Pulumi import.

Input: the resource list of the offline engine's Capture (dicts with type, name, parent,
urn, inputs, outputs), or the `steps[].newState` of a `pulumi preview --json` file via
`resources_from_preview`. Prices come from a `infra.pricing.PriceBook`.

Line items (monthly = 730 hours, as Infracost):
- aws:ec2/instance:Instance   instance hours by type and market (spot when the instance's own
                               `instanceMarketOptions.marketType` is "spot"), plus its root and
                               `ebsBlockDevices` volumes as sub-resources;
- aws:ebs/volume:Volume        GB-month; gp3 IOPS above 3000 and throughput above 125 MB/s;
- aws:ec2/natGateway:NatGateway, aws:ec2/eip:Eip (public IPv4)  per hour;
- aws:ec2/vpcEndpoint:VpcEndpoint (Interface)  per hour per AZ (= per subnet); Gateway ones are free;
- aws:lb/loadBalancer:LoadBalancer  per hour; LCUs are usage-based (priced, not in the total);
- aws:s3/bucket:Bucket / bucketV2  the model checkpoint's size x GB-month for the weights bucket.
  When weights live at a user-given URI the stack creates no bucket and nothing is priced;
- aws:ecr/repository:Repository  one image of the estimated size x GB-month;
- aws:kms/key:Key                1 USD per key-month (requests usage-based).
Usage-based components (data processed, LCUs) carry a price but no quantity, as in Infracost.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from infra.pricing import Price, PriceBook, PriceError

HOURS_PER_MONTH = Decimal(730)
INFRACOST_JSON_VERSION = "0.2"
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
BUCKET_TYPES = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")


# --- model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostComponent:
    name: str
    unit: str
    hourly_quantity: Decimal | None  # None = usage-based (no quantity known)
    monthly_quantity: Decimal | None
    price: Price

    @property
    def usage_based(self) -> bool:
        return self.monthly_quantity is None

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

    @property
    def hourly_cost(self) -> Decimal:
        return sum((c.hourly_cost for c in self.components), Decimal(0)) + sum(
            (s.hourly_cost for s in self.subresources), Decimal(0)
        )

    @property
    def monthly_cost(self) -> Decimal:
        return sum((c.monthly_cost for c in self.components), Decimal(0)) + sum(
            (s.monthly_cost for s in self.subresources), Decimal(0)
        )


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

    @property
    def total_hourly(self) -> Decimal:
        return sum((r.hourly_cost for r in self.resources), Decimal(0))

    @property
    def total_monthly(self) -> Decimal:
        return sum((r.monthly_cost for r in self.resources), Decimal(0))


# --- component builders ------------------------------------------------------------------------


def hourly(name: str, count: Decimal | int, price: Price, unit: str = "hours") -> CostComponent:
    n = Decimal(count)
    return CostComponent(name, unit, n, n * HOURS_PER_MONTH, price)


def monthly(name: str, unit: str, quantity: Decimal | int, price: Price) -> CostComponent:
    q = Decimal(quantity)
    return CostComponent(name, unit, q / HOURS_PER_MONTH, q, price)


def usage_based(name: str, unit: str, price: Price) -> CostComponent:
    return CostComponent(name, unit, None, None, price)


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


def price_instance(res: Resource, book: PriceBook, default_az: str | None = None) -> ResourceCost:
    inputs = res.get("inputs", {})
    name = res["name"]
    itype = inputs.get("instanceType")
    if not _known(itype):
        raise PriceError(f"{name}: instanceType is unknown, cannot price it")
    market_opts = inputs.get("instanceMarketOptions") or {}
    market = "spot" if market_opts.get("marketType") == "spot" else "on-demand"
    az = inputs.get("availabilityZone") if _known(inputs.get("availabilityZone")) else default_az
    price = book.instance_hourly(itype, market, az)
    comps = (hourly(f"Instance usage (Linux/UNIX, {market}, {itype})", 1, price),)
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
        label = dev.get("deviceName") or str(i)
        subs.append(
            ResourceCost(
                f"ebs_block_device[{label}]",
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
    return ResourceCost(name, res["type"], comps, tuple(subs), meta)


def price_volume(res: Resource, book: PriceBook) -> ResourceCost:
    i = res.get("inputs", {})
    comps = volume_components(
        book, i.get("size"), i.get("type"), i.get("iops"), i.get("throughput"), res["name"]
    )
    return ResourceCost(res["name"], res["type"], tuple(comps))


def price_nat(res: Resource, book: PriceBook) -> ResourceCost:
    comps = (
        hourly("NAT gateway", 1, book.rate("nat.hour")),
        usage_based("Data processed", "GB", book.rate("nat.data")),
    )
    return ResourceCost(res["name"], res["type"], comps)


def price_eip(res: Resource, book: PriceBook) -> ResourceCost:
    return ResourceCost(res["name"], res["type"], (hourly("Public IPv4 address", 1, book.rate("ipv4.hour")),))


def price_vpc_endpoint(res: Resource, book: PriceBook) -> ResourceCost | None:
    inputs = res.get("inputs", {})
    if (inputs.get("vpcEndpointType") or "Gateway") != "Interface":
        return None  # gateway endpoints (S3, DynamoDB) are free
    subnets = inputs.get("subnetIds") or []
    azs = max(len(subnets), 1)  # one ENI per subnet, one subnet per AZ
    # com.amazonaws.<region>.ecr.api -> ecr.api
    service = str(inputs.get("serviceName", "")).split(".", 3)[-1] or "interface"
    comps = (
        hourly(f"Endpoint ({service}) x {azs} AZ", azs, book.rate("vpce.interface.hour"), unit="hours"),
        usage_based("Data processed", "GB", book.rate("vpce.interface.data")),
    )
    return ResourceCost(res["name"], res["type"], comps, metadata={"azs": str(azs)})


def price_load_balancer(res: Resource, book: PriceBook) -> ResourceCost:
    kind = res.get("inputs", {}).get("loadBalancerType") or "application"
    prefix = "nlb" if kind == "network" else "alb"
    label = "Network" if kind == "network" else "Application"
    comps = (
        hourly(f"{label} load balancer", 1, book.rate(f"{prefix}.hour")),
        usage_based("Load balancer capacity units", "LCU-hours", book.rate(f"{prefix}.lcu")),
    )
    return ResourceCost(res["name"], res["type"], comps)


def price_bucket(res: Resource, book: PriceBook, weights_gib: Decimal | None) -> ResourceCost:
    rate = book.rate("s3.standard.storage")
    if weights_gib is None:
        comp = usage_based("Storage (S3 Standard)", "GB", rate)
    else:
        # S3 bills GB-month in binary GB, so the checkpoint's GiB is the billed quantity
        comp = monthly("Storage (S3 Standard, model checkpoint)", "GB", weights_gib, rate)
    return ResourceCost(res["name"], res["type"], (comp,))


def price_ecr(res: Resource, book: PriceBook) -> ResourceCost:
    value, source, _ = book.assumption("ecr_image_size_gb")
    base = book.rate("ecr.storage")
    price = Price(base.usd, base.unit, base.source, base.date, True, f"size: {source}")
    return ResourceCost(
        res["name"],
        res["type"],
        (monthly("Storage (one image, estimated size)", "GB", Decimal(value), price),),
    )


def price_kms_key(res: Resource, book: PriceBook) -> ResourceCost:
    comps = (
        monthly("Customer managed key", "months", 1, book.rate("kms.key")),
        usage_based("Requests", "10k requests", book.rate("kms.requests")),
    )
    return ResourceCost(res["name"], res["type"], comps)


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
) -> Estimate:
    """Price every resource; the pure core of `llmfleet cost` and the budget policy."""
    res_list = [r for r in resources if _is_cloud_resource(r)]
    buckets = [r for r in res_list if r["type"] in BUCKET_TYPES]
    wgib = None if weights_gib is None else Decimal(str(weights_gib))
    priced: list[ResourceCost] = []
    no_price: list[str] = []
    unsupported: list[str] = []
    for res in res_list:
        rtype = res["type"]
        item: ResourceCost | None
        if rtype == "aws:ec2/instance:Instance":
            item = price_instance(res, book, default_az)
        elif rtype == "aws:ebs/volume:Volume":
            item = price_volume(res, book)
        elif rtype == "aws:ec2/natGateway:NatGateway":
            item = price_nat(res, book)
        elif rtype == "aws:ec2/eip:Eip":
            item = price_eip(res, book)
        elif rtype == "aws:ec2/vpcEndpoint:VpcEndpoint":
            item = price_vpc_endpoint(res, book)
        elif rtype in ("aws:lb/loadBalancer:LoadBalancer", "aws:alb/loadBalancer:LoadBalancer"):
            item = price_load_balancer(res, book)
        elif rtype in BUCKET_TYPES:
            item = price_bucket(res, book, wgib if _is_weights_bucket(res, buckets) else None)
        elif rtype == "aws:ecr/repository:Repository":
            item = price_ecr(res, book)
        elif rtype == "aws:kms/key:Key":
            item = price_kms_key(res, book)
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
    warnings = list(book.warnings)
    if unsupported:
        kinds = ", ".join(sorted(set(unsupported)))
        warnings.append(f"not priced (no estimator for these types): {kinds}")
    return Estimate(
        project=project,
        region=book.region,
        price_source=book.label,
        resources=tuple(priced),
        detected=len(res_list),
        no_price=tuple(no_price),
        unsupported=tuple(unsupported),
        warnings=tuple(warnings),
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
) -> Decimal:
    """Total monthly USD of a resource set: the number the budget policy compares with
    `llmfleet:maxMonthlyUsd`. Uses the bundled snapshot unless a price book is given."""
    if price_book is None:
        from infra.pricing import snapshot_book

        price_book = snapshot_book(region)
    return price_resources(resources, price_book, weights_gib=weights_gib).total_monthly


def usd_per_million_tokens(hourly_usd: Decimal, tokens_per_s: float | None) -> Decimal | None:
    """Hourly cost / (tokens per second x 3600) x 1e6; None when there is no throughput."""
    if not tokens_per_s or tokens_per_s <= 0:
        return None
    return hourly_usd / (Decimal(str(tokens_per_s)) * 3600) * Decimal(1_000_000)


# --- `pulumi preview --json` -------------------------------------------------------------------


def _name_of(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def resources_from_preview(doc: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """(resources, region or None) from the steps of a `pulumi preview --json` document.

    Resources that will exist after the update: every step with a newState except reads
    (data sources) and deletes.
    """
    if not isinstance(doc, Mapping) or not isinstance(doc.get("steps"), list):
        raise PriceError("preview file: expected a `pulumi preview --json` document with a `steps` list")
    out: list[dict[str, Any]] = []
    region: str | None = None
    for step in doc["steps"]:
        state = step.get("newState")
        if not state or step.get("op") in ("read", "delete", "discard", "remove-pending-replace"):
            continue
        rtype = state.get("type", "")
        inputs = state.get("inputs") or {}
        if rtype == "pulumi:providers:aws" and _known(inputs.get("region")):
            region = inputs["region"]
        out.append(
            {
                "type": rtype,
                "name": _name_of(state.get("urn", step.get("urn", ""))),
                "parent": _name_of(state["parent"]) if state.get("parent") else None,
                "urn": state.get("urn", step.get("urn", "")),
                "custom": bool(state.get("custom", True)),
                "inputs": inputs,
                "outputs": state.get("outputs") or {},
            }
        )
    return out, region


def load_preview_file(text: str) -> tuple[list[dict[str, Any]], str | None]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise PriceError(f"preview file: not JSON ({err.msg} at line {err.lineno})") from None
    return resources_from_preview(doc)


# --- Infracost-shaped JSON ---------------------------------------------------------------------


def dec(value: Decimal | None, places: int = 10) -> str | None:
    """A decimal string without exponent or trailing zeros ("30.131", "21995.63")."""
    if value is None:
        return None
    q = value.quantize(Decimal(1).scaleb(-places))
    text = format(q, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _component_json(c: CostComponent) -> dict[str, Any]:
    return {
        "name": c.name,
        "unit": c.unit,
        "hourlyQuantity": dec(c.hourly_quantity),
        "monthlyQuantity": dec(c.monthly_quantity),
        "price": dec(c.price.usd),
        "hourlyCost": None if c.usage_based else dec(c.hourly_cost),
        "monthlyCost": None if c.usage_based else dec(c.monthly_cost),
        "usageBased": c.usage_based,
        "priceSource": c.price.source,
        "priceDate": c.price.date,
        "estimate": c.price.estimate,
        "note": c.price.note,
    }


def _resource_json(r: ResourceCost) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": r.name,
        "resourceType": r.resource_type,
        "metadata": dict(r.metadata),
        "hourlyCost": dec(r.hourly_cost),
        "monthlyCost": dec(r.monthly_cost),
        "costComponents": [_component_json(c) for c in r.components],
    }
    if r.subresources:
        out["subresources"] = [_resource_json(s) for s in r.subresources]
    return out


def _breakdown(est: Estimate) -> dict[str, Any]:
    return {
        "resources": [_resource_json(r) for r in est.resources],
        "totalHourlyCost": dec(est.total_hourly),
        "totalMonthlyCost": dec(est.total_monthly),
    }


def _summary(est: Estimate) -> dict[str, int]:
    return {
        "totalDetectedResources": est.detected,
        "totalSupportedResources": len(est.resources),
        "totalNoPriceResources": len(est.no_price),
        "totalUnsupportedResources": len(est.unsupported),
    }


def to_infracost_json(
    est: Estimate, *, tokens_per_s: float | None = None, past: Estimate | None = None
) -> dict[str, Any]:
    """Infracost's JSON shape (version 0.2), plus cost per million output tokens.

    With `past`, the project carries `pastBreakdown` and `diff`, and the top level the
    past/diff totals, as `infracost diff --format json` does (diff = est - past).
    """
    per_m = usd_per_million_tokens(est.total_hourly, tokens_per_s)
    project: dict[str, Any] = {
        "name": est.project,
        "metadata": {"region": est.region, "priceSource": est.price_source},
        "pastBreakdown": _breakdown(past) if past else None,
        "breakdown": _breakdown(est),
        "diff": diff_json(est, past) if past else None,
        "summary": _summary(est),
    }
    return {
        "version": INFRACOST_JSON_VERSION,
        "currency": "USD",
        "metadata": {"hoursPerMonth": int(HOURS_PER_MONTH), "warnings": list(est.warnings)},
        "projects": [project],
        "totalHourlyCost": dec(est.total_hourly),
        "totalMonthlyCost": dec(est.total_monthly),
        "pastTotalHourlyCost": dec(past.total_hourly) if past else None,
        "pastTotalMonthlyCost": dec(past.total_monthly) if past else None,
        "diffTotalHourlyCost": dec(est.total_hourly - past.total_hourly) if past else None,
        "diffTotalMonthlyCost": dec(est.total_monthly - past.total_monthly) if past else None,
        "decodeTokensPerSecondExpected": tokens_per_s,
        "usdPerMillionOutputTokens": dec(per_m, 4),
        "summary": _summary(est),
    }


# --- diff --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceDiff:
    name: str
    resource_type: str
    past_monthly: Decimal
    monthly: Decimal
    past_hourly: Decimal
    hourly: Decimal

    @property
    def diff_monthly(self) -> Decimal:
        return self.monthly - self.past_monthly

    @property
    def diff_hourly(self) -> Decimal:
        return self.hourly - self.past_hourly


def _match_key(r: ResourceCost, project: str) -> tuple[str, str]:
    """(type, logical name without a leading "<stack>-"), so prod-worker-0 matches dev-worker-0."""
    name = r.name.removeprefix(f"{project}-") if project else r.name
    return r.resource_type, name


def diff_resources(est: Estimate, past: Estimate) -> list[ResourceDiff]:
    """Per-resource difference est - past, matched by type and logical name; order: est, then removed."""
    old = {_match_key(r, past.project): r for r in past.resources}
    rows: list[ResourceDiff] = []
    seen = set()
    for r in est.resources:
        key = _match_key(r, est.project)
        seen.add(key)
        o = old.get(key)
        rows.append(
            ResourceDiff(
                r.name,
                r.resource_type,
                o.monthly_cost if o else Decimal(0),
                r.monthly_cost,
                o.hourly_cost if o else Decimal(0),
                r.hourly_cost,
            )
        )
    for key, o in old.items():
        if key not in seen:
            rows.append(
                ResourceDiff(o.name, o.resource_type, o.monthly_cost, Decimal(0), o.hourly_cost, Decimal(0))
            )
    return rows


def diff_json(est: Estimate, past: Estimate) -> dict[str, Any]:
    rows = diff_resources(est, past)
    return {
        "resources": [
            {
                "name": d.name,
                "resourceType": d.resource_type,
                # as in `infracost diff`: hourlyCost/monthlyCost are the differences
                "hourlyCost": dec(d.diff_hourly),
                "monthlyCost": dec(d.diff_monthly),
                "pastMonthlyCost": dec(d.past_monthly),
                "newMonthlyCost": dec(d.monthly),
            }
            for d in rows
            if d.diff_monthly != 0 or d.diff_hourly != 0
        ],
        "totalHourlyCost": dec(est.total_hourly - past.total_hourly),
        "totalMonthlyCost": dec(est.total_monthly - past.total_monthly),
    }
