"""Cluster: head instance + N GPU worker slots (Auto Scaling groups of one) under the recording mocks."""

from functools import cache

from infra.boot.ami import AMI_OWNERS
from infra.catalog import load_catalog
from infra.components.cluster import BASE_ROOT_GB, root_volume_gb
from infra.program.offline import capture
from infra.stack.resolve import resolve
from tests.hosts import groups, hosts, template
from tests.node_scripts import node_script

INST = "aws:ec2/instance:Instance"
ENI = "aws:ec2/networkInterface:NetworkInterface"


@cache
def cap(stack, *overrides):
    return capture(stack, overrides)


def split(c):
    return hosts(c, "head"), hosts(c, "worker")


def cluster_sg(c):
    return next(
        r["id"]
        for r in c.of_type("aws:ec2/securityGroup:SecurityGroup")
        if r["outputs"]["tags"]["llmfleet:sg"] == "cluster"
    )


def test_prod_head_and_planner_count_of_efa_workers():
    c = cap("prod")
    [head], workers = split(c)
    assert len(workers) == resolve(c.config).plan.nodes == 3
    assert {w["inputs"]["instanceType"] for w in workers} == {"g6e.48xlarge"}
    assert head["inputs"]["instanceType"] == "m7i.2xlarge"
    sg, subnet = cluster_sg(c), c.named("net-private")["id"]
    [pg] = c.of_type("aws:ec2/placementGroup:PlacementGroup")
    assert pg["inputs"]["strategy"] == "cluster"
    # the one interface is the head's fixed address; the workers' template creates the EFA
    # interfaces at each launch
    assert [e["name"] for e in c.of_type(ENI)] == ["cluster-head-eni"]
    assert c.of_type(INST) == []  # the head and every worker slot are groups of one
    for g in groups(c):  # one instance per slot, replaced on a failed EC2 status check
        gi = g["inputs"]
        assert (gi["minSize"], gi["maxSize"], gi["desiredCapacity"]) == (1, 1, 1)
        assert gi["healthCheckType"] == "EC2" and gi["vpcZoneIdentifiers"] == [subnet]
        assert gi["launchTemplate"]["name"] == template(c)["inputs"]["name"]
    for w in workers:
        i = w["inputs"]
        assert i["metadataOptions"]["httpTokens"] == "required"
        assert i["metadataOptions"]["httpPutResponseHopLimit"] == 2
        assert i["rootBlockDevice"]["encrypted"] is True and i["rootBlockDevice"]["volumeType"] == "gp3"
        assert i.get("associatePublicIpAddress") is not True
        assert i["placementGroup"] == pg["inputs"]["name"]
        assert i["subnetId"] == subnet  # the private subnet, in the workers' AZ
        assert "instanceMarketOptions" not in i  # prod: on-demand
        tags = i["tags"]
        assert tags["llmfleet:stack"] == "prod" and tags["Project"] == "llmfleet"
        assert tags["llmfleet:model"] == "deepseek-r1" and tags["llmfleet:quantization"] == "fp8"
        # EFA: one interface per EFA network card, with the cluster SG (the group gives the subnet)
        nics = i["networkInterfaces"]
        assert [n["networkCardIndex"] for n in nics] == [0, 1, 2, 3]
        assert [n["deviceIndex"] for n in nics] == [0, 1, 1, 1]
        for n in nics:
            assert n["interfaceType"] == "efa" and n["securityGroups"] == [sg] and "subnetId" not in n
        assert nics[0]["associatePublicIpAddress"] == "false"
        ud = node_script(c, "worker")
        assert f"--address {c.outputs['head_private_ip']}:6379" in ud
        assert "--num-gpus 8 --gpu-model L40S" in ud and "mdadm --create" in ud
    h = head["inputs"]
    assert h["associatePublicIpAddress"] is False and h["vpcSecurityGroupIds"] == [sg]
    assert h["subnetId"] == subnet and h["metadataOptions"]["httpTokens"] == "required"
    assert h["rootBlockDevice"] == {
        "volumeType": "gp3",
        "volumeSize": BASE_ROOT_GB,
        "encrypted": True,
        "deleteOnTermination": True,
    }
    assert "aws:ec2/getAmi:getAmi" in c.invokes and AMI_OWNERS


def test_dev_spot_workers_without_efa_head_on_demand():
    c = cap("dev")
    [head], workers = split(c)
    assert len(workers) == 2  # two replicas of one host each
    w = workers[0]["inputs"]
    assert w["instanceType"] == "g6.xlarge"
    assert w["associatePublicIpAddress"] is False and w["vpcSecurityGroupIds"] == [cluster_sg(c)]
    assert [n.get("interfaceType") for n in w["networkInterfaces"]] == [None]  # one plain interface
    # Under a group, Spot is one-time + terminate: the group requests the replacement.
    assert w["instanceMarketOptions"] == {
        "marketType": "spot",
        "spotOptions": {"spotInstanceType": "one-time", "instanceInterruptionBehavior": "terminate"},
    }
    assert "instanceMarketOptions" not in head["inputs"]
    assert [e["name"] for e in c.of_type(ENI)] == ["cluster-head-eni"]


def test_explicit_worker_count_and_capacity_reservation():
    c = cap("staging", "workerCount=2", "capacityReservationId=cr-0123456789abcdef0", "rootVolumeGb=300")
    _, workers = split(c)
    assert len(workers) == 2
    for w in workers:
        target = w["inputs"]["capacityReservationSpecification"]["capacityReservationTarget"]
        assert target["capacityReservationId"] == "cr-0123456789abcdef0"
        assert w["inputs"]["rootBlockDevice"]["volumeSize"] == 300


def test_root_volume_holds_weights_only_without_instance_store():
    cat = load_catalog()
    g6e, m7i = cat.instances["g6e.48xlarge"], cat.instances["m7i.2xlarge"]
    assert root_volume_gb(g6e, 642, "worker", None) == BASE_ROOT_GB
    no_nvme = g6e.model_copy(update={"nvme_disks": 0, "nvme_gb": 0})
    assert root_volume_gb(no_nvme, 642, "worker", None) >= BASE_ROOT_GB + 642
    assert root_volume_gb(m7i, 642, "head", None) == BASE_ROOT_GB
    assert root_volume_gb(g6e, 642, "worker", 500) == 500
