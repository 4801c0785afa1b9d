"""Instance role: least privilege, checked on the captured policy document."""

import json

import pytest

from infra.catalog.aws_managed import SSM_CORE, SSM_PARAMETER_READS, aws_managed_policies
from infra.components.iam import decrypt_statement, node_policy_document, ssm_agent_policy_document
from policy.resources import iam_document_problems
from tests.captures import capture
from tests.hosts import hosts

KEY = "arn:aws:kms:us-east-1:123456789012:key/k"


@pytest.fixture(scope="module")
def prod():
    return capture("prod")


def test_captured_policy_scoped_to_repo_prefix_and_parameter(prod):
    c = prod
    # the node policy, the SSM agent's, and the metrics/logs one (tests/test_metrics.py): nothing else
    assert {p["name"] for p in c.of_type("aws:iam/policy:Policy")} == {
        "iam-node-policy",
        "iam-ssm-agent-policy",
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
    [key] = [k for k in c.of_type("aws:kms/key:Key") if k["name"] == "secrets-key"]
    assert by_sid["DecryptStackSecureStrings"] == {
        "Sid": "DecryptStackSecureStrings",
        "Effect": "Allow",
        "Action": ["kms:Decrypt"],
        "Resource": key["outputs"]["arn"],
        "Condition": {
            "StringLike": {
                "kms:EncryptionContext:PARAMETER_ARN": "arn:aws:ssm:us-east-1:123456789012:parameter/llmfleet/prod/*"
            },
            "StringEquals": {"kms:ViaService": "ssm.us-east-1.amazonaws.com"},
        },
    }
    kms = [s["Sid"] for s in doc["Statement"] if any(a.startswith("kms:") for a in s["Action"])]
    assert kms == ["DecryptStackSecureStrings"]
    bucket = c.of_type("aws:s3/bucket:Bucket")[0]["outputs"]["bucket"]
    assert by_sid["ReadWeights"]["Resource"] == f"arn:aws:s3:::{bucket}/deepseek-r1/*"
    assert by_sid["ListWeightsPrefix"]["Condition"]["StringLike"]["s3:prefix"] == [
        "deepseek-r1/",
        "deepseek-r1/*",
    ]
    stars = [s["Sid"] for s in doc["Statement"] if s["Resource"] == "*"]
    assert stars == ["EcrAuth", "DescribeHeadInterface"]  # neither action takes a resource scope
    assert all(a != "*" and not a.endswith(":*") for s in doc["Statement"] for a in s["Action"])

    role = c.of_type("aws:iam/role:Role")[0]
    assume = json.loads(role["inputs"]["assumeRolePolicy"])
    assert assume["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    arns = {a["inputs"]["policyArn"] for a in c.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")}
    assert arns == {
        c.named(p)["outputs"]["arn"]
        for p in ("iam-ssm-agent-policy", "iam-node-policy", "observability-policy")
    }
    [profile] = c.of_type("aws:iam/instanceProfile:InstanceProfile")
    assert profile["inputs"]["role"] == role["outputs"]["name"]
    assert len(hosts(c)) == 4  # the head and each worker group's instance (its launch template)
    for inst in hosts(c):
        assert inst["inputs"]["iamInstanceProfile"] == profile["outputs"]["name"]


def test_no_s3_grant_without_bucket():
    doc = node_policy_document("arn:repo", "arn:param", "arn:ray-param", None, "", secrets_key_arn=KEY)
    assert not [s for s in doc["Statement"] if any(a.startswith("s3:") for a in s["Action"])]
    assert iam_document_problems(doc) == []


def _grants_on_star(doc, prefixes):
    return [
        a
        for s in doc["Statement"]
        if s.get("Effect") == "Allow"
        and "*" in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])
        for a in s["Action"]
        if a == "*" or a.lower().startswith(prefixes)
    ]


def test_no_role_in_the_prod_capture_reads_parameters_or_decrypts_on_star(prod):
    """Every role's attachments (AWS-managed ones through the table) and inline policies: no
    ssm:GetParameter* and no kms:Decrypt on "*"."""
    c = prod
    docs = {
        p["outputs"]["arn"]: json.loads(p["inputs"]["policy"]) for p in c.of_type("aws:iam/policy:Policy")
    }
    managed = {
        f"arn:aws:iam::aws:policy/{n}": {"Statement": m.statements()}
        for n, m in aws_managed_policies().items()
    }
    roles = c.of_type("aws:iam/role:Role")
    assert roles
    for role in roles:
        held = [json.loads(p["policy"]) for p in role["inputs"].get("inlinePolicies") or []]
        held += [
            json.loads(p["inputs"]["policy"])
            for p in c.of_type("aws:iam/rolePolicy:RolePolicy")
            if p["inputs"]["role"] == role["outputs"]["name"]
        ]
        for att in c.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment"):
            if att["inputs"]["role"] == role["outputs"]["name"]:
                arn = att["inputs"]["policyArn"]
                assert arn in docs or arn in managed, f"{arn}: grants unknown"
                held.append(docs.get(arn) or managed[arn])
        assert len(held) >= 3  # the node, SSM-agent and observability policies at least
        for doc in held:
            assert (
                _grants_on_star(doc, ("ssm:getparameter", "ssm:get*", "ssm:*", "kms:decrypt", "kms:*")) == []
            )
    # and the check itself sees a grant on "*" when there is one
    assert _grants_on_star(
        {"Statement": aws_managed_policies()[SSM_CORE].statements()}, ("ssm:getparameter",)
    ) == [
        "ssm:GetParameter",
        "ssm:GetParameters",
    ]


