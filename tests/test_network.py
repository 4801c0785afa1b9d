"""Network component under the recording mocks (preview=False): real rule/CIDR/port inputs."""

from functools import cache

import pytest

from infra.components.network import INTERFACE_SERVICES, endpoint_ingress_cidrs, subnet_cidrs
from policy.network import sensitive_ports_in
from tests.captures import capture
from tests.hosts import hosts

IN = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EG = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
SG = "aws:ec2/securityGroup:SecurityGroup"
VPCE = "aws:ec2/vpcEndpoint:VpcEndpoint"


@cache
def cap(*overrides):
    return capture("prod", overrides)


def sg_ids(c):
    return {r["outputs"]["tags"]["llmfleet:sg"]: r["id"] for r in c.of_type(SG)}


def test_subnets_private_in_one_az_and_no_internet_by_default():
    c = cap()
    [vpc] = c.of_type("aws:ec2/vpc:Vpc")
    assert vpc["inputs"]["cidrBlock"] == "10.42.0.0/16"
    [subnet] = c.of_type("aws:ec2/subnet:Subnet")
    assert subnet["inputs"]["mapPublicIpOnLaunch"] is False
    assert subnet["inputs"]["cidrBlock"] == "10.42.0.0/20"
    assert subnet["inputs"]["availabilityZone"] == "us-east-1a"  # first AZ offering the type
    for t in ("internetGateway:InternetGateway", "natGateway:NatGateway", "eip:Eip"):
        assert not c.of_type(f"aws:ec2/{t}")


def test_endpoints_s3_gateway_and_interfaces():
    c = cap()
    eps = {r["inputs"]["serviceName"].removeprefix("com.amazonaws.us-east-1."): r for r in c.of_type(VPCE)}
    assert eps["s3"]["inputs"]["vpcEndpointType"] == "Gateway"
    assert eps["s3"]["inputs"]["routeTableIds"] == [c.named("net-private-rt")["id"]]
    vpce_sg = sg_ids(c)["vpce"]
    for svc in INTERFACE_SERVICES:
        ep = eps[svc]["inputs"]
        assert ep["vpcEndpointType"] == "Interface" and ep["privateDnsEnabled"] is True
        assert ep["securityGroupIds"] == [vpce_sg]
    # + the metrics store's remote-write endpoint, which the Observability component owns
    assert set(eps) == {"s3", *INTERFACE_SERVICES, "aps-workspaces"}


def test_security_group_rules():
    c = cap()
    ids = sg_ids(c)
    rules = {r["name"]: r["inputs"] for r in c.of_type(IN)}
    self_rule = rules["net-cluster-from-self"]
    assert self_rule["securityGroupId"] == self_rule["referencedSecurityGroupId"] == ids["cluster"]
    assert self_rule["ipProtocol"] == "-1"
    head = rules["net-cluster-from-endpoint"]
    assert (head["referencedSecurityGroupId"], head["fromPort"], head["toPort"]) == (
        ids["endpoint"],
        8000,
        8000,
    )
    # internal endpoint without CIDRs: the serving port from the VPC only
    ep = [r for r in rules.values() if r["securityGroupId"] == ids["endpoint"]]
    assert [(r["cidrIpv4"], r["fromPort"], r["toPort"], r["ipProtocol"]) for r in ep] == [
        ("10.42.0.0/16", 8000, 8000, "tcp")
    ]
    # nothing with a CIDR source opens SSH or a Ray port
    for r in rules.values():
        if "cidrIpv4" in r:
            assert not sensitive_ports_in((r.get("fromPort", 0), r.get("toPort", 65535)))
    eg = {r["name"]: r["inputs"] for r in c.of_type(EG)}
    assert eg["net-endpoint-to-cluster"]["referencedSecurityGroupId"] == ids["cluster"]


def test_public_endpoint_admits_only_configured_cidrs():
    c = cap("endpointPublic=true", 'endpointAllowedCidrs=["203.0.113.0/24"]')
    ids = sg_ids(c)
    ep = [r["inputs"] for r in c.of_type(IN) if r["inputs"]["securityGroupId"] == ids["endpoint"]]
    assert [r["cidrIpv4"] for r in ep] == ["203.0.113.0/24"]
    public = c.named("net-public")["inputs"]
    assert public["mapPublicIpOnLaunch"] is False
    assert c.of_type("aws:ec2/internetGateway:InternetGateway")
    # hosts (the head and the worker groups' instances) never sit in the public subnet
    assert len(hosts(c)) == 4
    for inst in hosts(c):
        assert inst["inputs"].get("subnetId") == c.named("net-private")["id"]


