"""#26.5 "a head that comes back": the head is an Auto Scaling group of one behind a fixed IP."""

from __future__ import annotations

import ipaddress
import subprocess
from functools import cache

from infra.boot.cloud_init import HEAD_ENI_TABLE
from infra.components.network import head_ip, subnet_cidrs
from infra.program.offline import capture
from infra.stack.outputs import StackOutputs
from infra.worker_groups import find_template
from ray_cluster.contract import GCS_PORT
from tests.hosts import head_group, hosts, template
from tests.node_scripts import node_script


@cache
def cap(stack: str = "prod"):
    return capture(stack, ())


def test_the_head_is_a_group_of_one_from_a_template_like_the_workers():
    c = cap()
    g = head_group(c)["inputs"]
    assert g["minSize"] == g["maxSize"] == g["desiredCapacity"] == 1
    assert g["healthCheckType"] == "EC2" and g["vpcZoneIdentifiers"] == [c.named("net-private")["id"]]
    assert g["name"] == c.outputs["head_group"] == "llmfleet-prod-head"
    lt = find_template(g, [(t["id"], t["inputs"]) for t in c.of_type(template(c)["type"])])
    assert lt is not None and lt["name"] == template(c, "head")["inputs"]["name"]
    assert lt["instanceType"] == c.config.head_instance_type
    assert lt["metadataOptions"]["httpTokens"] == "required"  # IMDSv2 only, as the workers
    assert lt["metadataOptions"] == template(c)["inputs"]["metadataOptions"]
    [root] = lt["blockDeviceMappings"]
    assert root["ebs"]["encrypted"] == "true" and root["ebs"]["volumeType"] == "gp3"
    [nic] = lt["networkInterfaces"]  # an ordinary primary interface: the fixed one attaches at boot
    assert nic["deviceIndex"] == 0 and "networkInterfaceId" not in nic
    assert nic["associatePublicIpAddress"] == "false"
    [head] = hosts(c, "head")
    assert head["inputs"]["tags"]["llmfleet:role"] == "head"


def test_the_head_address_is_a_fixed_interface_in_the_cluster_subnet():
    c = cap()
    eni = c.named("cluster-head-eni")
    ip = head_ip(c.config.vpc_cidr)
    assert eni["inputs"]["privateIps"] == [ip] and eni["outputs"]["privateIp"] == ip
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(subnet_cidrs(c.config.vpc_cidr)["private"])
    assert eni["inputs"]["subnetId"] == c.named("net-private")["id"]
    cluster_sg = next(
        r["id"]
        for r in c.of_type("aws:ec2/securityGroup:SecurityGroup")
        if r["outputs"]["tags"]["llmfleet:sg"] == "cluster"
    )
    assert eni["inputs"]["securityGroups"] == [cluster_sg]
    o = StackOutputs.parse(c.outputs)
    assert o.head_private_ip == ip and o.head_group == "llmfleet-prod-head" and o.head_instance_id is None


def test_workers_join_the_fixed_address_and_the_head_takes_it_at_boot():
    c = cap()
    ip, eni = c.outputs["head_private_ip"], c.named("cluster-head-eni")["id"]
    worker = node_script(c, "worker")
    assert f"{ip}:{GCS_PORT}" in worker
    head = node_script(c, "head")
    assert f"HEAD_ENI={eni}" in head
    assert '--instance-id "${INSTANCE_ID}" --device-index 1' in head
    assert f"ip rule add from {ip} table {HEAD_ENI_TABLE}" in head
    # Ray starts on the fixed address: NODE_IP is set to it after the attach, before the node runs.
    assert head.index(f"NODE_IP={ip}") < head.index('--ip "${NODE_IP}"')
    assert subprocess.run(["bash", "-n"], input=head, text=True, capture_output=True).returncode == 0
    # the workers' script has no attach (only the head's role may take the address)
    assert "attach-network-interface" not in worker


def test_the_nlb_targets_the_fixed_address():
    c = cap()
    [tg] = c.of_type("aws:lb/targetGroup:TargetGroup")
    [att] = c.of_type("aws:lb/targetGroupAttachment:TargetGroupAttachment")
    assert tg["inputs"]["targetType"] == "ip" and att["inputs"]["targetId"] == c.outputs["head_private_ip"]


def test_the_ec2_api_is_reachable_without_internet():
    """The head's attach call goes to the EC2 API: an interface endpoint, as for SSM and ECR."""
    c = cap()
    names = {r["inputs"]["serviceName"] for r in c.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")}
    assert "com.amazonaws.us-east-1.ec2" in names
