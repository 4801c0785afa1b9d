"""Every policy of the pack: a resource set that violates it, and one that passes.

Resources are hand-built in the offline engine's capture shape and go through the runner's
builders, so each policy's real `validate` sees real CrossGuard argument objects (proxied props).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.boot.node_apply import pack_script
from policy import policies as pack
from policy._props import UNKNOWN
from policy.resources import iam_document_problems
from policy.runner import run_policies
from tests.captures import shared_captures  # noqa: F401 - the fixture, by name

REPO = Path(__file__).resolve().parent.parent
TAGS = {"Project": "llmfleet", "llmfleet:stack": "test"}
UNKNOWN_PLACEHOLDER = "[unknown]"
RECOVER = "arn:aws:automate:us-east-1:ec2:recover"
TOPIC = "arn:aws:sns:us-east-1:123456789012:llmfleet-alarms"


def res(rtype: str, name: str, rid: str | None = None, /, **inputs):
    inputs.setdefault("tags", dict(TAGS)) if rtype in TAGGABLE else None
    rid = rid or f"{name}-id"
    return {
        "type": rtype,
        "name": name,
        "parent": None,
        "urn": f"urn:pulumi:test::llmfleet::{rtype}::{name}",
        "inputs": inputs,
        "outputs": {**inputs, "id": rid},
        "id": rid,
    }


TAGGABLE = {
    "aws:cloudwatch/logGroup:LogGroup",
    "aws:ec2/instance:Instance",
    "aws:ec2/vpc:Vpc",
    "aws:ec2/subnet:Subnet",
    "aws:ec2/securityGroup:SecurityGroup",
    "aws:ecr/repository:Repository",
    "aws:s3/bucketV2:BucketV2",
    "aws:ec2/placementGroup:PlacementGroup",
    "aws:iam/policy:Policy",
    "aws:ebs/volume:Volume",
    "aws:ec2/routeTable:RouteTable",
    "aws:cloudwatch/metricAlarm:MetricAlarm",
}

GOOD_IAM = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["ecr:GetAuthorizationToken", "ssmmessages:OpenDataChannel"],
            "Resource": "*",
        },
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:ListBucket"],
            "Resource": ["arn:aws:s3:::w", "arn:aws:s3:::w/*"],
        },
    ],
}


def instance(name: str, itype: str, role: str, **extra):
    base = dict(
        instanceType=itype,
        subnetId="subnet-priv",
        placementGroup="pg-cluster",
        metadataOptions={"httpTokens": "required", "httpEndpoint": "enabled"},
        rootBlockDevice={"encrypted": True, "volumeSize": 200, "volumeType": "gp3"},
        ebsBlockDevices=[{"deviceName": "/dev/sdf", "encrypted": True, "volumeSize": 100}],
        associatePublicIpAddress=False,
        tags={**TAGS, "llmfleet:role": role, "llmfleet:model": "deepseek-r1"},
    )
    base.update(extra)
    return res("aws:ec2/instance:Instance", name, **base)


def good_stack() -> list[dict]:
    """A compliant fleet: deepseek-r1 FP8 on 3x g6e.48xlarge, private, one placement group."""
    return [
        res("aws:ec2/vpc:Vpc", "vpc", "vpc-1", cidrBlock="10.42.0.0/16"),
        res(
            "aws:ec2/subnet:Subnet",
            "private",
            "subnet-priv",
            vpcId="vpc-1",
            cidrBlock="10.42.1.0/24",
            availabilityZone="us-east-1a",
            mapPublicIpOnLaunch=False,
        ),
        res("aws:ec2/routeTable:RouteTable", "private-rt", "rtb-priv", vpcId="vpc-1", routes=[]),
        res(
            "aws:ec2/routeTableAssociation:RouteTableAssociation",
            "private-rta",
            subnetId="subnet-priv",
            routeTableId="rtb-priv",
        ),
        res(
            "aws:ec2/securityGroup:SecurityGroup",
            "cluster-sg",
            "sg-cluster",
            vpcId="vpc-1",
            tags={**TAGS, "llmfleet:sg": "cluster"},
        ),
        res(
            "aws:ec2/securityGroup:SecurityGroup",
            "endpoint-sg",
            "sg-endpoint",
            vpcId="vpc-1",
            tags={**TAGS, "llmfleet:sg": "endpoint"},
        ),
        res(
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
            "cluster-all",
            securityGroupId="sg-cluster",
            referencedSecurityGroupId="sg-cluster",
            ipProtocol="-1",
        ),
        res(
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
            "endpoint-in",
            securityGroupId="sg-endpoint",
            cidrIpv4="10.0.0.0/8",
            ipProtocol="tcp",
            fromPort=8000,
            toPort=8000,
        ),
        res(
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
            "head-from-endpoint",
            securityGroupId="sg-cluster",
            referencedSecurityGroupId="sg-endpoint",
            ipProtocol="tcp",
            fromPort=8000,
            toPort=8000,
        ),
        res("aws:ec2/placementGroup:PlacementGroup", "cluster", "pg-cluster", strategy="cluster"),
        instance("head", "m7i.2xlarge", "head", placementGroup=None),
        *[instance(f"worker-{i}", "g6e.48xlarge", "worker") for i in range(3)],
        res("aws:ebs/volume:Volume", "scratch", availabilityZone="us-east-1a", size=100, encrypted=True),
        res(
            "aws:ecr/repository:Repository",
            "repo",
            imageScanningConfiguration={"scanOnPush": True},
            imageTagMutability="IMMUTABLE",
            encryptionConfigurations=[{"encryptionType": "AES256"}],
        ),
        res("aws:s3/bucketV2:BucketV2", "weights", "weights-bucket-id", bucket="weights-bucket-id"),
        res(
            "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
            "weights-pab",
            bucket="weights-bucket-id",
            blockPublicAcls=True,
            blockPublicPolicy=True,
            ignorePublicAcls=True,
            restrictPublicBuckets=True,
        ),
        res(
            "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2",
            "weights-sse",
            bucket="weights-bucket-id",
            rules=[{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms"}}],
        ),
        res("aws:iam/policy:Policy", "node-policy", policy=json.dumps(GOOD_IAM)),
        res("aws:cloudwatch/logGroup:LogGroup", "boot-logs", name="/llmfleet/test/boot", retentionInDays=30),
        # the head's status-check alarm with llmfleet:alarmTopicArn set: EC2 recovers it, a person hears of it
        res(
            "aws:cloudwatch/metricAlarm:MetricAlarm",
            "head-alarm",
            metricName="StatusCheckFailed_System",
            dimensions={"InstanceId": "head-id"},
            alarmActions=[RECOVER, TOPIC],
            okActions=[TOPIC],
        ),
        # not AWS tags: docker-build's `tags` are image references
        res("docker-build:index:Image", "image", tags=["123.dkr.ecr/llmfleet:abc"], push=True),
    ]


CONFIG = {
    "security-group-ingress": {
        "allowedIngressCidrs": ["10.0.0.0/8"],
        "endpointPublic": False,
        "endpointPort": 8000,
    },
    "gpu-fit": {"model": "deepseek-r1", "quantization": None, "maxModelLen": 8192},
    "monthly-budget": {"maxMonthlyUsd": 100_000, "region": "us-east-1", "model": "deepseek-r1"},
}


def run(resources, policy: str, config=None):
    cfg = copy.deepcopy(CONFIG)
    for name, block in (config or {}).items():
        cfg.setdefault(name, {}).update(block)
    return run_policies(resources, cfg, policies=[pack.by_name()[policy]])


def named(resources, name):
    return next(r for r in resources if r["name"] == name)


def set_input(resources, name, **changes):
    r = named(resources, name)
    for k, v in changes.items():
        r["inputs"][k] = v
        r["outputs"][k] = v
    return resources


def add(resources, *new):
    return resources + list(new)


# (policy, how to break the good stack, a word the message must contain)
# A head node script whose Serve config (infra.rayconf.serve_config.to_yaml) turns it on.
REMOTE_CODE = (
    "cat > /etc/llmfleet/serve.yaml <<'E'\n      engine_kwargs:\n        trust_remote_code: true\nE\n"
)

# A head node script whose Serve config serves R1 with an 8k context (below the 16k floor).
SHORT_CONTEXT = (
    "cat > /etc/llmfleet/serve.yaml <<'E'\n    model_loading_config:\n      model_id: deepseek-ai/DeepSeek-R1\n"
    "      model_source: /opt/llmfleet/models/deepseek-r1\n    engine_kwargs:\n      max_model_len: 8192\nE\n"
)

BREAKERS = [
    (
        "schedule-serves",
        lambda s: add(
            s,
            res(
                "aws:autoscaling/schedule:Schedule",
                "worker-0-down-0",
                autoscalingGroupName="llmfleet-prod-worker-0",
                scheduledActionName="llmfleet-down-0",
                recurrence="0 20 * * 1,2,3,4,5",
                timeZone="UTC",
                minSize=0,
                maxSize=1,
                desiredCapacity=0,
            ),
        ),
        "only scale it to zero",
    ),
    (
        "host-role-secrets-scoped",
        lambda s: add(s, *host_role("arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore")),
        "ssm:GetParameter, ssm:GetParameters on '*'",
    ),
    (
        "host-role-policies-known",
        lambda s: add(s, *host_role("arn:aws:iam::aws:policy/AmazonSSMFullAccess")),
        "AmazonSSMFullAccess",
    ),
    (
        "ec2-imdsv2-required",
        lambda s: set_input(s, "worker-0", metadataOptions={"httpTokens": "optional"}),
        "httpTokens",
    ),
    (
        "ec2-ebs-encrypted",
        lambda s: set_input(s, "head", rootBlockDevice={"encrypted": False}),
        "rootBlockDevice",
    ),
    (
        "ec2-ebs-encrypted",
        lambda s: set_input(s, "worker-1", ebsBlockDevices=[{"deviceName": "/dev/sdg"}]),
        "/dev/sdg",
    ),
    (
        "ec2-no-public-ip",
        lambda s: set_input(s, "head", associatePublicIpAddress=True),
        "associatePublicIpAddress",
    ),
    (
        "ec2-instance-type-allowed",
        lambda s: set_input(s, "head", instanceType="x2iedn.32xlarge"),
        "x2iedn.32xlarge",
    ),
    ("ebs-volume-encrypted", lambda s: set_input(s, "scratch", encrypted=False), "encrypted"),
    (
        "ecr-repository-hardened",
        lambda s: set_input(s, "repo", imageScanningConfiguration={"scanOnPush": False}),
        "scanOnPush",
    ),
    ("ecr-repository-hardened", lambda s: set_input(s, "repo", imageTagMutability="MUTABLE"), "IMMUTABLE"),
    ("ecr-repository-hardened", lambda s: set_input(s, "repo", encryptionConfigurations=None), "encryption"),
    (
        "iam-least-privilege",
        lambda s: set_input(
            s,
            "node-policy",
            policy=json.dumps({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
        ),
        "wildcard action *",
    ),
    (
        "iam-least-privilege",
        lambda s: set_input(
            s,
            "node-policy",
            policy=json.dumps(
                {"Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}
            ),
        ),
        "s3:GetObject",
    ),
    (
        "iam-least-privilege",
        lambda s: add(
            s,
            res(
                "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
                "admin",
                role="r",
                policyArn="arn:aws:iam::aws:policy/AdministratorAccess",
            ),
        ),
        "administrator",
    ),
    (
        "iam-least-privilege",
        lambda s: add(
            s,
            res(
                "aws:iam/role:Role",
                "role",
                assumeRolePolicy="{}",
                inlinePolicies=[
                    {
                        "name": "inline",
                        "policy": json.dumps(
                            {"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
                        ),
                    }
                ],
            ),
        ),
        "inlinePolicies[inline]",
    ),
    ("required-tags", lambda s: set_input(s, "scratch", tags={"Project": "llmfleet"}), "llmfleet:stack"),
    (
        "required-tags",
        lambda s: add(s, res("aws:lb/loadBalancer:LoadBalancer", "nlb", internal=True)),
        "Project",
    ),
    ("ec2-private-subnet", lambda s: set_input(s, "private", mapPublicIpOnLaunch=True), "public"),
    (
        "ec2-private-subnet",
        lambda s: add(
            s,
            res("aws:ec2/internetGateway:InternetGateway", "igw", "igw-1", vpcId="vpc-1"),
            res(
                "aws:ec2/route:Route",
                "default-route",
                routeTableId="rtb-priv",
                destinationCidrBlock="0.0.0.0/0",
                gatewayId="igw-1",
            ),
        ),
        "internet gateway",
    ),
    ("ec2-private-subnet", lambda s: set_input(s, "worker-2", subnetId=None), "default VPC"),
    # EFA hosts attach ENIs instead of a subnetId: the ENI's subnet counts
    (
        "ec2-private-subnet",
        lambda s: add(
            set_input(
                s,
                "worker-2",
                subnetId=None,
                networkInterfaces=[{"networkInterfaceId": "eni-0", "deviceIndex": 0}],
            ),
            res("aws:ec2/networkInterface:NetworkInterface", "efa-0", "eni-0", subnetId="subnet-pub"),
            res("aws:ec2/subnet:Subnet", "public", "subnet-pub", vpcId="vpc-1", mapPublicIpOnLaunch=True),
        ),
        "subnet public",
    ),
    (
        "security-group-ingress",
        lambda s: add(
            s,
            res(
                "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
                "open-ssh",
                securityGroupId="sg-cluster",
                cidrIpv4="10.42.0.0/16",
                ipProtocol="tcp",
                fromPort=22,
                toPort=22,
            ),
        ),
        "22 (SSH)",
    ),
    (
        "security-group-ingress",
        lambda s: add(
            s,
            res(
                "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
                "dash-from-endpoint",
                securityGroupId="sg-cluster",
                referencedSecurityGroupId="sg-endpoint",
                ipProtocol="tcp",
                fromPort=8265,
                toPort=8265,
            ),
        ),
        "not the cluster security group",
    ),
    (
        "security-group-ingress",
        lambda s: add(
            s,
            res(
                "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
                "world-https",
                securityGroupId="sg-endpoint",
                cidrIpv6="::/0",
                ipProtocol="tcp",
                fromPort=443,
                toPort=443,
            ),
        ),
        "::/0",
    ),
    (
        "security-group-ingress",
        lambda s: set_input(
            s,
            "endpoint-sg",
            ingress=[{"protocol": "tcp", "fromPort": 15000, "toPort": 15010, "cidrBlocks": ["10.1.0.0/16"]}],
        ),
        "Ray worker ports",
    ),
    (
        "security-group-ingress",
        lambda s: add(
            s,
            res(
                "aws:ec2/securityGroupRule:SecurityGroupRule",
                "legacy",
                type="ingress",
                securityGroupId="sg-endpoint",
                protocol="tcp",
                fromPort=8000,
                toPort=8000,
                cidrBlocks=["192.0.2.0/24"],
            ),
        ),
        "outside the VPC and the allowed CIDRs",
    ),
    ("gpu-fit", lambda s: [r for r in s if r["name"] != "worker-2"], "memory"),
    ("gpu-fit", lambda s: set_input(s, "worker-0", instanceType="g6e.12xlarge"), "one known instance type"),
    ("monthly-budget", lambda s: s, "exceeds maxMonthlyUsd"),  # the config below lowers the limit
    ("worker-placement", lambda s: set_input(s, "worker-1", placementGroup=None), "no placement group"),
    (
        "worker-placement",
        lambda s: add(
            set_input(s, "worker-1", subnetId="subnet-b"),
            res(
                "aws:ec2/subnet:Subnet",
                "private-b",
                "subnet-b",
                vpcId="vpc-1",
                cidrBlock="10.42.2.0/24",
                availabilityZone="us-east-1b",
            ),
        ),
        "availability zones",
    ),
    ("worker-placement", lambda s: set_input(s, "cluster", strategy="spread"), "'cluster'"),
    # `placementGroup` names the group (the program passes PlacementGroup.name)
    (
        "worker-placement",
        lambda s: (
            [set_input(s, w, placementGroup="workers-pg") for w in ("worker-0", "worker-1", "worker-2")][-1]
            + [
                res(
                    "aws:ec2/placementGroup:PlacementGroup",
                    "pg2",
                    "pg-2",
                    name="workers-pg",
                    strategy="partition",
                )
            ]
        ),
        "'partition'",
    ),
    (
        "log-group-retention",
        lambda s: set_input(s, "boot-logs", retentionInDays=None),
        "keep every event forever",
    ),
    (
        "log-group-retention",
        lambda s: set_input(s, "boot-logs", retentionInDays=0),
        "retentionInDays is not set",
    ),
    (
        "log-group-retention",
        lambda s: set_input(s, "boot-logs", retentionInDays=10),
        "not a CloudWatch value",
    ),
    ("s3-bucket-hardened", lambda s: [r for r in s if r["name"] != "weights-pab"], "BucketPublicAccessBlock"),
    (
        "s3-bucket-hardened",
        lambda s: set_input(s, "weights-pab", restrictPublicBuckets=False),
        "restrictPublicBuckets",
    ),
    ("s3-bucket-hardened", lambda s: [r for r in s if r["name"] != "weights-sse"], "encryption"),
    # An internal endpoint's port from ::/0: the IPv6 world is the world too.
    (
        "security-group-ingress",
        lambda s: add(
            s,
            res(
                "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
                "endpoint-v6-world",
                securityGroupId="sg-endpoint",
                cidrIpv6="::/0",
                ipProtocol="tcp",
                fromPort=8000,
                toPort=8000,
            ),
        ),
        "::/0; the internet may reach only the endpoint port of an explicitly public endpoint",
    ),
    # A range that only overlaps Ray's worker ports (10002-19999) at one end.
    (
        "security-group-ingress",
        lambda s: add(
            s,
            res(
                "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
                "wide-range",
                securityGroupId="sg-cluster",
                cidrIpv4="10.1.0.0/16",
                ipProtocol="tcp",
                fromPort=12000,
                toPort=30000,
            ),
        ),
        "12000-19999 (Ray worker ports)",
    ),
    # A range around single Ray ports (GCS 6379, object/node manager, dashboard) from another SG.
    (
        "security-group-ingress",
        lambda s: add(
            s,
            res(
                "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
                "range-around-gcs",
                securityGroupId="sg-cluster",
                referencedSecurityGroupId="sg-endpoint",
                ipProtocol="tcp",
                fromPort=6000,
                toPort=9000,
            ),
        ),
        "6379 (Ray GCS), 8076 (Ray object manager), 8077 (Ray node manager), 8265 (Ray dashboard)",
    ),
    # The S3 check on the bucket type the program creates (aws:s3/bucket:Bucket), not only BucketV2.
    (
        "s3-bucket-hardened",
        lambda s: [r for r in as_bucket_v1(s) if r["name"] != "weights-pab"],
        "weights: no BucketPublicAccessBlock",
    ),
    (
        "s3-bucket-hardened",
        lambda s: [r for r in as_bucket_v1(s) if r["name"] != "weights-sse"],
        "weights: no server-side encryption",
    ),
    (
        "s3-bucket-hardened",
        lambda s: set_input(
            as_bucket_v1(s),
            "weights-sse",
            rules=[{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "none"}}],
        ),
        "sseAlgorithm 'none'",
    ),
    ("alarm-notifies", lambda s: set_input(s, "head-alarm", alarmActions=[RECOVER]), "no SNS topic"),
    (
        "alarm-notifies",
        lambda s: add(
            s,
            res(
                "aws:cloudwatch/metricAlarm:MetricAlarm",
                "slot-alarm",
                metricName="GroupInServiceInstances",
                dimensions={"AutoScalingGroupName": "llmfleet-test-worker-0"},
            ),
        ),
        "nobody is notified when this alarm fires (no alarmActions); set llmfleet:alarmTopicArn",
    ),
    (
        "endpoint-tls-public",
        lambda s: add(s, *nlb(internal=False, protocol="TCP")),
        "clear text",
    ),
    (
        "endpoint-tls-public",
        lambda s: add(s, *nlb(internal=False, protocol="TLS", sslPolicy="ELBSecurityPolicy-2016-08")),
        "ELBSecurityPolicy-2016-08",
    ),
    (
        "endpoint-tls-internal",
        lambda s: add(s, *nlb(internal=True, protocol="TCP")),
        "clear text",
    ),
    (
        "trust-remote-code",
        lambda s: add(
            s, res("aws:ssm/parameter:Parameter", "node-head", insecureValue=pack_script(REMOTE_CODE))
        ),
        "the Serve config sets trust_remote_code",
    ),
    (
        "trust-remote-code",
        lambda s: add(s, res("command:remote:Command", "hosts-head", create=REMOTE_CODE)),
        "runs the checkpoint's own Python",
    ),
    (
        "reasoning-model-context",
        lambda s: add(
            s, res("aws:ssm/parameter:Parameter", "node-head", insecureValue=pack_script(SHORT_CONTEXT))
        ),
        "max_model_len 8,192 is below 16,384 for the reasoning model deepseek-r1",
    ),
    (
        "reasoning-model-context",
        lambda s: add(s, res("command:remote:Command", "hosts-head", create=SHORT_CONTEXT)),
        "get cut off",
    ),
]


def as_bucket_v1(stack):
    """The good stack with the bucket types the program really creates (Bucket + the non-V2 SSE)."""
    out = []
    for r in stack:
        r = copy.deepcopy(r)
        if r["type"] == "aws:s3/bucketV2:BucketV2":
            r["type"] = "aws:s3/bucket:Bucket"
        elif r["type"].endswith("BucketServerSideEncryptionConfigurationV2"):
            r["type"] = (
                "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
            )
        r["urn"] = f"urn:pulumi:test::llmfleet::{r['type']}::{r['name']}"
        out.append(r)
    return out


def nlb(internal: bool, protocol: str, **listener):
    arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/net/nlb/1"
    return (
        res(
            "aws:lb/loadBalancer:LoadBalancer", "nlb", internal=internal, loadBalancerType="network", arn=arn
        ),
        res(
            "aws:lb/listener:Listener",
            "listener",
            loadBalancerArn=arn,
            port=8000,
            protocol=protocol,
            **listener,
        ),
    )


def host_role(policy_arn: str) -> tuple[dict, dict]:
    """A role EC2 assumes, with one managed policy attached."""
    trust = {
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ]
    }
    return (
        res(
            "aws:iam/role:Role",
            "nodes",
            "nodes",
            name="nodes",
            assumeRolePolicy=json.dumps(trust),
            tags=dict(TAGS),
        ),
        res(
            "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
            "nodes-attach",
            role="nodes",
            policyArn=policy_arn,
        ),
    )


BREAK_CONFIG = {"monthly-budget": {"monthly-budget": {"maxMonthlyUsd": 1000}}}


@pytest.mark.parametrize("policy", [p.name for p in pack.POLICIES])
def test_good_stack_passes(policy):
    report = run(good_stack(), policy)
    assert report.violations == (), report.violations


# Policies that read only the StackConfig (the plan's cold start against the windows): the
# offline runner's `stack=` drives them, in tests/test_scale_to_zero.py.
STACK_CONFIG_ONLY = {"schedule-window-cold-start"}


def test_every_policy_has_a_violating_case():
    assert {p for p, _, _ in BREAKERS} | STACK_CONFIG_ONLY == {p.name for p in pack.POLICIES}


@pytest.mark.parametrize(
    ("policy", "breaker", "word"), BREAKERS, ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(BREAKERS)]
)
def test_broken_stack_violates(policy, breaker, word):
    report = run(breaker(good_stack()), policy, BREAK_CONFIG.get(policy))
    assert report.violations, f"{policy} did not fire"
    assert any(word in v.message for v in report.violations), report.violations
    assert {v.policy for v in report.violations} == {policy}
    level = pack.by_name()[policy].enforcement_level.value
    assert {v.enforcement for v in report.violations} == {level}


def test_bucket_v1_good_stack_passes_and_tls_listeners_pass():
    assert run(as_bucket_v1(good_stack()), "s3-bucket-hardened").violations == ()
    tls = add(
        good_stack(), *nlb(internal=False, protocol="TLS", sslPolicy="ELBSecurityPolicy-TLS13-1-2-2021-06")
    )
    for policy in ("endpoint-tls-public", "endpoint-tls-internal"):
        assert run(tls, policy).violations == ()


def test_s3_policy_checks_the_bucket_the_program_creates():
    """The real prod capture: its bucket is aws:s3/bucket:Bucket; without its public access
    block the policy must fire."""
    from tests.captures import capture

    c = capture("prod")
    assert [b["type"] for b in c.resources if b["type"].startswith("aws:s3/bucket")][
        0
    ] == "aws:s3/bucket:Bucket"
    assert run(c.resources, "s3-bucket-hardened").violations == ()
    stripped = [
        r for r in c.resources if r["type"] != "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
    ]
    [v] = run(stripped, "s3-bucket-hardened").violations
    assert "no BucketPublicAccessBlock" in v.message and v.resource == "weights-bucket"


def test_alarm_policy_on_the_prod_capture_fires_without_a_topic_and_is_silent_with_one():
    """Prod as shipped: its five alarms (the head group's, three worker slots, the Serve app's)
    notify nobody. With llmfleet:alarmTopicArn each notifies the topic; take the topic off one slot
    alarm and that alarm alone is reported."""
    from tests.captures import capture

    alarms = {
        "cluster-head-status-alarm",
        *(f"cluster-worker-{i}-status-alarm" for i in range(3)),
        "cluster-head-app-alarm",
    }
    bare = run(capture("prod").resources, "alarm-notifies")
    assert {v.resource for v in bare.violations} == alarms and bare.advisory == 5
    [head] = [v for v in bare.violations if v.resource == "cluster-head-status-alarm"]
    assert "no alarmActions" in head.message  # the group replaces the head; the alarm only tells
    told = capture("prod", [f"llmfleet:alarmTopicArn={TOPIC}"])
    assert run(told.resources, "alarm-notifies").violations == ()
    resources = copy.deepcopy(told.resources)
    set_input(resources, "cluster-worker-1-status-alarm", alarmActions=[])
    [v] = run(resources, "alarm-notifies").violations
    assert (v.resource, v.enforcement) == ("cluster-worker-1-status-alarm", "advisory")
    assert "no alarmActions" in v.message


def test_alarm_policy_skips_a_topic_unknown_during_preview():
    # a topic created in the same stack has no ARN in a preview: checked at `up`, not reported
    stack = set_input(good_stack(), "head-alarm", alarmActions=[RECOVER, UNKNOWN_PLACEHOLDER])
    assert run(stack, "alarm-notifies").violations == ()
    stack = set_input(good_stack(), "head-alarm", alarmActions=UNKNOWN_PLACEHOLDER)
    assert run(stack, "alarm-notifies").violations == ()
    # another partition's topic notifies too
    stack = set_input(good_stack(), "head-alarm", alarmActions=["arn:aws-cn:sns:cn-north-1:123456789012:a"])
    assert run(stack, "alarm-notifies").violations == ()


def test_ray_gcs_from_world_fails_even_on_public_endpoint():
    stack = add(
        good_stack(),
        res(
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
            "gcs-world",
            securityGroupId="sg-cluster",
            cidrIpv4="0.0.0.0/0",
            ipProtocol="tcp",
            fromPort=6379,
            toPort=6379,
        ),
    )
    cfg = {"security-group-ingress": {"endpointPublic": True, "allowedIngressCidrs": ["0.0.0.0/0"]}}
    report = run(stack, "security-group-ingress", cfg)
    assert [v.resource for v in report.violations] == ["gcs-world"]
    assert "6379 (Ray GCS)" in report.violations[0].message


def test_world_on_endpoint_port_only_when_explicitly_public():
    stack = add(
        good_stack(),
        res(
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
            "endpoint-world",
            securityGroupId="sg-endpoint",
            cidrIpv4="0.0.0.0/0",
            ipProtocol="tcp",
            fromPort=8000,
            toPort=8000,
        ),
    )
    public = {"security-group-ingress": {"endpointPublic": True, "allowedIngressCidrs": ["0.0.0.0/0"]}}
    assert run(stack, "security-group-ingress", public).violations == ()
    private = run(stack, "security-group-ingress")
    assert [v.resource for v in private.violations] == ["endpoint-world"]


@pytest.mark.parametrize("ports", [(8001, 8001), (443, 443), (8000, 8001), (7999, 8000), (0, 65535)])
def test_world_on_any_other_port_fails_even_on_a_public_endpoint(ports):
    rule = res(
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
        "world",
        securityGroupId="sg-endpoint",
        cidrIpv4="0.0.0.0/0",
        ipProtocol="tcp",
        fromPort=ports[0],
        toPort=ports[1],
    )
    public = {"security-group-ingress": {"endpointPublic": True, "allowedIngressCidrs": ["0.0.0.0/0"]}}
    report = run(add(good_stack(), rule), "security-group-ingress", public)
    assert [v.resource for v in report.violations] == ["world"]
    assert "0.0.0.0/0" in report.violations[0].message


def _default_route(how: str, gateway: str, cidr: str = "0.0.0.0/0"):
    """The good stack with a route from its private subnet's route table to `gateway`: inline in
    the table's routes, or as an aws:ec2/route:Route (IPv4 or IPv6 destination)."""
    gateways = [
        res("aws:ec2/internetGateway:InternetGateway", "igw", "gw-in-stack", vpcId="vpc-1"),
        res("aws:ec2/natGateway:NatGateway", "nat", "nat-in-stack", subnetId="subnet-priv"),
    ]
    stack = add(good_stack(), *gateways)
    v6 = ":" in cidr
    if how == "inline":
        route = {"ipv6CidrBlock" if v6 else "cidrBlock": cidr, "gatewayId": gateway}
        return set_input(stack, "private-rt", routes=[route])
    dest = "destinationIpv6CidrBlock" if v6 else "destinationCidrBlock"
    return add(
        stack, res("aws:ec2/route:Route", "r", routeTableId="rtb-priv", gatewayId=gateway, **{dest: cidr})
    )


