"""Stack policies about the fleet as a whole: GPU fit, budget, worker placement, S3 buckets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    StackValidationArgs,
    StackValidationPolicy,
)

from infra.catalog import QUANTIZATIONS, load_catalog
from infra.cost.estimate import estimate_monthly_usd
from infra.cost.model import HOURS_PER_MONTH
from infra.stack.config import OwnedStackConfig
from infra.stack.config_values import GPU_MEMORY_UTILIZATION_RANGE
from infra.stack.planner import PlanInputError, plan

from . import _config
from ._props import UNKNOWN, as_list, get, is_unknown, to_int
from ._stackview import Res, StackView
from .network import instance_subnets

PLACEMENT_GROUP = "aws:ec2/placementGroup:PlacementGroup"
BUCKETS = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
ACCOUNT_PUBLIC_ACCESS_BLOCK = "aws:s3/accountPublicAccessBlock:AccountPublicAccessBlock"
SSE_CONFIGS = (
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
    "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2",
)
PAB_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
SSE_ALGORITHMS = ("AES256", "aws:kms", "aws:kms:dsse")


def gpu_workers(view: StackView) -> list[Res]:
    """Instances (and the instances of Auto Scaling groups) tagged llmfleet:role=worker, or,
    untagged, whose type has GPUs in the catalog."""

    instances = load_catalog().instances
    out = []
    for inst in view.hosts():
        role = inst.tags.get("llmfleet:role")
        itype = inst.props.get("instanceType")
        has_gpu = isinstance(itype, str) and itype in instances and instances[itype].gpu is not None
        if role == "worker" or (role is None and has_gpu):
            out.append(inst)
    return out


# --- GPU fit -------------------------------------------------------------------------------------


def _serving_setting(workers: list[Res], cfg: Mapping[str, Any], tag: str, key: str) -> Any:
    """A serving setting: the workers' tag (set by the program), else policy config, else stack config."""
    values = {w.tags.get(tag) for w in workers} - {None}
    if len(values) == 1:
        return values.pop()
    return _config.value(cfg, key, None, stack_key=key)


def _gpu_fit(args: StackValidationArgs, report: ReportViolation) -> None:

    cat = load_catalog()
    view = StackView.of(args.resources)
    cfg = args.get_config()
    workers = gpu_workers(view)
    if workers:
        types = {w.props.get("instanceType") for w in workers}
        if len(types) != 1 or any(not isinstance(t, str) for t in types):
            report(
                f"GPU workers must share one known instance type; found: {', '.join(sorted(map(str, types)))}",
                None,
            )
            return
        itype = types.pop()
        inst = cat.instances.get(str(itype))
        if inst is None or inst.gpu is None:
            report(f"worker instanceType {itype!r} has no GPU in the catalog", None)
            return
        gpu, gpus_per_node, nodes = inst.gpu, inst.gpu_count, len(workers)
    else:
        # No EC2 workers (provider: existing): the layout comes from config.
        gpu, gpus_per_node, nodes = cfg.get("gpu"), to_int(cfg.get("gpusPerNode")), to_int(cfg.get("workers"))
        if not (gpu and gpus_per_node and nodes):
            args.not_applicable("no GPU workers in the stack and no gpu/gpusPerNode/workers in policy config")
            return  # not reached: not_applicable raises (pulumi_policy types it as returning None)
    model = _serving_setting(workers, cfg, "llmfleet:model", "model") or "deepseek-r1"
    # Each replica spans an equal share of the workers; the fit is per replica.
    replicas = to_int(_serving_setting(workers, cfg, "llmfleet:replicas", "replicas")) or 1
    if nodes % replicas:
        report(f"{nodes} GPU workers do not split into {replicas} equal replicas", None)
        return
    nodes //= replicas
    quant = _serving_setting(workers, cfg, "llmfleet:quantization", "quantization")
    # The workers' tag carries the resolved length; stack config may still say 'auto' (the default).
    raw_len = _serving_setting(workers, cfg, "llmfleet:maxModelLen", "maxModelLen")
    max_len = to_int(raw_len) or "auto"
    extra: dict[str, Any] = {}
    if (
        t := to_int(_config.value(cfg, "targetConcurrency", None, stack_key="targetConcurrency"))
    ) is not None:
        extra["target_concurrency"] = t
    if (c := to_int(_config.value(cfg, "concurrency", None, stack_key="concurrency"))) is not None:
        extra["concurrency"] = c
    if (u := _config.value(cfg, "gpuMemoryUtilization", None, stack_key="gpuMemoryUtilization")) is not None:
        extra["gpu_memory_utilization"] = float(u)
    try:
        result = plan(
            model,
            gpu,
            gpus_per_node=gpus_per_node,
            nodes=nodes,
            quantization=quant or None,
            max_model_len=max_len,
            **extra,
        )
    except (PlanInputError, KeyError) as err:
        report(f"cannot plan {model} on {nodes}x {gpus_per_node}x {gpu}: {err}", None)
        return
    if not result.fits:
        report(result.reason or "; ".join(result.reasons), None)


