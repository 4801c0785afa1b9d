"""Account preflight: can this stack's GPUs, AMI and weights exist, before `pulumi up` creates anything?

`run_checks(inputs, clients)` is the core: plain data in, a list of `Check` out. The boto3
clients come from `make_clients`, which builds ordinary clients, so the standard
`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` variables point them at any
AWS-compatible endpoint; tests inject moto-pointed and Stubber-wrapped clients instead.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from infra.boot.ami import AMI_NAME, AMI_OWNERS, boto3_describe_images_args
from infra.stack.resolve import resolve

Status = Literal["pass", "fail", "warn"]
GIB = 1024**3
WEIGHTS_TOLERANCE = 0.05

# EC2 vCPU quotas in Service Quotas (service code "ec2"). Codes as listed by
# `aws service-quotas list-aws-default-service-quotas --service-code ec2` and the EC2 docs
# ("On-Demand Instance quotas", "Spot Instance quotas"); botocore's model has the API
# shapes only, not the codes, so they cannot be checked offline.
QUOTAS: dict[tuple[str, bool], tuple[str, str]] = {
    ("G and VT", False): ("L-DB2E81BA", "Running On-Demand G and VT instances"),
    ("P", False): ("L-417A185B", "Running On-Demand P instances"),
    ("Standard", False): ("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"),
    ("G and VT", True): ("L-3819A6DF", "All G and VT Spot Instance Requests"),
    ("P", True): ("L-7212CCBC", "All P Spot Instance Requests"),
    ("Standard", True): ("L-34B43A08", "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests"),
}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class PreflightInputs:
    """Everything the checks need, derived from the StackConfig + plan + catalog (see `inputs_for_stack`)."""

    region: str
    availability_zone: str | None
    instance_type: str
    workers: int
    instance_vcpus: int
    quota_family: str
    head_instance_type: str
    head_vcpus: int
    head_quota_family: str
    spot: bool
    expected_gpu: str | None  # catalog GPU id, e.g. "L40S", "A100-40GB"
    expected_gpu_count: int
    expected_gpu_mib: int | None
    weights_uri: str | None
    expected_weights_bytes: int | None
    model: str = ""
    capacity_reservation_id: str | None = None
    capacity_block_id: str | None = None
    ami_describe_args: dict[str, Any] = field(default_factory=boto3_describe_images_args)

    @property
    def vcpus_needed(self) -> int:
        # A GPU-family head (unusual) draws on the same on-demand quota as the workers.
        head = self.head_vcpus if self.head_quota_family == self.quota_family and not self.spot else 0
        return self.instance_vcpus * self.workers + head


@dataclass
class Clients:
    ec2: Any
    s3: Any
    service_quotas: Any


def make_clients(region: str, session: boto3.session.Session | None = None) -> Clients:
    s = session or boto3.session.Session()
    return Clients(
        ec2=s.client("ec2", region_name=region),
        s3=s.client("s3", region_name=region),
        service_quotas=s.client("service-quotas", region_name=region),
    )


def inputs_for_stack(cfg: Any, catalog: Any | None = None) -> PreflightInputs:
    """PreflightInputs from a StackConfig and the catalog (expected sizes come from the model card)."""
    if catalog is None:
        from infra.catalog import load_catalog

        catalog = load_catalog()
    inst = catalog.instances[cfg.gpu_instance_type]
    head = catalog.instances[cfg.head_instance_type]
    gpu = catalog.gpus.get(inst.gpu) if inst.gpu else None
    model = catalog.models[cfg.model]
    return PreflightInputs(
        region=cfg.region,
        availability_zone=cfg.availability_zone,
        instance_type=inst.name,
        workers=int(resolve(cfg).workers),
        instance_vcpus=inst.vcpus,
        quota_family=inst.quota_family,
        head_instance_type=head.name,
        head_vcpus=head.vcpus,
        head_quota_family=head.quota_family,
        spot=bool(cfg.spot),
        expected_gpu=gpu.id if gpu else None,
        expected_gpu_count=inst.gpu_count,
        expected_gpu_mib=gpu.usable_mib if gpu else None,
        weights_uri=cfg.weights_uri,
        expected_weights_bytes=int(model.checkpoint_gib * GIB),
        model=model.id,
        capacity_reservation_id=cfg.capacity_reservation_id,
        capacity_block_id=cfg.capacity_block_id,
    )


# ---------------------------------------------------------------- helpers


def _err(e: Exception) -> str:
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return f"{err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def split_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b/'): the prefix always ends in '/' so 'a/b' never matches 'a/bc'."""
    if not uri.startswith("s3://") or len(uri) <= 5:
        raise ValueError(f"weights_uri: {uri!r} is not an s3://bucket/prefix/ URI")
    bucket, _, prefix = uri[5:].partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def quota_family_of(instance_type: str) -> str | None:
    """The EC2 vCPU quota bucket of any instance type (None for F, X, Inf, Trn, DL, ... which have their own)."""
    fam = instance_type.split(".", 1)[0].lower()
    if fam.startswith(("inf", "trn", "dl", "hpc", "mac", "u-")):
        return None
    if fam.startswith(("g", "vt")):
        return "G and VT"
    if fam.startswith("p"):
        return "P"
    if fam[:1] in set("acdhimrtz"):
        return "Standard"
    return None