@pytest.mark.parametrize("how", ["inline", "route"])
@pytest.mark.parametrize("gateway", ["igw-0123", "gw-in-stack"])  # outside the stack, or its own IGW
@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0"])
def test_a_default_route_to_an_internet_gateway_makes_the_subnet_public(how, gateway, cidr):
    report = run(_default_route(how, gateway, cidr), "ec2-private-subnet")
    assert sorted(v.resource for v in report.violations) == ["head", "worker-0", "worker-1", "worker-2"]
    assert "subnet private is public" in report.violations[0].message


@pytest.mark.parametrize("how", ["inline", "route"])
@pytest.mark.parametrize(
    "gateway, cidr",
    [
        ("nat-in-stack", "0.0.0.0/0"),  # a NAT gateway: private
        ("vgw-0123", "0.0.0.0/0"),  # a VPN gateway outside the stack
        ("igw-0123", "192.0.2.0/24"),  # not a default route
        ("gw-in-stack", "10.0.0.0/8"),
    ],
)
def test_other_routes_keep_the_subnet_private(how, gateway, cidr):
    assert run(_default_route(how, gateway, cidr), "ec2-private-subnet").violations == ()


def _rule(name, cidr, lo, hi, sg="sg-endpoint"):
    return res(
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
        name,
        securityGroupId=sg,
        cidrIpv4=cidr,
        ipProtocol="tcp",
        fromPort=lo,
        toPort=hi,
    )


