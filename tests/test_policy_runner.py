"""The offline policy runner and `llmfleet policy`, on hand-built resources and on the shipped stacks."""

from __future__ import annotations

import json

import pytest
from pulumi_policy import EnforcementLevel, ResourceValidationPolicy, StackValidationPolicy
from typer.testing import CliRunner

from infra.cli import app
from infra.stack.files import available_stacks
from policy.runner import merge_config, policy_resources, resource_args, run_policies, stack_policy_config
from tests.captures import capture, shared_captures  # noqa: F401 - the fixture, by name

cli = CliRunner()
# `llmfleet policy` and run_for_stack capture through tests/captures.py: one capture per stack
pytestmark = pytest.mark.usefixtures("shared_captures")


def rec(rtype, name, parent=None, urn_chain="", **inputs):
    return {
        "type": rtype,
        "name": name,
        "parent": parent,
        "id": f"{name}-id",
        "urn": f"urn:pulumi:s::p::{urn_chain}{rtype}::{name}",
        "inputs": inputs,
        "outputs": {**inputs, "id": f"{name}-id"},
    }


def test_args_are_real_crossguard_objects_with_parents_and_unknowns():
    comp = rec("llmfleet:cluster:Cluster", "cluster")
    child = rec(
        "aws:ec2/instance:Instance",
        "w0",
        parent="cluster",
        urn_chain="llmfleet:cluster:Cluster$",
        subnetId="[unknown]",
        instanceType="g6e.48xlarge",
    )
    [(_, _), (_, kwargs)] = resource_args([comp, child])
    assert kwargs["opts"].parent == comp["urn"]
    assert kwargs["props"]["instanceType"] == "g6e.48xlarge"
    from pulumi_policy.proxy import UnknownValueError

    with pytest.raises(UnknownValueError):
        kwargs["props"]["subnetId"]
    stack = policy_resources([comp, child])
    assert stack[1].parent is stack[0] and stack[1].props["id"] == "w0-id"


def test_resource_options_are_those_of_a_resource_registered_without_any():
    """The capture records no resource options (the program sets none the policies read), so
    each policy sees what the engine hands over for such a resource: not protected, no ignored
    changes, no replacement order, aliases, timeouts or extra secret outputs; no provider."""
    comp = rec("llmfleet:cluster:Cluster", "cluster")
    child = rec("aws:ec2/instance:Instance", "w0", parent="cluster", urn_chain="llmfleet:cluster:Cluster$")
    [(_, top), (_, kwargs)] = resource_args([comp, child])
    built = policy_resources([comp, child])
    assert top["provider"] is None and kwargs["provider"] is None
    assert [o.parent for o in (top["opts"], kwargs["opts"])] == [None, comp["urn"]]
    for opts in (top["opts"], kwargs["opts"], built[0].opts, built[1].opts):
        assert (opts.protect, opts.ignore_changes, opts.delete_before_replace) == (False, [], None)
        assert (opts.aliases, opts.additional_secret_outputs) == ([], [])
        t = opts.custom_timeouts
        assert (t.create_seconds, t.update_seconds, t.delete_seconds) == (0, 0, 0)
    assert [o.opts.parent for o in built] == [None, comp["urn"]]
    for r in built:
        assert (r.provider, r.dependencies, r.property_dependencies) == (None, [], {})
    assert [(r.resource_type, r.urn, r.name) for r in built] == [
        (x["type"], x["urn"], x["name"]) for x in (comp, child)
    ]
    assert [(k["resource_type"], k["urn"], k["name"]) for k in (top, kwargs)] == [
        (x["type"], x["urn"], x["name"]) for x in (comp, child)
    ]


def test_violations_name_resources_and_honour_not_applicable_async_and_crashes():
    seen = []

    async def async_check(args, report):
        seen.append(args.name)
        report("async says no")

    def crash(args, report):
        raise RuntimeError("boom")

    def not_applicable(args, report):
        args.not_applicable("nothing to do")

    policies = [
        ResourceValidationPolicy(
            name="async", description="d", validate=async_check, enforcement_level=EnforcementLevel.ADVISORY
        ),
        StackValidationPolicy(name="crash", description="d", validate=crash),
        StackValidationPolicy(
            name="na", description="d", validate=not_applicable, enforcement_level=EnforcementLevel.MANDATORY
        ),
    ]
    report = run_policies([rec("aws:ec2/vpc:Vpc", "vpc")], {}, policies=policies)
    assert seen == ["vpc"]
    got = [(v.policy, v.resource, v.enforcement) for v in report.violations]
    assert got == [("async", "vpc", "advisory"), ("crash", None, "mandatory")]
    assert "boom" in report.violations[1].message
    assert (report.mandatory, report.advisory) == (1, 1)


