"""One key's allowed values: the single-key rules of the stack config, as annotated types.

Each rule gets the value of one key and returns it (normalised) or raises ValueError whose
message says what is allowed; `infra.stack.config` turns that into the one-line error naming the
key and the bad value. Rules that compare keys with each other are in `config_rules`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator

from infra.catalog import load_catalog
from infra.stack import suggest
from infra.stack.regions import is_known_region

# The retentions CloudWatch Logs accepts (PutRetentionPolicy); unset would mean never expire.
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
)  # fmt: skip
AZ_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
ACM_ARN_RE = re.compile(r"^arn:aws[a-z-]*:acm:([a-z0-9-]+):\d{12}:certificate/[0-9a-f-]{36}$")
# A standard SNS topic (SNS's name rule: 1-256 letters, digits, hyphens, underscores). A FIFO
# topic's name ends in ".fifo" and is not accepted: it takes only SQS subscribers (no e-mail,
# pager or chat), so nobody would be told.
SNS_TOPIC_ARN_RE = re.compile(r"^arn:aws[a-z-]*:sns:([a-z0-9-]+):\d{12}:[A-Za-z0-9_-]{1,256}$")
DNS_NAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
HOSTED_ZONE_RE = re.compile(r"^Z[A-Z0-9]{1,32}$")
S3_URI_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")
RESERVATION_RE = re.compile(r"^cr-[0-9a-f]{8,17}$")


def _empty_is_unset(v: Any) -> Any:
    # Pulumi.yaml declares optional keys with default "" (a declared key without a
    # default would be required), so "" means unset.
    return None if v == "" else v


def _zero_is_unset(v: Any) -> Any:
    return None if str(v).strip() in ("", "0") else v


Unset = BeforeValidator(_empty_is_unset)
ZeroUnset = BeforeValidator(_zero_is_unset)


def _region(v: str) -> str:
    if not REGION_RE.match(v):
        raise ValueError("allowed: an AWS region name such as us-east-1")
    if not is_known_region(v):
        raise ValueError(
            "not a region in botocore's region data; allowed: an AWS region such as us-east-1, "
            "us-west-2 or eu-west-1 (aws ec2 describe-regions lists your account's)"
        )
    return v


def _az(v: str | None) -> str | None:
    if v is not None and not AZ_RE.match(v):
        raise ValueError("allowed: an availability zone name such as us-east-1a, or unset for auto")
    return v


def _model(v: str) -> str:
    models = load_catalog().models
    if (known := suggest.canonical(v, models)) is None:
        raise ValueError(f"{suggest.did_you_mean(v, models)}allowed: {', '.join(models)}")
    return known


def _gpu_type(v: str) -> str:
    gpu_types = [i.name for i in load_catalog().instances.values() if i.gpu]
    if v not in gpu_types:
        raise ValueError(f"allowed: {', '.join(gpu_types)}")
    return v


def _head_type(v: str) -> str:
    if v not in load_catalog().instances:
        raise ValueError(f"allowed: {', '.join(load_catalog().instances)}")
    return v


def _workers(v: Any) -> Any:
    if isinstance(v, str) and v.strip().lower() == "auto":
        return "auto"
    try:
        n = int(str(v).strip())
    except ValueError:
        raise ValueError("allowed: 'auto' or an integer from 1 to 64") from None
    if not 1 <= n <= 64:
        raise ValueError("allowed: 'auto' or an integer from 1 to 64")
    return n


def _weights_uri(v: str | None) -> str | None:
    if v is None:
        return v
    if v.startswith("s3://"):
        if not S3_URI_RE.match(v):
            raise ValueError("allowed: s3://BUCKET/PREFIX/ with a valid bucket name")
        return v if v.endswith("/") else v + "/"
    if re.match(r"^(https?://|file:///|/)", v):
        return v
    raise ValueError("allowed: s3://BUCKET/PREFIX/, an http(s):// URL or an absolute path (NFS)")


def _weights_path(v: str) -> str:
    if not v.startswith("/") or " " in v:
        raise ValueError("allowed: an absolute path without spaces")
    return v.rstrip("/")


def _cidrs(v: list[str]) -> list[str]:
    for c in v:
        try:
            ipaddress.ip_network(c, strict=True)
        except ValueError:
            raise ValueError(f"entry {c!r} is not a CIDR; allowed: CIDRs such as 203.0.113.0/24") from None
    return v


def _vpc(v: str) -> str:
    try:
        net = ipaddress.ip_network(v, strict=True)
    except ValueError:
        raise ValueError("allowed: an IPv4 CIDR from /16 to /20, such as 10.42.0.0/16") from None
    if net.version != 4 or not 16 <= net.prefixlen <= 20 or not net.is_private:
        raise ValueError("allowed: a private IPv4 CIDR from /16 to /20, such as 10.42.0.0/16")
    return v


def _tags(v: dict[str, str]) -> dict[str, str]:
    for k in v:
        if k.startswith("aws:") or k.startswith("llmfleet:"):
            raise ValueError(f"tag key {k!r} is reserved; allowed: keys not starting with aws: or llmfleet:")
    return v


def _retention(v: int) -> int:
    if v not in LOG_RETENTION_DAYS:
        raise ValueError(f"allowed: {', '.join(map(str, LOG_RETENTION_DAYS))} (CloudWatch's values)")
    return v


def _reservation(v: str | None) -> str | None:
    if v is not None and not RESERVATION_RE.match(v):
        raise ValueError("allowed: a capacity reservation id such as cr-0123456789abcdef0")
    return v


def _capacity_block(v: str | None) -> str | None:
    if v is not None and not RESERVATION_RE.match(v):
        raise ValueError(
            "allowed: the Capacity Block's capacity reservation id such as cr-0123456789abcdef0 "
            "(aws ec2 describe-capacity-reservations --filters Name=reservation-type,Values=capacity-block)"
        )
    return v


def _cert(v: str | None) -> str | None:
    if v is not None and not ACM_ARN_RE.match(v):
        raise ValueError(
            "allowed: an ACM certificate ARN such as arn:aws:acm:us-east-1:123456789012:certificate/<uuid>"
        )
    return v


def _topic(v: str | None) -> str | None:
    if v is not None and not SNS_TOPIC_ARN_RE.match(v):
        raise ValueError(
            "allowed: a standard SNS topic ARN such as arn:aws:sns:us-east-1:123456789012:llmfleet-alarms"
        )
    return v


def _dns_name(v: str | None) -> str | None:
    if v is not None and not DNS_NAME_RE.match(v.rstrip(".")):
        raise ValueError("allowed: a lower-case DNS name such as llm.example.com")
    return v.rstrip(".") if v else v


def _zone(v: str | None) -> str | None:
    if v is not None and not HOSTED_ZONE_RE.match(v):
        raise ValueError("allowed: a Route 53 hosted zone id such as Z0123456789ABCDEFGHIJ")
    return v


Region = Annotated[str, AfterValidator(_region)]
AvailabilityZone = Annotated[str | None, Unset, AfterValidator(_az)]
ModelId = Annotated[str, AfterValidator(_model)]
GpuInstanceType = Annotated[str, AfterValidator(_gpu_type)]
InstanceType = Annotated[str, AfterValidator(_head_type)]
WorkerCount = Annotated[int | Literal["auto"], BeforeValidator(_workers)]
WeightsUri = Annotated[str | None, Unset, AfterValidator(_weights_uri)]
WeightsPath = Annotated[str, AfterValidator(_weights_path)]
Cidrs = Annotated[list[str], AfterValidator(_cidrs)]
VpcCidr = Annotated[str, AfterValidator(_vpc)]
Tags = Annotated[dict[str, str], AfterValidator(_tags)]
LogRetentionDays = Annotated[int, AfterValidator(_retention)]
ReservationId = Annotated[str | None, Unset, AfterValidator(_reservation)]
CapacityBlockId = Annotated[str | None, Unset, AfterValidator(_capacity_block)]
CertificateArn = Annotated[str | None, Unset, AfterValidator(_cert)]
TopicArn = Annotated[str | None, Unset, AfterValidator(_topic)]
DnsName = Annotated[str | None, Unset, AfterValidator(_dns_name)]
HostedZoneId = Annotated[str | None, Unset, AfterValidator(_zone)]


# An image by digest: REPO:TAG@sha256:<64 hex> (the tag names the release, the digest is what
# is pulled) or REPO@sha256:<64 hex>. REPO may start with a registry host (and :port).
IMAGE_BY_DIGEST_RE = re.compile(
    r"^[a-z0-9][a-z0-9._-]*(?::[0-9]+)?(?:/[a-z0-9][a-z0-9._-]*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?@sha256:[0-9a-f]{64}$"
)


def _image_by_digest(v: str) -> str:
    if not IMAGE_BY_DIGEST_RE.match(v):
        raise ValueError(
            "allowed: an image pinned by digest, REPO:TAG@sha256:<64 hex> or REPO@sha256:<64 hex>"
        )
    return v


ImageByDigest = Annotated[str, AfterValidator(_image_by_digest)]
