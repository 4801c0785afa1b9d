"""Can the account run the GPU instances: offered in the AZ, the GPU the catalog says, vCPU
quota (on-demand or spot) for the whole fleet, the AMI."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from infra.account_check.model import (
    QUOTAS,
    Check,
    Clients,
    PreflightInputs,
    Status,
    _err,
    _gpu_matches,
    quota_family_of,
)
from infra.boot.ami import AMI_NAME, AMI_OWNERS


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