def test_a_resource_policy_that_crashes_or_meets_an_unknown_is_reported_on_that_resource():
    def reads_subnet(args, report):
        args.props["subnetId"]  # unknown at preview: CrossGuard's proxy raises

    def crash(args, report):
        raise RuntimeError("boom")

    policies = [
        ResourceValidationPolicy(name="reads", description="d", validate=reads_subnet),
        ResourceValidationPolicy(name="crash", description="d", validate=crash),
    ]
    report = run_policies(
        [rec("aws:ec2/instance:Instance", "w0", subnetId="[unknown]")], {}, policies=policies
    )
    [unknown, crashed] = report.violations
    assert (unknown.policy, unknown.resource, unknown.enforcement) == ("reads", "w0", "advisory")
    assert unknown.message.startswith("can't run policy during preview: ") and "subnetId" in unknown.message
    assert (crashed.policy, crashed.resource, crashed.enforcement) == ("crash", "w0", "mandatory")
    assert crashed.message == "policy raised RuntimeError: boom"


def test_schema_defaults_skip_policies_without_a_schema_and_disabled_ones_skip_only_themselves():
    from pulumi_policy import PolicyConfigSchema

    from policy.runner import schema_defaults

    def says(text):
        return lambda args, report: report(text, None)

    bare = StackValidationPolicy(name="bare", description="d", validate=says("bare"))
    no_default = StackValidationPolicy(
        name="nd",
        description="d",
        validate=says("nd"),
        config_schema=PolicyConfigSchema({"b": {"type": "string"}}),
    )
    defaulted = StackValidationPolicy(
        name="p",
        description="d",
        validate=says("p"),
        config_schema=PolicyConfigSchema({"a": {"type": "integer", "default": 3}}),
    )
    assert schema_defaults([bare, no_default, defaulted]) == {"p": {"a": 3}}
    report = run_policies(
        [], {"bare": {"enforcementLevel": "disabled"}}, policies=[bare, no_default, defaulted]
    )
    assert [(v.policy, v.message) for v in report.violations] == [("nd", "nd"), ("p", "p")]


def test_schema_defaults_reach_the_policy():
    seen = {}

    def check(args, report):
        seen.update(args.get_config())

    from pulumi_policy import PolicyConfigSchema

    p = StackValidationPolicy(
        name="p",
        description="d",
        validate=check,
        config_schema=PolicyConfigSchema({"a": {"type": "integer", "default": 3}, "b": {"type": "string"}}),
    )
    run_policies([], {"p": {"b": "x", "enforcementLevel": "mandatory"}}, policies=[p])
    assert seen == {"a": 3, "b": "x"}


def test_enforcement_levels_config_and_messages_as_the_engine_reports_them():
    from policy.runner import Report, Violation, enforcement_of

    seen: list[dict] = []

    def says(message):
        def check(args, report):
            seen.append(dict(args.get_config()))
            report(message, "urn:pulumi:s::p::aws:ec2/vpc:Vpc::vpc")

        return check

    def unknown(args, report):
        report(args.props["subnetId"])  # unknown during a preview: CrossGuard's proxy raises

    quiet = StackValidationPolicy(name="quiet", description="the description stands in", validate=says(""))
    loud = StackValidationPolicy(
        name="loud", description="d", validate=says("said"), enforcement_level=EnforcementLevel.ADVISORY
    )
    preview = ResourceValidationPolicy(name="preview", description="d", validate=unknown)
    config = {
        "quiet": {"enforcementLevel": "remediate", "k": 1},
        "preview": {"enforcementLevel": EnforcementLevel.ADVISORY},
    }
    report = run_policies(
        [rec("aws:ec2/vpc:Vpc", "vpc", subnetId="[unknown]")],
        config,
        [quiet, loud, preview],
        EnforcementLevel.MANDATORY,
    )
    assert report.violations == (
        Violation("quiet", "vpc", "the description stands in", "mandatory"),  # remediate: as mandatory
        Violation("loud", "vpc", "said", "advisory"),  # the policy's own level over the pack's
        Violation(
            "preview",
            "vpc",
            "can't run policy during preview: string value at .subnetId can't be known during preview",
            "advisory",
        ),
    )
    assert seen[0] == {"k": 1}  # a policy's config block, without enforcementLevel
    assert report.to_dict() == {
        "violations": [
            {
                "policy": "quiet",
                "resource": "vpc",
                "message": "the description stands in",
                "enforcement": "mandatory",
            },
            {"policy": "loud", "resource": "vpc", "message": "said", "enforcement": "advisory"},
            {
                "policy": "preview",
                "resource": "vpc",
                "message": "can't run policy during preview: string value at .subnetId can't be known during preview",
                "enforcement": "advisory",
            },
        ],
        "mandatory": 1,
        "advisory": 2,
    }
    # the pack's level when neither the config nor the policy sets one
    bare = StackValidationPolicy(name="bare", description="d", validate=says("x"))
    bare.enforcement_level = None
    assert enforcement_of(bare, {}, EnforcementLevel.ADVISORY) == EnforcementLevel.ADVISORY
    assert [v.enforcement for v in run_policies([], {}, [bare], EnforcementLevel.ADVISORY).violations] == [
        "advisory"
    ]
    assert Report(()).to_dict() == {"violations": [], "mandatory": 0, "advisory": 0}


