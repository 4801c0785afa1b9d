"""Network: a VPC whose hosts need no internet route.

Private subnet for the head and the GPU workers (one AZ), an S3 gateway endpoint, interface
endpoints for ECR, SSM and CloudWatch Logs, and the security groups as separate rule
resources. A public subnet (with an internet gateway) exists only for a NAT gateway or an
internet-facing NLB; no instance is ever placed in it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

# Interface endpoints the hosts need without internet: image pulls, SSM sessions, logs, and the
# EC2 API (a new head attaches the head's fixed interface at boot: infra/components/head.py).
INTERFACE_SERVICES = ("ecr.api", "ecr.dkr", "ssm", "ssmmessages", "ec2messages", "logs", "ec2")
# The head's fixed address: this offset into the private subnet (AWS reserves the first four
# addresses of a subnet). The head's interface takes it before any worker launches (the
# workers' node script is rendered from it), so no instance holds it first.
HEAD_IP_OFFSET = 10
HTTPS = 443


def subnet_cidrs(vpc_cidr: str) -> dict[str, str]:
    """Carve the VPC into /20-ish blocks (VPC prefix + 4): the private hosts' subnet first."""
    net = ipaddress.ip_network(vpc_cidr)
    blocks = list(net.subnets(prefixlen_diff=4))
    return {"private": str(blocks[0]), "public": str(blocks[1])}


def head_ip(vpc_cidr: str) -> str:
    """The head's fixed private IP: a pinned address of the private subnet, so workers and the
    NLB keep pointing at it when the head is replaced (infra/components/head.py)."""
    return str(ipaddress.ip_network(subnet_cidrs(vpc_cidr)["private"])[HEAD_IP_OFFSET])


def endpoint_ingress_cidrs(allowed: list[str], public: bool, vpc_cidr: str) -> list[str]:
    """Who may reach the serving port: the configured CIDRs, else (internal only) the VPC."""
    if allowed:
        return list(allowed)
    if public:
        raise ValueError("a public endpoint needs endpointAllowedCidrs")
    return [vpc_cidr]


@dataclass
class NetworkArgs:
    name: str
    region: str
    vpc_cidr: str
    availability_zone: pulumi.Input[str]
    endpoint_port: int
    endpoint_cidrs: list[str]
    nat_gateway: bool = False
    public_subnet: bool = False  # an internet-facing NLB needs one
    tags: dict[str, str] = field(default_factory=dict)
    # llmfleet:gcsRedis: the NLB targets every host's proxy (infra/components/endpoint.py), not
    # the head alone; the rules are the same (every host is in the cluster group), their words not
    nlb_targets_every_host: bool = False


def _tag(args: NetworkArgs, name_tag: str, **extra: str) -> dict[str, str]:
    return {**args.tags, "Name": f"{args.name}-{name_tag}", **extra}


