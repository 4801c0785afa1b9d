"""A host's Auto Scaling group + its launch template (each worker slot's, and the head's since
the head became a group of one: infra/components/head.py) seen as the instances it runs.

GPU workers are not `aws:ec2/instance:Instance` resources: each worker slot is an Auto Scaling
group (min = max = desired = 1, EC2 health checks) launching from one launch template
(infra/components/cluster.py), so a failed worker is replaced by a new instance. Whatever
reads a resource set and wants "the worker instances" (the cost estimator, the policy pack,
tests) reads them through `group_instances`: the group's desired capacity times an
instance-like view of its launch template, with the camelCase keys an Instance has
(instanceType, ami, rootBlockDevice, instanceMarketOptions, metadataOptions, tags, ...).

Pure: plain mappings in, plain dicts out (no Pulumi, no boto3); the resource shape is the
offline capture's / a preview's (type, name, urn, inputs, outputs) or the policy pack's props.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

INSTANCE = "aws:ec2/instance:Instance"
GROUP = "aws:autoscaling/group:Group"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"


def _truthy(value: Any) -> Any:
    """Launch templates carry booleans as strings ("true"/"false"); an Instance as bools."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _volume(ebs: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: ebs[k] for k in ("volumeSize", "volumeType", "iops", "throughput", "kmsKeyId") if k in ebs}
    for k in ("encrypted", "deleteOnTermination"):
        if k in ebs:
            out[k] = _truthy(ebs[k])
    return out


def decode_user_data(value: Any) -> Any:
    """A launch template's user data is base64; an Instance's is the text. Unknowns pass through."""
    if not isinstance(value, str):
        return value
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return value


def group_tags(group: Mapping[str, Any]) -> dict[str, Any]:
    """The group's tags as a mapping (the provider takes a list of key/value/propagateAtLaunch)."""
    tags = group.get("tags")
    if isinstance(tags, Mapping):
        return dict(tags)
    return {t["key"]: t.get("value") for t in tags or [] if isinstance(t, Mapping) and "key" in t}


def group_size(group: Mapping[str, Any]) -> int:
    """How many instances the group keeps running: desired capacity, else its minimum."""
    for key in ("desiredCapacity", "minSize"):
        v = group.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return int(v)
    return 1


def template_ref(group: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = group.get("launchTemplate")
    return ref if isinstance(ref, Mapping) else {}


def find_template(
    group: Mapping[str, Any], templates: Iterable[tuple[Any, Mapping[str, Any]]]
) -> Mapping[str, Any] | None:
    """The launch template (props) the group launches from, matched by id or by name.

    `templates` are (id, props) pairs. The name is what a preview knows before the template
    exists (the program sets it); the id is what a deployed stack (or the offline engine) has.
    """
    ref = template_ref(group)
    for tid, props in templates:
        if ref.get("id") is not None and ref.get("id") == tid:
            return props
        if ref.get("name") is not None and ref.get("name") == props.get("name"):
            return props
    return None


def instance_view(group: Mapping[str, Any], template: Mapping[str, Any] | None) -> dict[str, Any]:
    """The inputs an equivalent `aws:ec2/instance:Instance` would have (camelCase).

    The first block device mapping is the root volume (the program lists it first, on the AMI's
    root device name); the others are `ebsBlockDevices`. Subnet: the group's one subnet.
    """
    lt = template or {}
    out: dict[str, Any] = {}
    for key in (
        "instanceType",
        "instanceMarketOptions",
        "capacityReservationSpecification",
        "metadataOptions",
    ):
        if key in lt:
            out[key] = lt[key]
    if "imageId" in lt:
        out["ami"] = lt["imageId"]
    if "userData" in lt:
        out["userData"] = decode_user_data(lt["userData"])
    profile = lt.get("iamInstanceProfile")
    if isinstance(profile, Mapping):
        out["iamInstanceProfile"] = profile.get("name") or profile.get("arn")
    mappings = [m for m in lt.get("blockDeviceMappings") or [] if isinstance(m, Mapping)]
    if mappings:
        out["rootBlockDevice"] = _volume(mappings[0].get("ebs") or {})
        extra = [{"deviceName": m.get("deviceName"), **_volume(m.get("ebs") or {})} for m in mappings[1:]]
        if extra:
            out["ebsBlockDevices"] = extra
    nics = lt.get("networkInterfaces")
    if isinstance(nics, Sequence) and not isinstance(nics, str):
        out["networkInterfaces"] = [dict(n) for n in nics if isinstance(n, Mapping)]
        if out["networkInterfaces"]:
            first = out["networkInterfaces"][0]
            out["vpcSecurityGroupIds"] = first.get("securityGroups")
            out["associatePublicIpAddress"] = _truthy(first.get("associatePublicIpAddress"))
    placement = lt.get("placement")
    group_pg = group.get("placementGroup")
    if isinstance(placement, Mapping) and placement.get("groupName"):
        out["placementGroup"] = placement["groupName"]
    elif group_pg:
        out["placementGroup"] = group_pg
    subnets = group.get("vpcZoneIdentifiers")
    if isinstance(subnets, Sequence) and not isinstance(subnets, str) and len(subnets) == 1:
        out["subnetId"] = subnets[0]
    out["tags"] = group_tags(group)
    return out


def _inputs(res: Mapping[str, Any]) -> Mapping[str, Any]:
    return res.get("inputs") or {}


def _rid(res: Mapping[str, Any]) -> Any:
    return (res.get("outputs") or {}).get("id") or res.get("id")


def group_instances(resources: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Resource dicts -> one instance-like resource per instance a group keeps running.

    Each carries type `aws:ec2/instance:Instance`, the group's name (with `[k]` when a group
    runs more than one), its URN and parent, and `instance_view` as inputs and outputs.
    """
    templates = [(_rid(r), _inputs(r)) for r in resources if r.get("type") == LAUNCH_TEMPLATE]
    out: list[dict[str, Any]] = []
    for g in resources:
        if g.get("type") != GROUP:
            continue
        view = instance_view(_inputs(g), find_template(_inputs(g), templates))
        n = group_size(_inputs(g))
        for k in range(n):
            out.append(
                {
                    "type": INSTANCE,
                    "name": g["name"] if n == 1 else f"{g['name']}[{k}]",
                    "urn": g.get("urn", ""),
                    "parent": g.get("parent"),
                    "custom": True,
                    "inputs": view,
                    "outputs": view,
                    "group": g["name"],
                }
            )
    return out


def with_group_instances(resources: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The resource list with each Auto Scaling group replaced by the instances it runs (the
    cost estimator's view: the group is free, its instances are priced as instances)."""
    expanded = group_instances(resources)
    by_group: dict[str, list[dict[str, Any]]] = {}
    for inst in expanded:
        by_group.setdefault(inst["group"], []).append(inst)
    out: list[Mapping[str, Any]] = []
    for r in resources:
        if r.get("type") == GROUP:
            out.extend(by_group.get(r["name"], []))
        else:
            out.append(r)
    return out
