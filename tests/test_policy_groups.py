"""The policy pack on GPU workers that are Auto Scaling groups launching from a launch template.

The good stack of tests/test_policies.py with its worker instances replaced by what the program
makes now (one launch template, one group of one per worker slot). Each check that used to read
the worker instances must see the same facts through the template and the groups: remove the
template/group handling from a policy and its case here fails.
"""

from __future__ import annotations

import pytest

from tests.test_policies import TAGS, res, run, set_input
from tests.test_policies import good_stack as instance_stack

LT = "aws:ec2/launchTemplate:LaunchTemplate"
GROUP = "aws:autoscaling/group:Group"


def template(rname: str = "worker-lt", rid: str = "lt-1", **changes) -> dict:
    inputs = dict(
        name="llmfleet-test-worker",
        imageId="ami-1",
        instanceType="g6e.48xlarge",
        metadataOptions={"httpTokens": "required", "httpEndpoint": "enabled"},
        blockDeviceMappings=[
            {"deviceName": "/dev/sda1", "ebs": {"volumeSize": 200, "volumeType": "gp3", "encrypted": "true"}},
            {"deviceName": "/dev/sdf", "ebs": {"volumeSize": 100, "encrypted": "true"}},
        ],
        networkInterfaces=[
            {"deviceIndex": 0, "securityGroups": ["sg-cluster"], "associatePublicIpAddress": "false"}
        ],
        placement={"groupName": "cluster"},
        tags=dict(TAGS),
    )
    inputs.update(changes)
    return res(LT, rname, rid, **inputs)


def group(i: int, **changes) -> dict:
    tags = {**TAGS, "llmfleet:role": "worker", "llmfleet:model": "deepseek-r1", "Name": f"worker-{i}"}
    inputs = dict(
        name=f"llmfleet-test-worker-{i}",
        minSize=1,
        maxSize=1,
        desiredCapacity=1,
        healthCheckType="EC2",
        vpcZoneIdentifiers=["subnet-priv"],
        launchTemplate={"name": "llmfleet-test-worker", "version": "1"},
        tags=[{"key": k, "value": v, "propagateAtLaunch": True} for k, v in tags.items()],
    )
    inputs.update(changes)
    return res(GROUP, f"worker-{i}", f"worker-{i}-asg", **inputs)


def group_stack(workers: int = 3) -> list[dict]:
    base = [r for r in instance_stack() if not r["name"].startswith("worker-")]
    assert len(base) == len(instance_stack()) - 3
    return [*base, template(), *(group(i) for i in range(workers))]


ALL = [
    "ec2-imdsv2-required",
    "ec2-ebs-encrypted",
    "ec2-no-public-ip",
    "ec2-instance-type-allowed",
    "ec2-private-subnet",
    "gpu-fit",
    "worker-placement",
    "monthly-budget",
    "required-tags",
]


@pytest.mark.parametrize("policy", ALL)
def test_group_stack_passes(policy):
    report = run(group_stack(), policy)
    assert not report.violations, report.violations


def _messages(report) -> list[str]:
    return [v.message for v in report.violations]


def test_imdsv2_is_checked_on_the_template():
    s = set_input(group_stack(), "worker-lt", metadataOptions={"httpTokens": "optional"})
    assert any("httpTokens is 'optional'" in m for m in _messages(run(s, "ec2-imdsv2-required")))


def test_encryption_is_checked_on_the_template():
    s = group_stack()
    set_input(
        s, "worker-lt", blockDeviceMappings=[{"deviceName": "/dev/sda1", "ebs": {"encrypted": "false"}}]
    )
    [v] = run(s, "ec2-ebs-encrypted").violations
    assert v.resource == "worker-lt" and "ebs.encrypted is 'false'" in v.message
    # an unset flag is unencrypted too (EBS default encryption is an account setting, not ours)
    set_input(s, "worker-lt", blockDeviceMappings=[{"deviceName": "/dev/sdf", "ebs": {"volumeSize": 10}}])
    assert run(s, "ec2-ebs-encrypted").violations


def test_public_ip_and_instance_type_are_checked_on_the_template():
    s = set_input(
        group_stack(), "worker-lt", networkInterfaces=[{"deviceIndex": 0, "associatePublicIpAddress": "true"}]
    )
    assert any("associatePublicIpAddress is true" in m for m in _messages(run(s, "ec2-no-public-ip")))
    s = set_input(group_stack(), "worker-lt", instanceType="x2iedn.32xlarge")
    assert any("x2iedn.32xlarge" in m for m in _messages(run(s, "ec2-instance-type-allowed")))


def test_gpu_fit_counts_the_groups_instances():
    # R1 FP8 needs 3 x g6e.48xlarge; two slots do not fit (and no workers at all would be "not applicable")
    [v] = run(group_stack(workers=2), "gpu-fit").violations
    assert "needs at least 3 nodes" in v.message
    big = group_stack(workers=2)
    set_input(big, "worker-0", desiredCapacity=2, minSize=2, maxSize=2)  # a group of two counts twice
    assert not run(big, "gpu-fit").violations