def test_ingress_messages_name_the_rule_its_group_the_ports_and_the_source():
    stack = add(
        good_stack(),
        _rule("unknown-ports", "0.0.0.0/0", UNKNOWN_PLACEHOLDER, UNKNOWN_PLACEHOLDER),  # skipped, not the end
        _rule("ssh", "10.42.0.0/16", 22, 22, sg="sg-cluster"),
        _rule("gcs-unknown-cidr", UNKNOWN_PLACEHOLDER, 6379, 6379, sg="sg-cluster"),
        _rule("world-one", "0.0.0.0/0", 443, 443),
        _rule("world-range", "0.0.0.0/0", 8000, 8001),
        _rule("outside", "192.0.2.0/24", 8000, 8000),
    )
    stack = set_input(
        stack,
        "endpoint-sg",
        ingress=[{"protocol": "tcp", "fromPort": 15000, "toPort": 15010, "cidrBlocks": ["10.42.0.0/16"]}],
    )
    world = "the internet may reach only the endpoint port of an explicitly public endpoint (endpointPublic, endpointAllowedCidrs)"
    ray = "SSH and Ray ports are reachable only from the cluster security group"
    got = sorted((v.resource, v.message) for v in run(stack, "security-group-ingress").violations)
    assert got == [
        ("endpoint-sg", f"endpoint-sg: 15000-15010 (Ray worker ports) open to 10.42.0.0/16; {ray}"),
        (
            "outside",
            "outside (on endpoint-sg): port 8000 open to 192.0.2.0/24, outside the VPC and the allowed CIDRs (10.0.0.0/8)",
        ),
        ("ssh", f"ssh (on cluster-sg): 22 (SSH) open to 10.42.0.0/16; {ray}"),
        ("world-one", f"world-one (on endpoint-sg): port 443 open to 0.0.0.0/0; {world}"),
        ("world-range", f"world-range (on endpoint-sg): port 8000-8001 open to 0.0.0.0/0; {world}"),
    ]
    outside = add(good_stack(), _rule("outside", "192.0.2.0/24", 8000, 8000))
    for allowed, shown in (([], "none"), (["10.0.0.0/8", "198.51.100.0/24"], "10.0.0.0/8, 198.51.100.0/24")):
        cfg = {"security-group-ingress": {"allowedIngressCidrs": allowed}}
        msgs = [
            v.message
            for v in run(outside, "security-group-ingress", cfg).violations
            if v.resource == "outside"
        ]
        assert msgs == [
            f"outside (on endpoint-sg): port 8000 open to 192.0.2.0/24, outside the VPC and the allowed CIDRs ({shown})"
        ]
    two = add(good_stack(), _rule("two", "10.42.0.0/16", 22, 6379, sg="sg-cluster"))
    [v] = run(two, "security-group-ingress").violations
    assert v.message.startswith("two (on cluster-sg): 22 (SSH), 6379 (Ray GCS) open to 10.42.0.0/16;")


def test_ray_ports_from_a_group_that_is_not_the_clusters_name_it():
    def from_group(name, ref):
        r = res(
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
            name,
            securityGroupId="sg-cluster",
            referencedSecurityGroupId=ref,
            ipProtocol="tcp",
            fromPort=6379,
            toPort=6379,
        )
        return r

    # from the cluster's group (referenced, not "self"), or from one unknown at preview: no violation
    ok = add(
        good_stack(), from_group("from-cluster", "sg-cluster"), from_group("from-new", UNKNOWN_PLACEHOLDER)
    )
    set_input(ok, "from-cluster", securityGroupId="sg-endpoint")
    assert run(ok, "security-group-ingress").violations == ()
    stack = add(
        good_stack(), from_group("from-endpoint", "sg-endpoint"), from_group("from-elsewhere", "sg-0ther")
    )
    stack = set_input(
        stack,
        "endpoint-sg",  # an unknown CIDR is skipped, the next one of the same rule is still checked
        ingress=[
            {
                "protocol": "tcp",
                "fromPort": 22,
                "toPort": 22,
                "cidrBlocks": [UNKNOWN_PLACEHOLDER, "10.42.0.0/16"],
            }
        ],
    )
    tail = "which is not the cluster security group (tag llmfleet:sg=cluster)"
    got = sorted((v.resource, v.message) for v in run(stack, "security-group-ingress").violations)
    assert got == [
        (
            "endpoint-sg",
            "endpoint-sg: 22 (SSH) open to 10.42.0.0/16; SSH and Ray ports are reachable only from the cluster security group",
        ),
        (
            "from-elsewhere",
            f"from-elsewhere (on cluster-sg): 6379 (Ray GCS) open to a security group outside this stack, {tail}",
        ),
        ("from-endpoint", f"from-endpoint (on cluster-sg): 6379 (Ray GCS) open to endpoint-sg, {tail}"),
    ]


def test_ingress_config_keys_and_their_defaults():
    stack = add(
        good_stack(), _rule("world", "0.0.0.0/0", 8443, 8443), _rule("w8000", "0.0.0.0/0", 8000, 8000)
    )
    policy = [pack.by_name()["security-group-ingress"]]

    def flagged(block):
        report = run_policies(stack, {"security-group-ingress": block}, policies=policy)
        return sorted(v.resource for v in report.violations)

    anywhere = {"allowedIngressCidrs": ["0.0.0.0/0"]}
    assert flagged(anywhere) == ["w8000", "world"]  # endpointPublic defaults to false
    assert flagged({**anywhere, "endpointPublic": True}) == ["world"]  # endpointPort defaults to 8000
    assert flagged({**anywhere, "endpointPublic": True, "endpointPort": 8443}) == ["w8000"]


def test_ingress_falls_back_to_the_stack_config_the_pulumi_cli_hands_over():
    # `pulumi preview --policy-pack policy/` with no policy config: the stack's own llmfleet:* keys
    import pulumi.runtime

    rule = res(
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
        "endpoint-world",
        securityGroupId="sg-endpoint",
        cidrIpv4="0.0.0.0/0",
        ipProtocol="tcp",
        fromPort=8443,
        toPort=8443,
    )
    stack = add(good_stack(), rule)
    policy = [pack.by_name()["security-group-ingress"]]
    alone = run_policies(stack, {}, policies=policy)  # no allowed CIDRs, not public
    assert sorted(v.resource for v in alone.violations) == ["endpoint-in", "endpoint-world"]
    pulumi.runtime.set_all_config(
        {
            "llmfleet:endpointPublic": "true",
            "llmfleet:endpointAllowedCidrs": '["0.0.0.0/0"]',
            "llmfleet:endpointPort": "8443",
        },
        [],
    )
    try:
        assert run_policies(stack, {}, policies=policy).violations == ()
    finally:
        pulumi.runtime.set_all_config({}, [])


def test_in_a_preview_a_new_internet_gateway_is_known_by_the_routes_dependency():
    # before `up` the new gateway's id is unknown; CrossGuard names the resource it comes from
    from policy._stackview import StackView
    from policy.network import subnet_is_public
    from policy.runner import policy_resources

    stack = _default_route("route", UNKNOWN_PLACEHOLDER)
    built = {r.name: r for r in policy_resources(stack)}
    built["r"].property_dependencies = {"gatewayId": [built["igw"]]}
    view = StackView.of(list(built.values()))
    assert subnet_is_public(view, view.by_id("subnet-priv")) is True
    built["r"].property_dependencies = {"gatewayId": [built["nat"]]}
    view = StackView.of(list(built.values()))  # the subnet of the view it is looked at in
    assert subnet_is_public(view, view.by_id("subnet-priv")) is False
    # a route inline in the table: the table's `routes` depends on the gateway
    built = {r.name: r for r in policy_resources(_default_route("inline", UNKNOWN_PLACEHOLDER))}
    for gateway, public in (("igw", True), ("nat", False)):
        built["private-rt"].property_dependencies = {"routes": [built[gateway]]}
        view = StackView.of(list(built.values()))
        assert subnet_is_public(view, view.by_id("subnet-priv")) is public, gateway


