"""Usage estimates in Infracost's usage-file format (`infracost-usage.yml`, version 0.1).

    version: 0.1
    resource_type_default_usage:        # applies to every resource of a type
      "aws:ec2/vpcEndpoint:VpcEndpoint":
        monthly_data_processed_gb: 50
    resource_usage:                     # one resource, by logical name (or URN); wins over the type
      endpoint-nlb:
        processed_bytes_gb: 2000
      cluster-worker-2:
        monthly_hrs: 200
      weights-bucket:
        standard:
          monthly_tier_2_requests: 40000

Types are Pulumi type tokens and resources Pulumi logical names, where Infracost has Terraform
types and addresses; the keys are Infracost's own (`monthly_hrs`, `processed_bytes_gb`,
`monthly_data_processed_gb`, `standard.storage_gb`, `monthly_tier_1_requests`, ...).

`sync_text` writes the template `llmfleet cost --sync-usage-file` keeps: every usage key of every
priced resource, values the file already sets kept, the others commented out with the value the
estimate assumes, so the synced file, read back unchanged, prices the same. Pure functions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml

from infra.cost.pricing import PriceError

VERSION = "0.1"

INSTANCE = "aws:ec2/instance:Instance"
LOAD_BALANCERS = ("aws:lb/loadBalancer:LoadBalancer", "aws:alb/loadBalancer:LoadBalancer")
NAT = "aws:ec2/natGateway:NatGateway"
VPC_ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"
BUCKETS = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
ECR = "aws:ecr/repository:Repository"
KMS = "aws:kms/key:Key"


class UsageError(PriceError):
    """A bad usage file; str() is one line naming the key, the bad value and what is allowed."""


@dataclass(frozen=True)
class UsageKey:
    path: str  # dotted: "monthly_hrs", "standard.storage_gb"
    description: str


_LB_KEYS = (
    UsageKey("new_connections", "Number of newly established connections per second on average."),
    UsageKey("active_connections", "Number of active connections per minute on average."),
    UsageKey("processed_bytes_gb", "Monthly data processed by the load balancer in GB."),
)
_BUCKET_KEYS = (
    UsageKey("standard.storage_gb", "Total storage in S3 Standard in GB."),
    UsageKey("standard.monthly_tier_1_requests", "Monthly PUT, COPY, POST, LIST requests (Tier 1)."),
    UsageKey("standard.monthly_tier_2_requests", "Monthly GET, SELECT, and all other requests (Tier 2)."),
)

# Every usage key per Pulumi type (Infracost's key names for the matching Terraform types).
USAGE_KEYS: dict[str, tuple[UsageKey, ...]] = {
    INSTANCE: (UsageKey("monthly_hrs", "Monthly number of hours the instance runs (730 = all month)."),),
    LOAD_BALANCERS[0]: (
        *_LB_KEYS,
        UsageKey("rule_evaluations", "Rule evaluations per second (application load balancers only)."),
    ),
    LOAD_BALANCERS[1]: (
        *_LB_KEYS,
        UsageKey("rule_evaluations", "Rule evaluations per second (application load balancers only)."),
    ),
    NAT: (UsageKey("monthly_data_processed_gb", "Monthly data processed by the NAT gateway in GB."),),
    VPC_ENDPOINT: (
        UsageKey("monthly_data_processed_gb", "Monthly data processed by the VPC endpoint in GB."),
    ),
    BUCKETS[0]: _BUCKET_KEYS,
    BUCKETS[1]: _BUCKET_KEYS,
    ECR: (UsageKey("storage_gb", "Total size of the ECR repository in GB."),),
    KMS: (UsageKey("monthly_requests", "Monthly API requests to the key."),),
}


GROUPS = {k.path.split(".", 1)[0] for ks in USAGE_KEYS.values() for k in ks if "." in k.path}


def keys_for(rtype: str) -> tuple[UsageKey, ...]:
    return USAGE_KEYS.get(rtype, ())


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, str) else json.dumps(v, default=str)


def _number(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UsageError(f"usage file {where} = {_fmt(value)}: allowed: a number >= 0")
    try:
        d = Decimal(str(value).replace("_", ""))
    except InvalidOperation:
        raise UsageError(f"usage file {where} = {_fmt(value)}: allowed: a number >= 0") from None
    if not d.is_finite() or d < 0:
        raise UsageError(f"usage file {where} = {_fmt(value)}: allowed: a number >= 0")
    return d


def _flatten(block: Any, where: str) -> dict[str, Any]:
    """{"standard": {"storage_gb": 1}} -> {"standard.storage_gb": 1}; None (all commented) -> {}."""
    if block is None:
        return {}
    if not isinstance(block, Mapping):
        raise UsageError(f"usage file {where} = {_fmt(block)}: allowed: a mapping of usage keys")
    out: dict[str, Any] = {}
    for k, v in block.items():
        if isinstance(v, Mapping) or (v is None and str(k) in GROUPS):
            out.update({f"{k}.{kk}": vv for kk, vv in _flatten(v, f"{where}.{k}").items()})
        else:
            out[str(k)] = v
    return out


def _checked(rtype: str, values: Mapping[str, Any], where: str) -> dict[str, Decimal]:
    allowed = {k.path for k in keys_for(rtype)}
    out: dict[str, Decimal] = {}
    for key, value in values.items():
        if key not in allowed:
            have = ", ".join(sorted(allowed)) or "none (this type has no usage-based price)"
            raise UsageError(f"usage file {where}.{key}: unknown key for {rtype}; allowed: {have}")
        if value is not None:  # `key:` with no value = not set
            out[key] = _number(value, f"{where}.{key}")
    return out


@dataclass(frozen=True)
class Usage:
    """A parsed usage file. `for_resource` gives the usage of one resource (type defaults, then
    the resource's own entry); `matched` records which resource entries a stack used."""

    path: str = ""
    type_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    resources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    matched: set[str] = field(default_factory=set, compare=False)

    def for_resource(self, rtype: str, name: str, urn: str = "") -> dict[str, Decimal]:
        values = _checked(rtype, self.type_defaults.get(rtype, {}), f"resource_type_default_usage.{rtype}")
        for key in (name, urn):
            if key and key in self.resources:
                self.matched.add(key)
                values.update(_checked(rtype, self.resources[key], f"resource_usage.{key}"))
        return values

    def unmatched(self) -> list[str]:
        return [k for k in self.resources if k not in self.matched]


def parse(text: str, path: str = "") -> Usage:
    """Parse and shape-check a usage file (values are checked per type when applied)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"usage file {path or '-'}: not YAML{where}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise UsageError(f"usage file {path or '-'}: allowed: a mapping with version and resource_usage")
    unknown = set(doc) - {"version", "resource_type_default_usage", "resource_usage"}
    if unknown:
        raise UsageError(
            f"usage file {sorted(unknown)[0]}: unknown top-level key; allowed: version, "
            "resource_type_default_usage, resource_usage"
        )
    version = str(doc.get("version", VERSION)).removeprefix("v")
    if version != VERSION:
        raise UsageError(f"usage file version = {_fmt(doc.get('version'))}: allowed: {VERSION}")
    types = doc.get("resource_type_default_usage") or {}
    res = doc.get("resource_usage") or {}
    for section, value in (("resource_type_default_usage", types), ("resource_usage", res)):
        if not isinstance(value, Mapping):
            raise UsageError(f"usage file {section} = {_fmt(value)}: allowed: a mapping")
    defaults = {}
    for rtype, block in types.items():
        if rtype not in USAGE_KEYS:
            raise UsageError(
                f"usage file resource_type_default_usage.{rtype}: no usage keys for this type; "
                f"allowed: {', '.join(sorted(USAGE_KEYS))}"
            )
        flat = _flatten(block, f"resource_type_default_usage.{rtype}")
        _checked(rtype, flat, f"resource_type_default_usage.{rtype}")  # fail early on a typo
        defaults[str(rtype)] = flat
    resources = {str(k): _flatten(v, f"resource_usage.{k}") for k, v in res.items()}
    return Usage(path, defaults, resources)


# --- --sync-usage-file ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateEntry:
    """One priced resource that has usage keys, and the value each key takes in the estimate
    when the file does not set it (None = unknown usage)."""

    name: str
    rtype: str
    assumed: Mapping[str, Decimal | None]
    keys: tuple[str, ...] = ()  # the keys that apply to this resource (default: all of its type)


def _num_text(d: Decimal | None) -> str:
    if d is None:
        return "0"
    return format(d.normalize(), "f")


def _q(key: str) -> str:
    return json.dumps(key) if any(c in key for c in ":/#{}[],&*?|<>=!%@`'\" ") else key


def sync_text(entries: Iterable[TemplateEntry], existing: Usage) -> str:
    """The synced usage file: type defaults kept as they are, one block per priced resource with
    every key; keys the file sets keep their value, the rest are commented out showing what the
    estimate assumes. Resource entries that match no priced resource are dropped, as Infracost's
    sync does."""
    lines = [
        "# Usage estimates for `llmfleet cost --usage-file` (Infracost's usage-file format).",
        "# Keys are Infracost's; types are Pulumi type tokens, resources Pulumi logical names.",
        "# A commented key shows the value the estimate assumes; uncomment and edit it to change it.",
        f"version: {VERSION}",
    ]
    if existing.type_defaults:
        lines.append("resource_type_default_usage:")
        for rtype, values in existing.type_defaults.items():
            lines.append(f"  {_q(rtype)}:")
            lines += _block(rtype, values, {}, indent=4, all_keys=False)
    lines.append("resource_usage:")
    for e in entries:
        own = dict(existing.resources.get(e.name, {}))
        lines.append(f"  {_q(e.name)}:")
        lines += _block(e.rtype, own, e.assumed, indent=4, all_keys=True, only=e.keys)
    return "\n".join(lines) + "\n"


def _block(
    rtype: str,
    values: Mapping[str, Any],
    assumed: Mapping[str, Decimal | None],
    indent: int,
    all_keys: bool,
    only: tuple[str, ...] = (),
) -> list[str]:
    out: list[str] = []
    open_group = ""
    for key in keys_for(rtype):
        if (not all_keys and key.path not in values) or (
            only and key.path not in only and key.path not in values
        ):
            continue
        group, _, leaf = key.path.rpartition(".")
        pad = " " * indent
        if group and group != open_group:
            out.append(f"{pad}{group}:")
            open_group = group
        if group:
            pad += "  "
        if key.path in values and values[key.path] is not None:
            out.append(f"{pad}{leaf}: {_num_text(Decimal(str(values[key.path])))} # {key.description}")
        else:
            out.append(f"{pad}# {leaf}: {_num_text(assumed.get(key.path))} # {key.description}")
    return out