def test_nat_gateway_only_on_request():
    c = cap("natGateway=true", "availabilityZone=us-east-1c")
    [nat] = c.of_type("aws:ec2/natGateway:NatGateway")
    assert nat["inputs"]["subnetId"] == c.named("net-public")["id"]
    route = c.named("net-private-default")["inputs"]
    assert route["destinationCidrBlock"] == "0.0.0.0/0" and route["natGatewayId"] == nat["id"]
    assert c.named("net-private")["inputs"]["availabilityZone"] == "us-east-1c"


def test_pure_helpers():
    assert subnet_cidrs("10.0.0.0/18") == {"private": "10.0.0.0/22", "public": "10.0.4.0/22"}
    assert endpoint_ingress_cidrs([], False, "10.1.0.0/16") == ["10.1.0.0/16"]
    assert endpoint_ingress_cidrs(["192.0.2.0/24"], True, "10.1.0.0/16") == ["192.0.2.0/24"]
    with pytest.raises(ValueError):
        endpoint_ingress_cidrs([], True, "10.1.0.0/16")


def test_a_rules_port_range():
    from policy.network import _port_range

    # every protocol ("-1" or "all", any case) is every port, whatever the ports say
    for proto in ("-1", "all", "ALL", -1):
        assert _port_range(proto, 0, 0) == (0, 65535), proto
    assert _port_range("tcp", "22", 22) == (22, 22) and _port_range("tcp", -1, -1) == (0, 65535)
    assert _port_range("udp", 10000, 20000) == (10000, 20000) and _port_range("tcp", 0, 0) == (0, 0)
    assert _port_range("tcp", None, 22) is None and _port_range("tcp", 22, "x") is None  # unknown


@pytest.mark.parametrize(
    "port, what",
    [
        (22, "SSH"),
        (6379, "Ray GCS"),
        (8265, "Ray dashboard"),
        (10001, "Ray client"),
        (8076, "Ray object manager"),
        (8077, "Ray node manager"),
        (52365, "Ray dashboard agent"),
    ],
)
def test_ssh_and_every_ray_port_is_sensitive(port, what):
    assert sensitive_ports_in((port, port)) == [f"{port} ({what})"]
    assert f"{port} ({what})" in sensitive_ports_in((0, 65535))


def test_ray_worker_port_range_is_sensitive_where_a_rule_overlaps_it():
    worker = "(Ray worker ports)"
    assert sensitive_ports_in((10002, 10002)) == [f"10002-10002 {worker}"]
    assert sensitive_ports_in((19999, 20100)) == [f"19999-19999 {worker}"]
    assert sensitive_ports_in((15000, 15010)) == [f"15000-15010 {worker}"]
    assert sensitive_ports_in((10001, 10002)) == ["10001 (Ray client)", f"10002-10002 {worker}"]
    for harmless in ((8000, 8000), (443, 443), (20000, 52364), (52369, 65535), (23, 6378)):
        assert sensitive_ports_in(harmless) == [], harmless
    assert sensitive_ports_in((52366, 52368)) == [
        "52366 (Ray dashboard agent gRPC)",
        "52367 (Ray runtime-env agent)",
        "52368 (Ray metrics export)",
    ]