def test_routes_of_other_tables_are_passed_over_and_only_a_table_or_subnet_dependency_counts():
    from policy._stackview import StackView
    from policy.network import subnet_is_public
    from policy.runner import policy_resources

    # a route of another table listed first: the private table's own default route still counts
    stack = _default_route("route", "gw-in-stack")
    stack.insert(
        len(stack) - 1,
        res("aws:ec2/route:Route", "elsewhere", routeTableId="rtb-other", destinationCidrBlock="0.0.0.0/0"),
    )
    assert {v.resource for v in run(stack, "ec2-private-subnet").violations} == {
        "head",
        "worker-0",
        "worker-1",
        "worker-2",
    }

    def public(stack, name, prop, *deps):
        built = {r.name: r for r in policy_resources(stack)}
        built[name].property_dependencies = {prop: [built[d] for d in deps]}
        view = StackView.of(list(built.values()))
        return subnet_is_public(view, view.by_id("subnet-priv"))

    # in a preview, a value built from the table (or subnet) and the VPC depends on both: the
    # dependency of the wanted type is the one meant
    route = set_input(_default_route("route", "gw-in-stack"), "r", routeTableId=UNKNOWN_PLACEHOLDER)
    assert public(route, "r", "routeTableId", "private-rt", "vpc") is True
    assoc = set_input(_default_route("inline", "igw-0123"), "private-rta", subnetId=UNKNOWN_PLACEHOLDER)
    assert public(assoc, "private-rta", "subnetId", "private", "vpc") is True
    assert public(assoc, "private-rta", "subnetId", "vpc") is UNKNOWN
    table = set_input(_default_route("inline", "igw-0123"), "private-rta", routeTableId=UNKNOWN_PLACEHOLDER)
    assert public(table, "private-rta", "routeTableId", "private-rt", "vpc") is True
    assert public(table, "private-rta", "routeTableId") is UNKNOWN
    # an association of another subnet listed first is passed over too
    stack = _default_route("inline", "igw-0123")
    rta = "aws:ec2/routeTableAssociation:RouteTableAssociation"
    stack.insert(0, res(rta, "other-rta", subnetId="subnet-other", routeTableId="rtb-priv"))
    assert len(run(stack, "ec2-private-subnet").violations) == 4


def test_an_instances_subnets_by_its_subnet_or_its_network_interfaces():
    from policy._stackview import StackView
    from policy.network import instance_subnets
    from policy.runner import policy_resources

    eni = "aws:ec2/networkInterface:NetworkInterface"
    stack = add(
        good_stack(),
        res("aws:ec2/subnet:Subnet", "public", "subnet-pub", vpcId="vpc-1", mapPublicIpOnLaunch=True),
        res(eni, "efa-0", "eni-0", subnetId="subnet-pub"),
    )

    def subnets(worker, deps=None, eni_deps=None, **props):
        built = {r.name: r for r in policy_resources(set_input(copy.deepcopy(stack), worker, **props))}
        built[worker].property_dependencies = {k: [built[d] for d in v] for k, v in (deps or {}).items()}
        built["efa-0"].property_dependencies = {k: [built[d] for d in v] for k, v in (eni_deps or {}).items()}
        view = StackView.of(list(built.values()))
        [host] = [h for h in view.hosts() if h.name == worker]
        return [s.name if s not in (None, UNKNOWN) else s for s in instance_subnets(view, host)]

    assert subnets("worker-0") == ["private"]
    unknown = {"subnetId": UNKNOWN_PLACEHOLDER}
    assert subnets("worker-0", {"subnetId": ["public", "vpc"]}, **unknown) == ["public"]
    nics = [{"networkInterfaceId": "eni-0"}, {"networkInterfaceId": "eni-outside"}]
    assert subnets("worker-0", subnetId=None, networkInterfaces=nics) == ["public", None]
    new = [{"networkInterfaceId": UNKNOWN_PLACEHOLDER}]
    assert subnets("worker-0", subnetId=None, networkInterfaces=new) == [UNKNOWN]
    deps = {"networkInterfaces": ["efa-0", "vpc"]}
    assert subnets("worker-0", deps, subnetId=None, networkInterfaces=new) == ["public"]
    # the ENI's own subnet, in a preview: its dependency of the subnet type
    set_input(stack, "efa-0", subnetId=UNKNOWN_PLACEHOLDER)
    on_eni = {"subnetId": ["public", "vpc"]}
    assert subnets("worker-0", None, on_eni, subnetId=None, networkInterfaces=nics[:1]) == ["public"]


def test_a_reference_is_the_id_else_the_one_dependency_of_the_wanted_type():
    from policy._stackview import StackView
    from policy.runner import policy_resources

    subnet = "aws:ec2/subnet:Subnet"
    stack = [
        res("aws:ec2/vpc:Vpc", "vpc", "vpc-1"),
        res(subnet, "a", "subnet-a", vpcId="vpc-1"),
        res(subnet, "b", "subnet-b", vpcId="vpc-1"),
        res("aws:ec2/instance:Instance", "new", subnetId=UNKNOWN_PLACEHOLDER),
        res("aws:ec2/instance:Instance", "known", subnetId="subnet-a"),
        res("aws:ec2/instance:Instance", "outside", subnetId="subnet-elsewhere"),
        # an id that is empty (not yet assigned) names nothing: not even a prop that is empty too
        {**res(subnet, "pending", vpcId="vpc-1"), "id": "", "outputs": {"vpcId": "vpc-1", "id": ""}},
    ]
    built = {r.name: r for r in policy_resources(stack)}

    def ref(name: str, *deps, value=None):
        built[name].property_dependencies = {"subnetId": list(deps)}
        view = StackView.of(list(built.values()))
        found = view.ref(next(r for r in view.resources if r.name == name), "subnetId", [subnet], value=value)
        return found.name if found is not None and found is not UNKNOWN else found

    # in a preview: the one dependency of the wanted type (the VPC it also depends on is not one)
    assert ref("new", built["vpc"], built["a"]) == "a"
    assert ref("new", None, built["a"]) == "a"  # an empty entry is skipped
    assert ref("new", built["a"], built["b"]) is UNKNOWN and ref("new") is UNKNOWN
    assert ref("new", built["vpc"]) is UNKNOWN
    # a known id decides first; one outside the stack, with nothing depended on, is None
    assert ref("known", built["b"]) == "a" and ref("outside") is None
    assert ref("outside", value="subnet-b") == "b"  # one item of the prop, handed over
    view = StackView.of(list(built.values()))
    assert view.by_id("") is None and view.by_id("subnet-b").name == "b"
    assert (
        view.by_id(["subnet-a"]) is None
        and view.by_id({"id": "subnet-a"}) is None
        and view.by_id(None) is None
    )


def test_unknown_references_are_not_violations_but_literal_facts_still_are():
    # During a real preview, ids of resources not yet created are unknown: cannot check, no violation.
    stack = set_input(
        good_stack(), "worker-1", subnetId=UNKNOWN_PLACEHOLDER, placementGroup=UNKNOWN_PLACEHOLDER
    )
    for policy in ("ec2-private-subnet", "worker-placement"):
        assert run(stack, policy).violations == ()
    stack = add(
        stack,
        res(
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
            "r",
            securityGroupId=UNKNOWN_PLACEHOLDER,
            cidrIpv4="0.0.0.0/0",
            ipProtocol="tcp",
            fromPort=6379,
            toPort=6379,
        ),
    )
    assert run(stack, "security-group-ingress").mandatory == 1


def test_unknown_iam_document_is_skipped_and_unknown_httptokens_too():
    stack = set_input(good_stack(), "node-policy", policy=UNKNOWN_PLACEHOLDER)
    stack = set_input(stack, "worker-0", metadataOptions={"httpTokens": UNKNOWN_PLACEHOLDER})
    assert run(stack, "iam-least-privilege").violations == ()
    assert run(stack, "ec2-imdsv2-required").violations == ()


def test_a_log_groups_retention_computed_at_up_is_not_a_violation():
    stack = set_input(good_stack(), "boot-logs", retentionInDays=UNKNOWN_PLACEHOLDER)
    assert run(stack, "log-group-retention").violations == ()


def test_a_bad_retention_says_what_to_set():
    from infra.stack.config_values import LOG_RETENTION_DAYS

    unset = run(set_input(good_stack(), "boot-logs", retentionInDays=None), "log-group-retention")
    assert [v.message for v in unset.violations] == [
        "retentionInDays is not set: the log group would keep every event forever; set it"
    ]
    odd = run(set_input(good_stack(), "boot-logs", retentionInDays=10), "log-group-retention")
    allowed = ", ".join(str(d) for d in LOG_RETENTION_DAYS)
    assert allowed.startswith("1, 3, 5, 7, 14, 30, ") and allowed.endswith(", 3653")
    assert [v.message for v in odd.violations] == [
        f"retentionInDays 10 is not a CloudWatch value; allowed: {allowed}"
    ]


def test_iam_document_rules():
    assert iam_document_problems(GOOD_IAM) == []
    assert iam_document_problems({"Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]}) == []
    [p] = iam_document_problems({"Statement": [{"Effect": "Allow", "Action": "ec2:*", "Resource": "arn:x"}]})
    assert "ec2:*" in p
    [p] = iam_document_problems(
        {"Statement": [{"Effect": "Allow", "NotAction": "iam:*", "Resource": "arn:x"}]}
    )
    assert "NotAction" in p
    assert (
        iam_document_problems(
            {"Statement": [{"Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"}]}
        )
        == []
    )
    assert "not valid JSON" in iam_document_problems("{nope")[0]


def test_enforcement_levels_are_respected():
    stack = set_input(good_stack(), "head", associatePublicIpAddress=True)
    policy = [pack.by_name()["ec2-no-public-ip"]]
    assert run_policies(stack, {}, policies=policy).mandatory == 1
    advisory = run_policies(stack, {"ec2-no-public-ip": {"enforcementLevel": "advisory"}}, policies=policy)
    assert (advisory.mandatory, advisory.advisory) == (0, 1)
    assert (
        run_policies(
            stack, {"ec2-no-public-ip": {"enforcementLevel": "disabled"}}, policies=policy
        ).violations
        == ()
    )


def test_allowed_instance_types_come_from_config():
    cfg = {"ec2-instance-type-allowed": {"allowedInstanceTypes": ["g6e.48xlarge"]}}
    report = run(good_stack(), "ec2-instance-type-allowed", cfg)
    assert [v.resource for v in report.violations] == ["head"]


def test_unknown_marker_is_falsy_and_says_what_it_is():
    assert not UNKNOWN
    assert repr(UNKNOWN) == "UNKNOWN" and f"{[UNKNOWN]}" == "[UNKNOWN]"  # in a message or a failed assert


# --- policy/_props.py: how every policy reads props ----------------------------------------------


def test_get_walks_mappings_and_lists_and_stops_at_an_unknown():
    from policy._props import get

    doc = {"a": {"b": [10, 20, {"c": "x"}]}, "u": UNKNOWN, "s": "text"}
    assert get(doc, "a", "b", 0) == 10 and get(doc, "a", "b", 2, "c") == "x"
    assert get(doc, "a", "b", -1, "c") == "x" and get(doc, "a", "b", -3) == 10  # the first, from the end
    # one past either end, a list read with a text key, a text read as a list: the default
    assert get(doc, "a", "b", 3, default="d") == "d" and get(doc, "a", "b", -4, default="d") == "d"
    assert get(doc, "a", "b", "0", default="d") == "d" and get(doc, "s", 0, default="d") == "d"
    assert get(doc, "a", "missing", default="d") == "d"
    # an unknown anywhere on the way (or at the end) is UNKNOWN, never the default
    assert get(doc, "u", "deeper", default="d") is UNKNOWN and get(doc, "u", default="d") is UNKNOWN
    # CrossGuard's own sentinel for an unknown string, in props not yet made plain: UNKNOWN too
    from pulumi_policy.proxy import UNKNOWN_STRING_VALUE

    assert get({"id": UNKNOWN_STRING_VALUE}, "id") is UNKNOWN


def test_crossguards_unknown_sentinels_become_the_unknown_marker():
    from pulumi_policy.proxy import UNKNOWN_ARRAY_VALUE, UNKNOWN_STRING_VALUE

    from policy._props import as_list, plain

    assert plain({"a": UNKNOWN_STRING_VALUE, "b": ["x", UNKNOWN_STRING_VALUE]}) == {
        "a": UNKNOWN,
        "b": ["x", UNKNOWN],
    }
    assert as_list(UNKNOWN_ARRAY_VALUE) == [UNKNOWN] and as_list(UNKNOWN) == [UNKNOWN]
    assert as_list(None) == [] and as_list("one") == ["one"] and as_list(["a", "b"]) == ["a", "b"]


def test_tags_are_tags_all_under_tags_and_a_groups_tag_list_counts():
    from policy._props import tags_of

    assert tags_of({"tagsAll": {"a": "1", "b": "1"}, "tags": {"b": "2"}}) == {"a": "1", "b": "2"}
    assert tags_of({"tagsAll": {"a": "1"}}) == {"a": "1"}
    assert tags_of({"tags": [{"key": "a", "value": "1", "propagateAtLaunch": True}]}) == {"a": "1"}
    # a list that is not an Auto Scaling group's (an item without "key") is no tags
    assert tags_of({"tags": [{"key": "a", "value": "1"}, {"value": "2"}]}) == {}
    assert tags_of({}) == {} and tags_of({"tags": None}) == {}
    # unknown only when neither is known: a known tagsAll is read even when tags is unknown
    assert tags_of({"tags": UNKNOWN}) is UNKNOWN and tags_of({"tagsAll": UNKNOWN}) is UNKNOWN
    assert tags_of({"tags": UNKNOWN, "tagsAll": {"a": "1"}}) == {"a": "1"}


def test_cidrs_are_read_with_their_host_bits_and_compared_per_ip_version():
    from policy._props import is_world, network, within_any

    assert str(network("10.0.0.5/24")) == "10.0.0.0/24" and network("nope") is None
    # a world-open rule written with host bits is still world-open
    assert is_world("0.0.0.0/0") and is_world("::/0") and is_world("1.2.3.4/0")
    assert not is_world("10.0.0.0/8") and not is_world("nope") and not is_world(None)
    assert within_any("10.0.0.5/24", ["10.0.0.0/16"]) and within_any("10.1.0.0/16", ["nope", "10.0.0.0/8"])
    assert not within_any("nope", ["0.0.0.0/0"]) and not within_any("10.0.0.0/8", ["10.0.0.0/16"])
    assert not within_any("::/0", ["0.0.0.0/0"])


def test_pack_serves_the_policies_over_grpc(tmp_path):
    """`python policy/__main__.py` is what the CLI runs: it must print a port and answer the analyzer RPCs."""
    import grpc
    from google.protobuf import empty_pb2, struct_pb2
    from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "policy" / "__main__.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=env,
    )
    try:
        port = int(proc.stdout.readline().decode().strip())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = analyzer_pb2_grpc.AnalyzerStub(channel)
            info = stub.GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)
            assert info.name == "llmfleet"
            assert {p.name for p in info.policies} == {p.name for p in pack.POLICIES}
            props = struct_pb2.Struct()
            props.update({"instanceType": "g6e.48xlarge", "metadataOptions": {"httpTokens": "optional"}})
            resp = stub.Analyze(
                analyzer_pb2.AnalyzeRequest(
                    type="aws:ec2/instance:Instance",
                    properties=props,
                    urn="urn:pulumi:s::p::aws:ec2/instance:Instance::w",
                    name="w",
                ),
                timeout=30,
            )
            fired = {d.policyName for d in resp.diagnostics}
            assert "ec2-imdsv2-required" in fired and "ec2-ebs-encrypted" in fired
            assert "ec2-no-public-ip" not in fired
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def test_reasoning_context_is_silent_at_16k_and_for_a_model_that_does_not_reason():
    """The floor is 16,384 itself, and only catalog models marked reasoning are held to it."""
    at_floor = SHORT_CONTEXT.replace("max_model_len: 8192", "max_model_len: 16384")
    other = SHORT_CONTEXT.replace("deepseek-ai/DeepSeek-R1", "meta-llama/Llama-3.1-8B")
    for script in (at_floor, other):
        stack = add(good_stack(), res("command:remote:Command", "hosts-head", create=script))
        assert run(stack, "reasoning-model-context").violations == ()


