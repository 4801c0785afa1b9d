"""The typed stack config: one pydantic model over the flat Pulumi config map.

`load_stack_config(raw, stack)` takes what Pulumi holds ("aws:region" -> "us-east-1",
"llmfleet:workerCount" -> "auto", structured values as JSON text) and returns a
validated `StackConfig`, or raises `ConfigError` whose message is one line that names
the key, the bad value and what is allowed.

Pulumi.yaml's `config:` block declares the same keys (a test keeps them in step).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from infra.catalog import load_catalog
from infra.stack import suggest
from infra.stack.regions import is_known_region
from infra.validation import first_error

NS = "llmfleet"
SECRET_PLACEHOLDER = "[secret]"
PROVIDERS = ("aws", "existing")
QUANTIZATIONS = ("fp8", "bf16", "int8", "int4")
# The retentions CloudWatch Logs accepts (PutRetentionPolicy); unset would mean never expire.
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
)  # fmt: skip
AZ_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
ACM_ARN_RE = re.compile(r"^arn:aws[a-z-]*:acm:([a-z0-9-]+):\d{12}:certificate/[0-9a-f-]{36}$")
DNS_NAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
HOSTED_ZONE_RE = re.compile(r"^Z[A-Z0-9]{1,32}$")
S3_URI_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")


class ConfigError(ValueError):
    """A bad stack config; str() is one line."""


HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def _is_ipv4(v: str) -> bool:
    try:
        return ipaddress.ip_address(v).version == 4
    except ValueError:
        return False


def _fmt(v: Any) -> str:
    if v is None:
        return "(unset)"
    return json.dumps(v) if not isinstance(v, str) else repr(v)


class HostSpec(BaseModel):
    """One existing host (llmfleet:provider = existing)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    address: str = Field(min_length=1)
    ssh_user: str = Field(default="ubuntu", alias="sshUser", min_length=1)
    role: Literal["head", "worker"]
    gpu_model: str | None = Field(default="L20", alias="gpuModel")
    gpu_count: int = Field(default=8, alias="gpuCount", ge=0)
    private_ip: str | None = Field(default=None, alias="privateIp")
    # The host's SSH public key ("ssh-ed25519 AAAA..."); unset = not verified (pulumi-command).
    host_key: str | None = Field(default=None, alias="hostKey")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not HOST_RE.match(v):
            raise ValueError("allowed: an IPv4 address or a DNS name")
        return v

    @field_validator("ssh_user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not USER_RE.match(v):
            raise ValueError("allowed: a Unix user name such as ubuntu")
        return v

    @field_validator("private_ip")
    @classmethod
    def _private_ip(cls, v: str | None) -> str | None:
        if v is not None and not _is_ipv4(v):
            raise ValueError("allowed: an IPv4 address")
        return v

    @property
    def ray_ip(self) -> str | None:
        """The IP Ray binds on this host: privateIp, else the address when it is an IPv4."""
        return self.private_ip or (self.address if _is_ipv4(self.address) else None)


# Every key: attribute name -> Pulumi key. Structured ones are JSON in the raw map.
class StackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    stack: str = "dev"
    region: str = Field(default="us-east-1", alias="aws:region")
    provider: Literal["aws", "existing"] = Field(default="aws", alias="llmfleet:provider")
    availability_zone: str | None = Field(default=None, alias="llmfleet:availabilityZone")
    model: str = Field(default="deepseek-r1", alias="llmfleet:model")
    quantization: Literal["fp8", "bf16", "int8", "int4"] | None = Field(
        default=None, alias="llmfleet:quantization"
    )
    max_model_len: Annotated[int, Field(ge=256, le=1_048_576)] = Field(
        default=8192, alias="llmfleet:maxModelLen"
    )
    concurrency: Annotated[int, Field(ge=1, le=4096)] = Field(default=64, alias="llmfleet:concurrency")
    gpu_memory_utilization: Annotated[float, Field(ge=0.5, le=0.98)] = Field(
        default=0.90, alias="llmfleet:gpuMemoryUtilization"
    )
    gpu_instance_type: str = Field(default="g6e.48xlarge", alias="llmfleet:gpuInstanceType")
    worker_count: int | Literal["auto"] = Field(default="auto", alias="llmfleet:workerCount")
    # Engine replicas; each spans the plan's nodes (PP), so workerCount = replicas x nodes.
    replicas: Annotated[int, Field(ge=1, le=64)] = Field(default=1, alias="llmfleet:replicas")
    head_instance_type: str = Field(default="m7i.2xlarge", alias="llmfleet:headInstanceType")
    weights_uri: str | None = Field(default=None, alias="llmfleet:weightsUri")
    weights_path: str = Field(default="/opt/llmfleet/models", alias="llmfleet:weightsPath")
    endpoint_public: bool = Field(default=False, alias="llmfleet:endpointPublic")
    endpoint_allowed_cidrs: list[str] = Field(default_factory=list, alias="llmfleet:endpointAllowedCidrs")
    endpoint_port: Annotated[int, Field(ge=1, le=65535)] = Field(default=8000, alias="llmfleet:endpointPort")
    spot: bool = Field(default=False, alias="llmfleet:spot")
    max_monthly_usd: Annotated[float, Field(gt=0)] | None = Field(
        default=None, alias="llmfleet:maxMonthlyUsd"
    )
    tags: dict[str, str] = Field(default_factory=dict, alias="llmfleet:tags")
    vpc_cidr: str = Field(default="10.42.0.0/16", alias="llmfleet:vpcCidr")
    nat_gateway: bool = Field(default=False, alias="llmfleet:natGateway")
    ecr_keep_images: Annotated[int, Field(ge=1, le=1000)] = Field(default=10, alias="llmfleet:ecrKeepImages")
    # CloudWatch Logs accepts only these values (policy/logs.py checks the same list).
    log_retention_days: int = Field(default=30, alias="llmfleet:logRetentionDays")

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, v: int) -> int:
        if v not in LOG_RETENTION_DAYS:
            raise ValueError(f"allowed: {', '.join(map(str, LOG_RETENTION_DAYS))} (CloudWatch's values)")
        return v
    capacity_reservation_id: str | None = Field(default=None, alias="llmfleet:capacityReservationId")
    root_volume_gb: Annotated[int, Field(ge=64, le=16384)] | None = Field(
        default=None, alias="llmfleet:rootVolumeGb"
    )
    base_image: str = Field(default="vllm/vllm-openai:v0.29.0", alias="llmfleet:baseImage")
    hosts: list[HostSpec] = Field(default_factory=list, alias="llmfleet:hosts")
    ssh_private_key: str | None = Field(default=None, alias="llmfleet:sshPrivateKey")
    host_hourly_usd: Annotated[float, Field(ge=0)] | None = Field(
        default=None, alias="llmfleet:hostHourlyUsd"
    )
    image_registry: str | None = Field(default=None, alias="llmfleet:imageRegistry")
    # Workers launch into this EC2 Capacity Block (its capacity reservation id, cr-...).
    capacity_block_id: str | None = Field(default=None, alias="llmfleet:capacityBlockId")
    # TLS on the NLB listener (an ACM certificate in aws:region); unset = plain TCP.
    endpoint_certificate_arn: str | None = Field(default=None, alias="llmfleet:endpointCertificateArn")
    # A Route 53 alias record NAME -> the NLB, in the hosted zone; the endpoint URL then uses NAME.
    endpoint_dns_name: str | None = Field(default=None, alias="llmfleet:endpointDnsName")
    endpoint_hosted_zone_id: str | None = Field(default=None, alias="llmfleet:endpointHostedZoneId")
    # How instance-hours are priced; None = spot when llmfleet:spot, else on-demand.
    pricing_model: Literal["on-demand", "spot", "savings-plan-1y", "savings-plan-3y"] | None = Field(
        default=None, alias="llmfleet:pricingModel"
    )

    # ---- single-field rules -------------------------------------------------
    @field_validator(
        "availability_zone",
        "quantization",
        "weights_uri",
        "capacity_reservation_id",
        "ssh_private_key",
        "host_hourly_usd",
        "image_registry",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        # Pulumi.yaml declares optional keys with default "" (a declared key without a
        # default would be required), so "" means unset.
        return None if v == "" else v

    @field_validator("max_monthly_usd", "root_volume_gb", mode="before")
    @classmethod
    def _zero_is_unset(cls, v: Any) -> Any:
        return None if str(v).strip() in ("", "0") else v

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not REGION_RE.match(v):
            raise ValueError("allowed: an AWS region name such as us-east-1")
        if not is_known_region(v):
            raise ValueError(
                "not a region in botocore's region data; allowed: an AWS region such as us-east-1, "
                "us-west-2 or eu-west-1 (aws ec2 describe-regions lists your account's)"
            )
        return v

    @field_validator("availability_zone")
    @classmethod
    def _az(cls, v: str | None) -> str | None:
        if v is not None and not AZ_RE.match(v):
            raise ValueError("allowed: an availability zone name such as us-east-1a, or unset for auto")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        models = load_catalog().models
        if (known := suggest.canonical(v, models)) is None:
            raise ValueError(f"{suggest.did_you_mean(v, models)}allowed: {', '.join(models)}")
        return known

    @field_validator("gpu_instance_type")
    @classmethod
    def _gpu_type(cls, v: str) -> str:
        gpu_types = [i.name for i in load_catalog().instances.values() if i.gpu]
        if v not in gpu_types:
            raise ValueError(f"allowed: {', '.join(gpu_types)}")
        return v

    @field_validator("head_instance_type")
    @classmethod
    def _head_type(cls, v: str) -> str:
        if v not in load_catalog().instances:
            raise ValueError(f"allowed: {', '.join(load_catalog().instances)}")
        return v

    @field_validator("worker_count", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        try:
            n = int(str(v).strip())
        except ValueError:
            raise ValueError("allowed: 'auto' or an integer from 1 to 64") from None
        if not 1 <= n <= 64:
            raise ValueError("allowed: 'auto' or an integer from 1 to 64")
        return n

    @field_validator("weights_uri")
    @classmethod
    def _weights_uri(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v.startswith("s3://"):
            if not S3_URI_RE.match(v):
                raise ValueError("allowed: s3://BUCKET/PREFIX/ with a valid bucket name")
            return v if v.endswith("/") else v + "/"
        if re.match(r"^(https?://|file:///|/)", v):
            return v
        raise ValueError("allowed: s3://BUCKET/PREFIX/, an http(s):// URL or an absolute path (NFS)")

    @field_validator("weights_path")
    @classmethod
    def _weights_path(cls, v: str) -> str:
        if not v.startswith("/") or " " in v:
            raise ValueError("allowed: an absolute path without spaces")
        return v.rstrip("/")

    @field_validator("endpoint_allowed_cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for c in v:
            try:
                ipaddress.ip_network(c, strict=True)
            except ValueError:
                raise ValueError(
                    f"entry {c!r} is not a CIDR; allowed: CIDRs such as 203.0.113.0/24"
                ) from None
        return v

    @field_validator("vpc_cidr")
    @classmethod
    def _vpc(cls, v: str) -> str:
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError:
            raise ValueError("allowed: an IPv4 CIDR from /16 to /20, such as 10.42.0.0/16") from None
        if net.version != 4 or not 16 <= net.prefixlen <= 20 or not net.is_private:
            raise ValueError("allowed: a private IPv4 CIDR from /16 to /20, such as 10.42.0.0/16")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if k.startswith("aws:") or k.startswith("llmfleet:"):
                raise ValueError(
                    f"tag key {k!r} is reserved; allowed: keys not starting with aws: or llmfleet:"
                )
        return v

    @field_validator("capacity_reservation_id")
    @classmethod
    def _cr(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^cr-[0-9a-f]{8,17}$", v):
            raise ValueError("allowed: a capacity reservation id such as cr-0123456789abcdef0")
        return v

    @field_validator(
        "endpoint_certificate_arn", "endpoint_dns_name", "endpoint_hosted_zone_id", mode="before"
    )
    @classmethod
    def _endpoint_unset(cls, v: Any) -> Any:
        return None if v == "" else v  # declared with default "" in Pulumi.yaml

    @field_validator("endpoint_certificate_arn")
    @classmethod
    def _cert(cls, v: str | None) -> str | None:
        if v is not None and not ACM_ARN_RE.match(v):
            raise ValueError(
                "allowed: an ACM certificate ARN such as arn:aws:acm:us-east-1:123456789012:certificate/<uuid>"
            )
        return v

    @field_validator("endpoint_dns_name")
    @classmethod
    def _dns_name(cls, v: str | None) -> str | None:
        if v is not None and not DNS_NAME_RE.match(v.rstrip(".")):
            raise ValueError("allowed: a lower-case DNS name such as llm.example.com")
        return v.rstrip(".") if v else v

    @field_validator("endpoint_hosted_zone_id")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v is not None and not HOSTED_ZONE_RE.match(v):
            raise ValueError("allowed: a Route 53 hosted zone id such as Z0123456789ABCDEFGHIJ")
        return v

    @model_validator(mode="after")
    def _endpoint_tls_dns(self) -> StackConfig:
        arn = self.endpoint_certificate_arn
        if arn is not None:
            m = ACM_ARN_RE.match(arn)
            if m and m.group(1) != self.region:
                raise _Cross(
                    "llmfleet:endpointCertificateArn",
                    arn,
                    f"the NLB takes a certificate from its own region; allowed: an ACM certificate in {self.region}",
                )
        if (self.endpoint_dns_name is None) != (self.endpoint_hosted_zone_id is None):
            key = "llmfleet:endpointHostedZoneId" if self.endpoint_dns_name else "llmfleet:endpointDnsName"
            raise _Cross(
                key,
                None,
                "the alias record needs both; allowed: set llmfleet:endpointDnsName and llmfleet:endpointHostedZoneId together",
            )
        return self

    @field_validator("capacity_block_id", "pricing_model", mode="before")
    @classmethod
    def _commitment_unset(cls, v: Any) -> Any:
        return None if v == "" else v  # declared with default "" in Pulumi.yaml

    @field_validator("capacity_block_id")
    @classmethod
    def _capacity_block(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^cr-[0-9a-f]{8,17}$", v):
            raise ValueError(
                "allowed: the Capacity Block's capacity reservation id such as cr-0123456789abcdef0 "
                "(aws ec2 describe-capacity-reservations --filters Name=reservation-type,Values=capacity-block)"
            )
        return v

    @model_validator(mode="after")
    def _commitments(self) -> StackConfig:
        """Capacity Block and pricing-model rules (spot, blocks and Savings Plans exclude each other
        where AWS does not combine them)."""
        block, model = self.capacity_block_id, self.pricing_model
        if block is not None:
            if self.provider != "aws":
                raise _Cross(
                    "llmfleet:capacityBlockId",
                    block,
                    "a Capacity Block holds EC2 workers; allowed with provider aws",
                )
            if self.spot:
                raise _Cross(
                    "llmfleet:capacityBlockId",
                    block,
                    "workers in a Capacity Block are not spot; set llmfleet:spot=false",
                )
            if self.capacity_reservation_id is not None:
                raise _Cross(
                    "llmfleet:capacityBlockId",
                    block,
                    "workers target one reservation; allowed: capacityBlockId or capacityReservationId, not both",
                )
            if not self.availability_zone:
                raise _Cross(
                    "llmfleet:availabilityZone",
                    None,
                    "workers must launch in the Capacity Block's AZ; allowed: that AZ "
                    "(aws ec2 describe-capacity-reservations --capacity-reservation-ids " + block + ")",
                )
            if model == "spot":
                raise _Cross(
                    "llmfleet:pricingModel",
                    model,
                    "workers in a Capacity Block pay its fee; allowed: on-demand, savings-plan-1y, savings-plan-3y (for the head)",
                )
        if model == "spot" and not self.spot:
            raise _Cross(
                "llmfleet:pricingModel",
                model,
                "spot prices spot workers; set llmfleet:spot=true, or allowed: on-demand, savings-plan-1y, savings-plan-3y",
            )
        if model in ("savings-plan-1y", "savings-plan-3y", "on-demand") and self.spot:
            raise _Cross(
                "llmfleet:pricingModel",
                model,
                "llmfleet:spot=true runs the workers on spot; allowed: spot, or set llmfleet:spot=false",
            )
        return self

    @property
    def effective_pricing_model(self) -> str:
        return self.pricing_model or ("spot" if self.spot else "on-demand")

    # ---- cross-field rules --------------------------------------------------
    @model_validator(mode="after")
    def _cross(self) -> StackConfig:
        if self.provider == "existing":
            self._check_hosts()
        elif self.hosts:
            raise _Cross("llmfleet:hosts", "[...]", "hosts are only used with llmfleet:provider=existing")
        if self.endpoint_public and not self.endpoint_allowed_cidrs:
            raise _Cross(
                "llmfleet:endpointAllowedCidrs",
                [],
                "a public endpoint (llmfleet:endpointPublic=true) needs at least one allowed CIDR",
            )
        if not self.endpoint_public:
            for c in self.endpoint_allowed_cidrs:
                if ipaddress.ip_network(c).prefixlen == 0:
                    raise _Cross(
                        "llmfleet:endpointAllowedCidrs",
                        self.endpoint_allowed_cidrs,
                        "an internal endpoint cannot admit 0.0.0.0/0 or ::/0",
                    )
        if self.availability_zone and not self.availability_zone.startswith(self.region):
            raise _Cross(
                "llmfleet:availabilityZone",
                self.availability_zone,
                f"allowed: a zone of aws:region {self.region} such as {self.region}a",
            )
        gpu = load_catalog().gpus[self.gpu_model] if self.gpu_model else None
        if self.quantization == "fp8" and gpu is not None and not gpu.native_fp8:
            raise _Cross(
                "llmfleet:quantization",
                "fp8",
                f"{self.gpu_model} has no native FP8; allowed here: bf16, int8, int4",
            )
        cat = load_catalog()
        if self.provider == "aws" and cat.instances[self.head_instance_type].gpu:
            raise _Cross(
                "llmfleet:headInstanceType",
                self.head_instance_type,
                "the head advertises 0 GPUs, so a GPU type is wasted; allowed: "
                + ", ".join(i.name for i in cat.instances.values() if not i.gpu),
            )
        if self.provider == "aws" and self.worker_count != "auto" and self.worker_count % self.replicas:
            raise _Cross(
                "llmfleet:workerCount",
                self.worker_count,
                f"allowed: 'auto' or a multiple of llmfleet:replicas ({self.replicas}); "
                "every replica takes the same number of hosts",
            )
        if self.max_model_len > cat.models[self.model].max_position_embeddings:
            raise _Cross(
                "llmfleet:maxModelLen",
                self.max_model_len,
                f"allowed: up to {cat.models[self.model].max_position_embeddings} for {self.model}",
            )
        return self

    def _check_hosts(self) -> None:
        key = "llmfleet:hosts"
        if not self.hosts:
            raise _Cross(key, [], "provider 'existing' needs a list of hosts, one with role head")
        heads = [i for i, h in enumerate(self.hosts) if h.role == "head"]
        if not heads:
            raise _Cross(key, "[...]", "no entry has role 'head'; allowed: exactly one head")
        if len(heads) > 1:
            raise _Cross(
                f"{key}[{heads[1]}]",
                self.hosts[heads[1]].address,
                f"second head (entry {heads[0]} is the head); allowed: exactly one head",
            )
        seen: dict[str, int] = {}
        seen_ip: dict[str, int] = {}
        gpus = load_catalog().gpus
        for i, h in enumerate(self.hosts):
            if h.address in seen:
                raise _Cross(
                    f"{key}[{i}].address",
                    h.address,
                    f"duplicates entry {seen[h.address]}; allowed: one entry per host",
                )
            seen[h.address] = i
            if h.role == "worker" and h.gpu_count < 1:
                raise _Cross(
                    f"{key}[{i}].gpuCount",
                    h.gpu_count,
                    f"worker {h.address} has no GPUs; allowed: an integer >= 1",
                )
            # The head's GPUs go unused (it advertises 0) but a declared model must still exist.
            if h.gpu_count > 0 and h.gpu_model not in gpus:
                raise _Cross(f"{key}[{i}].gpuModel", h.gpu_model, f"allowed: {', '.join(gpus)}")
        for i, h in enumerate(self.hosts):
            if h.ray_ip is None:
                raise _Cross(
                    f"{key}[{i}].privateIp",
                    None,
                    f"address {h.address} is a name and Ray binds an IP; allowed: the host's IPv4 privateIp",
                )
            if h.ray_ip in seen_ip:
                raise _Cross(
                    f"{key}[{i}].privateIp",
                    h.ray_ip,
                    f"same IP as entry {seen_ip[h.ray_ip]}; allowed: one IP per host",
                )
            seen_ip[h.ray_ip] = i
        workers = self.worker_hosts
        if not workers:
            raise _Cross(key, "[...]", "no entry has role 'worker'; allowed: at least one GPU worker")
        if len({(w.gpu_model, w.gpu_count) for w in workers}) > 1:
            raise _Cross(
                key,
                "[...]",
                "workers differ in gpuModel/gpuCount; allowed: identical workers "
                "(tensor parallel = GPUs per host, pipeline parallel = hosts)",
            )
        if self.worker_count != "auto" and self.worker_count != len(workers):
            raise _Cross(
                "llmfleet:workerCount",
                self.worker_count,
                f"allowed: 'auto' or {len(workers)} (the number of worker hosts)",
            )
        if len(workers) % self.replicas:
            raise _Cross(
                "llmfleet:replicas",
                self.replicas,
                f"allowed: a divisor of the {len(workers)} worker hosts (each replica takes the same hosts)",
            )
        if not self.ssh_private_key:
            raise _Cross(
                "llmfleet:sshPrivateKey",
                None,
                "provider 'existing' needs an SSH key: pulumi config set --secret sshPrivateKey < key",
            )

    # ---- derived facts ------------------------------------------------------
    @property
    def worker_hosts(self) -> list[HostSpec]:
        return [h for h in self.hosts if h.role == "worker"]

    @property
    def head_host(self) -> HostSpec | None:
        return next((h for h in self.hosts if h.role == "head"), None)

    @property
    def gpu_model(self) -> str:
        if self.provider == "existing" and self.worker_hosts:
            return self.worker_hosts[0].gpu_model
        return load_catalog().instances[self.gpu_instance_type].gpu

    @property
    def gpus_per_worker(self) -> int:
        if self.provider == "existing" and self.worker_hosts:
            return self.worker_hosts[0].gpu_count
        return load_catalog().instances[self.gpu_instance_type].gpu_count

    @property
    def effective_quantization(self) -> str:
        return self.quantization or load_catalog().models[self.model].native_dtype

    @property
    def model_path(self) -> str:
        """Where the weights sit on every host (the same path on each)."""
        return f"{self.weights_path}/{self.model}"

    @property
    def common_tags(self) -> dict[str, str]:
        return {**self.tags, "Project": "llmfleet", "llmfleet:stack": self.stack}

    def nodes_per_replica(self) -> int | None:
        """Hosts one engine replica spans (its PP), or None for the planner's choice ('auto')."""
        if self.provider == "existing":
            return len(self.worker_hosts) // self.replicas
        return None if self.worker_count == "auto" else self.worker_count // self.replicas

    def resolved_workers(self, plan: Any) -> int:
        """The worker count: replicas x the configured or the planner's nodes per replica
        (`plan`: this stack's plan; `infra.stack.resolve` computes both once)."""
        if self.provider == "existing":
            return len(self.worker_hosts)
        if self.worker_count != "auto":
            return self.worker_count
        return self.replicas * plan.nodes


class _Cross(ValueError):
    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"{key} = {_fmt(value)}: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


STRUCTURED = {"llmfleet:endpointAllowedCidrs", "llmfleet:tags", "llmfleet:hosts"}
SECRET_KEYS = {"llmfleet:sshPrivateKey"}


def declared_keys() -> dict[str, Any]:
    """Pulumi key -> pydantic field, for every key the model accepts."""
    return {f.alias: f for f in StackConfig.model_fields.values() if f.alias}


def _parse_raw(key: str, value: Any) -> Any:
    if key in STRUCTURED and isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(
                f"{key} = {value!r}: not valid JSON; allowed: a YAML/JSON "
                f"{'mapping' if key == 'llmfleet:tags' else 'list'}"
            ) from None
    return value


def load_stack_config(raw: Mapping[str, Any], stack: str = "dev") -> StackConfig:
    """Validate the flat Pulumi config map of one stack. Keys of other namespaces
    (other than aws:region) are ignored; unknown llmfleet: keys are errors."""
    known = declared_keys()
    data: dict[str, Any] = {"stack": stack}
    for key, value in raw.items():
        if key == "aws:region" or key.startswith(f"{NS}:"):
            if key not in known:
                ours = [k for k in known if k.startswith(f"{NS}:")]
                close = suggest.closest(key, ours)
                hint = f"did you mean {close}?" if close else "allowed keys: " + ", ".join(ours)
                raise ConfigError(f"{key} = {_fmt(value)}: unknown key; {hint}")
            data[key] = _parse_raw(key, value)
    try:
        return StackConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_one_line(e, data)) from None


def _one_line(e: ValidationError, data: Mapping[str, Any]) -> str:
    err = first_error(e)
    if isinstance(err.ctx.get("error"), _Cross):
        return str(err.ctx["error"])
    key = str(err.loc[0]) if err.loc else "config"
    # A nested error (a host's field) shows that field's value, a top-level one the raw value.
    value: Any = err.input if len(err.loc) > 1 else data.get(key, err.input)
    if err.type == "extra_forbidden":
        msg = "unknown field; allowed: " + ", ".join(f.alias or n for n, f in HostSpec.model_fields.items())
    else:
        msg = err.allowed()
    if key in SECRET_KEYS:
        value = SECRET_PLACEHOLDER
    return f"{err.path or key} = {_fmt(value)}: {msg}"