def _gpu_matches(aws_name: str, catalog_id: str) -> bool:
    # AWS names the part only ("A100", "H100"); the catalog adds the memory variant ("A100-40GB").
    return aws_name.upper() == catalog_id.upper() or catalog_id.upper().startswith(aws_name.upper() + "-")


# ---------------------------------------------------------------- checks


def check_offered(ec2: Any, instance_type: str, az: str | None, name: str = "instance-type-offered") -> Check:
    try:
        pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
            LocationType="availability-zone",
            Filters=[{"Name": "instance-type", "Values": [instance_type]}],
        )
        zones = sorted({o["Location"] for p in pages for o in p["InstanceTypeOfferings"]})
    except (ClientError, BotoCoreError) as e:
        return Check(name, "fail", f"cannot list offerings of {instance_type}: {_err(e)}")
    if not zones:
        return Check(
            name,
            "fail",
            f"{instance_type} is not offered in any AZ of this region: pick another region or instance type",
        )
    where = ", ".join(zones)
    if az is None:
        return Check(
            name,
            "pass",
            f"{instance_type} is offered in {where}; no AZ set: pin one with -c llmfleet:availabilityZone=<az>",
        )
    if az in zones:
        return Check(name, "pass", f"{instance_type} is offered in {az}")
    return Check(
        name,
        "fail",
        f"{instance_type} is not offered in {az}; it is offered in {where}: set llmfleet:availabilityZone to one of them",
    )


def check_gpu_facts(ec2: Any, inp: PreflightInputs) -> Check:
    name = "gpu-facts"
    try:
        info = ec2.describe_instance_types(InstanceTypes=[inp.instance_type])["InstanceTypes"]
    except (ClientError, BotoCoreError) as e:
        return Check(name, "fail", f"cannot describe {inp.instance_type}: {_err(e)}")
    if not info:
        return Check(name, "fail", f"{inp.instance_type} is unknown to EC2 in {inp.region}")
    gpus = info[0].get("GpuInfo", {}).get("Gpus", [])
    if not gpus:
        return Check(
            name, "fail", f"{inp.instance_type} has no GPUs according to EC2: pick a GPU instance type"
        )
    g = gpus[0]
    aws = (g.get("Name", "?"), int(g.get("Count", 0)), int(g.get("MemoryInfo", {}).get("SizeInMiB", 0)))
    diffs = []
    if inp.expected_gpu and not _gpu_matches(aws[0], inp.expected_gpu):
        diffs.append(f"model {aws[0]} vs catalog {inp.expected_gpu}")
    if aws[1] != inp.expected_gpu_count:
        diffs.append(f"count {aws[1]} vs catalog {inp.expected_gpu_count}")
    if inp.expected_gpu_mib and aws[2] != inp.expected_gpu_mib:
        diffs.append(f"memory {aws[2]} MiB vs catalog {inp.expected_gpu_mib} MiB")
    facts = f"{aws[1]}x {aws[0]} {aws[2]} MiB"
    if diffs:
        return Check(
            name,
            "warn",
            f"{inp.instance_type}: EC2 reports {facts}; differs from the catalog ({'; '.join(diffs)}): "
            "fix infra/catalog/instances.yaml or gpus.yaml",
        )
    return Check(name, "pass", f"{inp.instance_type}: {facts}, as in the catalog")