@pytest.mark.usefixtures("shared_captures")
def test_reasoning_context_on_the_prod_capture_auto_passes_and_8k_fires():
    """Through the runner on the real program's capture: prod's planner-chosen context passes;
    -c maxModelLen=8192 puts 8k in the head's node script, and the policy names it."""
    from policy.runner import run_for_stack

    _, auto = run_for_stack("prod")
    assert [v for v in auto.violations if v.policy == "reasoning-model-context"] == []
    _, pinned = run_for_stack("prod", ["llmfleet:maxModelLen=8192"])
    found = [v for v in pinned.violations if v.policy == "reasoning-model-context"]
    assert found and all(v.enforcement == "advisory" for v in found), pinned.violations
    assert "max_model_len 8,192 is below 16,384 for the reasoning model deepseek-r1" in found[0].message


def test_trust_remote_code_reads_every_carrier_of_the_serve_config(monkeypatch):
    """The node script in an SSM parameter (packed, in `value` or `insecureValue`, or plain) or a
    remote command's `create`; unknown values during a preview are left alone; the config's
    fallback names why it is on, the stack key or the catalog's model."""
    from infra.catalog import load_catalog
    from infra.stack.config import load_stack_config
    from policy._stackview import StackView
    from policy.engine import ENGINE_POLICIES, rendered_problems
    from policy.runner import policy_resources

    off = REMOTE_CODE.replace("true", "false")
    param = "aws:ssm/parameter:Parameter"
    found = rendered_problems(
        StackView.of(
            policy_resources(
                [
                    res(param, "packed-value", value=pack_script(REMOTE_CODE)),
                    res(param, "plain", insecureValue=REMOTE_CODE),  # not gzip+base64: read as it is
                    res(param, "off", insecureValue=pack_script(off)),
                    res(param, "unknown", insecureValue=UNKNOWN),
                    res("command:remote:Command", "cmd-unknown", create=UNKNOWN),
                    res("command:remote:Command", "cmd-off", create=off),
                    # props are untyped: a value that is not text is no script, not a crash
                    res("command:remote:Command", "cmd-list", create=["trust_remote_code: true"]),
                    res(param, "param-list", insecureValue=["trust_remote_code: true"]),
                    res("aws:s3/bucketObjectv2:BucketObjectv2", "elsewhere", content=REMOTE_CODE),
                ]
            )
        )
    )
    assert found == [
        (
            f"urn:pulumi:test::llmfleet::{param}::{name}",
            f"{name}: the Serve config sets trust_remote_code: vLLM runs the checkpoint's own Python in every "
            "engine process; unset llmfleet:trustRemoteCode unless the model needs it",
        )
        for name in ("packed-value", "plain")
    ]

    def fallback(raw):
        report = run_policies([], {}, ENGINE_POLICIES, stack=load_stack_config(raw, "t"))
        return [(v.resource, v.enforcement, v.message) for v in report.violations]

    assert fallback({}) == []
    tail = (
        "vLLM runs the checkpoint's own Python in every engine process; leave it off unless the model has no "
        "native vLLM implementation"
    )
    assert fallback({"llmfleet:trustRemoteCode": "true"}) == [
        (None, "advisory", f"trust_remote_code is on (llmfleet:trustRemoteCode is true): {tail}")
    ]
    # a rendered script that carries it is the finding; the config is not reported twice
    report = run_policies(
        [res(param, "node-head", insecureValue=pack_script(REMOTE_CODE))],
        {},
        ENGINE_POLICIES,
        stack=load_stack_config({"llmfleet:trustRemoteCode": "true"}, "t"),
    )
    assert [v.resource for v in report.violations] == ["node-head"]
    models = load_catalog().models
    needs = models["deepseek-r1"].model_copy(
        update={"trust_remote_code": True, "trust_remote_code_reason": "x"}
    )
    monkeypatch.setitem(models, "deepseek-r1", needs)
    assert fallback({}) == [
        (None, "advisory", f"trust_remote_code is on (the catalog's deepseek-r1 needs it): {tail}")
    ]


def test_alarm_policy_names_the_actions_it_found_and_checks_metric_alarms_only():
    stack = set_input(good_stack(), "head-alarm", alarmActions=[RECOVER, "arn:aws:sqs:us-east-1:1:q"])
    [v] = run(stack, "alarm-notifies").violations
    assert v.message == (
        f"nobody is notified when this alarm fires (alarmActions: {RECOVER}, arn:aws:sqs:us-east-1:1:q, no SNS "
        "topic); set llmfleet:alarmTopicArn (an SNS topic you subscribe to)"
    )
    other = add(
        good_stack(), res("aws:cloudwatch/compositeAlarm:CompositeAlarm", "composite", alarmActions=[])
    )
    assert run(other, "alarm-notifies").violations == ()


def test_policy_config_falls_back_to_the_stack_config_then_the_default():
    """What a policy reads for a key: its own config block (None included, the runner's 'off'),
    else the stack's llmfleet:* key the Pulumi CLI hands over (JSON parsed), else the default."""
    import pulumi
    import pulumi.runtime

    from infra.catalog import load_catalog
    from infra.stack.config import load_stack_config
    from policy import _config

    assert _config.string_list("CIDRs") == {
        "type": "array",
        "items": {"type": "string"},
        "description": "CIDRs",
    }
    assert _config.string_list("tags", default=[]) == {
        "type": "array",
        "items": {"type": "string"},
        "default": [],
        "description": "tags",
    }
    assert _config.catalog_instance_types() == tuple(sorted(load_catalog().instances))
    assert _config.stack_config("endpointPort") is None and _config.stack_config_raw("aws:region") is None
    assert _config.value({}, "port", 8000, stack_key="endpointPort") == 8000
    pulumi.runtime.set_all_config(
        {
            "llmfleet:endpointPort": "8443",
            "llmfleet:endpointAllowedCidrs": '["10.0.0.0/8"]',
            "llmfleet:weightsPath": "/srv/m",  # not JSON: the text itself
            "aws:region": "eu-west-1",
        },
        [],
    )
    try:
        assert _config.stack_config("endpointPort") == 8443
        assert _config.stack_config("endpointAllowedCidrs") == ["10.0.0.0/8"]
        assert _config.stack_config("weightsPath") == "/srv/m"
        assert _config.stack_config("model") is None
        assert _config.stack_config_raw("aws:region") == "eu-west-1"
        assert _config.value({"port": None}, "port", 8000, stack_key="endpointPort") is None
        assert _config.value({"port": 80}, "port", 8000, stack_key="endpointPort") == 80
        assert _config.value({}, "port", 8000, stack_key="endpointPort") == 8443
        assert _config.value({}, "port", 8000) == 8000  # no stack key: the default
        assert _config.value({}, "model", "r1", stack_key="model") == "r1"
        # under the CLI the stack's config is the runtime's; the runner's StackConfig goes first
        assert _config.stack_model().endpoint_port == 8443
        mine = load_stack_config({}, pulumi.get_stack())
        with _config.runner_stack(mine):
            assert _config.stack_model() is mine
        assert _config.stack_model() is not mine
        pulumi.runtime.set_all_config({"llmfleet:endpointPort": "22"}, [])  # a bad config: no model
        assert _config.stack_model() is None
    finally:
        pulumi.runtime.set_all_config({}, [])


# --- policy/resources.py: each resource policy's message in full, and what it leaves alone -------


def _found(stack, policy, config=None) -> list[tuple[str, str]]:
    return [(v.resource, v.message) for v in run(stack, policy, config).violations]


def _template(**changes):
    from tests.test_policy_groups import template

    return template(**changes)


SPOT = "aws:ec2/spotInstanceRequest:SpotInstanceRequest"  # not a host type these policies read


def test_imdsv2_message_for_instances_and_templates():
    s = set_input(good_stack(), "worker-0", metadataOptions={"httpTokens": "optional"})
    set_input(s, "worker-1", metadataOptions=None)
    s = add(
        s,
        _template(metadataOptions={"httpTokens": "optional"}),
        res(SPOT, "spot", metadataOptions={"httpTokens": "optional"}),
    )
    need = "; IMDSv2 needs 'required'"
    assert _found(s, "ec2-imdsv2-required") == [
        ("worker-0", "metadataOptions.httpTokens is 'optional'" + need),
        ("worker-1", "metadataOptions.httpTokens is None" + need),
        ("worker-lt", "metadataOptions.httpTokens is 'optional'" + need),
    ]


def test_ebs_encryption_messages_for_instances_and_templates():
    s = set_input(good_stack(), "head", rootBlockDevice={"encrypted": False})
    set_input(
        s, "worker-1", ebsBlockDevices=[{"deviceName": "/dev/sdg", "encrypted": True}, {"encrypted": "true"}]
    )
    mappings = [
        {"deviceName": "/dev/sda1", "ebs": {"encrypted": "false"}},
        {"virtualName": "ephemeral0", "deviceName": "/dev/sdb"},  # instance store: no EBS volume
        {"ebs": {"encrypted": "TRUE"}},
        {"ebs": {}},
        {"deviceName": "/dev/sdc", "ebs": {"encrypted": True}},  # a boolean counts as it is
        {"deviceName": "/dev/sdd", "ebs": {"encrypted": False}},
    ]
    s = add(
        s, _template(blockDeviceMappings=mappings), res(SPOT, "spot", rootBlockDevice={"encrypted": False})
    )
    every = "; every EBS device must be encrypted"
    assert _found(s, "ec2-ebs-encrypted") == [
        ("head", "rootBlockDevice.encrypted is False; the root volume must be encrypted"),
        # an instance's flag is a boolean: the text "true" is not True
        ("worker-1", "ebsBlockDevices[1] (#1) encrypted is 'true'" + every),
        ("worker-lt", "blockDeviceMappings[0] (/dev/sda1) ebs.encrypted is 'false'" + every),
        ("worker-lt", "blockDeviceMappings[3] (#3) ebs.encrypted is None" + every),
        ("worker-lt", "blockDeviceMappings[5] (/dev/sdd) ebs.encrypted is False" + every),
    ]
    # a flag computed at up (unknown during a preview) is not a violation
    s = set_input(good_stack(), "head", rootBlockDevice={"encrypted": UNKNOWN_PLACEHOLDER})
    s = add(
        s,
        _template(
            blockDeviceMappings=[{"deviceName": "/dev/sda1", "ebs": {"encrypted": UNKNOWN_PLACEHOLDER}}]
        ),
    )
    set_input(s, "worker-0", ebsBlockDevices=[{"deviceName": "/dev/sdf", "encrypted": UNKNOWN_PLACEHOLDER}])
    assert _found(s, "ec2-ebs-encrypted") == []


def test_public_ip_messages_for_instances_and_templates():
    s = set_input(good_stack(), "head", associatePublicIpAddress=True)
    nics = [
        {"deviceIndex": 0, "associatePublicIpAddress": "false"},
        {"deviceIndex": 1, "associatePublicIpAddress": "True"},
    ]
    s = add(s, _template(networkInterfaces=nics), res(SPOT, "spot", associatePublicIpAddress=True))
    only = "; hosts are reached through SSM and the load balancer only"
    assert _found(s, "ec2-no-public-ip") == [
        ("head", "associatePublicIpAddress is true" + only),
        ("worker-lt", "networkInterfaces[1].associatePublicIpAddress is true" + only),
    ]