def test_budget_prices_the_groups_instances():
    # 3 x g6e.48xlarge on demand is ~66,000 USD a month; the rest of this stack is far below 1,000.
    report = run(group_stack(), "monthly-budget", {"monthly-budget": {"maxMonthlyUsd": 1000}})
    [v] = report.violations
    assert "exceeds maxMonthlyUsd $1,000.00" in v.message
    total = float(v.message.split("$", 1)[1].split("/", 1)[0].replace(",", ""))
    same = run(instance_stack(), "monthly-budget", {"monthly-budget": {"maxMonthlyUsd": 1000}})
    # the same workers as instances cost the same (root volumes and instance-hours)
    assert same.violations[0].message.split("/")[0] == v.message.split("/")[0] and total > 60_000


def test_placement_and_private_subnet_follow_the_groups():
    s = group_stack()
    s.append(res("aws:ec2/placementGroup:PlacementGroup", "spread", "pg-spread", strategy="spread"))
    s.append(template("other-lt", "lt-2", name="llmfleet-test-other", placement={"groupName": "spread"}))
    set_input(s, "worker-2", launchTemplate={"name": "llmfleet-test-other", "version": "1"})
    msgs = _messages(run(s, "worker-placement"))
    assert any("spread over placement groups" in m for m in msgs), msgs
    s = group_stack()
    set_input(s, "private", mapPublicIpOnLaunch=True)
    assert any("worker-0: subnet private is public" in m for m in _messages(run(s, "ec2-private-subnet")))


def test_required_tags_read_the_groups_tag_list():
    s = group_stack()
    set_input(s, "worker-1", tags=[{"key": "Project", "value": "llmfleet", "propagateAtLaunch": True}])
    [v] = run(s, "required-tags").violations
    assert v.resource == "worker-1" and "llmfleet:stack" in v.message


def test_a_groups_instances_are_hosts_named_after_it_and_reported_on_it():
    from policy._stackview import StackView
    from policy.runner import policy_resources

    s = group_stack(workers=2)
    set_input(s, "worker-1", desiredCapacity=2, minSize=2, maxSize=2)
    hosts = StackView.of(policy_resources(s)).hosts()
    workers = [h for h in hosts if h.group is not None]
    assert [(h.name, h.type) for h in workers] == [
        ("worker-0", "aws:ec2/instance:Instance"),
        ("worker-1[0]", "aws:ec2/instance:Instance"),
        ("worker-1[1]", "aws:ec2/instance:Instance"),
    ]
    assert workers[0].props["instanceType"] == "g6e.48xlarge"  # the template's, seen as the instance's
    set_input(s, "private", mapPublicIpOnLaunch=True)
    found = [(v.resource, v.message.split(":")[0]) for v in run(s, "ec2-private-subnet").violations]
    # each instance a group keeps running is reported on the group (its URN), under its own name
    assert found == [
        ("head", "head"),
        ("worker-0", "worker-0"),
        ("worker-1", "worker-1[0]"),
        ("worker-1", "worker-1[1]"),
    ]


def test_a_groups_subnets_by_id_outside_the_stack_or_in_a_preview_by_dependency():
    from policy._props import UNKNOWN
    from policy._stackview import StackView
    from policy.network import instance_subnets
    from policy.runner import policy_resources
    from tests.test_policies import UNKNOWN_PLACEHOLDER

    def subnets(stack, *deps):
        built = {r.name: r for r in policy_resources(stack)}
        built["worker-0"].property_dependencies = {"vpcZoneIdentifiers": [built[d] for d in deps]}
        view = StackView.of(list(built.values()))
        [host] = [h for h in view.hosts() if h.name == "worker-0"]
        return [s.name if s not in (None, UNKNOWN) else s for s in instance_subnets(view, host)]

    public = res("aws:ec2/subnet:Subnet", "public", "subnet-pub", vpcId="vpc-1", mapPublicIpOnLaunch=True)
    s = [*group_stack(), public]
    assert subnets(s) == ["private"]
    set_input(s, "worker-0", vpcZoneIdentifiers=["subnet-outside", "subnet-pub"])
    assert subnets(s) == [None, "public"]  # outside the stack: not checkable here
    set_input(s, "worker-0", vpcZoneIdentifiers=[UNKNOWN_PLACEHOLDER])
    assert subnets(s) == [UNKNOWN] and subnets(s, "public", "vpc") == ["public"]


def test_budget_finds_a_groups_template_by_its_id_too():
    # a deployed stack's group names its launch template by id (the template's output)
    by_name = run(group_stack(), "monthly-budget", {"monthly-budget": {"maxMonthlyUsd": 1000}})
    s = group_stack()
    for i in range(3):
        set_input(s, f"worker-{i}", launchTemplate={"id": "lt-1", "version": "1"})
    by_id = run(s, "monthly-budget", {"monthly-budget": {"maxMonthlyUsd": 1000}})
    [a], [b] = by_name.violations, by_id.violations
    assert a.message == b.message and "exceeds maxMonthlyUsd $1,000.00" in b.message