# --- budget --------------------------------------------------------------------------------------


def _as_cost_resource(r: Res) -> dict[str, Any]:
    return {
        "type": r.type,
        "name": r.name,
        "urn": r.urn,
        "parent": None,
        "inputs": r.props,
        "outputs": r.props,
    }


def monthly_cost_usd(
    view: StackView, region: str, model: str | None, pricing_model: str = "on-demand"
) -> float:
    """The cost issue's estimator (infra.cost.estimate) over the stack's resources, snapshot prices, with
    the stack's pricing model, as `llmfleet cost` prices it without a usage file (a Capacity
    Block's fee then comes from the snapshot rate)."""

    models = load_catalog().models
    weights_gib = models[model].checkpoint_gib if model in models else None
    resources = [_as_cost_resource(r) for r in view.resources]
    total = estimate_monthly_usd(resources, region, weights_gib=weights_gib, pricing_model=pricing_model)
    return float(total) + owned_hosts_monthly_usd()


def stack_pricing_model() -> str:
    """llmfleet:pricingModel of the stack under check (spot when llmfleet:spot), as `llmfleet cost`."""
    cfg = _config.stack_model()
    return cfg.effective_pricing_model if cfg is not None else "on-demand"


def owned_hosts_monthly_usd() -> float:
    """provider=existing: the declared hourly cost of each owned GPU worker host (no cloud
    resource represents it), x 730 h, as `llmfleet cost` prices it."""

    cfg = _config.stack_model()
    if not isinstance(cfg, OwnedStackConfig) or cfg.host_hourly_usd is None:
        return 0.0
    return cfg.host_hourly_usd * len(cfg.worker_hosts) * float(HOURS_PER_MONTH)


def _budget(args: StackValidationArgs, report: ReportViolation) -> None:
    cfg = args.get_config()
    limit = _config.value(cfg, "maxMonthlyUsd", None, stack_key="maxMonthlyUsd")
    if limit is None:
        args.not_applicable("no maxMonthlyUsd set")
        return  # not reached: not_applicable raises
    view = StackView.of(args.resources)
    region = cfg.get("region") or _config.stack_config_raw("aws:region") or "us-east-1"
    model = _serving_setting(gpu_workers(view), cfg, "llmfleet:model", "model")
    pricing = stack_pricing_model()
    try:
        total = monthly_cost_usd(view, region, model, pricing)
    except ValueError as err:  # PriceError: a resource the estimator cannot price
        report(f"cannot estimate the monthly cost: {err}", None)
        return
    if total > float(limit):
        report(
            f"estimated ${total:,.2f}/month exceeds maxMonthlyUsd ${float(limit):,.2f} ({region}, {pricing} snapshot prices)",
            None,
        )