def test_ingress_rules_are_read_from_each_way_a_stack_can_declare_them():
    from policy._props import UNKNOWN
    from policy._stackview import Res, StackView
    from policy.network import ingress_rules
    from policy.runner import policy_resources
    from tests.test_policies import UNKNOWN_PLACEHOLDER, res

    sgi = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
    sgr = "aws:ec2/securityGroupRule:SecurityGroupRule"
    sg = "aws:ec2/securityGroup:SecurityGroup"
    inline = {
        "protocol": "tcp",
        "fromPort": 22,
        "toPort": 22,
        "self": True,
        "cidrBlocks": ["10.0.0.0/8"],
        "ipv6CidrBlocks": ["fd00::/8"],
        "securityGroups": ["sg-endpoint", "sg-outside"],
    }
    stack = [
        res(
            sg, "cluster-sg", "sg-cluster", ingress=[UNKNOWN_PLACEHOLDER, inline]
        ),  # an unknown block (first): skipped, the next still read
        res(sg, "endpoint-sg", "sg-endpoint"),
        res(
            sgi,
            "self-rule",
            securityGroupId="sg-cluster",
            referencedSecurityGroupId="sg-cluster",
            ipProtocol="-1",
        ),
        res(
            sgi,
            "from-endpoint",
            securityGroupId="sg-cluster",
            referencedSecurityGroupId="sg-endpoint",
            ipProtocol="tcp",
            fromPort=8000,
            toPort=8000,
        ),
        res(
            sgi,
            "v4v6",
            securityGroupId="sg-endpoint",
            cidrIpv4="10.0.0.0/8",
            cidrIpv6="::/0",
            ipProtocol="tcp",
            fromPort=443,
            toPort=443,
        ),
        # both ids unknown at preview: equal sentinels do not make the rule self-referencing
        res(
            sgi,
            "unknown-self",
            securityGroupId=UNKNOWN_PLACEHOLDER,
            referencedSecurityGroupId=UNKNOWN_PLACEHOLDER,
            ipProtocol="tcp",
            fromPort=1,
            toPort=2,
        ),
        # an egress rule listed before the ingress ones is passed over, not the end of them
        res(
            sgr,
            "egress",
            type="egress",
            securityGroupId="sg-endpoint",
            protocol="-1",
            cidrBlocks=["0.0.0.0/0"],
        ),
        res(
            sgr,
            "legacy",
            type="ingress",
            securityGroupId="sg-endpoint",
            protocol="udp",
            fromPort=53,
            toPort=53,
            cidrBlocks=["10.1.0.0/16"],
            ipv6CidrBlocks=["fd01::/16"],
            self=True,
            sourceSecurityGroupId="sg-cluster",
        ),
        res(
            sgr,
            "legacy-cidr",
            type="ingress",
            securityGroupId="sg-endpoint",
            protocol="-1",  # every protocol: every port, whatever the ports say
            fromPort=0,
            toPort=0,
        ),
        # in a preview: both groups by the dependency of the group type (each also depends on the VPC)
        res(
            sgi,
            "preview",
            securityGroupId=UNKNOWN_PLACEHOLDER,
            referencedSecurityGroupId=UNKNOWN_PLACEHOLDER,
            ipProtocol="tcp",
            fromPort=3,
            toPort=3,
        ),
        res(
            sgr,
            "legacy-preview",
            type="ingress",
            securityGroupId=UNKNOWN_PLACEHOLDER,
            sourceSecurityGroupId=UNKNOWN_PLACEHOLDER,
            protocol="tcp",
            fromPort=4,
            toPort=4,
        ),
        res(
            sg,
            "preview-sg",
            "sg-preview",
            ingress=[
                {"protocol": "tcp", "fromPort": 5, "toPort": 5, "securityGroups": [UNKNOWN_PLACEHOLDER]},
                {"protocol": "all", "fromPort": 0, "toPort": 0},
            ],
        ),
        res("aws:ec2/vpc:Vpc", "vpc", "vpc-1"),
    ]
    built = {r.name: r for r in policy_resources(stack)}
    for name, props in (
        ("preview", ("securityGroupId", "referencedSecurityGroupId")),
        ("legacy-preview", ("securityGroupId", "sourceSecurityGroupId")),
    ):
        built[name].property_dependencies = {
            props[0]: [built["cluster-sg"], built["vpc"]],
            props[1]: [built["endpoint-sg"], built["vpc"]],
        }
    built["preview-sg"].property_dependencies = {"ingress": [built["endpoint-sg"], built["vpc"]]}

    def name(x):
        return x.name if isinstance(x, Res) else x

    rules = [
        (r.owner.name, name(r.sg), r.ports, r.cidrs, [name(s) for s in r.sources])
        for r in ingress_rules(StackView.of(list(built.values())))
    ]
    assert rules == [
        ("self-rule", "cluster-sg", (0, 65535), [], ["self"]),
        ("from-endpoint", "cluster-sg", (8000, 8000), [], ["endpoint-sg"]),
        ("v4v6", "endpoint-sg", (443, 443), ["10.0.0.0/8", "::/0"], []),
        ("unknown-self", UNKNOWN, (1, 2), [], [UNKNOWN]),
        ("preview", "cluster-sg", (3, 3), [], ["endpoint-sg"]),
        ("legacy", "endpoint-sg", (53, 53), ["10.1.0.0/16", "fd01::/16"], ["self", "cluster-sg"]),
        ("legacy-cidr", "endpoint-sg", (0, 65535), [], []),
        ("legacy-preview", "cluster-sg", (4, 4), [], ["endpoint-sg"]),
        # a group outside the stack is None (not the cluster's)
        ("cluster-sg", "cluster-sg", (22, 22), ["10.0.0.0/8", "fd00::/8"], ["self", "endpoint-sg", None]),
        ("preview-sg", "preview-sg", (5, 5), [], ["endpoint-sg"]),
        ("preview-sg", "preview-sg", (0, 65535), [], []),
    ]
