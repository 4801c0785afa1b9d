"""Price a captured resource set (Infracost-style). Pure functions; no Pulumi import.

Input: the resource list of the offline engine's Capture (dicts with type, name, parent,
urn, inputs, outputs), or the states of a `pulumi preview --json` file via
`states_from_preview` (new from `newState`, past from `oldState`). Prices come from an
`infra.cost.pricing.PriceBook`, usage from an `infra.cost.usage.Usage` (Infracost's usage file).

Line items (monthly = 730 hours, as Infracost):
- aws:ec2/instance:Instance   (and each instance an aws:autoscaling/group:Group keeps running,
                               read from its launch template: infra/worker_groups.py)
                               instance-hours by type and how they are billed: the instance's own
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
- aws:kms/key:Key                1 USD per key-month, requests from usage;
- aws:elasticache/replicationGroup:ReplicationGroup  per node-hour of its node type (gcsRedis);
- aws:cloudwatch/metricAlarm:MetricAlarm  per alarm-month; aws:ssm/parameter:Parameter per
                               month for Advanced-tier ones (standard ones are free).
A usage-based component with no usage carries a price but no quantity and no cost, as in Infracost.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import TYPE_CHECKING

from infra.cost import usage as usage_mod
from infra.cost.capacity_block import CapacityBlock
from infra.cost.model import Estimate, Resource, ResourceCost, WorkerSchedule, hourly, tags_of
from infra.cost.pricing import Price, PriceBook, snapshot_book
from infra.cost.resources import (
    BUCKET_TYPES,
    capacity_block_target,
    price_bucket,
    price_capacity_block,
    price_ecr,
    price_eip,
    price_elasticache,
    price_instance,
    price_kms_key,
    price_load_balancer,
    price_metric_alarm,
    price_nat,
    price_ssm_parameter,
    price_volume,
    price_vpc_endpoint,
)
from infra.cost.usage import Usage
from infra.stack.serving_hours import HOURS_PER_MONTH, HOURS_PER_WEEK, worker_hours
from infra.worker_groups import with_group_instances

if TYPE_CHECKING:
    from infra.stack.config import StackConfig
    from infra.stack.planner import Plan

PROVIDER_PACKAGES = {"aws", "random", "docker-build", "docker", "command", "tls", "awsx"}


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
    "aws:ec2/launchTemplate:",  # free; the instances a group launches from it are priced
    "aws:ec2/vpcDhcpOptions",
    "aws:ec2/defaultSecurityGroup:",
    "aws:ec2/defaultNetworkAcl:",
    "aws:ec2/defaultRouteTable:",
    "aws:iam/",
    "aws:lb/targetGroup",
    "aws:lb/listener",
    "aws:ssm/association:",  # State Manager associations cost nothing by themselves
    "aws:autoscaling/notification:",
    # llmfleet:schedule's actions and idle stop's policies: free; what they save is in the
    # workers' instance-hours (worker_schedule)
    "aws:autoscaling/schedule:",
    "aws:autoscaling/policy:",  # the groups' SNS notifications (the topic bills its own)
    "aws:elasticache/subnetGroup:",  # the nodes are priced, the subnet group is free
    "aws:kms/alias:",  # https://aws.amazon.com/kms/pricing/ bills keys and requests; an alias is neither
    "aws:ecr/lifecyclePolicy:",
    "aws:ecr/repositoryPolicy:",
    "aws:s3/bucketPublicAccessBlock",
    "aws:s3/bucketServerSideEncryption",
    "aws:s3/bucketVersioning",
    "aws:s3/bucketOwnershipControls",
    "aws:s3/bucketPolicy",
    "aws:s3/bucketLifecycle",
    "aws:cloudwatch/logGroup:",  # usage-based ingestion/storage, not estimated
    # its metric is billed as a custom metric only for the hours it gets data (the head's watcher
    # logs the line only while a Serve app is failed): nothing in a healthy month
    "aws:cloudwatch/logMetricFilter:",
    "aws:amp/workspace:",  # usage-based (samples ingested, stored, queried), not estimated
    "random:",
    "docker-build:",
    "command:",
    "tls:",
    "pulumi:",
)


def _is_weights_bucket(res: Resource, buckets: Sequence[Resource]) -> bool:
    if len(buckets) == 1:
        return True
    tags = tags_of(res)
    return tags.get("llmfleet:role") == "weights" or "weights" in res["name"]


def _is_cloud_resource(res: Resource) -> bool:
    """Custom resources only, not components or providers (by the `custom` flag when the
    capture or preview carries it, else by the type's package)."""
    rtype = res["type"]
    if rtype.startswith("pulumi:"):
        return False
    if "custom" in res:
        return bool(res["custom"])
    return rtype.split(":", 1)[0] in PROVIDER_PACKAGES


def _listing_order(r: ResourceCost) -> tuple:
    parts = re.split(r"(\d+)", r.name)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts), r.resource_type, r.urn


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
    worker_schedule: WorkerSchedule | None = None,
) -> Estimate:
    """Price every resource; the pure core of `llmfleet cost` and the budget policy.

    `worker_schedule`: (hours a month, why) each GPU worker runs under llmfleet:schedule (the
    windows plus one cold start per opening); None = around the clock.

    One dispatch over resource types, kept in one function (a little over 80 lines) so that
    each type's pricing rule sits beside the others."""
    usage = usage or Usage()
    blocks_known = dict(capacity_blocks or {})
    # An Auto Scaling group is free; the instances it keeps running are priced as instances.
    res_list = [r for r in with_group_instances(list(resources)) if _is_cloud_resource(r)]
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
            worker = tags_of(res).get("llmfleet:role") == "worker"
            item = price_instance(
                res,
                book,
                default_az,
                u=u,
                pricing_model=pricing_model,
                block=block,
                scheduled=(worker_schedule.hours_per_month, worker_schedule.note)
                if worker and worker_schedule
                else None,
            )
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
        elif rtype == "aws:cloudwatch/metricAlarm:MetricAlarm":
            item = price_metric_alarm(res, book)
        elif rtype == "aws:ssm/parameter:Parameter":
            item = price_ssm_parameter(res, book)
        elif rtype == "aws:elasticache/replicationGroup:ReplicationGroup":
            item = price_elasticache(res, book)
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
        # By name, as Infracost lists them (numbers as numbers: worker-2 before worker-10): the
        # capture's order follows Pulumi's registration, which is asynchronous and can differ
        # between two runs of the same stack.
        resources=tuple(sorted(priced, key=_listing_order)),
        detected=len(res_list),
        no_price=tuple(no_price),
        unsupported=tuple(unsupported),
        warnings=tuple(warnings),
        pricing_model=pricing_model,
        scheduled_serving_hours=worker_schedule.serving_hours_per_month if worker_schedule else None,
        schedule_note=worker_schedule.note if worker_schedule else "",
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
    worker_schedule: WorkerSchedule | None = None,
) -> Decimal:
    """Total monthly USD of a resource set: the number the budget policy compares with
    `llmfleet:maxMonthlyUsd`. Uses the bundled snapshot unless a price book is given."""
    if price_book is None:
        price_book = snapshot_book(region)
    return price_resources(
        resources,
        price_book,
        weights_gib=weights_gib,
        pricing_model=pricing_model,
        worker_schedule=worker_schedule,
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


def worker_schedule(cfg: StackConfig, plan: Plan) -> WorkerSchedule | None:
    """How llmfleet:schedule bills the stack's GPU workers (the windows plus one cold start per
    opening, infra/stack/serving_hours.py), or None around the clock / for hosts you own."""

    wh = worker_hours(cfg.serving_schedule, plan) if cfg.provider == "aws" else None
    if wh is None:
        return None
    serving = wh.window_hours_per_week * HOURS_PER_MONTH / HOURS_PER_WEEK
    return WorkerSchedule(
        Decimal(str(round(wh.hours_per_month, 4))), Decimal(str(round(serving, 4))), wh.describe()
    )
