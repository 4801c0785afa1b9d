"""One key's allowed values: the single-key rules of the stack config, as annotated types.

Each rule gets the value of one key and returns it (normalised) or raises ValueError whose
message says what is allowed; `infra.stack.config` turns that into the one-line error naming the
key and the bad value. Rules that compare keys with each other are in `config_rules`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal, cast

from pydantic import AfterValidator, BeforeValidator, Field

from infra.catalog import load_catalog
from infra.stack import suggest
from infra.stack.regions import SUPPORTED_PARTITION, is_known_region, partition_of
from ray_cluster.contract import AGENT_PORTS, DASHBOARD_PORT, GCS_PORT
from ray_cluster.schedule import ScheduleError, parse_schedule

# The retentions CloudWatch Logs accepts (PutRetentionPolicy); unset would mean never expire.
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
)  # fmt: skip
# llmfleet:gpuMemoryUtilization, `plan --gpu-memory-utilization` and the policy pack's config
# schema: one range. Below 0.5 a 48 GB GPU keeps under 24 GB for weights and KV cache; above
# 0.98 vLLM's own activations and CUDA graphs have no room left.
GPU_MEMORY_UTILIZATION_RANGE = (0.5, 0.98)
DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
GpuMemoryUtilization = Annotated[
    float, Field(ge=GPU_MEMORY_UTILIZATION_RANGE[0], le=GPU_MEMORY_UTILIZATION_RANGE[1])
]
AZ_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
ACM_ARN_RE = re.compile(r"^arn:aws:acm:([a-z0-9-]+):\d{12}:certificate/[0-9a-f-]{36}$")
# A standard SNS topic (SNS's name rule: 1-256 letters, digits, hyphens, underscores). A FIFO
# topic's name ends in ".fifo" and is not accepted: it takes only SQS subscribers (no e-mail,
# pager or chat), so nobody would be told.
SNS_TOPIC_ARN_RE = re.compile(r"^arn:aws:sns:([a-z0-9-]+):\d{12}:[A-Za-z0-9_-]{1,256}$")
DNS_NAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
HOSTED_ZONE_RE = re.compile(r"^Z[A-Z0-9]{1,32}$")
# Every value below may reach a root shell on the hosts (node scripts, the SSH bootstrap), a
# docker argv or a mount point, so each is a strict character set first; the scripts quote
# them too (defense in depth), and never put one in a comment or an unquoted word.
# One path component: what a directory name of a checkpoint, bucket prefix or mount needs.
PATH_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
PATH_ALLOWED = (
    "an absolute path of components made of letters, digits, '.', '_' and '-' "
    "(no '..', '.', '//' or spaces), not / nor a system directory (/etc, /usr, /boot, /var/lib/docker, ...)"
)
# Formatting the NVMe and mounting it over one of these (or anything under them) destroys or
# hides what the host boots and runs from; copying weights into them overwrites it.
SYSTEM_TREES = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root", "/run",
    "/sbin", "/snap", "/sys", "/usr", "/var/lib/docker", "/var/lib/containerd", "/var/lib/nvidia",
    "/var/log", "/var/run", "/var/spool", "/var/cache", "/var/lib/apt", "/var/lib/dpkg",
    "/opt/aws", "/opt/amazon", "/opt/nvidia", "/lost+found",
)  # fmt: skip
# Directories that hold other things: a mount over the directory itself hides all of them
# (a user's home with its ~/.ssh, the AMI's /opt), a subdirectory of them is fine.
SYSTEM_DIRS = ("/", "/home", "/opt", "/var", "/var/lib", "/srv", "/mnt", "/media", "/tmp", "/data")
# AWS's bucket naming rules (docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html):
# 3-63 characters, lower-case letters, digits, '.' and '-', a letter or digit at each end, no
# '..', not an IP address, none of the reserved prefixes and suffixes.
S3_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
S3_BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
S3_BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
# AWS's key rules (docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html): a key is at
# most 1,024 bytes of UTF-8; PREFIX is the safe characters only (ASCII), so its length in bytes.
S3_KEY_MAX_BYTES = 1024
S3_ALLOWED = (
    "s3://BUCKET/PREFIX/ where BUCKET follows AWS's naming rules (3-63 lower-case letters, digits, "
    "'.', '-'; no '..', not an IP, no xn-- prefix or -s3alias suffix) and PREFIX is components of "
    f"letters, digits, '.', '_', '-' (PREFIX/ at most {S3_KEY_MAX_BYTES} bytes, AWS's key limit)"
)
# A TCP port in a URL or a registry host: the pattern takes up to 5 digits, port_in_range() the
# rest (0 and 65536-99999 would be refused only by the hosts' curl or docker, at boot).
_PORT = r"(?P<port>[0-9]{1,5})"
HTTPS_URL_RE = re.compile(
    rf"^https://(?P<host>[A-Za-z0-9]([A-Za-z0-9.-]{{0,251}}[A-Za-z0-9])?)(:{_PORT})?(?P<path>/.*)?$"
)
WEIGHTS_URI_ALLOWED = (
    "allowed: s3://BUCKET/PREFIX/, https://HOST/DIR/ (with a SHA256SUMS) or an absolute path (NFS)"
)
# Docker's reference grammar (github.com/distribution/reference, regexp.go): [domain/]path[:tag][@digest].
_DOMAIN_PART = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::{_PORT})?)"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}"
REPOSITORY_RE = re.compile(rf"^{_NAME}(?:@{_DIGEST})?$")
# AWS's tag rules: keys 1-128, values 0-256 characters of letters, digits, spaces and _ . : / = + - @
TAG_CHARS_RE = re.compile(r"^(?:[^\W]|[ .:/=+\-@])*$")
# Ports the endpoint must not take on the head (and so on the NLB): SSH, Ray's fixed ports and
# the metrics agents (infra/boot/metrics.py; tests/test_config_injection.py keeps them in step).
SSH_PORT = 22
RAY_CLIENT_PORT = 10001
RAY_DASHBOARD_AGENT_PORT = 52365
RAY_FIXED_PORTS = (8076, 8077)  # object manager, node manager (DESIGN.md's Ray ports)
RAY_WORKER_PORTS = range(10002, 20000)  # ray start's default --min/max-worker-port
METRICS_PORTS = {9090: "Prometheus", 9100: "node exporter", 9400: "DCGM exporter"}
RESERVED_PORTS: dict[int, str] = {
    # the node agents' fixed ports (ray_cluster.contract.AGENT_PORTS: every node passes them)
    **{port: f"the Ray node's {flag.removeprefix('--')}" for flag, port in AGENT_PORTS},
    SSH_PORT: "SSH",
    GCS_PORT: "the Ray GCS",
    DASHBOARD_PORT: "the Ray dashboard",
    RAY_CLIENT_PORT: "the Ray client server",
    RAY_DASHBOARD_AGENT_PORT: "the Ray dashboard agent",
    **{p: "a Ray node port" for p in RAY_FIXED_PORTS},
    **METRICS_PORTS,
}
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
    if not REGION_RE.fullmatch(v):
        raise ValueError("allowed: an AWS region name such as us-east-1")
    if not is_known_region(v):
        raise ValueError(
            "not a region in botocore's region data; allowed: an AWS region such as us-east-1, "
            "us-west-2 or eu-west-1 (aws ec2 describe-regions lists your account's)"
        )
    if (partition := partition_of(v)) != SUPPORTED_PARTITION:
        raise ValueError(
            f"a region of partition {partition}, whose ARNs the stack does not build (it builds "
            f"arn:{SUPPORTED_PARTITION}:...); allowed: a region of the {SUPPORTED_PARTITION} "
            "partition such as us-east-1, us-west-2 or eu-west-1"
        )
    return v


def _az(v: str | None) -> str | None:
    if v is not None and not AZ_RE.fullmatch(v):
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


MAX_WORKERS = 64


def _workers(v: Any) -> Any:
    if isinstance(v, str) and v.strip().lower() == "auto":
        return "auto"
    try:
        n = int(str(v).strip())
    except ValueError:
        raise ValueError(f"allowed: 'auto' or an integer from 1 to {MAX_WORKERS}") from None
    if not 1 <= n <= MAX_WORKERS:
        raise ValueError(f"allowed: 'auto' or an integer from 1 to {MAX_WORKERS}")
    return n


MIN_CONTEXT, MAX_CONTEXT = 256, 1_048_576


def _context(v: Any) -> Any:
    """llmfleet:maxModelLen: 'auto' (the planner sizes it from the KV cache) or a token count."""
    allowed = f"allowed: 'auto' or an integer from {MIN_CONTEXT} to {MAX_CONTEXT:,}"
    if isinstance(v, str) and v.strip().lower() == "auto":
        return "auto"
    if isinstance(v, bool) or isinstance(v, float):
        raise ValueError(allowed)
    try:
        n = int(str(v).strip())
    except ValueError:
        raise ValueError(allowed) from None
    if not MIN_CONTEXT <= n <= MAX_CONTEXT:
        raise ValueError(allowed)
    return n


def _safe_parts(parts: list[str]) -> bool:
    return all(PATH_PART_RE.fullmatch(p) and p not in (".", "..") for p in parts)


def safe_path(v: str) -> str:
    """An absolute, normalised path of safe components, not / nor in or over a system
    directory; one trailing '/' is dropped. Raises ValueError saying what is allowed."""
    body = v[:-1] if v.endswith("/") and len(v) > 1 else v
    if not body.startswith("/") or not _safe_parts(body[1:].split("/")) or body == "/":
        raise ValueError(f"allowed: {PATH_ALLOWED}")
    if body in SYSTEM_DIRS or any(body == t or body.startswith(t + "/") for t in SYSTEM_TREES):
        raise ValueError(f"{body} is or is inside a system directory; allowed: {PATH_ALLOWED}")
    return body


def _is_ip(v: str) -> bool:
    try:
        ipaddress.ip_address(v)
        return True
    except ValueError:
        return False


def s3_uri(v: str) -> str:
    """s3://BUCKET/PREFIX/ (the trailing '/' added), bucket and key checked; ValueError if not.
    The one S3 check: llmfleet:weightsUri and llmfleet:lora.adapters both go through it."""
    bucket, _, prefix = v.removeprefix("s3://").partition("/")
    ok = (
        v.startswith("s3://")
        and S3_BUCKET_RE.fullmatch(bucket)
        and ".." not in bucket
        and not _is_ip(bucket)
        and not bucket.startswith(S3_BUCKET_RESERVED_PREFIXES)
        and not bucket.endswith(S3_BUCKET_RESERVED_SUFFIXES)
        and (not prefix or _safe_parts(prefix.removesuffix("/").split("/")))
        # the prefix and its '/' must fit in one key, before any object's name is added
        and len(prefix.removesuffix("/")) < S3_KEY_MAX_BYTES
    )
    if not ok:
        raise ValueError(f"allowed: {S3_ALLOWED}")
    return v if v.endswith("/") else v + "/"


def port_in_range(m: re.Match[str] | None) -> bool:
    """A match of a pattern with the _PORT group: matched, and its port (if any) 1-65535."""
    return m is not None and (m.group("port") is None or 1 <= int(m.group("port")) <= 65535)


def _weights_uri(v: str | None) -> str | None:
    if v is None:
        return v
    if v.startswith("s3://"):
        return s3_uri(v)
    if v.startswith("http://"):
        raise ValueError(
            "plain http lets anyone on the path swap the weights and their SHA256SUMS; " + WEIGHTS_URI_ALLOWED
        )
    if v.startswith("https://"):
        m = HTTPS_URL_RE.fullmatch(v)
        path = (m.group("path") or "/") if m else ""
        if not port_in_range(m) or not (path == "/" or _safe_parts(path.strip("/").split("/"))):
            raise ValueError(
                "allowed: https://HOST[:PORT]/DIR/ of letters, digits, '.', '_', '-' (no query), PORT 1-65535"
            )
        return v
    if v.startswith(("file:///", "/")):
        try:
            path = safe_path(v.removeprefix("file://"))
        except ValueError as e:
            raise ValueError(f"an NFS path: {e}") from None
        return "file://" + path if v.startswith("file://") else path
    raise ValueError(WEIGHTS_URI_ALLOWED)


def _weights_path(v: str) -> str:
    return safe_path(v)


def _endpoint_port(v: int) -> int:
    taken = RESERVED_PORTS.get(v) or ("a Ray worker port" if v in RAY_WORKER_PORTS else None)
    if taken:
        ranges = f"{RAY_WORKER_PORTS.start}-{RAY_WORKER_PORTS.stop - 1}"
        raise ValueError(
            f"port {v} is {taken}'s on the head; allowed: a port from 1 to 65535 other than "
            f"{', '.join(map(str, sorted(RESERVED_PORTS)))} and {ranges} (Ray's worker ports), e.g. 8000"
        )
    return v


def _repository(v: str | None) -> str | None:
    if v is not None and (not port_in_range(REPOSITORY_RE.fullmatch(v)) or len(v) > 255):
        raise ValueError(
            "allowed: a Docker repository such as registry.example:5000/llmfleet/node (PORT 1-65535), "
            "or REPO@sha256:<64 hex>"
        )
    return v


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
    for k, val in v.items():
        if k.startswith("aws:") or k.startswith("llmfleet:"):
            raise ValueError(f"tag key {k!r} is reserved; allowed: keys not starting with aws: or llmfleet:")
        if not (
            1 <= len(k) <= 128
            and len(val) <= 256
            and TAG_CHARS_RE.fullmatch(k)
            and TAG_CHARS_RE.fullmatch(val)
        ):
            raise ValueError(
                f"tag {k!r}: {val!r} breaks AWS's tag rules; allowed: keys of 1-128 and values of 0-256 "
                "letters, digits, spaces and _ . : / = + - @"
            )
    return v


def _retention(v: int) -> int:
    if v not in LOG_RETENTION_DAYS:
        raise ValueError(f"allowed: {', '.join(map(str, LOG_RETENTION_DAYS))} (CloudWatch's values)")
    return v


def _reservation(v: str | None) -> str | None:
    if v is not None and not RESERVATION_RE.fullmatch(v):
        raise ValueError("allowed: a capacity reservation id such as cr-0123456789abcdef0")
    return v


def _capacity_block(v: str | None) -> str | None:
    if v is not None and not RESERVATION_RE.fullmatch(v):
        raise ValueError(
            "allowed: the Capacity Block's capacity reservation id such as cr-0123456789abcdef0 "
            "(aws ec2 describe-capacity-reservations --filters Name=reservation-type,Values=capacity-block)"
        )
    return v


def _cert(v: str | None) -> str | None:
    if v is not None and not ACM_ARN_RE.fullmatch(v):
        raise ValueError(
            "allowed: an ACM certificate ARN such as arn:aws:acm:us-east-1:123456789012:certificate/<uuid>"
        )
    return v


def _topic(v: str | None) -> str | None:
    if v is not None and not SNS_TOPIC_ARN_RE.fullmatch(v):
        raise ValueError(
            "allowed: a standard SNS topic ARN such as arn:aws:sns:us-east-1:123456789012:llmfleet-alarms"
        )
    return v


def _dns_name(v: str | None) -> str | None:
    if v is not None and not DNS_NAME_RE.fullmatch(v.rstrip(".")):
        raise ValueError("allowed: a lower-case DNS name such as llm.example.com")
    return v.rstrip(".") if v else v


def _zone(v: str | None) -> str | None:
    if v is not None and not HOSTED_ZONE_RE.fullmatch(v):
        raise ValueError("allowed: a Route 53 hosted zone id such as Z0123456789ABCDEFGHIJ")
    return v


def _schedule(v: Any) -> str | None:
    """llmfleet:schedule: windows as text ('; ' between) or a YAML list -> the canonical text."""
    if v is None or v == "" or v == []:
        return None
    if isinstance(v, str) and v.lstrip().startswith("["):
        import json

        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            raise ValueError("not a valid list; allowed: a YAML list of windows or text with ';'") from None
    if not isinstance(v, str | list):
        raise ValueError(
            "allowed: text such as 'mon-fri 08:00-20:00 Europe/Berlin' or a list of such windows"
        )
    try:
        return parse_schedule(cast("str | list[str]", v)).text  # list items: parse_schedule checks them
    except ScheduleError as e:
        raise ValueError(str(e)) from None


# CloudWatch evaluates the idle alarm on 5-minute periods; a day is the longest idle span the
# watcher's metric is kept meaningful for (its line reports seconds since the last request).
IDLE_STOP_MIN, IDLE_STOP_MAX = 10, 1440


def _idle_stop(v: Any) -> int | None:
    allowed = f"allowed: 0 or unset (never), or minutes from {IDLE_STOP_MIN} to {IDLE_STOP_MAX}"
    if v is None or str(v).strip() in ("", "0"):
        return None
    if isinstance(v, bool | float):
        raise ValueError(allowed)
    try:
        n = int(str(v).strip())
    except ValueError:
        raise ValueError(allowed) from None
    if not IDLE_STOP_MIN <= n <= IDLE_STOP_MAX:
        raise ValueError(allowed)
    return n


Region = Annotated[str, AfterValidator(_region)]
ScheduleText = Annotated[str | None, BeforeValidator(_schedule)]
IdleStopMinutes = Annotated[int | None, BeforeValidator(_idle_stop)]
AvailabilityZone = Annotated[str | None, Unset, AfterValidator(_az)]
ModelId = Annotated[str, AfterValidator(_model)]
GpuInstanceType = Annotated[str, AfterValidator(_gpu_type)]
InstanceType = Annotated[str, AfterValidator(_head_type)]
WorkerCount = Annotated[int | Literal["auto"], BeforeValidator(_workers)]
ContextLen = Annotated[int | Literal["auto"], BeforeValidator(_context)]
EndpointPort = Annotated[int, Field(ge=1, le=65535), AfterValidator(_endpoint_port)]
Repository = Annotated[str | None, Unset, AfterValidator(_repository)]
# A budget or an hourly price: finite (inf or nan would switch the budget gate off).
Usd = Annotated[float, Field(gt=0, allow_inf_nan=False)]
HourlyUsd = Annotated[float, Field(ge=0, allow_inf_nan=False)]
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
IMAGE_BY_DIGEST_RE = re.compile(rf"^{_NAME}(?::{_TAG})?@{_DIGEST}$")


def _image_by_digest(v: str) -> str:
    if not port_in_range(IMAGE_BY_DIGEST_RE.fullmatch(v)):
        raise ValueError(
            "allowed: an image pinned by digest, REPO:TAG@sha256:<64 hex> or REPO@sha256:<64 hex> "
            "(a registry PORT 1-65535)"
        )
    return v


ImageByDigest = Annotated[str, AfterValidator(_image_by_digest)]