def _vcpus_in_use(ec2: Any, family: str, spot: bool) -> int:
    """vCPUs of running/pending instances that count against the same quota bucket."""
    counts: dict[str, int] = {}
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )
    for page in pages:
        for res in page["Reservations"]:
            for i in res["Instances"]:
                is_spot = i.get("InstanceLifecycle") == "spot"
                if is_spot == spot and quota_family_of(i["InstanceType"]) == family:
                    counts[i["InstanceType"]] = counts.get(i["InstanceType"], 0) + 1
    if not counts:
        return 0
    types = ec2.describe_instance_types(InstanceTypes=sorted(counts))["InstanceTypes"]
    vcpus = {t["InstanceType"]: t["VCpuInfo"]["DefaultVCpus"] for t in types}
    return sum(vcpus.get(t, 0) * n for t, n in counts.items())


def _quota_value(sq: Any, code: str) -> float:
    try:
        return float(sq.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
    except ClientError as e:
        # Quotas never changed in an account can be absent there; the AWS default then applies.
        if e.response.get("Error", {}).get("Code") != "NoSuchResourceException":
            raise
        return float(sq.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])


def check_quota(
    clients: Clients,
    name: str,
    family: str,
    spot: bool,
    needed: int,
    what: str,
    severity: Status = "fail",
) -> Check:
    if family not in {"G and VT", "P", "Standard"}:
        return Check(
            name, "warn", f"{what}: no known vCPU quota for family {family!r}: check it in the console"
        )
    code, title = QUOTAS[(family, spot)]
    try:
        limit = _quota_value(clients.service_quotas, code)
    except (ClientError, BotoCoreError) as e:
        return Check(
            name, "warn", f"cannot read ec2 quota {code} ({title}): {_err(e)}: check it in the console"
        )
    try:
        used = _vcpus_in_use(clients.ec2, family, spot)
    except (ClientError, BotoCoreError) as e:
        return Check(name, "warn", f"cannot count running instances: {_err(e)}")
    free = int(limit) - used
    head = f'ec2 {code} "{title}" is {int(limit)} vCPUs ({used} in use)'
    if free >= needed:
        return Check(name, "pass", f"{head}; {what} needs {needed}")
    return Check(
        name,
        severity,
        f"{head}; {what} needs {needed}: request an increase "
        f"(aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {code} "
        f"--desired-value {used + needed})",
    )


def check_ami(ec2: Any, inp: PreflightInputs) -> Check:
    name = "ami"
    try:
        images = ec2.describe_images(**inp.ami_describe_args)["Images"]
    except (ClientError, BotoCoreError) as e:
        return Check(name, "fail", f"cannot search AMIs: {_err(e)}")
    if not images:
        return Check(
            name,
            "fail",
            f"no AMI named {AMI_NAME!r} owned by {','.join(AMI_OWNERS)} in {inp.region}: "
            "use a region where the Deep Learning Base AMI is published",
        )
    latest = max(images, key=lambda i: i.get("CreationDate", ""))
    return Check(name, "pass", f"{latest['ImageId']} ({latest.get('Name', '?')}) in {inp.region}")


def _read_json(s3: Any, bucket: str, key: str) -> Any | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            return None
        raise
    return json.loads(body)