def test_ssm_agent_policy_is_the_core_policy_minus_parameter_reads():
    core = aws_managed_policies()[SSM_CORE]
    assert core.source.startswith("https://docs.aws.amazon.com/") and core.version == "v2"
    ours = ssm_agent_policy_document()["Statement"]
    theirs = core.statements()
    assert len(ours) == len(theirs) == 3
    dropped = []
    for mine, aws in zip(ours, theirs, strict=True):
        assert mine["Resource"] == aws["Resource"] == "*"
        assert set(mine["Action"]) <= set(aws["Action"])
        dropped += sorted(set(aws["Action"]) - set(mine["Action"]))
    assert sorted(dropped) == sorted(SSM_PARAMETER_READS)
    actions = {a for s in ours for a in s["Action"]}
    # Session Manager and Run Command / State Manager still work
    for needed in (
        "ssm:UpdateInstanceInformation",
        "ssm:ListInstanceAssociations",
        "ssm:UpdateInstanceAssociationStatus",
        "ssm:GetDocument",
        "ssmmessages:OpenDataChannel",
        "ec2messages:GetMessages",
        "ec2messages:SendReply",
    ):
        assert needed in actions
    assert not [a for a in actions if a.startswith(("ssm:GetParameter", "kms:"))]
    # the pack's least-privilege check accepts AWS's own "*" for the agent's calls
    assert iam_document_problems(ssm_agent_policy_document()) == []


def test_decrypt_only_through_ssm_for_the_stack_prefix():
    tok = "arn:aws-cn:ssm:cn-north-1:123456789012:parameter/llmfleet/dev/endpoint-token"
    stmt = decrypt_statement(KEY, tok, tok.replace("endpoint-token", "ray-auth-token"))
    assert stmt["Resource"] == KEY
    assert stmt["Condition"] == {
        "StringLike": {
            "kms:EncryptionContext:PARAMETER_ARN": "arn:aws-cn:ssm:cn-north-1:123456789012:parameter/llmfleet/dev/*"
        },
        "StringEquals": {"kms:ViaService": "ssm.cn-north-1.amazonaws.com.cn"},
    }
    # a parameter outside /llmfleet/<stack>/: exactly the two tokens, no prefix
    stmt = decrypt_statement(
        KEY, "arn:aws:ssm:us-east-1:1:parameter/a", "arn:aws:ssm:us-east-1:1:parameter/b"
    )
    assert stmt["Condition"]["StringLike"]["kms:EncryptionContext:PARAMETER_ARN"] == [
        "arn:aws:ssm:us-east-1:1:parameter/a",
        "arn:aws:ssm:us-east-1:1:parameter/b",
    ]


def test_secure_strings_use_the_stack_key(prod):
    c = prod
    [key] = [k for k in c.of_type("aws:kms/key:Key") if k["name"] == "secrets-key"]
    assert key["inputs"]["enableKeyRotation"] is True
    policy = json.loads(key["inputs"]["policy"])
    assert policy["Statement"] == [
        {
            "Sid": "AccountRootAdministers",
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
            "Action": "kms:*",
            "Resource": "*",
        }
    ]
    [alias] = c.of_type("aws:kms/alias:Alias")
    assert alias["inputs"]["name"] == "alias/llmfleet/prod"
    assert alias["inputs"]["targetKeyId"] == key["outputs"]["keyId"]
    assert alias["outputs"]["arn"] == "arn:aws:kms:us-east-1:123456789012:alias/llmfleet/prod"
    secure = [p for p in c.of_type("aws:ssm/parameter:Parameter") if p["inputs"]["type"] == "SecureString"]
    assert sorted(p["name"] for p in secure) == ["ray-token-parameter", "token-parameter"]
    for p in secure:
        assert p["inputs"]["keyId"] == key["outputs"]["keyId"]


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
    head = [g for g in groups if g["inputs"]["name"] == c.outputs["head_group"]]
    assert head and not fnmatch.fnmatch(
        f"arn:aws:autoscaling:{region}:{account}:autoScalingGroup:uuid:autoScalingGroupName/{head[0]['inputs']['name']}",
        stmt["Resource"],
    )  # the workers' agent cannot mark the head Unhealthy
    groups = [g for g in groups if g not in head]
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


