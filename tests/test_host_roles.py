"""The host-role policies on the real prod capture: what a host can read beyond its stack.

The shipped capture passes; each test breaks it the way a review would worry about (an
AWS-managed attachment, a document on "*", another stack's prefix, another key) and reads the
violation the pack reports.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

from infra.catalog.aws_managed import ManagedPolicyError, aws_managed_policies, load_from
from infra.stack.config import load_stack_config
from policy import policies as pack
from policy.host_roles import HOST_ROLE_POLICIES, own_parameter, secret_read_problems
from policy.runner import run_policies
from tests.captures import capture

SSM_CORE = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
KEY = "arn:aws:kms:us-east-1:123456789012:key/own"


@pytest.fixture(scope="module")
def prod():
    return capture("prod")


def check(cap, resources=None):
    report = run_policies(
        cap.resources if resources is None else resources, {}, HOST_ROLE_POLICIES, stack=cap.config
    )
    return [(v.policy, v.resource, v.enforcement, v.message) for v in report.violations]


def _set(resources, name, **props):
    r = next(r for r in resources if r["name"] == name)
    for k, v in props.items():
        r["inputs"][k] = v
        r["outputs"][k] = v


def attach(cap, name, policy_arn):
    """The capture plus one more RolePolicyAttachment on the node role."""
    resources = copy.deepcopy(cap.resources)
    att = copy.deepcopy(next(r for r in resources if r["name"] == "iam-node-policy-attach"))
    att.update(name=name, urn=att["urn"].replace("iam-node-policy-attach", name), id=name)
    for k in ("inputs", "outputs"):
        att[k]["policyArn"] = policy_arn
    att["outputs"]["id"] = name
    return resources + [att]


def node_policy(cap, *statements):
    resources = copy.deepcopy(cap.resources)
    doc = json.loads(next(r for r in resources if r["name"] == "iam-node-policy")["inputs"]["policy"])
    doc["Statement"] += list(statements)
    _set(resources, "iam-node-policy", policy=json.dumps(doc))
    return resources


def test_registered_and_mandatory():
    for p in HOST_ROLE_POLICIES:
        assert pack.by_name()[p.name] is p and p.enforcement_level.value == "mandatory"


def test_shipped_prod_passes(prod):
    assert check(prod) == []


def test_ssm_core_attached_as_is_fails(prod):
    [(policy, resource, level, message)] = check(prod, attach(prod, "ssm-core", SSM_CORE))
    assert (policy, resource, level) == ("host-role-secrets-scoped", "ssm-core", "mandatory")
    assert message == (
        "host role iam-role: AWS-managed AmazonSSMManagedInstanceCore (v2): Statement[0] grants "
        "ssm:GetParameter, ssm:GetParameters on '*'; allowed: parameters under /llmfleet/prod/"
    )


def test_everything_policies_read_and_decrypt(prod):
    found = check(prod, attach(prod, "admin", "arn:aws:iam::aws:policy/AdministratorAccess"))
    assert [m for *_, m in found] == [
        "host role iam-role: AWS-managed AdministratorAccess (v1): Statement[0] grants ssm:GetParameter, "
        "ssm:GetParameters, ssm:GetParametersByPath, ssm:GetParameterHistory on '*'; allowed: parameters "
        "under /llmfleet/prod/",
        "host role iam-role: AWS-managed AdministratorAccess (v1): Statement[0] grants kms:Decrypt on '*'; "
        "allowed: the stack's own KMS keys",
    ]


def test_tabled_policies_without_secret_reads_pass(prod):
    for name in (
        "AmazonEC2ContainerRegistryReadOnly",
        "AmazonPrometheusRemoteWriteAccess",
        "AmazonS3ReadOnlyAccess",
    ):
        assert check(prod, attach(prod, "extra", f"arn:aws:iam::aws:policy/{name}")) == [], name
    # the CloudWatch agent's policy reads AmazonCloudWatch-* parameters: outside the prefix
    [(_, _, _, message)] = check(
        prod, attach(prod, "cw", "arn:aws:iam::aws:policy/CloudWatchAgentServerPolicy")
    )
    assert "'arn:aws:ssm:*:*:parameter/AmazonCloudWatch-*'" in message


def test_node_document_on_star_or_another_stack_fails(prod):
    for stmt, word in (
        ({"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": "*"}, "ssm:GetParameter on '*'"),
        ({"Effect": "Allow", "Action": "ssm:Get*", "Resource": "*"}, "ssm:GetParametersByPath"),
        # the case, from the other side: prod's hosts read dev's tokens
        (
            {
                "Effect": "Allow",
                "Action": ["ssm:GetParameters"],
                "Resource": "arn:aws:ssm:us-east-1:123456789012:parameter/llmfleet/dev/*",
            },
            "parameter/llmfleet/dev/*",
        ),
        ({"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"}, "kms:Decrypt on '*'"),
        (
            {
                "Effect": "Allow",
                "Action": "kms:*",
                "Resource": "arn:aws:kms:us-east-1:123456789012:key/aws-ssm",
            },
            "kms:Decrypt on 'arn:aws:kms:us-east-1:123456789012:key/aws-ssm'",
        ),
        ({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}, "ssm:GetParameter"),
    ):
        found = check(prod, node_policy(prod, stmt))
        assert found, stmt
        assert {(p, r) for p, r, _, _ in found} == {("host-role-secrets-scoped", "iam-node-policy")}
        assert any(
            word in m and "host role iam-role: policy iam-node-policy: Statement[" in m for *_, m in found
        )


def test_unknown_attached_policies_fail_the_known_check(prod):
    found = check(prod, attach(prod, "full", "arn:aws:iam::aws:policy/AmazonSSMFullAccess"))
    assert [(p, r, lvl) for p, r, lvl, _ in found] == [("host-role-policies-known", "full", "mandatory")]
    assert found[0][3] == (
        "host role iam-role attaches arn:aws:iam::aws:policy/AmazonSSMFullAccess, an AWS-managed policy missing "
        "from infra/catalog/aws_managed_policies.yaml: its grants cannot be checked; allowed: a policy of this "
        "stack, or an AWS-managed policy listed in the table (with its source)"
    )
    assert "missing from infra/catalog/aws_managed_policies.yaml" in found[0][3]
    # a path (service-role/...) is part of an AWS-managed ARN too
    found = check(prod, attach(prod, "p", "arn:aws:iam::aws:policy/service-role/AmazonEC2RoleforSSM"))
    assert [r for _, r, _, _ in found] == ["p"]
    found = check(prod, attach(prod, "other", "arn:aws:iam::123456789012:policy/made-elsewhere"))
    assert [(p, r) for p, r, _, _ in found] == [("host-role-policies-known", "other")]
    assert "customer-managed policy from outside this stack" in found[0][3]


def test_documents_unknown_during_preview_are_left_for_up(prod):
    resources = copy.deepcopy(prod.resources)
    _set(resources, "iam-node-policy", policy="[unknown]")
    assert check(prod, resources) == []


def test_only_host_roles_are_checked(prod):
    # a role only Lambda assumes is not a host role; give it to an instance profile and it is
    resources = node_policy(prod, {"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": "*"})
    lam = json.dumps({"Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}}]})
    _set(resources, "iam-role", assumeRolePolicy=lam)
    assert [r for _, r, _, _ in check(prod, resources)] == ["iam-node-policy"]  # the profile carries it
    resources = [r for r in resources if r["type"] != "aws:iam/instanceProfile:InstanceProfile"]
    assert check(prod, resources) == []


def test_parameter_prefix_is_the_stack_and_nothing_more():
    assert own_parameter("arn:aws:ssm:us-east-1:1:parameter/llmfleet/prod/endpoint-token", "prod")
    assert own_parameter("arn:aws:ssm:us-east-1:1:parameter/llmfleet/prod/*", "prod")
    assert not own_parameter("arn:aws:ssm:us-east-1:1:parameter/llmfleet/prod-eu/x", "prod")
    assert not own_parameter("arn:aws:ssm:us-east-1:1:parameter/llmfleet/prod*", "prod")
    assert not own_parameter("arn:aws:ssm:us-east-1:1:parameter/llmfleet/*", "prod")
    assert not own_parameter("*", "prod")
    good = {
        "Statement": [
            {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": KEY},
            {"Effect": "Deny", "Action": "*", "Resource": "*"},
            {
                "Effect": "Allow",
                "Action": "ssm:GetParameter",
                "Resource": "arn:aws:ssm:r:1:parameter/llmfleet/prod/a",
            },
        ]
    }
    assert secret_read_problems(good, "prod", {KEY}) == []
    assert secret_read_problems(good, "prod", set()) == [
        f"Statement[0] grants kms:Decrypt on '{KEY}'; allowed: the stack's own KMS keys"
    ]
    assert secret_read_problems(
        {"Statement": [{"Effect": "Allow", "Action": "ssm:GetParameter", "NotResource": "x"}]}, "prod", set()
    ) == [
        "Statement[0] grants ssm:GetParameter on NotResource (every other resource); allowed: parameters under /llmfleet/prod/"
    ]


def test_table_rows_carry_source_and_version(tmp_path: Path):
    table = aws_managed_policies()
    for name in (
        "AmazonSSMManagedInstanceCore",
        "AmazonEC2ContainerRegistryReadOnly",
        "CloudWatchAgentServerPolicy",
        "AmazonPrometheusRemoteWriteAccess",
        "AmazonS3ReadOnlyAccess",
        "ReadOnlyAccess",
        "AdministratorAccess",
        "PowerUserAccess",
    ):
        row = table[name]
        assert row.source.endswith(f"/{name}.html") and row.version
    assert all(table[n].everything for n in ("ReadOnlyAccess", "AdministratorAccess", "PowerUserAccess"))
    bad = tmp_path / "t.yaml"
    bad.write_text(
        "- {name: X, source: 'https://docs.aws.amazon.com/x', version: v1, everything: true, "
        "document: {Statement: [{Effect: Allow, Action: '*', Resource: '*'}]}}\n"
    )
    with pytest.raises(ManagedPolicyError) as err:
        load_from(bad)
    assert str(err.value) == "t.yaml row 0 (X): set exactly one of everything: true and document"


def test_table_is_what_aws_publishes():
    """Each transcribed row equals moto's copy of AWS's managed-policy data (regenerated by moto
    from IAM GetPolicyVersion): same default version, same document. The "everything" rows are
    not transcribed: AWS's documents of them must read every parameter, so the treatment is
    never more lenient than the policy."""
    # The data file alone: importing moto.iam would load moto's whole IAM backend (seconds).
    moto = importlib.util.find_spec("moto")
    assert moto is not None and moto.origin
    source = Path(moto.origin).parent / "iam" / "aws_managed_policies.py"
    namespace: dict = {}
    exec(compile(source.read_text(), str(source), "exec"), namespace)  # noqa: S102 - one string literal
    published = json.loads(namespace["aws_managed_policies_data"])
    for name, row in aws_managed_policies().items():
        theirs = published[name]
        if row.everything:
            problems = secret_read_problems(theirs["Document"], "prod", set())
            assert any("ssm:GetParameter" in p for p in problems), name
            continue
        assert (name, row.version) == (name, theirs["DefaultVersionId"])
        assert row.document == theirs["Document"], name


def test_every_way_a_role_holds_a_policy_is_read():
    """Inline policies, RolePolicy, PolicyAttachment (roles list) and managedPolicyArns: each
    carries a parameter read on "*" to the role, and each is reported."""
    from tests.test_policies import host_role, res

    star = json.dumps({"Statement": [{"Effect": "Allow", "Action": "ssm:GetParameters", "Resource": "*"}]})
    role, _ = host_role(SSM_CORE)
    role["inputs"]["inlinePolicies"] = role["outputs"]["inlinePolicies"] = [{"name": "inl", "policy": star}]
    role["inputs"]["managedPolicyArns"] = role["outputs"]["managedPolicyArns"] = [SSM_CORE]
    resources = [
        role,
        res("aws:iam/rolePolicy:RolePolicy", "rp", role="nodes", policy=star),
        res("aws:iam/policyAttachment:PolicyAttachment", "pa", roles=["other", "nodes"], policyArn=SSM_CORE),
        # another role's attachment is not this role's
        res(
            "aws:iam/rolePolicyAttachment:RolePolicyAttachment", "not-ours", role="other", policyArn=SSM_CORE
        ),
    ]
    found = run_policies(resources, {}, HOST_ROLE_POLICIES).violations
    assert sorted((v.resource, v.message.split(": ")[1]) for v in found) == [
        ("nodes", "AWS-managed AmazonSSMManagedInstanceCore (v2)"),
        ("nodes", "inline policy inl"),
        ("pa", "AWS-managed AmazonSSMManagedInstanceCore (v2)"),
        ("rp", "role policy rp"),
    ]


def test_one_documents_grants_read_case_insensitively_and_name_the_statement():
    """IAM matches actions case-insensitively; a statement's Sid names it in the message; an
    unknown Resource (a preview) is left for `up`, a statement that is not an object is skipped."""
    from policy._props import UNKNOWN

    dev = "arn:aws:ssm:r:1:parameter/llmfleet/dev/a"
    doc = {
        "Statement": [
            "not a statement",
            {
                "Sid": "Reads",
                "Effect": "Allow",
                "Action": "SSM:getparameter",
                "Resource": ["arn:aws:ssm:r:1:parameter/llmfleet/prod/a", UNKNOWN, dev],
            },
            {"Effect": "Allow", "Action": ["KMS:DECRYPT"], "Resource": "*"},
        ]
    }
    assert secret_read_problems(json.dumps({"Statement": doc["Statement"][:1]}), "prod", set()) == []
    assert secret_read_problems(doc, "prod", set()) == [
        f"Statement[1] (Reads) grants ssm:GetParameter on {dev!r}; allowed: parameters under /llmfleet/prod/",
        "Statement[2] grants kms:Decrypt on '*'; allowed: the stack's own KMS keys",
    ]
    two = {"Statement": [{"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": ["*", dev]}]}
    assert secret_read_problems(two, "prod", set()) == [
        f"Statement[0] grants ssm:GetParameter on '*', {dev!r}; allowed: parameters under /llmfleet/prod/"
    ]
    everything_else = {"Statement": [{"Effect": "Allow", "Action": "*", "NotResource": "x"}]}
    assert secret_read_problems(everything_else, "prod", set()) == [
        "Statement[0] grants ssm:GetParameter, ssm:GetParameters, ssm:GetParametersByPath, "
        "ssm:GetParameterHistory on NotResource (every other resource); allowed: parameters under /llmfleet/prod/",
        "Statement[0] grants kms:Decrypt on NotResource (every other resource); allowed: the stack's own KMS keys",
    ]
    unknown_only = {"Statement": [{"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": UNKNOWN}]}
    assert secret_read_problems(unknown_only, "prod", set()) == []
    assert secret_read_problems("{not json", "prod", set()) == [
        "policy is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
        "(char 1)): its grants cannot be checked"
    ]


def test_what_a_statement_grants():
    from policy.host_roles import DECRYPT, PARAMETER_READS, granted, statements

    reads = PARAMETER_READS + DECRYPT
    assert granted({"Effect": "Deny", "Action": "*"}, reads) == []
    assert granted({"Action": "*"}, reads) == []  # no Effect: not an Allow
    assert granted({"Effect": "Allow", "Action": ["ssm:GetParameter", 7]}, reads) == ["ssm:GetParameter"]
    assert granted({"Effect": "Allow", "Action": "ssm:GetParameters*"}, reads) == [
        "ssm:GetParameters",
        "ssm:GetParametersByPath",
    ]
    # NotAction grants what it leaves out, matched case-insensitively too
    assert granted({"Effect": "Allow", "NotAction": ["SSM:GetParameter*"]}, reads) == ["kms:Decrypt"]
    assert granted({"Effect": "Allow", "NotAction": "kms:*", "Action": "kms:Decrypt"}, reads) == list(
        PARAMETER_READS
    )
    assert statements({"Statement": {"Effect": "Allow"}}) == [{"Effect": "Allow"}]  # one, not a list
    assert statements(json.dumps({"Statement": [1, 2]})) == [1, 2]
    assert statements(["Statement"]) == [] and statements(None) == []


def test_which_trust_policies_make_a_host_role():
    from policy._props import UNKNOWN
    from policy.host_roles import is_host_trust

    def trust(*services, effect="Allow"):
        return {"Statement": [{"Effect": effect, "Principal": {"Service": list(services)}}]}

    assert is_host_trust(UNKNOWN) is None
    assert is_host_trust("{not json") is None
    assert is_host_trust(trust("lambda.amazonaws.com", "ec2.amazonaws.com.cn")) is True
    assert is_host_trust(json.dumps(trust("ec2.amazonaws.com"))) is True
    assert is_host_trust(trust("ec2.amazonaws.com", effect="Deny")) is False
    assert is_host_trust(trust("ec2.amazonaws.com.evil.example", "xec2.amazonaws.com")) is False
    assert is_host_trust({"Statement": ["x", {"Effect": "Allow", "Principal": "*"}]}) is False
    # a statement that is not an Allow is skipped, not the end of the document
    ec2 = {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}}
    assert is_host_trust({"Statement": ["x", {"Effect": "Deny"}, ec2]}) is True


def _doc(*stmts):
    return json.dumps({"Statement": list(stmts)})


def test_a_roles_grants_are_read_from_each_holder_and_reported_where_they_are():
    """A role named by ARN in an attachment, an inline policy without a name, the stack's own
    KMS key (decrypt allowed), a RolePolicy without a document, a policy from outside the stack;
    a role only Lambda assumes is not a host role."""
    from policy._props import UNKNOWN
    from tests.test_policies import res

    trust = _doc(
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    )
    star = _doc({"Effect": "Allow", "Action": "ssm:GetParameters", "Resource": "*"})
    dev = "arn:aws:ssm:us-east-1:123456789012:parameter/llmfleet/dev/t"
    elsewhere = "arn:aws:iam::123456789012:policy/elsewhere"
    own = "arn:aws:iam::123456789012:policy/own"
    resources = [
        res(
            "aws:iam/role:Role",
            "nodes",
            "nodes",
            name="nodes",
            arn="arn:aws:iam::123456789012:role/nodes",
            assumeRolePolicy=trust,
            inlinePolicies=[{"policy": star}, UNKNOWN],
        ),
        res(
            "aws:iam/role:Role",
            "fn",
            "fn",
            name="fn",
            assumeRolePolicy=_doc({"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}}),
            inlinePolicies=[{"name": "x", "policy": star}],
        ),
        res("aws:kms/key:Key", "key", arn=KEY),
        # the nodes' instance profile: it makes no host role of fn
        res("aws:iam/instanceProfile:InstanceProfile", "profile", role="nodes"),
        res(
            "aws:iam/policy:Policy",
            "own",
            arn=own,
            policy=_doc(
                {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": KEY},
                {"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": dev},
            ),
        ),
        res(
            "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
            "by-arn",
            role="arn:aws:iam::123456789012:role/nodes",
            policyArn=own,
        ),
        res("aws:iam/rolePolicy:RolePolicy", "rp-none", role="nodes", policy=None),
        res(
            "aws:iam/rolePolicyAttachment:RolePolicyAttachment", "outside", role="nodes", policyArn=elsewhere
        ),
        res(
            "aws:iam/rolePolicyAttachment:RolePolicyAttachment", "fn-outside", role="fn", policyArn=elsewhere
        ),
    ]
    report = run_policies(resources, {}, HOST_ROLE_POLICIES, stack=load_stack_config({}, "prod"))
    assert [(v.policy, v.resource, v.message) for v in report.violations] == [
        (
            "host-role-secrets-scoped",
            "nodes",
            "host role nodes: inline policy 0: Statement[0] grants ssm:GetParameters on '*'; allowed: "
            "parameters under /llmfleet/prod/",
        ),
        (
            "host-role-secrets-scoped",
            "own",
            f"host role nodes: policy own: Statement[1] grants ssm:GetParameter on {dev!r}; allowed: "
            "parameters under /llmfleet/prod/",
        ),
        (
            "host-role-policies-known",
            "outside",
            f"host role nodes attaches {elsewhere}, a customer-managed policy from outside this stack: its grants "
            "cannot be checked; allowed: a policy of this stack, or an AWS-managed policy listed in the table "
            "(with its source)",
        ),
    ]


def test_the_stack_name_comes_from_the_runner_then_pulumi(monkeypatch):
    import pulumi
    import pulumi.runtime

    from policy import host_roles

    # a name no capture leaves behind in Pulumi's settings (a capture of prod sets the runtime's stack)
    with host_roles._config.runner_stack(load_stack_config({}, "runner-only")):
        assert host_roles.current_stack() == "runner-only" != pulumi.get_stack()
    pulumi.runtime.set_all_config({"llmfleet:endpointPort": "22"}, [])  # no valid StackConfig
    try:
        assert host_roles.current_stack() == pulumi.get_stack()
    finally:
        pulumi.runtime.set_all_config({}, [])
    monkeypatch.setattr(host_roles._config, "stack_model", lambda: None)

    def no_runtime():
        raise RuntimeError("no Pulumi runtime")

    monkeypatch.setattr(pulumi, "get_stack", no_runtime)
    assert host_roles.current_stack() is None
    star = _doc({"Effect": "Allow", "Action": "ssm:GetParameters", "Resource": "*"})
    from tests.test_policies import host_role

    role, _ = host_role(SSM_CORE)
    role["inputs"]["inlinePolicies"] = role["outputs"]["inlinePolicies"] = [{"name": "inl", "policy": star}]
    [v] = run_policies([role], {}, HOST_ROLE_POLICIES).violations
    assert (v.policy, v.resource, v.message) == (
        "host-role-secrets-scoped",
        None,
        "the stack name is unknown, so the host roles' parameter scope cannot be checked",
    )


def test_an_attached_policy_is_found_by_its_id_or_in_a_preview_by_the_dependency():
    """The stack's own policy when the attachment names it by id, or, before `up` (its ARN
    unknown), by the resource the attachment's policyArn depends on; with neither it is left
    for `up`, not called a policy from outside the stack."""
    from policy._stackview import StackView
    from policy.host_roles import role_grants
    from policy.runner import policy_resources
    from tests.test_policies import UNKNOWN_PLACEHOLDER, host_role, res

    star = _doc({"Effect": "Allow", "Action": "ssm:GetParameters", "Resource": "*"})
    role, att = host_role(UNKNOWN_PLACEHOLDER)
    own = res("aws:iam/policy:Policy", "own", "own-id", arn=UNKNOWN_PLACEHOLDER, policy=star)

    def grants(resources, deps=False):
        built = {r.name: r for r in policy_resources(resources)}
        if deps:
            built["nodes-attach"].property_dependencies = {"policyArn": [built["own"]]}
        view = StackView.of(list(built.values()))
        found, unreadable = role_grants(view, view.by_id("nodes"))
        return [(g.where, g.urn) for g in found], unreadable

    assert grants([role, att, own], deps=True) == ([("policy own", own["urn"])], [])
    assert grants([role, att, own]) == ([], [])  # unknown, nothing to follow: checked at `up`
    # an attachment's one policyArn, known but built from the policy's name, is that policy's
    att["inputs"]["policyArn"] = att["outputs"]["policyArn"] = "arn:aws:iam::1:policy/own"
    assert grants([role, att, own], deps=True) == ([("policy own", own["urn"])], [])
    # ... and one that depends on two of the stack's policies is left for `up` (which one is it?)
    two = res("aws:iam/policy:Policy", "two", "two-id", arn=UNKNOWN_PLACEHOLDER, policy=star)
    built = {r.name: r for r in policy_resources([role, att, own, two])}
    built["nodes-attach"].property_dependencies = {"policyArn": [built["own"], built["two"]]}
    view = StackView.of(list(built.values()))
    assert role_grants(view, view.by_id("nodes")) == ([], [])
    att["inputs"]["policyArn"] = att["outputs"]["policyArn"] = UNKNOWN_PLACEHOLDER
    role["inputs"]["managedPolicyArns"] = role["outputs"]["managedPolicyArns"] = ["own-id"]
    assert grants([role, own]) == ([("policy own", own["urn"])], [])
    # a PolicyAttachment in a preview: its roles and its policyArn both known by their dependencies
    del role["inputs"]["managedPolicyArns"], role["outputs"]["managedPolicyArns"]
    pa = res(
        "aws:iam/policyAttachment:PolicyAttachment",
        "pa",
        roles=[UNKNOWN_PLACEHOLDER],
        policyArn=UNKNOWN_PLACEHOLDER,
    )
    built = {r.name: r for r in policy_resources([role, own, pa])}
    built["pa"].property_dependencies = {"roles": [built["nodes"]], "policyArn": [built["own"]]}
    view = StackView.of(list(built.values()))
    found, unreadable = role_grants(view, view.by_id("nodes"))
    assert ([(g.where, g.urn) for g in found], unreadable) == ([("policy own", own["urn"])], [])
    # an attachment without a policyArn holds nothing; one from outside the stack cannot be read
    from policy.host_roles import Unreadable

    bare = res("aws:iam/rolePolicyAttachment:RolePolicyAttachment", "bare", role="nodes")
    out = res(
        "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
        "out",
        role="nodes",
        policyArn="arn:aws:iam::1:policy/x",
    )
    view = StackView.of(policy_resources([role, bare, out]))
    assert role_grants(view, view.by_id("nodes")) == (
        [],
        [Unreadable("arn:aws:iam::1:policy/x", out["urn"], False)],
    )
    # managedPolicyArns in a preview, an unknown inline policy (left for `up`), another role's RolePolicy
    role["inputs"]["managedPolicyArns"] = role["outputs"]["managedPolicyArns"] = [UNKNOWN_PLACEHOLDER]
    role["inputs"]["inlinePolicies"] = role["outputs"]["inlinePolicies"] = [UNKNOWN_PLACEHOLDER]
    theirs = res("aws:iam/rolePolicy:RolePolicy", "theirs", role="other", policy=star)
    built = {r.name: r for r in policy_resources([role, own, theirs])}
    built["nodes"].property_dependencies = {"managedPolicyArns": [built["own"]]}
    view = StackView.of(list(built.values()))
    found, unreadable = role_grants(view, view.by_id("nodes"))
    assert ([(g.where, g.urn) for g in found], unreadable) == ([("policy own", own["urn"])], [])
    # beside it a known ARN from outside the stack: the list's dependency is the stack policy's,
    # so the outside one is unreadable (not taken for the stack policy); a known id is the stack's
    outside = "arn:aws:iam::123456789012:policy/outside"
    mine = ("policy own", own["urn"])
    for more, held, want in (
        (outside, [mine], [Unreadable(outside, role["urn"], False)]),
        ("own-id", [mine, mine], []),
    ):
        arns = [UNKNOWN_PLACEHOLDER, more]
        role["inputs"]["managedPolicyArns"] = role["outputs"]["managedPolicyArns"] = arns
        built = {r.name: r for r in policy_resources([role, own, theirs])}
        built["nodes"].property_dependencies = {"managedPolicyArns": [built["own"]]}
        view = StackView.of(list(built.values()))
        found, unreadable = role_grants(view, view.by_id("nodes"))
        assert ([(g.where, g.urn) for g in found], unreadable) == (held, want), more

    """By the role's name, id or ARN; not when the value names another role of the stack or
    nothing in it; during a preview (the value unknown) by the dependency, else unknown (None)."""
    from policy._stackview import StackView
    from policy.host_roles import _refers
    from policy.runner import policy_resources
    from tests.test_policies import UNKNOWN_PLACEHOLDER, res

    roles = [
        res("aws:iam/role:Role", "nodes", "nodes-id", name="nodes", arn="arn:aws:iam::1:role/nodes"),
        res("aws:iam/role:Role", "other", "other-id", name="other", arn="arn:aws:iam::1:role/other"),
    ]
    values = [
        "nodes",
        "nodes-id",
        "arn:aws:iam::1:role/nodes",
        "other",
        "arn:aws:iam::1:role/other",
        "elsewhere",
    ]
    atts = [
        res("aws:iam/rolePolicyAttachment:RolePolicyAttachment", f"a{i}", role=v)
        for i, v in enumerate(values)
    ]
    unknown = res("aws:iam/rolePolicyAttachment:RolePolicyAttachment", "u", role=UNKNOWN_PLACEHOLDER)
    built = {r.name: r for r in policy_resources([*roles, *atts, unknown])}
    view = StackView.of(list(built.values()))
    nodes, other = view.by_id("nodes-id"), view.by_id("other-id")
    att = {r.name: r for r in view.resources}
    assert [_refers(view, att[f"a{i}"], "role", nodes) for i in range(len(values))] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    assert _refers(view, att["u"], "role", nodes) is None

    def by_dependency(name, dep):
        built[name].property_dependencies = {"role": [dep.raw]}
        view = StackView.of(list(built.values()))
        r = next(r for r in view.resources if r.name == name)
        return _refers(view, r, "role", next(r for r in view.resources if r.name == "nodes"))

    assert by_dependency("u", nodes) is True and by_dependency("u", other) is False
    # a known value the stack's roles do not name (a computed name): the dependency says whose it is
    assert by_dependency("a5", nodes) is True
    # a known value naming another role of the stack is that role's, whatever else it depends on
    assert by_dependency("a3", nodes) is False
    # so is a known value that is the id of a resource of another type (a PolicyAttachment's item)
    key = res("aws:kms/key:Key", "key", "key-id")
    pa = res("aws:iam/policyAttachment:PolicyAttachment", "pa", roles=["key-id"])
    built = {r.name: r for r in policy_resources([*roles, key, pa])}
    built["pa"].property_dependencies = {"roles": [built["nodes"]]}
    view = StackView.of(list(built.values()))
    on = {r.name: r for r in view.resources}
    assert _refers(view, on["pa"], "roles", on["nodes"], value="key-id") is False
    # a known value the roles do not name, depending on two of them: which one is unknown
    built = {r.name: r for r in policy_resources([*roles, *atts])}
    built["a5"].property_dependencies = {"role": [built["nodes"], built["other"]]}
    view = StackView.of(list(built.values()))
    on = {r.name: r for r in view.resources}
    assert _refers(view, on["a5"], "role", on["nodes"]) is None