def test_a_stack_violation_names_the_resource_of_the_urn_it_gives_or_none():
    from policy.runner import Violation

    def check(args, report):
        report("on the vpc", "urn:pulumi:s::p::aws:ec2/vpc:Vpc::vpc")
        report("on something else", "urn:pulumi:s::p::aws:ec2/vpc:Vpc::gone")
        report("on the stack")

    p = StackValidationPolicy(
        name="p", description="d", validate=check, enforcement_level=EnforcementLevel.MANDATORY
    )
    assert run_policies([rec("aws:ec2/vpc:Vpc", "vpc")], {}, [p]).violations == (
        Violation("p", "vpc", "on the vpc", "mandatory"),
        Violation("p", None, "on something else", "mandatory"),
        Violation("p", None, "on the stack", "mandatory"),
    )


def test_parents_are_found_by_name_and_the_type_chain_of_the_childs_urn():
    from policy.runner import policy_resources

    # two resources named "cluster": the child's URN says which type its parent is
    a = rec("llmfleet:cluster:Cluster", "cluster")
    b = rec("llmfleet:other:Other", "cluster")
    child = rec("aws:ec2/instance:Instance", "w0", parent="cluster", urn_chain="llmfleet:cluster:Cluster$")
    orphan = rec("aws:ec2/instance:Instance", "w1", parent="nowhere", urn_chain="x:y:Z$")
    built = {r.name + r.resource_type: r for r in policy_resources([a, child, b, orphan])}
    assert built["w0aws:ec2/instance:Instance"].parent is built["clusterllmfleet:cluster:Cluster"]
    assert built["w1aws:ec2/instance:Instance"].parent is None
    # a parent named but not in the chain: the last of that name
    other = rec("aws:ec2/instance:Instance", "w2", parent="cluster", urn_chain="x:y:Z$")
    built = {r.name + r.resource_type: r for r in policy_resources([a, b, other])}
    assert built["w2aws:ec2/instance:Instance"].parent is built["clusterllmfleet:other:Other"]
    # nested two deep: the parent's type is the chain's last before the child, not its first
    top = rec("llmfleet:cluster:Cluster", "top")
    mid = rec("llmfleet:pool:Pool", "pool", parent="top", urn_chain="llmfleet:cluster:Cluster$")
    same_name = rec("aws:ec2/vpc:Vpc", "pool")
    deep = rec(
        "aws:ec2/instance:Instance",
        "w3",
        parent="pool",
        urn_chain="llmfleet:cluster:Cluster$llmfleet:pool:Pool$",
    )
    built = {r.name + r.resource_type: r for r in policy_resources([top, mid, same_name, deep])}
    assert built["w3aws:ec2/instance:Instance"].parent is built["poolllmfleet:pool:Pool"]
    assert built["poolllmfleet:pool:Pool"].parent is built["topllmfleet:cluster:Cluster"]
    # the state is inputs, then outputs, then the id when the outputs have none
    r = rec("aws:ec2/vpc:Vpc", "vpc", cidrBlock="10.0.0.0/16", tags={"a": ["[unknown]", {"b": "[unknown]"}]})
    r["outputs"] = {"cidrBlock": "10.1.0.0/16"}
    [vpc] = policy_resources([r])
    assert vpc.props["cidrBlock"] == "10.1.0.0/16" and vpc.props["id"] == "vpc-id"
    from pulumi_policy.proxy import UnknownValueError

    with pytest.raises(UnknownValueError):
        vpc.props["tags"]["a"][0]
    with pytest.raises(UnknownValueError):
        vpc.props["tags"]["a"][1]["b"]
    assert vpc.opts.parent is None and vpc.opts.protect is False and vpc.opts.ignore_changes == []