# --- worker placement ----------------------------------------------------------------------------


def capacity_block_of(w: Res) -> str | None:
    """The reservation a worker launches into as a Capacity Block (market type capacity-block)."""
    if get(w.props, "instanceMarketOptions", "marketType") != "capacity-block":
        return None
    rid = get(
        w.props, "capacityReservationSpecification", "capacityReservationTarget", "capacityReservationId"
    )
    return "(unknown)" if rid is None or is_unknown(rid) else str(rid)


def _placement(args: StackValidationArgs, report: ReportViolation) -> None:
    view = StackView.of(args.resources)
    workers = gpu_workers(view)
    if len(workers) < 2:
        return  # one host has no inter-node traffic to keep close
    groups: dict[str, list[str]] = {}
    blocks = {w.name: capacity_block_of(w) for w in workers}
    if all(b is not None for b in blocks.values()):
        # Workers in Capacity Blocks: AWS places a block's instances together (and they take no
        # placement group), so one block for all of them keeps them close.
        for w in workers:
            groups.setdefault(f"Capacity Block {blocks[w.name]}", []).append(w.name)
    else:
        for w in workers:
            pg = view.ref(w, "placementGroup", [PLACEMENT_GROUP])
            if pg is None:  # `placementGroup` holds the group's name, `placementGroupId` its id
                named = [
                    g
                    for g in view.of_type(PLACEMENT_GROUP)
                    if isinstance(w.props.get("placementGroup"), str)
                    and g.props.get("name") == w.props.get("placementGroup")
                ]
                pg = named[0] if named else view.ref(w, "placementGroupId", [PLACEMENT_GROUP])
            if pg is UNKNOWN:
                continue
            if pg is None:
                raw = w.props.get("placementGroup") or w.props.get("placementGroupId")
                if raw is None:
                    report(f"{w.name}: GPU worker is in no placement group", w.urn)
                    continue
                key = str(raw)
            else:
                key = pg.name
                strategy = pg.props.get("strategy")
                if not is_unknown(strategy) and strategy != "cluster":
                    report(
                        f"{w.name}: placement group {pg.name} has strategy {strategy!r}; GPU workers need 'cluster'",
                        w.urn,
                    )
            groups.setdefault(key, []).append(w.name)
    if len(groups) > 1:
        report(
            "GPU workers are spread over placement groups: "
            + "; ".join(f"{g}: {', '.join(n)}" for g, n in sorted(groups.items())),
            None,
        )
    zones: dict[str, list[str]] = {}
    for w in workers:
        azs = {w.props.get("availabilityZone")}
        if azs == {None} or any(is_unknown(a) for a in azs):
            azs = {s.props.get("availabilityZone") for s in instance_subnets(view, w) if isinstance(s, Res)}
        for az in azs:
            if isinstance(az, str) and not is_unknown(az):
                zones.setdefault(az, []).append(w.name)
    if len(zones) > 1:
        report(
            "GPU workers are spread over availability zones: "
            + "; ".join(f"{z}: {', '.join(n)}" for z, n in sorted(zones.items())),
            None,
        )


# --- S3 ------------------------------------------------------------------------------------------


def _targets(view: StackView, res: Res, bucket: Res) -> bool | Any:
    ref = view.ref(res, "bucket", BUCKETS)
    if ref is bucket:
        return True
    name = res.props.get("bucket")
    if isinstance(name, str) and name == bucket.props.get("bucket"):
        return True
    return UNKNOWN if ref is UNKNOWN else False