def test_only_this_stacks_head_may_attach_the_head_interface():
    """A new head attaches the fixed interface to itself (infra/components/head.py): allowed only
    where the interface and the instance both carry this stack's tag and the head role, which the
    interface and the head group's instances carry and a worker's instance does not."""
    c = capture("prod")
    doc = json.loads(c.named("iam-node-policy")["inputs"]["policy"])
    (stmt,) = [s for s in doc["Statement"] if "ec2:AttachNetworkInterface" in s["Action"]]
    assert stmt["Action"] == ["ec2:AttachNetworkInterface"]
    assert stmt["Resource"] == [
        "arn:aws:ec2:us-east-1:123456789012:network-interface/*",
        "arn:aws:ec2:us-east-1:123456789012:instance/*",
    ]
    cond = stmt["Condition"]["StringEquals"]
    assert cond == {"aws:ResourceTag/llmfleet:stack": "prod", "aws:ResourceTag/llmfleet:role": "head"}
    eni = c.named("cluster-head-eni")["inputs"]["tags"]
    assert (eni["llmfleet:stack"], eni["llmfleet:role"]) == ("prod", "head")
    for g in c.of_type("aws:autoscaling/group:Group"):
        tags = {t["key"]: (t["value"], t["propagateAtLaunch"]) for t in g["inputs"]["tags"]}
        is_head = g["inputs"]["name"] == c.outputs["head_group"]
        assert tags["llmfleet:stack"] == ("prod", True)
        assert (tags["llmfleet:role"] == ("head", True)) == is_head, g["name"]


def test_adapters_read_is_the_stacks_adapters_prefix_only():
    doc = node_policy_document(
        "arn:repo", "arn:param", "arn:ray-param", "weights-b", "deepseek-r1/", secrets_key_arn=KEY,
        adapters_uri="s3://llmfleet-adapters-test/dev/",
    )  # fmt: skip
    assert iam_document_problems(doc) == []
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["ListAdaptersPrefix"] == {
        "Sid": "ListAdaptersPrefix",
        "Effect": "Allow",
        "Action": ["s3:ListBucket"],
        "Resource": "arn:aws:s3:::llmfleet-adapters-test",
        "Condition": {"StringLike": {"s3:prefix": ["dev/", "dev/*"]}},
    }
    assert by_sid["ReadAdapters"] == {
        "Sid": "ReadAdapters",
        "Effect": "Allow",
        "Action": ["s3:GetObject"],
        "Resource": "arn:aws:s3:::llmfleet-adapters-test/dev/*",
    }
    # read only: no s3 write anywhere in the document
    assert [a for s in doc["Statement"] for a in s["Action"] if a.startswith("s3:")] == [
        "s3:ListBucket", "s3:GetObject", "s3:ListBucket", "s3:GetObject",
    ]  # fmt: skip
    without = node_policy_document("arn:repo", "arn:param", "arn:ray-param", None, "", secrets_key_arn=KEY)
    assert not {"ListAdaptersPrefix", "ReadAdapters"} & {s["Sid"] for s in without["Statement"]}
    # a prefix without its '/' would cover siblings (dev* is dev-prod/ too): refused
    with pytest.raises(ValueError, match=r"adapters_uri 's3://b/dev': allowed: s3://BUCKET/PREFIX/"):
        node_policy_document(
            "arn:repo", "arn:param", "arn:ray-param", None, "", secrets_key_arn=KEY, adapters_uri="s3://b/dev"
        )


def test_a_lora_stack_grants_its_adapters_prefix_and_passes_the_pack():
    from policy.host_roles import HOST_ROLE_POLICIES
    from policy.runner import run_policies

    adapters = "s3://llmfleet-adapters-test/dev/"
    c = capture("dev", [f'llmfleet:lora={{"adapters": "{adapters}"}}'])
    doc = json.loads(c.named("iam-node-policy")["inputs"]["policy"])
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["ReadAdapters"]["Resource"] == "arn:aws:s3:::llmfleet-adapters-test/dev/*"
    assert iam_document_problems(doc) == []
    report = run_policies(c.resources, {}, HOST_ROLE_POLICIES, stack=c.config)
    assert list(report.violations) == []
    # the stack without llmfleet:lora: no adapters grant
    plain = json.loads(capture("dev").named("iam-node-policy")["inputs"]["policy"])
    assert not [s["Sid"] for s in plain["Statement"] if "Adapters" in s["Sid"]]
