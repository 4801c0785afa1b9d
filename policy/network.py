"""Stack policies that need the network around a resource: private subnets, security-group ingress."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    StackValidationArgs,
    StackValidationPolicy,
)

from . import _config
from ._props import UNKNOWN, as_list, get, is_unknown, is_world, to_int, within_any
from ._stackview import Res, StackView

SUBNET = "aws:ec2/subnet:Subnet"
ENI = "aws:ec2/networkInterface:NetworkInterface"
VPC = "aws:ec2/vpc:Vpc"
ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
ROUTE = "aws:ec2/route:Route"
RT_ASSOC = "aws:ec2/routeTableAssociation:RouteTableAssociation"
IGW = "aws:ec2/internetGateway:InternetGateway"
SG = "aws:ec2/securityGroup:SecurityGroup"
SG_INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SG_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"

# --- private subnets -----------------------------------------------------------------------------


def _is_igw(view: StackView, rt_owner: Res, prop: str, value: Any) -> bool:
    if isinstance(value, str) and value.startswith("igw-"):
        return True
    target = view.ref(rt_owner, prop, [IGW], value=value)
    return isinstance(target, Res) and target.type == IGW


def _default_routes_via_igw(view: StackView, rt: Res) -> bool:
    for route in as_list(rt.props.get("routes")):
        world = is_world(get(route, "cidrBlock")) or is_world(get(route, "ipv6CidrBlock"))
        if world and _is_igw(view, rt, "routes", get(route, "gatewayId")):
            return True
    for route in view.of_type(ROUTE):
        if view.ref(route, "routeTableId", [ROUTE_TABLE]) is not rt:
            continue
        world = is_world(route.props.get("destinationCidrBlock")) or is_world(
            route.props.get("destinationIpv6CidrBlock")
        )
        if world and _is_igw(view, route, "gatewayId", route.props.get("gatewayId")):
            return True
    return False


def subnet_is_public(view: StackView, subnet: Res) -> bool | Any:
    """True when the subnet maps public IPs or routes 0.0.0.0/0 to an internet gateway.

    Only explicit route-table associations are followed: a subnet without one uses the VPC's main
    route table, which for a VPC this program creates holds only the local route.
    """
    if subnet.props.get("mapPublicIpOnLaunch") is True:
        return True
    unknown = False
    for assoc in view.of_type(RT_ASSOC):
        target = view.ref(assoc, "subnetId", [SUBNET])
        if target is UNKNOWN:
            unknown = True
        if target is not subnet:
            continue
        rt = view.ref(assoc, "routeTableId", [ROUTE_TABLE])
        if isinstance(rt, Res) and _default_routes_via_igw(view, rt):
            return True
        unknown = unknown or rt is UNKNOWN
    return UNKNOWN if unknown else False


def instance_subnets(view: StackView, inst: Res) -> list[Any]:
    """The subnets an instance sits in: its subnetId, or those of the ENIs it attaches (EFA hosts),
    or, for an Auto Scaling group's instance, the group's subnets."""
    if inst.group is not None:
        return [
            view.ref(inst.group, "vpcZoneIdentifiers", [SUBNET], value=s)
            for s in as_list(inst.group.props.get("vpcZoneIdentifiers"))
        ]
    if inst.props.get("subnetId") is not None:
        return [view.ref(inst, "subnetId", [SUBNET])]
    out = []
    for nic in as_list(inst.props.get("networkInterfaces")):
        eni = view.ref(inst, "networkInterfaces", [ENI], value=get(nic, "networkInterfaceId"))
        out.append(view.ref(eni, "subnetId", [SUBNET]) if isinstance(eni, Res) else eni)
    return out


def _private_subnet(args: StackValidationArgs, report: ReportViolation) -> None:
    view = StackView.of(args.resources)
    for inst in view.hosts():
        subnets = instance_subnets(view, inst)
        if not subnets:
            report(f"{inst.name}: no subnetId, so it lands in the default VPC's public subnet", inst.urn)
            continue
        for subnet in subnets:
            if not isinstance(subnet, Res):
                continue  # unknown during preview, or a subnet outside this stack: not checkable here
            if subnet_is_public(view, subnet) is True:
                report(
                    f"{inst.name}: subnet {subnet.name} is public (public IPs or a default route to an internet gateway)",
                    inst.urn,
                )


# --- security-group ingress ----------------------------------------------------------------------

SSH_PORT = 22
# Ray's ports (its token auth is defense in depth, not a reason to expose them): GCS, dashboard,
# client server, metrics export, dashboard agent, and the default worker port range (ray start --min-worker-port/--max-worker-port).
RAY_PORTS: dict[int, str] = {
    6379: "Ray GCS",
    8265: "Ray dashboard",
    10001: "Ray client",
    8076: "Ray object manager",
    8077: "Ray node manager",
    52365: "Ray dashboard agent",
    # the node agents' other fixed ports (ray_cluster.contract.AGENT_PORTS, kept in step by a test)
    52366: "Ray dashboard agent gRPC",
    52367: "Ray runtime-env agent",
    52368: "Ray metrics export",
}
RAY_WORKER_PORTS = (10002, 19999)


@dataclass
class IngressRule:
    owner: Res  # the resource that declares the rule
    sg: Res | Any | None  # the security group the rule opens
    ports: tuple[int, int] | None  # None: unknown
    cidrs: list[Any]
    sources: list[Any]  # Res, UNKNOWN, None (outside the stack) or "self"


def _port_range(protocol: Any, from_port: Any, to_port: Any) -> tuple[int, int] | None:
    if str(protocol).lower() in ("-1", "all"):
        return (0, 65535)
    lo, hi = to_int(from_port), to_int(to_port)
    if lo is None or hi is None:
        return None
    return (max(lo, 0), hi if hi >= 0 else 65535)


def ingress_rules(view: StackView) -> list[IngressRule]:
    rules: list[IngressRule] = []
    for r in view.of_type(SG_INGRESS):
        p = r.props
        src = []
        if p.get("referencedSecurityGroupId") is not None:
            same = p.get("referencedSecurityGroupId") == p.get("securityGroupId") and not is_unknown(
                p.get("securityGroupId")
            )
            src.append("self" if same else view.ref(r, "referencedSecurityGroupId", [SG]))
        rules.append(
            IngressRule(
                r,
                view.ref(r, "securityGroupId", [SG]),
                _port_range(p.get("ipProtocol"), p.get("fromPort"), p.get("toPort")),
                [c for c in (p.get("cidrIpv4"), p.get("cidrIpv6")) if c is not None],
                src,
            )
        )
    for r in view.of_type(SG_RULE):
        p = r.props
        if p.get("type") != "ingress":
            continue
        src: list[Any] = ["self"] if p.get("self") is True else []
        if p.get("sourceSecurityGroupId") is not None:
            src.append(view.ref(r, "sourceSecurityGroupId", [SG]))
        rules.append(
            IngressRule(
                r,
                view.ref(r, "securityGroupId", [SG]),
                _port_range(p.get("protocol"), p.get("fromPort"), p.get("toPort")),
                as_list(p.get("cidrBlocks")) + as_list(p.get("ipv6CidrBlocks")),
                src,
            )
        )
    for sg in view.of_type(SG):
        for block in as_list(sg.props.get("ingress")):
            if is_unknown(block):
                continue
            src = ["self"] if block.get("self") is True else []
            src += [view.ref(sg, "ingress", [SG], value=v) for v in as_list(block.get("securityGroups"))]
            rules.append(
                IngressRule(
                    sg,
                    sg,
                    _port_range(block.get("protocol"), block.get("fromPort"), block.get("toPort")),
                    as_list(block.get("cidrBlocks")) + as_list(block.get("ipv6CidrBlocks")),
                    src,
                )
            )
    return rules


def sensitive_ports_in(ports: tuple[int, int]) -> list[str]:
    lo, hi = ports
    hits = [f"{SSH_PORT} (SSH)"] if lo <= SSH_PORT <= hi else []
    hits += [f"{port} ({what})" for port, what in sorted(RAY_PORTS.items()) if lo <= port <= hi]
    wlo, whi = RAY_WORKER_PORTS
    if lo <= whi and wlo <= hi:
        hits.append(f"{max(lo, wlo)}-{min(hi, whi)} (Ray worker ports)")
    return hits


def _is_cluster_sg(src: Any, rule: IngressRule) -> bool | Any:
    if src == "self":
        return True
    if isinstance(src, Res):
        return src.tags.get("llmfleet:sg") == "cluster"
    return UNKNOWN if src is UNKNOWN else False


def _ingress(args: StackValidationArgs, report: ReportViolation) -> None:
    view = StackView.of(args.resources)
    cfg = args.get_config()
    allowed = list(_config.value(cfg, "allowedIngressCidrs", [], stack_key="endpointAllowedCidrs") or [])
    public = bool(_config.value(cfg, "endpointPublic", False, stack_key="endpointPublic"))
    endpoint_port = to_int(_config.value(cfg, "endpointPort", 8000, stack_key="endpointPort"))
    vpc_cidrs = [
        v.props.get("cidrBlock") for v in view.of_type(VPC) if isinstance(v.props.get("cidrBlock"), str)
    ]

    for rule in ingress_rules(view):
        where = rule.owner.name + (
            f" (on {rule.sg.name})" if isinstance(rule.sg, Res) and rule.sg is not rule.owner else ""
        )
        if rule.ports is None:
            continue
        ports = rule.ports
        sensitive = sensitive_ports_in(ports)
        span = f"{ports[0]}-{ports[1]}" if ports[0] != ports[1] else str(ports[0])
        for cidr in rule.cidrs:
            if is_unknown(cidr):
                continue
            if sensitive:
                report(
                    f"{where}: {', '.join(sensitive)} open to {cidr}; SSH and Ray ports are reachable only from the cluster security group",
                    rule.owner.urn,
                )
            elif is_world(cidr):
                if not (public and ports == (endpoint_port, endpoint_port) and within_any(cidr, allowed)):
                    report(
                        f"{where}: port {span} open to {cidr}; the internet may reach only the endpoint port of an explicitly public endpoint (endpointPublic, endpointAllowedCidrs)",
                        rule.owner.urn,
                    )
            elif not within_any(cidr, allowed + vpc_cidrs):
                report(
                    f"{where}: port {span} open to {cidr}, outside the VPC and the allowed CIDRs ({', '.join(allowed) or 'none'})",
                    rule.owner.urn,
                )
        if sensitive:
            for src in rule.sources:
                if _is_cluster_sg(src, rule) is False:
                    name = src.name if isinstance(src, Res) else "a security group outside this stack"
                    report(
                        f"{where}: {', '.join(sensitive)} open to {name}, which is not the cluster security group (tag llmfleet:sg=cluster)",
                        rule.owner.urn,
                    )


NETWORK_POLICIES: list[StackValidationPolicy] = [
    StackValidationPolicy(
        name="ec2-private-subnet",
        description="EC2 instances run in private subnets (no public IP mapping, no default route to an internet gateway).",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_private_subnet,
    ),
    StackValidationPolicy(
        name="security-group-ingress",
        description=(
            "Ingress: nothing from 0.0.0.0/0 or ::/0 except the endpoint port of an explicitly public endpoint; "
            "SSH and Ray ports only from the cluster security group."
        ),
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=PolicyConfigSchema(
            properties={
                "allowedIngressCidrs": _config.string_list(
                    "CIDRs allowed to reach the endpoint; default: the stack's llmfleet:endpointAllowedCidrs."
                ),
                "endpointPublic": {
                    "type": "boolean",
                    "description": "The endpoint is explicitly public; default: the stack's llmfleet:endpointPublic, else false.",
                },
                "endpointPort": {
                    "type": "integer",
                    "description": "The endpoint port; default: the stack's llmfleet:endpointPort, else 8000.",
                },
            }
        ),
        validate=_ingress,
    ),
]