# --- the shipped stacks --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prod():
    return capture("prod")


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "onprem-l20"])
def test_shipped_stacks_have_no_mandatory_violation(stack):
    assert stack in available_stacks()
    result = cli.invoke(app, ["policy", "--stack", stack, "--json"])
    doc = json.loads(result.stdout)
    assert set(doc) == {"violations", "mandatory", "advisory"}
    assert doc["mandatory"] == 0, doc["violations"]
    assert result.exit_code == 0


def test_prod_with_two_workers_fails_gpu_fit_on_memory():
    result = cli.invoke(app, ["policy", "--stack", "prod", "-c", "llmfleet:workerCount=2", "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    fit = [v for v in doc["violations"] if v["policy"] == "gpu-fit"]
    assert len(fit) == 1 and fit[0]["enforcement"] == "mandatory"
    assert fit[0]["message"].startswith("memory:") and "\n" not in fit[0]["message"]
    assert doc["mandatory"] >= 1


def test_human_output_and_bad_stack():
    ok = cli.invoke(app, ["policy", "--stack", "dev"])
    assert ok.exit_code == 0 and "0 mandatory" in ok.stdout
    bad = cli.invoke(app, ["policy", "--stack", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.stderr and "Traceback" not in bad.stderr


def test_world_open_ray_port_on_captured_prod_fails_ingress(prod):
    sgs = [
        r
        for r in prod.of_type("aws:ec2/securityGroup:SecurityGroup")
        if (r["inputs"].get("tags") or {}).get("llmfleet:sg") == "cluster"
    ]
    assert sgs, "the prod capture has no security group tagged llmfleet:sg=cluster"
    config = stack_policy_config(prod.config)
    # the StackConfig handed over, as `llmfleet policy` does: without it the host-role policies
    # read the stack name Pulumi's settings hold, which is whichever stack was captured last
    assert run_policies(prod.resources, config, stack=prod.config).mandatory == 0
    rule = rec(
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
        "gcs-from-anywhere",
        securityGroupId=sgs[0]["id"],
        cidrIpv4="0.0.0.0/0",
        ipProtocol="tcp",
        fromPort=6379,
        toPort=6379,
    )
    report = run_policies([*prod.resources, rule], config, stack=prod.config)
    hits = [v for v in report.violations if v.policy == "security-group-ingress"]
    assert [v.resource for v in hits] == ["gcs-from-anywhere"]
    assert hits[0].enforcement == "mandatory" and "6379" in hits[0].message


def test_budget_counts_owned_hosts_like_llmfleet_cost():
    # onprem-l20: 3 owned workers at hostHourlyUsd, no cloud resources priced.
    over = cli.invoke(app, ["policy", "--stack", "onprem-l20", "-c", "llmfleet:maxMonthlyUsd=5000", "--json"])
    doc = json.loads(over.stdout)
    budget = [v for v in doc["violations"] if v["policy"] == "monthly-budget"]
    cost = json.loads(cli.invoke(app, ["cost", "--stack", "onprem-l20", "--json"]).stdout)
    total = float(cost["totalMonthlyCost"])
    assert total > 5000 and over.exit_code == 1
    assert len(budget) == 1 and f"${total:,.2f}/month" in budget[0]["message"]


def test_budget_policy_prices_the_stack_it_is_given_not_the_last_captured():
    """prod runs on demand, dev on spot: each budget prices the StackConfig the runner is handed,
    and without one the policy sees no leftover of the last capture in Pulumi's runtime config."""
    prod = capture("prod")
    dev = capture("dev")
    assert (prod.config.effective_pricing_model, dev.config.effective_pricing_model) == ("on-demand", "spot")

    def budget_line(cap, **kw) -> str:
        config = merge_config(stack_policy_config(cap.config), {"monthly-budget": {"maxMonthlyUsd": 1}})
        [v] = [
            v for v in run_policies(cap.resources, config, **kw).violations if v.policy == "monthly-budget"
        ]
        return v.message

    assert "spot snapshot prices" in budget_line(dev, stack=dev.config)
    assert "on-demand snapshot prices" in budget_line(prod, stack=prod.config)
    # No StackConfig: Pulumi's runtime config only, where the capture of dev left nothing (no spot).
    assert "on-demand snapshot prices" in budget_line(prod)


# --- trust-remote-code (advisory) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("stack", "carrier"),
    [
        ("prod", "node-head"),
        ("onprem-l20", "hosts-head"),
    ],  # the EC2 head's SSM parameter; an owned head
)
def test_trust_remote_code_is_advisory_and_names_the_node_script_that_carries_it(stack, carrier):
    from policy.runner import run_for_stack

    _, off = run_for_stack(stack)
    assert not [v for v in off.violations if v.policy == "trust-remote-code"]
    _, on = run_for_stack(stack, ["llmfleet:trustRemoteCode=true"])
    found = [v for v in on.violations if v.policy == "trust-remote-code"]
    assert found and all(v.enforcement == "advisory" for v in found), on.violations
    assert any(carrier in (v.resource or "") for v in found), found
    assert all(
        "the Serve config sets trust_remote_code" in v.message and "\n" not in v.message for v in found
    )
    assert on.mandatory == off.mandatory  # advisory only: `up` goes on


def test_trust_remote_code_falls_back_to_the_stack_config_when_scripts_are_unknown():
    """A real preview may not know the node scripts yet: the stack config still speaks."""
    from infra.stack.files import load_config
    from policy.runner import run_policies

    on = run_policies([], {}, stack=load_config("dev", ["llmfleet:trustRemoteCode=true"]))
    [v] = [v for v in on.violations if v.policy == "trust-remote-code"]
    assert v.resource is None and "llmfleet:trustRemoteCode is true" in v.message
    off = run_policies([], {}, stack=load_config("dev"))
    assert not [v for v in off.violations if v.policy == "trust-remote-code"]


def test_the_policy_config_a_stack_implies():
    from infra.catalog import load_catalog
    from infra.stack.files import load_config
    from infra.stack.resolve import resolve

    overrides = [
        "llmfleet:endpointPublic=true",
        'llmfleet:endpointAllowedCidrs=["198.51.100.0/24"]',
        "llmfleet:maxMonthlyUsd=90000",
    ]
    cfg = load_config("prod", overrides)
    resolved = resolve(cfg)
    assert stack_policy_config(cfg) == {
        "ec2-instance-type-allowed": {"allowedInstanceTypes": sorted(load_catalog().instances)},
        "security-group-ingress": {
            "allowedIngressCidrs": ["198.51.100.0/24"],
            "endpointPublic": True,
            "endpointPort": cfg.endpoint_port,
        },
        "gpu-fit": {
            "model": "deepseek-r1",
            "quantization": cfg.quantization,
            "maxModelLen": resolved.plan.max_model_len,  # what 'auto' picked
            "concurrency": cfg.concurrency,
            "targetConcurrency": cfg.target_concurrency,
            "gpuMemoryUtilization": cfg.gpu_memory_utilization,
            "gpu": cfg.gpu_model,
            "gpusPerNode": cfg.gpus_per_worker,
            "workers": resolved.workers,
        },
        "monthly-budget": {"maxMonthlyUsd": 90000.0, "region": "us-east-1", "model": "deepseek-r1"},
    }
    assert isinstance(resolved.plan.max_model_len, int) and cfg.gpu_model == "L40S" and resolved.workers == 3
    # hosts you own have no security group: no CIDR, an internal endpoint
    owned = load_config("onprem-l20")
    assert stack_policy_config(owned)["security-group-ingress"] == {
        "allowedIngressCidrs": [],
        "endpointPublic": False,
        "endpointPort": owned.endpoint_port,
    }


def test_run_for_stack_adds_the_policy_config_it_is_given():
    from policy.runner import run_for_stack

    def mandatory(report):
        return [v.policy for v in report.violations if v.enforcement == "mandatory"]

    assert mandatory(run_for_stack("prod")[1]) == []
    _, report = run_for_stack("prod", extra_config={"monthly-budget": {"maxMonthlyUsd": 1000}})
    assert mandatory(report) == ["monthly-budget"]