@pytest.mark.parametrize("text", ["true", "True", "TRUE", "1", "t", "T"])
def test_a_public_ip_given_as_text_is_flagged_on_instances_and_templates(text):
    """The provider reads a boolean given as text with Go's strconv.ParseBool: each of these is true."""
    s = set_input(good_stack(), "head", associatePublicIpAddress=text)
    nics = [{"deviceIndex": 0, "associatePublicIpAddress": text}]
    s = add(s, _template(networkInterfaces=nics))
    only = "; hosts are reached through SSM and the load balancer only"
    assert _found(s, "ec2-no-public-ip") == [
        ("head", "associatePublicIpAddress is true" + only),
        ("worker-lt", "networkInterfaces[0].associatePublicIpAddress is true" + only),
    ]


@pytest.mark.parametrize("text", ["false", "False", "0", "f", "", "yes"])
def test_a_private_ip_given_as_text_passes(text):
    s = set_input(good_stack(), "head", associatePublicIpAddress=text)
    s = add(s, _template(networkInterfaces=[{"deviceIndex": 0, "associatePublicIpAddress": text}]))
    assert _found(s, "ec2-no-public-ip") == []


def test_instance_type_messages_name_the_allowed_types():
    from policy._config import catalog_instance_types

    s = set_input(good_stack(), "head", instanceType="x2iedn.32xlarge")
    set_input(s, "worker-0", instanceType=None)  # unset: nothing to check
    s = add(s, _template(instanceType="p5.48xlarge"), res(SPOT, "spot", instanceType="x1.32xlarge"))
    cfg = {"ec2-instance-type-allowed": {"allowedInstanceTypes": ["m7i.2xlarge", "g6e.48xlarge"]}}
    assert _found(s, "ec2-instance-type-allowed", cfg) == [
        ("head", "instanceType 'x2iedn.32xlarge' is not allowed; allowed: g6e.48xlarge, m7i.2xlarge"),
        ("worker-lt", "instanceType 'p5.48xlarge' is not allowed; allowed: g6e.48xlarge, m7i.2xlarge"),
    ]
    # without the key: every type of the catalog, p5.48xlarge among them
    catalog = ", ".join(sorted(catalog_instance_types()))
    assert _found(s, "ec2-instance-type-allowed") == [
        ("head", f"instanceType 'x2iedn.32xlarge' is not allowed; allowed: {catalog}")
    ]
    s = set_input(good_stack(), "head", instanceType=UNKNOWN_PLACEHOLDER)
    assert _found(s, "ec2-instance-type-allowed", cfg) == []


def test_volume_and_ecr_messages():
    s = set_input(good_stack(), "scratch", encrypted=None)
    s = add(s, res("aws:ebs/snapshotCopy:SnapshotCopy", "snap", encrypted=False))
    assert _found(s, "ebs-volume-encrypted") == [
        ("scratch", "encrypted is None; EBS volumes must be encrypted")
    ]
    s = set_input(
        good_stack(),
        "repo",
        imageScanningConfiguration=None,
        imageTagMutability="MUTABLE",
        encryptionConfigurations=[{"encryptionType": "KMS"}, {"encryptionType": "DES"}],
    )
    s = add(
        s, res("aws:ecr/pullThroughCacheRule:PullThroughCacheRule", "cache", imageTagMutability="MUTABLE")
    )
    assert _found(s, "ecr-repository-hardened") == [
        ("repo", "imageScanningConfiguration.scanOnPush is None; images must be scanned on push"),
        (
            "repo",
            "imageTagMutability is 'MUTABLE'; tags must be 'IMMUTABLE' so a digest cannot change under a tag",
        ),
        ("repo", "encryptionConfigurations[1].encryptionType is 'DES'; allowed: AES256, KMS, KMS_DSSE"),
    ]
    s = set_input(good_stack(), "repo", encryptionConfigurations=[])
    assert _found(s, "ecr-repository-hardened") == [
        ("repo", "encryptionConfigurations is not set; declare encryptionType AES256 or KMS")
    ]
    # values computed at up (unknown during a preview) are not violations
    s = set_input(
        good_stack(),
        "repo",
        imageScanningConfiguration={"scanOnPush": UNKNOWN_PLACEHOLDER},
        imageTagMutability=UNKNOWN_PLACEHOLDER,
    )
    assert _found(s, "ecr-repository-hardened") == []
    assert (
        _found(set_input(good_stack(), "scratch", encrypted=UNKNOWN_PLACEHOLDER), "ebs-volume-encrypted")
        == []
    )
    for etype in ("AES256", "KMS", "KMS_DSSE", UNKNOWN_PLACEHOLDER):
        s = set_input(good_stack(), "repo", encryptionConfigurations=[{"encryptionType": etype}])
        assert _found(s, "ecr-repository-hardened") == [], etype


# --- policy/fleet.py: worker placement and S3, each message in full ------------------------------

PG = "aws:ec2/placementGroup:PlacementGroup"


def _capacity_block(rid):
    return dict(
        instanceMarketOptions={"marketType": "capacity-block"},
        capacityReservationSpecification={"capacityReservationTarget": {"capacityReservationId": rid}},
        placementGroup=None,
    )


def test_placement_checks_every_worker_and_takes_only_placement_groups_and_known_zones():
    from pulumi_policy import StackValidationArgs

    from policy.fleet import _placement
    from policy.runner import policy_resources

    none = "GPU worker is in no placement group"
    two = [r for r in good_stack() if r["name"] != "worker-2"]  # two workers are already checked
    assert _found(set_input(two, "worker-1", placementGroup=None), "worker-placement") == [
        ("worker-1", f"worker-1: {none}")
    ]
    # a worker whose group is unknown at preview is skipped, the next one is still checked
    s = set_input(good_stack(), "worker-0", placementGroup=UNKNOWN_PLACEHOLDER)
    assert _found(set_input(s, "worker-1", placementGroup=None), "worker-placement") == [
        ("worker-1", f"worker-1: {none}")
    ]
    s = set_input(good_stack(), "worker-0", placementGroup=None)  # each worker outside a group is named
    assert _found(set_input(s, "worker-1", placementGroup=None), "worker-placement") == [
        (w, f"{w}: {none}") for w in ("worker-0", "worker-1")
    ]
    assert _found(set_input(good_stack(), "cluster", strategy=UNKNOWN_PLACEHOLDER), "worker-placement") == []
    # a zone unknown on the instance is its subnet's; a subnet outside the stack gives no zone
    subnet_b = res(
        "aws:ec2/subnet:Subnet", "private-b", "subnet-b", vpcId="vpc-1", availabilityZone="us-east-1b"
    )
    s = set_input(
        add(good_stack(), subnet_b), "worker-1", availabilityZone=UNKNOWN_PLACEHOLDER, subnetId="subnet-b"
    )
    assert _found(s, "worker-placement") == [
        (
            None,
            "GPU workers are spread over availability zones: us-east-1a: worker-0, worker-2; us-east-1b: worker-1",
        )
    ]
    assert _found(set_input(good_stack(), "worker-1", subnetId="subnet-elsewhere"), "worker-placement") == []
    no_zone = res("aws:ec2/subnet:Subnet", "private-c", "subnet-c", vpcId="vpc-1")  # AWS picks one at create
    assert (
        _found(set_input(add(good_stack(), no_zone), "worker-1", subnetId="subnet-c"), "worker-placement")
        == []
    )

    # Under the engine a reference also comes as a property dependency: only a placement group
    # counts as the worker's group (a name built from another resource depends on that one too)
    def placement(stack, deps: dict[str, str]) -> list[tuple[str, str | None]]:
        built = policy_resources(stack)
        by_name = {r.name: r for r in built}
        for prop, dep in deps.items():
            by_name["worker-0"].property_dependencies = {prop: [by_name[dep]]}
        out: list[tuple[str, str | None]] = []
        _placement(StackValidationArgs(built, {}), lambda msg, urn=None: out.append((msg, urn)))
        return out

    rid = res("random:index/randomId:RandomId", "suffix", hex="ab12")
    named = add(good_stack(), rid)
    group = next(r for r in named if r["name"] == "cluster")
    group["inputs"]["name"] = group["outputs"]["name"] = "pg-ab12"
    for w in WORKERS:
        set_input(named, w, placementGroup="pg-ab12")  # the group's name, not its id
    assert placement(named, {"placementGroup": "suffix"}) == []
    s = set_input(
        add(good_stack(), rid), "worker-0", placementGroup=None, placementGroupId=UNKNOWN_PLACEHOLDER
    )
    assert placement(s, {"placementGroupId": "suffix"}) == []  # unknown at preview: skipped


def test_placement_messages_name_each_worker_group_and_zone():
    s = set_input(good_stack(), "worker-1", placementGroup=None)
    assert _found(s, "worker-placement") == [("worker-1", "worker-1: GPU worker is in no placement group")]
    s = set_input(good_stack(), "cluster", strategy="spread")
    assert _found(s, "worker-placement") == [
        (w, f"{w}: placement group cluster has strategy 'spread'; GPU workers need 'cluster'")
        for w in ("worker-0", "worker-1", "worker-2")
    ]
    spread = "GPU workers are spread over placement groups: "
    # a group by name (in the stack, or not), by id (in the stack, or not)
    s = add(good_stack(), res(PG, "pg2", "pg-2", name="other-pg", strategy="cluster"))
    set_input(s, "worker-1", placementGroup="other-pg")
    set_input(s, "worker-2", placementGroup="outside-pg")
    assert _found(s, "worker-placement") == [
        (None, spread + "cluster: worker-0; outside-pg: worker-2; pg2: worker-1")
    ]
    s = add(good_stack(), res(PG, "pg2", "pg-2", name="other-pg", strategy="cluster"))
    set_input(s, "worker-1", placementGroup=None, placementGroupId="pg-2")
    assert _found(s, "worker-placement") == [(None, spread + "cluster: worker-0, worker-2; pg2: worker-1")]
    s = set_input(good_stack(), "worker-1", placementGroup=None, placementGroupId="pg-outside")
    assert _found(s, "worker-placement") == [
        (None, spread + "cluster: worker-0, worker-2; pg-outside: worker-1")
    ]
    # Capacity Blocks stand for placement groups; a reservation id unknown at preview is "(unknown)"
    s = good_stack()
    for w, rid in (("worker-0", "cr-1"), ("worker-1", "cr-1"), ("worker-2", None)):
        set_input(s, w, **_capacity_block(rid))
    assert _found(s, "worker-placement") == [
        (None, spread + "Capacity Block (unknown): worker-2; Capacity Block cr-1: worker-0, worker-1")
    ]
    s = good_stack()  # and so is one the offline engine marks unknown, not its marker's text
    for w, rid in (("worker-0", "cr-1"), ("worker-1", "cr-1"), ("worker-2", UNKNOWN_PLACEHOLDER)):
        set_input(s, w, **_capacity_block(rid))
    assert _found(s, "worker-placement") == [
        (None, spread + "Capacity Block (unknown): worker-2; Capacity Block cr-1: worker-0, worker-1")
    ]
    s = good_stack()
    for w in ("worker-0", "worker-1", "worker-2"):
        set_input(s, w, **_capacity_block("cr-1"))
    assert _found(s, "worker-placement") == []
    s = set_input(good_stack(), "worker-1", availabilityZone="us-east-1b")
    assert _found(s, "worker-placement") == [
        (
            None,
            "GPU workers are spread over availability zones: us-east-1a: worker-0, worker-2; us-east-1b: worker-1",
        )
    ]
    # unknown at preview: neither a group nor a zone to compare
    s = set_input(
        good_stack(), "worker-1", placementGroup=UNKNOWN_PLACEHOLDER, availabilityZone=UNKNOWN_PLACEHOLDER
    )
    assert _found(s, "worker-placement") == []
    # one worker has no inter-node traffic to keep close
    one = [r for r in good_stack() if r["name"] not in ("worker-1", "worker-2")]
    assert _found(set_input(one, "worker-0", placementGroup=None), "worker-placement") == []