def _manifest_problems(manifest: Any, sizes: dict[str, int]) -> list[str]:
    """manifest.json: {"files": [{"path": "x.safetensors", "size": N}, ...]} (or {"files": {"path": N}})."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if isinstance(files, dict):
        files = [{"path": k, "size": v} for k, v in files.items()]
    if not isinstance(files, list):
        return ["manifest.json has no 'files' list"]
    bad = []
    for f in files:
        path, size = f.get("path") or f.get("name"), f.get("size")
        if path not in sizes:
            bad.append(f"{path} missing")
        elif size is not None and int(size) != sizes[path]:
            bad.append(f"{path} is {sizes[path]} bytes, manifest says {size}")
    return bad


def _index_problems(index: Any, sizes: dict[str, int]) -> list[str]:
    """Hugging Face model.safetensors.index.json: every shard in weight_map must be there."""
    shards = set((index or {}).get("weight_map", {}).values())
    return [f"{s} missing" for s in sorted(shards) if s not in sizes]


def check_weights(s3: Any, inp: PreflightInputs) -> Check:
    name = "weights"
    if not inp.weights_uri:
        return Check(
            name,
            "warn",
            "no llmfleet:weightsUri: `pulumi up` creates the weights bucket and the workers stage from "
            "`pulumi stack output weights_uri` at boot; upload the checkpoint there (or set "
            "llmfleet:weightsUri to an existing upload, which preflight then checks)",
        )
    if not inp.weights_uri.startswith("s3://"):
        return Check(name, "warn", f"{inp.weights_uri} is not on S3, so preflight cannot check it")
    try:
        bucket, prefix = split_s3_uri(inp.weights_uri)
    except ValueError as e:
        return Check(name, "fail", str(e))
    uri = f"s3://{bucket}/{prefix}"
    sync = f"aws s3 sync <local checkpoint dir> {uri}"
    sizes: dict[str, int] = {}
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                sizes[o["Key"][len(prefix) :]] = int(o["Size"])
    except (ClientError, BotoCoreError) as e:
        return Check(name, "fail", f"cannot list {uri}: {_err(e)}: create the bucket and upload ({sync})")
    if not sizes:
        return Check(name, "fail", f"{uri} holds no objects: upload the weights ({sync})")
    total = sum(sizes.values())
    problems: list[str] = []
    try:
        if "manifest.json" in sizes:
            problems += _manifest_problems(_read_json(s3, bucket, prefix + "manifest.json"), sizes)
        if "model.safetensors.index.json" in sizes:
            problems += _index_problems(
                _read_json(s3, bucket, prefix + "model.safetensors.index.json"), sizes
            )
    except (ClientError, BotoCoreError, ValueError) as e:
        problems.append(f"cannot read the manifest: {_err(e)}")
    held = f"{uri} holds {total / GIB:.1f} GiB in {len(sizes)} objects"
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        return Check(name, "fail", f"{held}; {'; '.join(problems[:3])}{more}: finish the upload ({sync})")
    if inp.expected_weights_bytes:
        exp = inp.expected_weights_bytes
        if abs(total - exp) > WEIGHTS_TOLERANCE * exp:
            return Check(
                name,
                "fail",
                f"{held}, expected {exp / GIB:.1f} GiB ±5% (model card {inp.model}): "
                + ("finish the upload" if total < exp else "point weightsUri at the checkpoint itself")
                + f" ({sync})",
            )
        return Check(name, "pass", f"{held}, expected {exp / GIB:.1f} GiB ±5% (model card {inp.model})")
    return Check(name, "pass", held)


def check_capacity_reservation(ec2: Any, inp: PreflightInputs) -> Check:
    name = "capacity-reservation"
    rid = inp.capacity_reservation_id
    try:
        found = ec2.describe_capacity_reservations(CapacityReservationIds=[rid])["CapacityReservations"]
    except (ClientError, BotoCoreError) as e:
        return Check(
            name, "fail", f"{rid} not found ({_err(e)}): fix llmfleet:capacityReservationId or remove it"
        )
    if not found:
        return Check(name, "fail", f"{rid} not found: fix llmfleet:capacityReservationId or remove it")
    cr = found[0]
    problems = []
    if cr.get("State") != "active":
        problems.append(f"state is {cr.get('State')}, not active")
    if cr.get("InstanceType") != inp.instance_type:
        problems.append(f"it reserves {cr.get('InstanceType')}, the stack uses {inp.instance_type}")
    if inp.availability_zone and cr.get("AvailabilityZone") != inp.availability_zone:
        problems.append(f"it is in {cr.get('AvailabilityZone')}, the stack uses {inp.availability_zone}")
    free = int(cr.get("AvailableInstanceCount", 0))
    if free < inp.workers:
        problems.append(f"{free} instances free, the stack needs {inp.workers}")
    if problems:
        return Check(name, "fail", f"{rid}: {'; '.join(problems)}: use a matching reservation or remove it")
    return Check(name, "pass", f"{rid}: {free} x {cr['InstanceType']} free in {cr.get('AvailabilityZone')}")


def _offering_hint(ec2: Any, inp: PreflightInputs, hours: int) -> str:
    """One offering that would fit the plan, from describe_capacity_block_offerings, or how to look."""
    look = (
        f"aws ec2 describe-capacity-block-offerings --instance-type {inp.instance_type} "
        f"--instance-count {inp.workers} --capacity-duration-hours {hours}"
    )
    from infra.cost import capacity_block as cb

    try:
        found = cb.offerings(ec2, inp.instance_type, inp.workers, hours)
    except (ClientError, BotoCoreError):
        return f"find one with `{look}`"
    if inp.availability_zone:
        found = [o for o in found if o.get("AvailabilityZone") == inp.availability_zone] or found
    if not found:
        return f"EC2 offers none now for {inp.workers} x {inp.instance_type} for {hours} h (`{look}`)"
    o = min(found, key=lambda o: float(o.get("UpfrontFee") or "inf"))
    start = o.get("StartDate")
    when = f" from {start:%Y-%m-%d %H:%M} UTC" if hasattr(start, "strftime") else ""
    return (
        f"e.g. offering {o.get('CapacityBlockOfferingId')}: {o.get('InstanceCount')} x {o.get('InstanceType')} "
        f"in {o.get('AvailabilityZone')}{when} for {o.get('CapacityBlockDurationHours')} h, "
        f"{o.get('UpfrontFee')} {o.get('CurrencyCode', 'USD')}"
    )


def check_capacity_block(ec2: Any, inp: PreflightInputs, now: dt.datetime | None = None) -> Check:
    """The Capacity Block against the plan: type, AZ, instance count, and its time window."""
    from infra.cost import capacity_block as cb

    name = "capacity-block"
    rid = inp.capacity_block_id
    now = now or dt.datetime.now(dt.UTC)
    try:
        facts = cb.describe_block(ec2, rid)
    except cb.BlockError as e:
        return Check(name, "fail", f"{e}: fix llmfleet:capacityBlockId or remove it")
    problems = cb.problems(facts, inp.instance_type, inp.availability_zone, inp.workers)
    status, when = cb.timing(facts, now)
    if status == "fail":
        problems.append(when)
    b = facts.block
    if problems:
        hours = int(b.duration_hours or 24)
        return Check(
            name,
            "fail",
            f"{rid}: {'; '.join(problems)}: buy a block that matches the plan "
            f"({inp.workers} x {inp.instance_type} in {inp.availability_zone or b.availability_zone}); "
            + _offering_hint(ec2, inp, hours),
        )
    window = ""
    if b.start and b.end:
        window = f", {b.start:%Y-%m-%d %H:%M} to {b.end:%Y-%m-%d %H:%M} UTC"
    return Check(
        name,
        status,
        f"{rid}: {facts.total} x {b.instance_type} in {b.availability_zone}{window}; {when}",
    )


def run_checks(inp: PreflightInputs, clients: Clients, now: dt.datetime | None = None) -> list[Check]:
    steps: list[Callable[[], Check]] = [
        lambda: check_offered(clients.ec2, inp.instance_type, inp.availability_zone),
        lambda: check_offered(
            clients.ec2, inp.head_instance_type, inp.availability_zone, "head-type-offered"
        ),
        lambda: check_gpu_facts(clients.ec2, inp),
        lambda: check_quota(
            clients,
            "gpu-quota",
            inp.quota_family,
            inp.spot,
            inp.vcpus_needed,
            f"{inp.workers} x {inp.instance_type}" + (" (spot)" if inp.spot else ""),
        ),
        # The head is a CPU instance (Standard quota); a miss there rarely blocks, so it only warns.
        lambda: check_quota(
            clients,
            "head-quota",
            inp.head_quota_family,
            False,
            inp.head_vcpus,
            f"head {inp.head_instance_type}",
            severity="warn",
        ),
        lambda: check_ami(clients.ec2, inp),
        lambda: check_weights(clients.s3, inp),
    ]
    if inp.capacity_reservation_id:
        steps.append(lambda: check_capacity_reservation(clients.ec2, inp))
    if inp.capacity_block_id:
        steps.append(lambda: check_capacity_block(clients.ec2, inp, now))
    return [step() for step in steps]


def exit_code(checks: Iterable[Check]) -> int:
    """0 when nothing failed (warnings never fail), else 1."""
    return 1 if any(c.status == "fail" for c in checks) else 0


def to_json(checks: Iterable[Check]) -> dict[str, list[dict[str, str]]]:
    return {"checks": [c.to_dict() for c in checks]}
