"""Instance role: least privilege, checked on the captured policy document."""

import json

from infra.components.iam import SSM_CORE_POLICY, node_policy_document
from infra.program.offline import capture
from policy.resources import iam_document_problems
from tests.hosts import hosts


def test_captured_policy_scoped_to_repo_prefix_and_parameter():
    c = capture("prod")
    # the node policy, and the metrics/logs one (tests/test_metrics.py): nothing else
    assert {p["name"] for p in c.of_type("aws:iam/policy:Policy")} == {
        "iam-node-policy",
        "observability-policy",
    }
    pol = c.named("iam-node-policy")
    doc = json.loads(pol["inputs"]["policy"])
    assert iam_document_problems(doc) == []
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    repo = c.of_type("aws:ecr/repository:Repository")[0]["outputs"]["arn"]
    assert by_sid["EcrPullThisRepo"]["Resource"] == repo
    params = {p["name"]: p["outputs"]["arn"] for p in c.of_type("aws:ssm/parameter:Parameter")}
    assert set(params) == {
        "token-parameter",
        "ray-token-parameter",
        "cluster-node-head",
        "cluster-node-worker",
    }
    assert by_sid["ReadEndpointToken"] == {
        "Sid": "ReadEndpointToken",
        "Effect": "Allow",
        "Action": ["ssm:GetParameter"],
        "Resource": params["token-parameter"],
    }
    assert by_sid["ReadRayToken"] == {
        "Sid": "ReadRayToken",
        "Effect": "Allow",
        "Action": ["ssm:GetParameter"],
        "Resource": params["ray-token-parameter"],
    }
    # SSM read on the two tokens and this stack's node scripts, nothing else.
    assert by_sid["ReadNodeScripts"]["Resource"] == params["token-parameter"].replace(
        "/llmfleet/prod/endpoint-token", "/llmfleet/prod/node/*"
    )
    for node in ("cluster-node-head", "cluster-node-worker"):
        assert params[node].startswith(by_sid["ReadNodeScripts"]["Resource"].rstrip("*"))
    ssm = [s for s in doc["Statement"] if any(a.startswith("ssm:") for a in s["Action"])]
    assert sorted(s["Sid"] for s in ssm) == ["ReadEndpointToken", "ReadNodeScripts", "ReadRayToken"]
    bucket = c.of_type("aws:s3/bucket:Bucket")[0]["outputs"]["bucket"]
    assert by_sid["ReadWeights"]["Resource"] == f"arn:aws:s3:::{bucket}/deepseek-r1/*"
    assert by_sid["ListWeightsPrefix"]["Condition"]["StringLike"]["s3:prefix"] == [
        "deepseek-r1/",
        "deepseek-r1/*",
    ]
    stars = [s["Sid"] for s in doc["Statement"] if s["Resource"] == "*"]
    assert stars == ["EcrAuth"]
    assert all(a != "*" and not a.endswith(":*") for s in doc["Statement"] for a in s["Action"])

    role = c.of_type("aws:iam/role:Role")[0]
    assume = json.loads(role["inputs"]["assumeRolePolicy"])
    assert assume["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    arns = {a["inputs"]["policyArn"] for a in c.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")}
    assert arns == {SSM_CORE_POLICY, pol["outputs"]["arn"], c.named("observability-policy")["outputs"]["arn"]}
    [profile] = c.of_type("aws:iam/instanceProfile:InstanceProfile")
    assert profile["inputs"]["role"] == role["outputs"]["name"]
    assert len(hosts(c)) == 4  # the head and each worker group's instance (its launch template)
    for inst in hosts(c):
        assert inst["inputs"]["iamInstanceProfile"] == profile["outputs"]["name"]


def test_no_s3_grant_without_bucket():
    doc = node_policy_document("arn:repo", "arn:param", "arn:ray-param", None, "")
    assert not [s for s in doc["Statement"] if any(a.startswith("s3:") for a in s["Action"])]
    assert iam_document_problems(doc) == []


def test_workers_may_mark_only_their_own_groups_unhealthy():
    """The workers' health agent (ray_cluster/node_health.py) calls SetInstanceHealth: allowed
    on this cluster's worker groups by name, and only while they carry this stack's tag."""
    import fnmatch

    c = capture("prod")
    doc = json.loads(c.named("iam-node-policy")["inputs"]["policy"])
    assert iam_document_problems(doc) == []
    (stmt,) = [s for s in doc["Statement"] if "autoscaling:SetInstanceHealth" in s["Action"]]
    assert stmt["Action"] == ["autoscaling:SetInstanceHealth"]
    repo = c.of_type("aws:ecr/repository:Repository")[0]["outputs"]["arn"]
    region, account = repo.split(":")[3:5]
    groups = c.of_type("aws:autoscaling/group:Group")
    assert groups
    for g in groups:
        arn = f"arn:aws:autoscaling:{region}:{account}:autoScalingGroup:uuid:autoScalingGroupName/{g['inputs']['name']}"
        assert fnmatch.fnmatch(arn, stmt["Resource"])
        tags = {t["key"]: t["value"] for t in g["inputs"]["tags"]}
        assert (
            tags["llmfleet:stack"]
            == stmt["Condition"]["StringEquals"]["autoscaling:ResourceTag/llmfleet:stack"]
            == "prod"
        )
    other = f"arn:aws:autoscaling:{region}:{account}:autoScalingGroup:uuid:autoScalingGroupName/someone-else"
    assert not fnmatch.fnmatch(other, stmt["Resource"])