def test_s3_messages_and_what_stands_for_a_buckets_own_settings():
    pab, sse = "weights-pab", "weights-sse"
    bare = [r for r in good_stack() if r["name"] not in (pab, sse)]
    none = "weights: no BucketPublicAccessBlock; block all public access"
    plain = "weights: no server-side encryption configuration; set AES256 or aws:kms"
    assert _found(bare, "s3-bucket-hardened") == [("weights", none), ("weights", plain)]
    s = set_input(
        good_stack(),
        pab,
        blockPublicAcls=False,
        ignorePublicAcls=None,
        restrictPublicBuckets=UNKNOWN_PLACEHOLDER,
    )
    assert _found(s, "s3-bucket-hardened") == [
        (pab, "weights: public access block weights-pab leaves blockPublicAcls, ignorePublicAcls off")
    ]
    rules = [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": a}} for a in ("DES", "aws:kms:dsse")]
    assert _found(set_input(good_stack(), sse, rules=rules), "s3-bucket-hardened") == [
        ("weights", "weights: sseAlgorithm 'DES' is not one of AES256, aws:kms, aws:kms:dsse")
    ]
    # the account's public access block, all four flags on, stands for each bucket's
    flags = dict(
        blockPublicAcls=True, blockPublicPolicy=True, ignorePublicAcls=True, restrictPublicBuckets=True
    )
    account = "aws:s3/accountPublicAccessBlock:AccountPublicAccessBlock"
    assert _found(add(bare, res(account, "acct", **flags)), "s3-bucket-hardened") == [("weights", plain)]
    half = res(account, "acct", **{**flags, "restrictPublicBuckets": False})
    assert _found(add(bare, half), "s3-bucket-hardened") == [("weights", none), ("weights", plain)]
    # the bucket's own inline encryption counts, and so does its SSE config found by name
    inline = {"rule": {"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}}
    s = set_input(
        [r for r in good_stack() if r["name"] != sse], "weights", serverSideEncryptionConfiguration=inline
    )
    assert _found(s, "s3-bucket-hardened") == []
    s = [r for r in good_stack() if r["name"] != "weights"]
    s.append(res("aws:s3/bucketV2:BucketV2", "weights", "b-123", bucket="weights-bucket-id"))
    assert _found(s, "s3-bucket-hardened") == []  # its id differs from its name: matched by name
    assert _found(set_input(good_stack(), pab, bucket="other-bucket"), "s3-bucket-hardened") == [
        ("weights", none)
    ]
    # unknown at preview (which bucket a block or an SSE config is for): not a violation
    s = set_input(good_stack(), pab, bucket=UNKNOWN_PLACEHOLDER)
    assert _found(set_input(s, sse, bucket=UNKNOWN_PLACEHOLDER), "s3-bucket-hardened") == []


def test_iam_document_problems_in_full():
    statement = {"Sid": "All", "Effect": "Allow", "Action": ["*", "s3:*", "s3:GetObject", 5], "Resource": "*"}
    assert iam_document_problems({"Statement": [statement]}) == [
        "Statement[0] (All) allows wildcard action *, s3:*; list the actions it needs",
        "Statement[0] (All) grants s3:GetObject on Resource '*'; these actions support resource ARNs",
    ]
    # one statement, not in a list
    one = {"Statement": {"Effect": "Allow", "NotAction": "iam:*", "Resource": "arn:x"}}
    assert iam_document_problems(one) == ["Statement[0] allows NotAction, which grants every other action"]
    # JSON text; an empty Sid is no Sid; NotResource is as broad as "*"; a non-statement and a Deny skipped
    doc = {
        "Statement": [
            "junk",
            {"Effect": "Deny", "Action": "*", "Resource": "*"},
            {
                "Sid": "",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "NotResource": "arn:x",
            },
        ]
    }
    assert iam_document_problems(json.dumps(doc)) == [
        "Statement[2] grants s3:GetObject, s3:PutObject on Resource '*'; these actions support resource ARNs"
    ]
    # actions without resource-level permissions (any case), the SSM agent's own: '*' is right for them
    star = [
        "EC2:describeInstances",
        "ssm:UpdateInstanceInformation",
        "ssmmessages:OpenDataChannel",
        "s3:listallmybuckets",
    ]
    assert (
        iam_document_problems({"Statement": [{"Effect": "Allow", "Action": star, "Resource": ["*"]}]}) == []
    )
    assert iam_document_problems("{nope") == [
        "policy is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    ]
    assert (
        iam_document_problems([{"Effect": "Allow", "Action": "*"}]) == [] and iam_document_problems({}) == []
    )


def test_iam_least_privilege_reads_every_policy_holder_and_attachment():
    doc = json.dumps({"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "arn:x"}]})
    wild = "Statement[0] allows wildcard action s3:*; list the actions it needs"
    iam = "aws:iam/"
    s = add(
        good_stack(),
        res(
            iam + "rolePolicyAttachment:RolePolicyAttachment",
            "a1",
            role="r",
            policyArn="arn:aws:iam::aws:policy/PowerUserAccess",
        ),
        res(
            iam + "policyAttachment:PolicyAttachment",
            "a2",
            roles=["r"],
            policyArn="arn:aws:iam::aws:policy/IAMFullAccess",
        ),
        res(
            iam + "userPolicyAttachment:UserPolicyAttachment",
            "a3",
            user="u",
            policyArn="arn:aws:iam::aws:policy/ReadOnlyAccess",
        ),
        res(
            iam + "groupPolicyAttachment:GroupPolicyAttachment",
            "a4",
            group="g",
            policyArn="arn:aws:iam::aws:policy/AdministratorAccess",
        ),
        res(iam + "rolePolicy:RolePolicy", "rp", role="r", policy=doc),
        res(iam + "userPolicy:UserPolicy", "up", user="u", policy=doc),
        res(iam + "groupPolicy:GroupPolicy", "gp", group="g", policy=doc),
        res(
            iam + "role:Role",
            "role",
            assumeRolePolicy="{}",
            inlinePolicies=[  # one without a document and one unknown first: the next is still read
                {"name": "n", "policy": None},
                {"name": "u", "policy": UNKNOWN_PLACEHOLDER},
                {"policy": doc},
            ],
        ),
        res(iam + "serviceLinkedRole:ServiceLinkedRole", "slr", policy=doc),  # not a policy holder
    )
    admin = "grants administrator-level access"
    assert _found(s, "iam-least-privilege") == [
        ("a1", f"policyArn arn:aws:iam::aws:policy/PowerUserAccess {admin}"),
        ("a2", f"policyArn arn:aws:iam::aws:policy/IAMFullAccess {admin}"),
        ("a4", f"policyArn arn:aws:iam::aws:policy/AdministratorAccess {admin}"),
        ("rp", wild),
        ("up", wild),
        ("gp", wild),
        ("role", f"inlinePolicies[2]: {wild}"),  # no name: its index
    ]


def test_required_tags_messages_which_resources_and_the_providers_default_tags():
    topic = "aws:sns/topic:Topic"  # an AWS type outside TAGGABLE_TYPES: checked when its tags are a map
    s = add(
        good_stack(),
        res(topic, "topic", tags={"Project": ""}),  # an empty value is missing
        res(topic, "listed", tags=["a"]),
        res(topic, "untagged"),
        res(topic, "unknown", tags=UNKNOWN_PLACEHOLDER),
        # tags unknown at preview, tagsAll known: tagsAll is read
        res(topic, "half", tags=UNKNOWN_PLACEHOLDER, tagsAll={"Project": "llmfleet"}),
        res("random:index:Thing", "thing", tags={}),  # not AWS: its tags may be anything
        res("aws:lb/loadBalancer:LoadBalancer", "nlb", tags=UNKNOWN_PLACEHOLDER),
    )
    assert _found(s, "required-tags") == [
        ("topic", "missing required tags: Project, llmfleet:stack"),
        ("half", "missing required tags: llmfleet:stack"),
    ]
    only = {"required-tags": {"requiredTags": ["Project"]}}
    assert _found(s, "required-tags", only) == [("topic", "missing required tags: Project")]

    # the provider's defaultTags apply under the resource's own tags (CrossGuard hands the provider)
    from pulumi_policy import PolicyProviderResource, ResourceValidationArgs

    from policy.runner import resource_args

    def found(tags, default_tags):
        [(_, kw)] = resource_args([res(topic, "t", tags=tags)])
        props = {"defaultTags": {"tags": default_tags}}
        provider = PolicyProviderResource("pulumi:providers:aws", props, "urn:provider", "aws")
        out: list[str] = []
        pack.by_name()["required-tags"].validate(
            ResourceValidationArgs(**{**kw, "provider": provider}, config={}),
            lambda msg, urn=None: out.append(msg),  # pulumi_policy's ReportViolation(message, urn)
        )
        return out

    missing = "missing required tags: "
    assert found({"Project": "llmfleet"}, {"llmfleet:stack": "s"}) == []
    assert found({}, {"llmfleet:stack": "s", "Project": ""}) == [missing + "Project"]
    assert found({"Project": ""}, {"Project": "x", "llmfleet:stack": "s"}) == [missing + "Project"]
    assert found({"Project": "llmfleet"}, ["not", "a", "map"]) == [missing + "llmfleet:stack"]


def test_private_subnet_messages_name_the_instance():
    s = set_input(good_stack(), "worker-2", subnetId=None)
    assert _found(s, "ec2-private-subnet") == [
        ("worker-2", "worker-2: no subnetId, so it lands in the default VPC's public subnet")
    ]
    s = set_input(good_stack(), "private", mapPublicIpOnLaunch=True)
    tail = "subnet private is public (public IPs or a default route to an internet gateway)"
    assert _found(s, "ec2-private-subnet") == [
        (h, f"{h}: {tail}") for h in ("head", "worker-0", "worker-1", "worker-2")
    ]
    # the first host without a subnet does not end the check of the others
    set_input(s, "head", subnetId=None)
    assert _found(s, "ec2-private-subnet") == [
        ("head", "head: no subnetId, so it lands in the default VPC's public subnet"),
        *[(h, f"{h}: {tail}") for h in ("worker-0", "worker-1", "worker-2")],
    ]
    # nor does a subnet outside the stack end the check of the host's next one
    nics = [{"networkInterfaceId": "eni-x"}, {"networkInterfaceId": "eni-0"}]
    s = add(
        set_input(good_stack(), "worker-0", subnetId=None, networkInterfaces=nics),
        res("aws:ec2/networkInterface:NetworkInterface", "efa-0", "eni-0", subnetId="subnet-pub"),
        res("aws:ec2/subnet:Subnet", "public", "subnet-pub", vpcId="vpc-1", mapPublicIpOnLaunch=True),
    )
    assert _found(s, "ec2-private-subnet") == [
        ("worker-0", f"worker-0: {tail.replace('private', 'public', 1)}")
    ]


# --- policy/fleet.py: gpu-fit ---------------------------------------------------------------------

WORKERS = ("worker-0", "worker-1", "worker-2")


def _tag_workers(stack, **tags):
    for w in WORKERS:
        set_input(stack, w, tags={**TAGS, **tags})
    return stack


def test_gpu_fit_messages_and_where_each_setting_comes_from():
    fit = "gpu-fit"
    s = set_input(good_stack(), "worker-0", instanceType="g6e.12xlarge")
    assert _found(s, fit) == [
        (None, "GPU workers must share one known instance type; found: g6e.12xlarge, g6e.48xlarge")
    ]
    s = set_input(good_stack(), "worker-0", instanceType=UNKNOWN_PLACEHOLDER)
    assert _found(s, fit) == [
        (None, "GPU workers must share one known instance type; found: UNKNOWN, g6e.48xlarge")
    ]
    s = good_stack()
    for w in WORKERS:
        set_input(s, w, instanceType="m7i.2xlarge")
    assert _found(s, fit) == [(None, "worker instanceType 'm7i.2xlarge' has no GPU in the catalog")]
    # replicas from the workers' tag, else the policy config
    split = [(None, "3 GPU workers do not split into 2 equal replicas")]
    assert _found(good_stack(), fit, {fit: {"replicas": 2}}) == split
    tagged = _tag_workers(good_stack(), **{"llmfleet:role": "worker", "llmfleet:replicas": "2"})
    assert _found(tagged, fit) == split
    # the model: the workers' one tag wins over the config; untagged GPU instances are workers too
    long = [(None, "max_model_len: 200000 exceeds deepseek-r1's 163840 positions")]
    assert _found(good_stack(), fit, {fit: {"model": "nope-model", "maxModelLen": 200000}}) == long
    untagged = _tag_workers(good_stack())
    [(_, msg)] = _found(untagged, fit, {fit: {"model": "nope-model"}})
    assert msg.startswith("cannot plan nope-model on 3x 8x L40S: --model: 'nope-model' is not a known model")
    # two models among the workers' tags: the config's decides
    s = set_input(
        good_stack(), "worker-0", tags={**TAGS, "llmfleet:role": "worker", "llmfleet:model": "other"}
    )
    assert _found(s, fit, {fit: {"model": "deepseek-r1", "maxModelLen": 200000}}) == long
    tagged = _tag_workers(good_stack(), **{"llmfleet:role": "worker", "llmfleet:maxModelLen": "200000"})
    assert _found(tagged, fit) == long
    # a GPU host that is not a worker (the head) is not counted
    assert _found(set_input(good_stack(), "head", instanceType="g6e.48xlarge"), fit) == []
    # nor is an untagged host without GPUs, or of a type the catalog lacks (tagged workers as they are)
    for itype in ("m7i.2xlarge", "x9.unknown"):
        cpu = instance("cpu", itype, "x")
        cpu["inputs"]["tags"] = cpu["outputs"]["tags"] = dict(TAGS)
        assert _found(add(good_stack(), cpu), fit) == [], itype
    # the engine's settings reach the planner: half the memory does not fit on 3 nodes
    [(_, msg)] = _found(good_stack(), fit, {fit: {"gpuMemoryUtilization": 0.5}})
    assert msg.startswith("memory: ") and "(44.7 GiB x 0.5 - 2.0 GiB runtime)" in msg


def test_gpu_fit_reads_each_engine_setting_from_the_workers_the_policy_config_or_the_stack():
    """Without --policy-pack-config (the Pulumi CLI's default) the pack falls back to the stack's
    llmfleet:* keys; the workers' tags (set by the program) go before both."""
    import pulumi

    only = [pack.by_name()["gpu-fit"]]

    def found(stack, block=None) -> list[str]:  # this block only: none of CONFIG's keys
        return [v.message for v in run_policies(stack, {"gpu-fit": block or {}}, policies=only).violations]

    untagged = _tag_workers(good_stack())
    # nothing anywhere: deepseek-r1 at the context 'auto' picks
    assert found(untagged) == found(good_stack()) == []
    assert found(untagged, {"maxModelLen": 200000}) == [
        "max_model_len: 200000 exceeds deepseek-r1's 163840 positions"
    ]
    bf16 = "memory: weights need 56.8 GiB per GPU (deepseek-r1 bf16, 1249.9 GiB over TP 8 x PP 3)"
    [msg] = found(good_stack(), {"quantization": "bf16"})
    assert msg.startswith(bf16)
    quant = "llmfleet:quantization"
    assert found(_tag_workers(good_stack(), **{quant: "fp8"}), {"quantization": "bf16"}) == []  # the tag wins
    [msg] = found(_tag_workers(good_stack(), **{quant: "bf16"}))
    assert msg.startswith(bf16)
    plan_on = "cannot plan deepseek-r1 on 3x 8x L40S: "
    target = plan_on + "--target-concurrency: 0 is not allowed; allowed: an integer >= 1"
    conc = plan_on + "--concurrency: 0 is not allowed; allowed: an integer >= 1"
    assert found(good_stack(), {"targetConcurrency": 0}) == [target]
    assert found(good_stack(), {"concurrency": 0}) == [conc]
    stack_keys = {
        "llmfleet:targetConcurrency": ("0", [target]),
        "llmfleet:concurrency": ("0", [conc]),
        "llmfleet:gpuMemoryUtilization": ("0.5", ["memory: weights need 28.8 GiB per GPU"]),
        "llmfleet:quantization": ("bf16", [bf16]),
        "llmfleet:maxModelLen": ("200000", ["max_model_len: 200000 exceeds deepseek-r1's 163840 positions"]),
        "llmfleet:model": ("nope", ["cannot plan nope on 3x 8x L40S: --model: 'nope' is not a known model"]),
    }
    try:
        for key, (value, want) in stack_keys.items():
            pulumi.runtime.set_all_config({key: value}, [])
            got = found(untagged)
            assert len(got) == 1 and got[0].startswith(want[0]), (key, got)
    finally:
        pulumi.runtime.set_all_config({}, [])


def test_gpu_fit_without_ec2_workers_reads_the_layout_from_config():
    fit = "gpu-fit"
    owned = [r for r in good_stack() if r["name"] not in WORKERS]
    assert _found(owned, fit) == []  # nothing to check: not applicable
    assert _found(owned, fit, {fit: {"gpu": "L40S", "gpusPerNode": 8, "workers": 3}}) == []
    [(_, msg)] = _found(owned, fit, {fit: {"gpu": "L40S", "gpusPerNode": 8, "workers": 2}})
    assert msg.startswith("memory: ") and msg.endswith("needs at least 3 nodes of 8")
    [(_, msg)] = _found(owned, fit, {fit: {"gpu": "NOPE", "gpusPerNode": 8, "workers": 2}})
    assert msg.startswith(
        "cannot plan deepseek-r1 on 2x 8x NOPE: --gpu: 'NOPE' is not a known GPU; allowed: "
    )
    # any one of the three unset leaves nothing to check (this layout would not fit if checked),
    # and the engine is told why
    for unset in ("gpu", "gpusPerNode", "workers"):
        layout = {"gpu": "L40S", "gpusPerNode": 8, "workers": 2, unset: None}
        assert _found(owned, fit, {fit: layout}) == [], unset
    from pulumi_policy import StackValidationArgs
    from pulumi_policy.policy import _NotApplicableError

    from policy.fleet import _gpu_fit
    from policy.runner import policy_resources

    with pytest.raises(_NotApplicableError) as e:
        _gpu_fit(StackValidationArgs(policy_resources(owned), {}), lambda *a: None)
    assert e.value.reason == "no GPU workers in the stack and no gpu/gpusPerNode/workers in policy config"


def test_budget_message_prices_the_stack_with_the_workers_model_and_the_region():
    from infra.catalog import load_catalog
    from infra.cost.estimate import estimate_monthly_usd

    budget = "monthly-budget"
    weights = load_catalog().models["deepseek-r1"].checkpoint_gib  # the workers' llmfleet:model
    total = float(
        estimate_monthly_usd(good_stack(), "us-east-1", weights_gib=weights, pricing_model="on-demand")
    )
    assert _found(good_stack(), budget, {budget: {"maxMonthlyUsd": 1000}}) == [
        (
            None,
            f"estimated ${total:,.2f}/month exceeds maxMonthlyUsd $1,000.00 (us-east-1, on-demand snapshot prices)",
        )
    ]
    assert _found(good_stack(), budget, {budget: {"maxMonthlyUsd": total}}) == []  # at the limit is within it
    # the workers' llmfleet:model tag goes before the policy config's model (a smaller checkpoint)
    small = {budget: {"maxMonthlyUsd": 1000, "model": "deepseek-r1-distill-qwen-7b"}}
    assert [m for _, m in _found(good_stack(), budget, small)] == [
        f"estimated ${total:,.2f}/month exceeds maxMonthlyUsd $1,000.00 (us-east-1, on-demand snapshot prices)"
    ]
    # untagged workers: the policy config's model (CONFIG's deepseek-r1) prices the weights
    untagged = good_stack()
    for w in ("worker-0", "worker-1", "worker-2"):
        tags = {k: v for k, v in named(untagged, w)["inputs"]["tags"].items() if k != "llmfleet:model"}
        set_input(untagged, w, tags=tags)
    priced = float(
        estimate_monthly_usd(untagged, "us-east-1", weights_gib=weights, pricing_model="on-demand")
    )
    assert [m for _, m in _found(untagged, budget, {budget: {"maxMonthlyUsd": 1000}})] == [
        f"estimated ${priced:,.2f}/month exceeds maxMonthlyUsd $1,000.00 (us-east-1, on-demand snapshot prices)"
    ]
    # the estimator's own default: on-demand
    from policy._stackview import StackView
    from policy.fleet import monthly_cost_usd
    from policy.runner import policy_resources

    view = StackView.of(policy_resources(good_stack()))
    assert monthly_cost_usd(view, "us-east-1", "deepseek-r1") == total
    # no model, or one the catalog lacks: no weights priced
    bare = float(estimate_monthly_usd(good_stack(), "us-east-1", pricing_model="on-demand"))
    assert (
        monthly_cost_usd(view, "us-east-1", None)
        == monthly_cost_usd(view, "us-east-1", "nope")
        == bare
        < total
    )
    assert _found(good_stack(), budget, {budget: {"maxMonthlyUsd": None}}) == []  # no limit: not applicable
    [(_, msg)] = _found(good_stack(), budget, {budget: {"maxMonthlyUsd": 1000, "region": "eu-west-1"}})
    assert msg.startswith(
        "cannot estimate the monthly cost: aws:region: 'eu-west-1' is not in the price snapshot"
    )
    [(_, msg)] = _found(
        set_input(good_stack(), "worker-0", instanceType="x9.huge"), budget, {budget: {"maxMonthlyUsd": 1000}}
    )
    assert msg.startswith("cannot estimate the monthly cost: instanceType: no on-demand price for 'x9.huge'")


def test_a_short_context_is_known_by_the_models_catalog_id_or_its_hub_name():
    from policy.engine import _short_context

    tail = "its thoughts run to thousands of tokens and get cut off; set llmfleet:maxModelLen to auto or >= 16384"
    for name in ("deepseek-r1", "deepseek-ai/DeepSeek-R1"):
        assert _short_context(name, 8192) == (
            f"max_model_len 8,192 is below 16,384 for the reasoning model deepseek-r1: {tail}"
        ), name
        assert _short_context(name, 16384) is None
    assert _short_context("not-in-the-catalog", 1024) is None


def test_only_node_scripts_that_name_a_model_and_a_length_are_read_for_the_context():
    from policy._stackview import StackView
    from policy.engine import rendered_contexts
    from policy.runner import policy_resources

    param = "aws:ssm/parameter:Parameter"
    no_length = (
        "cat > /etc/llmfleet/serve.yaml <<'E'\n    model_loading_config:\n      model_id: deepseek-r1\nE\n"
    )
    stack = [
        res(param, "empty", insecureValue=""),  # first: no script, the next ones are still read
        res(param, "no-length", insecureValue=pack_script(no_length)),
        res(param, "node-head", insecureValue=pack_script(SHORT_CONTEXT)),
        # a quoted id is read without its quotes (and an id may well start with an X)
        res(
            param,
            "quoted",
            insecureValue=pack_script(
                SHORT_CONTEXT.replace("deepseek-ai/DeepSeek-R1", "'Xwin-LM/Xwin-LM-70B'")
            ),
        ),
    ]
    view = StackView.of(policy_resources(stack))
    assert rendered_contexts(view) == [
        (stack[2]["urn"], "deepseek-ai/DeepSeek-R1", 8192),
        (stack[3]["urn"], "Xwin-LM/Xwin-LM-70B", 8192),
    ]
    # the advice names the node script that carries the short context (Xwin is no catalog model)
    assert [v.resource for v in run(stack, "reasoning-model-context").violations] == ["node-head"]


def test_the_reasoning_context_falls_back_to_the_plan_only_without_node_scripts():
    from infra.stack.config import load_stack_config
    from policy.engine import ENGINE_POLICIES

    pinned = load_stack_config({"llmfleet:maxModelLen": "8192"}, "t")
    reasoning = [p for p in ENGINE_POLICIES if p.name == "reasoning-model-context"]
    # a preview before the node scripts are known: the plan's context for the stack config
    [v] = run_policies([], {}, reasoning, stack=pinned).violations
    assert v.resource is None and v.message.startswith(
        "max_model_len 8,192 is below 16,384 for the reasoning model"
    )
    # with the scripts known, they speak, once
    head = res("aws:ssm/parameter:Parameter", "node-head", insecureValue=pack_script(SHORT_CONTEXT))
    assert [v.resource for v in run_policies([head], {}, reasoning, stack=pinned).violations] == ["node-head"]


def test_the_budget_prices_on_demand_when_the_stack_config_does_not_load():
    import pulumi

    from policy.fleet import owned_hosts_monthly_usd, stack_pricing_model

    pulumi.runtime.set_all_config({"llmfleet:workerCount": "many"}, [])  # what the CLI would hand over
    try:
        assert (stack_pricing_model(), owned_hosts_monthly_usd()) == ("on-demand", 0.0)
    finally:
        pulumi.runtime.set_all_config({}, [])


def test_the_budget_limit_falls_back_to_the_stacks_key_and_says_why_it_does_not_apply():
    """Under the Pulumi CLI the pack gets no policy config unless given one: the limit is then the
    stack's llmfleet:maxMonthlyUsd (PULUMI_CONFIG), and with neither the engine shows the reason."""
    import pulumi
    from pulumi_policy import StackValidationArgs
    from pulumi_policy.policy import _NotApplicableError

    from infra.catalog import load_catalog
    from infra.cost.estimate import estimate_monthly_usd
    from policy.fleet import _budget
    from policy.runner import policy_resources

    budget = "monthly-budget"
    with pytest.raises(_NotApplicableError) as e:  # the reason the engine lists the policy with
        _budget(StackValidationArgs(policy_resources(good_stack()), {}), lambda *a: None)
    assert e.value.reason == "no maxMonthlyUsd set"
    weights = load_catalog().models["deepseek-r1"].checkpoint_gib
    total = float(
        estimate_monthly_usd(good_stack(), "us-east-1", weights_gib=weights, pricing_model="on-demand")
    )
    only = [pack.by_name()[budget]]

    def found() -> list[str]:  # no policy config: the schema has no default for maxMonthlyUsd or region
        return [v.message for v in run_policies(good_stack(), {}, policies=only).violations]

    assert found() == []
    pulumi.runtime.set_all_config({"llmfleet:maxMonthlyUsd": "1000"}, [])
    try:  # the stack's limit, priced in us-east-1 when the stack names no aws:region
        assert found() == [
            f"estimated ${total:,.2f}/month exceeds maxMonthlyUsd $1,000.00 (us-east-1, on-demand snapshot prices)"
        ]
        pulumi.runtime.set_all_config({"llmfleet:maxMonthlyUsd": "1000", "aws:region": "eu-west-1"}, [])
        [msg] = found()  # the stack's aws:region
        assert msg.startswith(
            "cannot estimate the monthly cost: aws:region: 'eu-west-1' is not in the price snapshot"
        )
    finally:
        pulumi.runtime.set_all_config({}, [])


def test_owned_hosts_are_priced_only_with_their_declared_hourly_cost():
    from infra.stack.files import load_config
    from policy import _config
    from policy.fleet import owned_hosts_monthly_usd

    owned = load_config("onprem-l20")
    assert owned.provider == "existing" and owned.host_hourly_usd is not None
    with _config.runner_stack(owned):
        assert owned_hosts_monthly_usd() == pytest.approx(
            owned.host_hourly_usd * len(owned.worker_hosts) * 730
        )
    with _config.runner_stack(owned.model_copy(update={"host_hourly_usd": None})):
        assert owned_hosts_monthly_usd() == 0.0  # undeclared: `llmfleet cost` prices none either


def test_in_a_preview_a_public_access_block_finds_its_bucket_by_the_dependency_of_the_bucket_type():
    from pulumi_policy import StackValidationArgs

    from policy.runner import policy_resources

    s = set_input(good_stack(), "weights-pab", bucket=UNKNOWN_PLACEHOLDER, restrictPublicBuckets=False)
    built = {r.name: r for r in policy_resources(s)}
    # the bucket's name is built from the bucket and the VPC (say): depends on both
    built["weights-pab"].property_dependencies = {"bucket": [built["weights"], built["vpc"]]}
    said: list[str] = []
    args = StackValidationArgs(list(built.values()), {})
    pack.by_name()["s3-bucket-hardened"].validate(args, lambda message, urn=None: said.append(message))
    assert said == ["weights: public access block weights-pab leaves restrictPublicBuckets off"]


def test_an_sse_algorithm_unknown_at_preview_is_not_a_violation():
    rules = [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": UNKNOWN_PLACEHOLDER}}]
    assert _found(set_input(good_stack(), "weights-sse", rules=rules), "s3-bucket-hardened") == []