class Network(pulumi.ComponentResource):
    vpc: aws.ec2.Vpc
    private_subnet: aws.ec2.Subnet
    public_subnet: aws.ec2.Subnet | None
    cluster_sg: aws.ec2.SecurityGroup
    endpoint_sg: aws.ec2.SecurityGroup

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llmfleet:components:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cidrs = subnet_cidrs(args.vpc_cidr)
        self.vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.vpc_cidr,
            enable_dns_support=True,
            enable_dns_hostnames=True,  # interface endpoints' private DNS needs both
            tags=_tag(args, "vpc"),
            opts=child,
        )
        self.private_subnet = aws.ec2.Subnet(
            f"{name}-private",
            vpc_id=self.vpc.id,
            cidr_block=cidrs["private"],
            availability_zone=args.availability_zone,
            map_public_ip_on_launch=False,
            tags=_tag(args, "private", **{"llmfleet:tier": "private"}),
            opts=child,
        )
        self.private_rt = aws.ec2.RouteTable(
            f"{name}-private-rt", vpc_id=self.vpc.id, tags=_tag(args, "private-rt"), opts=child
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-private-rta",
            subnet_id=self.private_subnet.id,
            route_table_id=self.private_rt.id,
            opts=child,
        )

        self.public_subnet = None
        if args.nat_gateway or args.public_subnet:
            self.public_subnet = self._public_subnet(name, args, cidrs["public"])
        self._security_groups(name, args)
        self._vpc_endpoints(name, args)
        self.register_outputs(
            {
                "vpc_id": self.vpc.id,
                "private_subnet_id": self.private_subnet.id,
                "cluster_sg_id": self.cluster_sg.id,
                "endpoint_sg_id": self.endpoint_sg.id,
            }
        )

    def _public_subnet(self, name: str, args: NetworkArgs, cidr: str) -> aws.ec2.Subnet:
        """The public subnet behind an internet gateway, and the NAT gateway when asked for."""
        child = pulumi.ResourceOptions(parent=self)
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=self.vpc.id, tags=_tag(args, "igw"), opts=child)
        public = aws.ec2.Subnet(
            f"{name}-public",
            vpc_id=self.vpc.id,
            cidr_block=cidr,
            availability_zone=args.availability_zone,
            map_public_ip_on_launch=False,  # only the NAT gateway / NLB live here
            tags=_tag(args, "public", **{"llmfleet:tier": "public"}),
            opts=child,
        )
        public_rt = aws.ec2.RouteTable(
            f"{name}-public-rt",
            vpc_id=self.vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}],
            tags=_tag(args, "public-rt"),
            opts=child,
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-public-rta", subnet_id=public.id, route_table_id=public_rt.id, opts=child
        )
        if args.nat_gateway:
            eip = aws.ec2.Eip(f"{name}-nat-eip", domain="vpc", tags=_tag(args, "nat-eip"), opts=child)
            nat = aws.ec2.NatGateway(
                f"{name}-nat",
                allocation_id=eip.id,
                subnet_id=public.id,
                tags=_tag(args, "nat"),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
            )
            aws.ec2.Route(
                f"{name}-private-default",
                route_table_id=self.private_rt.id,
                destination_cidr_block="0.0.0.0/0",
                nat_gateway_id=nat.id,
                opts=child,
            )

        return public

    def _security_groups(self, name: str, args: NetworkArgs) -> None:
        """The cluster, endpoint and VPC-endpoint groups; their rules as separate resources."""
        self.cluster_sg = self._group(
            name, args, "cluster", "llmfleet hosts: all traffic among themselves only (Ray ports stay inside)"
        )
        self.endpoint_sg = self._group(
            name, args, "endpoint", "llmfleet NLB: the serving port from the allowed CIDRs"
        )
        self.vpce_sg = self._group(
            name, args, "vpce", "llmfleet VPC interface endpoints: HTTPS from the hosts"
        )
        self._rules(name, args)

    def _group(self, name: str, args: NetworkArgs, kind: str, description: str) -> aws.ec2.SecurityGroup:
        return aws.ec2.SecurityGroup(
            f"{name}-{kind}-sg",
            vpc_id=self.vpc.id,
            description=description,
            tags=_tag(args, f"{kind}-sg", **{"llmfleet:sg": kind}),
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _rules(self, name: str, args: NetworkArgs) -> None:
        """Who may reach what: cluster among itself, the serving port from the NLB, HTTPS to the APIs."""
        child = pulumi.ResourceOptions(parent=self)
        tags = args.tags
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-cluster-from-self",
            security_group_id=self.cluster_sg.id,
            referenced_security_group_id=self.cluster_sg.id,
            ip_protocol="-1",
            description="every port among cluster hosts (Ray GCS, object manager, NCCL, EFA)",
            tags=tags,
            opts=child,
        )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-cluster-from-endpoint",
            security_group_id=self.cluster_sg.id,
            referenced_security_group_id=self.endpoint_sg.id,
            ip_protocol="tcp",
            from_port=args.endpoint_port,
            to_port=args.endpoint_port,
            description="the serving port from the load balancer only",
            tags=tags,
            opts=child,
        )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-cluster-egress",
            security_group_id=self.cluster_sg.id,
            cidr_ipv4="0.0.0.0/0",
            ip_protocol="-1",
            description="outbound: peers, VPC endpoints, S3 gateway (no internet route without NAT)",
            tags=tags,
            opts=child,
        )
        for i, cidr in enumerate(args.endpoint_cidrs):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-endpoint-in-{i}",
                security_group_id=self.endpoint_sg.id,
                cidr_ipv4=cidr,
                ip_protocol="tcp",
                from_port=args.endpoint_port,
                to_port=args.endpoint_port,
                description=f"serving port from {cidr}",
                tags=tags,
                opts=child,
            )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-endpoint-to-cluster",
            security_group_id=self.endpoint_sg.id,
            referenced_security_group_id=self.cluster_sg.id,
            ip_protocol="tcp",
            from_port=args.endpoint_port,
            to_port=args.endpoint_port,
            description="forward and health-check to the "
            + ("hosts' proxies" if args.nlb_targets_every_host else "head"),
            tags=tags,
            opts=child,
        )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-vpce-from-cluster",
            security_group_id=self.vpce_sg.id,
            referenced_security_group_id=self.cluster_sg.id,
            ip_protocol="tcp",
            from_port=HTTPS,
            to_port=HTTPS,
            description="HTTPS to the AWS APIs from the hosts",
            tags=tags,
            opts=child,
        )

    def _vpc_endpoints(self, name: str, args: NetworkArgs) -> None:
        """The S3 gateway endpoint and the interface endpoints the hosts use instead of the internet."""
        child = pulumi.ResourceOptions(parent=self)
        self.s3_endpoint = aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=self.vpc.id,
            service_name=f"com.amazonaws.{args.region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=[self.private_rt.id],
            tags=_tag(args, "s3"),
            opts=child,
        )
        self.interface_endpoints = {
            svc: aws.ec2.VpcEndpoint(
                f"{name}-{svc.replace('.', '-')}",
                vpc_id=self.vpc.id,
                service_name=f"com.amazonaws.{args.region}.{svc}",
                vpc_endpoint_type="Interface",
                subnet_ids=[self.private_subnet.id],
                security_group_ids=[self.vpce_sg.id],
                private_dns_enabled=True,
                tags=_tag(args, svc.replace(".", "-")),
                opts=child,
            )
            for svc in INTERFACE_SERVICES
        }
