"""What the account preflight reads and says: its inputs (from a resolved stack), the boto3
clients (ordinary ones: AWS_ENDPOINT_URL* points them anywhere), and one Check per question."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError

from infra.boot.ami import boto3_describe_images_args
from infra.catalog import load_catalog
from infra.constants import GIB, WEIGHTS_TOLERANCE  # noqa: F401 - the checks import them from here
from infra.stack.resolve import resolve

if TYPE_CHECKING:
    import boto3

    from infra.catalog import Catalog
    from infra.stack.config import AwsStackConfig

Status = Literal["pass", "fail", "warn"]


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


def make_clients(region: str, session: boto3.Session | None = None) -> Clients:
    import boto3  # start-up: ~0.7 s; the commands that import this model build clients only when run

    s = session or boto3.Session()
    return Clients(
        ec2=s.client("ec2", region_name=region),
        s3=s.client("s3", region_name=region),
        service_quotas=s.client("service-quotas", region_name=region),
    )


def inputs_for_stack(cfg: AwsStackConfig, catalog: Catalog | None = None) -> PreflightInputs:
    """PreflightInputs from a StackConfig and the catalog (expected sizes come from the model card)."""
    if catalog is None:
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