def _s3(args: StackValidationArgs, report: ReportViolation) -> None:
    view = StackView.of(args.resources)
    account_pab = [
        a for a in view.of_type(ACCOUNT_PUBLIC_ACCESS_BLOCK) if all(a.props.get(f) is True for f in PAB_FLAGS)
    ]
    for bucket in view.of_type(*BUCKETS):
        if not account_pab:
            pabs = [(p, _targets(view, p, bucket)) for p in view.of_type(PUBLIC_ACCESS_BLOCK)]
            mine = [p for p, t in pabs if t is True]
            if not mine and not any(t is UNKNOWN for _, t in pabs):
                report(f"{bucket.name}: no BucketPublicAccessBlock; block all public access", bucket.urn)
            for p in mine:
                off = [f for f in PAB_FLAGS if p.props.get(f) is not True and not is_unknown(p.props.get(f))]
                if off:
                    report(f"{bucket.name}: public access block {p.name} leaves {', '.join(off)} off", p.urn)
        algorithms = []
        inline = get(
            bucket.props,
            "serverSideEncryptionConfiguration",
            "rule",
            "applyServerSideEncryptionByDefault",
            "sseAlgorithm",
        )
        if inline is not None:
            algorithms.append(inline)
        unknown = False
        for sse in view.of_type(*SSE_CONFIGS):
            target = _targets(view, sse, bucket)
            unknown = unknown or target is UNKNOWN
            if target is True:
                for rule in as_list(sse.props.get("rules")):
                    algorithms.append(get(rule, "applyServerSideEncryptionByDefault", "sseAlgorithm"))
        known = [a for a in algorithms if not is_unknown(a)]
        if not algorithms and not unknown:
            report(
                f"{bucket.name}: no server-side encryption configuration; set AES256 or aws:kms", bucket.urn
            )
        for alg in known:
            if alg not in SSE_ALGORITHMS:
                report(
                    f"{bucket.name}: sseAlgorithm {alg!r} is not one of {', '.join(SSE_ALGORITHMS)}",
                    bucket.urn,
                )


FLEET_POLICIES: list[StackValidationPolicy] = [
    StackValidationPolicy(
        name="gpu-fit",
        description="The model fits the GPU workers (the planner's verdict for model, quantization, max length, worker type and count).",
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=PolicyConfigSchema(
            properties={
                "model": {
                    "type": "string",
                    "description": "Fallback when workers carry no llmfleet:model tag.",
                },
                "quantization": {"type": "string", "enum": list(QUANTIZATIONS)},
                "maxModelLen": {
                    "oneOf": [{"type": "integer", "minimum": 256}, {"type": "string", "enum": ["auto"]}]
                },
                "concurrency": {"type": "integer", "minimum": 1},
                "targetConcurrency": {"type": "integer", "minimum": 1},
                "gpuMemoryUtilization": {
                    "type": "number",
                    "minimum": GPU_MEMORY_UTILIZATION_RANGE[0],
                    "maximum": GPU_MEMORY_UTILIZATION_RANGE[1],
                },
                "gpu": {
                    "type": "string",
                    "description": "GPU id when the stack has no EC2 workers (provider: existing).",
                },
                "gpusPerNode": {"type": "integer", "minimum": 1},
                "workers": {"type": "integer", "minimum": 1},
                "replicas": {"type": "integer", "minimum": 1},
            }
        ),
        validate=_gpu_fit,
    ),
    StackValidationPolicy(
        name="monthly-budget",
        description="The estimated monthly cost stays within maxMonthlyUsd.",
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=PolicyConfigSchema(
            properties={
                "maxMonthlyUsd": {
                    "type": ["number", "null"],
                    "exclusiveMinimum": 0,
                    "description": "Default: the stack's llmfleet:maxMonthlyUsd; unset = no limit.",
                },
                "region": {
                    "type": "string",
                    "description": "Region to price in; default: the stack's aws:region.",
                },
                "model": {"type": "string"},
            }
        ),
        validate=_budget,
    ),
    StackValidationPolicy(
        name="worker-placement",
        description="All GPU workers share one cluster placement group and one availability zone.",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_placement,
    ),
    StackValidationPolicy(
        name="s3-bucket-hardened",
        description="S3 buckets block all public access and have server-side encryption.",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_s3,
    ),
]
