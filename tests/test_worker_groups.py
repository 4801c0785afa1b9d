"""infra/worker_groups.py: a worker group + its launch template seen as the instances it runs."""

from __future__ import annotations

import base64

from infra.worker_groups import INSTANCE, group_instances, instance_view, with_group_instances

LT = {
    "type": "aws:ec2/launchTemplate:LaunchTemplate",
    "name": "lt",
    "urn": "urn:lt",
    "inputs": {
        "name": "llmfleet-x-worker",
        "instanceType": "g6e.48xlarge",
        "imageId": "ami-1",
        "userData": base64.b64encode(b"#!/bin/bash\necho boot\n").decode(),
        "blockDeviceMappings": [
            {"deviceName": "/dev/sda1", "ebs": {"volumeSize": 200, "volumeType": "gp3", "encrypted": "true"}},
            {"deviceName": "/dev/sdf", "ebs": {"volumeSize": 50, "encrypted": "false"}},
        ],
        "instanceMarketOptions": {"marketType": "spot"},
        "iamInstanceProfile": {"name": "prof"},
        "placement": {"groupName": "pg"},
        "networkInterfaces": [
            {"deviceIndex": 0, "securityGroups": ["sg-1"], "associatePublicIpAddress": "false"}
        ],
    },
    "outputs": {"id": "lt-123"},
}


def group(rname, n=1, **ref):
    return {
        "type": "aws:autoscaling/group:Group",
        "name": rname,
        "urn": f"urn:{rname}",
        "inputs": {
            "desiredCapacity": n,
            "vpcZoneIdentifiers": ["subnet-1"],
            "launchTemplate": ref or {"name": "llmfleet-x-worker", "version": "3"},
            "tags": [{"key": "llmfleet:role", "value": "worker", "propagateAtLaunch": True}],
        },
    }


def test_instance_view_reads_the_template_as_an_instance():
    v = instance_view(group("g")["inputs"], LT["inputs"])
    assert v["instanceType"] == "g6e.48xlarge" and v["ami"] == "ami-1"
    assert v["userData"] == "#!/bin/bash\necho boot\n"  # the template carries it base64
    assert v["rootBlockDevice"] == {"volumeSize": 200, "volumeType": "gp3", "encrypted": True}
    assert v["ebsBlockDevices"] == [{"deviceName": "/dev/sdf", "volumeSize": 50, "encrypted": False}]
    assert (v["subnetId"], v["placementGroup"], v["iamInstanceProfile"]) == ("subnet-1", "pg", "prof")
    assert v["associatePublicIpAddress"] is False and v["vpcSecurityGroupIds"] == ["sg-1"]
    assert v["tags"] == {"llmfleet:role": "worker"} and v["instanceMarketOptions"] == {"marketType": "spot"}


def test_groups_become_their_instances_by_template_name_or_id():
    res = [LT, group("a"), group("b", 2, id="lt-123"), group("orphan", name="no-such-template")]
    insts = group_instances(res)
    assert [i["name"] for i in insts] == ["a", "b[0]", "b[1]", "orphan"]
    assert all(i["type"] == INSTANCE for i in insts)
    assert [i["inputs"].get("instanceType") for i in insts] == ["g6e.48xlarge"] * 3 + [None]
    # the cost view: each group replaced by its instances, everything else kept in place
    assert [r["name"] for r in with_group_instances(res)] == ["lt", "a", "b[0]", "b[1]", "orphan"]
