"""The composition: stack outputs, resource inventory per stack, the provider=existing branch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import infra.program as program
from infra.constants import REPO_ROOT
from infra.program.offline import capture
from infra.stack.resolve import resolve
from infra.worker_groups import group_instances
from tests.hosts import hosts

OUTPUTS = {
    "endpoint_url",
    "head_private_ip",
    "worker_private_ips",
    "image_ref",
    "cluster_name",
    "token_parameter",
    "ray_token_parameter",
    "dashboard_port_forward_command",
    "gpu_model",
    "gpus_per_worker",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "model",
    "model_path",
    "max_model_len",
    "region",
    "head_group",
    "worker_groups",
    "ssh_user",
}
REQUIRED_TYPES = [
    "aws:ec2/vpc:Vpc",
    "aws:ec2/subnet:Subnet",
    "aws:ec2/vpcEndpoint:VpcEndpoint",
    "aws:ec2/securityGroup:SecurityGroup",
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule",
    "aws:ec2/placementGroup:PlacementGroup",
    "aws:ecr/repository:Repository",
    "aws:ecr/lifecyclePolicy:LifecyclePolicy",
    "docker-build:index:Image",
    "aws:iam/role:Role",
    "aws:iam/instanceProfile:InstanceProfile",
    "aws:iam/policy:Policy",
    "aws:ec2/networkInterface:NetworkInterface",
    "aws:ec2/launchTemplate:LaunchTemplate",
    "aws:autoscaling/group:Group",
    "aws:lb/loadBalancer:LoadBalancer",
    "aws:lb/targetGroup:TargetGroup",
    "aws:lb/listener:Listener",
    "aws:ssm/parameter:Parameter",
]


def test_preview_json_prod_lists_everything():
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "llmfleet"), "preview", "--stack", "prod", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    types_ = [r["type"] for r in doc["resources"]]
    for t in REQUIRED_TYPES:
        assert t in types_, t
    workers = [
        w for w in group_instances(doc["resources"]) if w["inputs"]["tags"]["llmfleet:role"] == "worker"
    ]
    assert [w["inputs"]["instanceType"] for w in workers] == ["g6e.48xlarge"] * 3
    assert OUTPUTS <= set(doc["outputs"])


@pytest.mark.parametrize(
    "stack,itype,n,tp,pp,replicas",
    [("dev", "g6.xlarge", 2, 1, 1, 2), ("staging", "g6e.48xlarge", 1, 8, 1, 1)],
)
def test_dev_and_staging_shapes(stack, itype, n, tp, pp, replicas):
    c = capture(stack)
    workers = hosts(c, "worker")
    assert [w["inputs"]["instanceType"] for w in workers] == [itype] * n
    assert (c.outputs["tensor_parallel_size"], c.outputs["pipeline_parallel_size"]) == (tp, pp)
    assert c.outputs["cluster_name"] == f"llmfleet-{stack}"
    # Workers are Auto Scaling groups: the stack names them; their instances are looked up live.
    assert c.outputs["worker_private_ips"] == [] and len(c.outputs["worker_groups"]) == n
    # workerCount = replicas x nodes per replica; each worker says which replica count it serves
    assert c.outputs["replicas"] == replicas and c.outputs["workers"] == replicas * pp
    assert {w["inputs"]["tags"]["llmfleet:replicas"] for w in workers} == {str(replicas)}
    # every resource lives inside one of our components
    assert all(r["parent"] for r in c.resources if r["custom"])


def test_replicas_multiply_the_plans_nodes_and_a_bad_split_is_one_line():
    c = capture("prod", ["llmfleet:replicas=2"])
    workers = hosts(c, "worker")
    assert len(workers) == 6 and c.outputs["pipeline_parallel_size"] == 3  # 2 replicas x PP 3
    from infra.rayconf import serving

    cfg = c.config
    doc = serving.render_for_plan(cfg, resolve(cfg).plan)
    assert doc["applications"][0]["args"]["llm_configs"][0]["deployment_config"]["num_replicas"] == 2
    from infra.stack.config import ConfigError

    with pytest.raises(
        ConfigError,
        match=r"llmfleet:workerCount = 3: allowed: 'auto' or a multiple of llmfleet:replicas \(2\)",
    ):
        capture("prod", ["llmfleet:replicas=2", "llmfleet:workerCount=3"])


def test_existing_provider_branches_into_its_own_module(monkeypatch):
    owned = capture("onprem-l20")
    real, cfg = owned.outputs, owned.config
    monkeypatch.setattr(program, "read_config", lambda: cfg)
    seen = []

    def fake(c):
        seen.append(c.stack)
        return dict(real)

    import infra.program.existing as existing

    monkeypatch.setattr(existing, "build_existing", fake)
    assert program.build() == real and seen == ["onprem-l20"]
    # and what it returns is held to the outputs contract
    monkeypatch.setattr(existing, "build_existing", lambda c: {**real, "branch": "existing"})
    with pytest.raises(Exception, match="'branch' is not in StackOutputs"):
        program.build()


def test_prod_head_boots_into_a_serve_deploy_of_the_planned_layout():
    import yaml

    from infra.program.offline import capture
    from tests.hosts import hosts
    from tests.node_scripts import node_script

    cap = capture("prod")
    [head] = hosts(cap, "head")  # the instance the head's group runs, from its launch template
    assert "llmfleet-apply /llmfleet/prod/node/head boot" in head["inputs"]["userData"]
    ud = node_script(cap, "head")
    serve = yaml.safe_load(ud.split("<<'LLMFLEET_EOF'\n", 1)[1].split("LLMFLEET_EOF", 1)[0])
    engine = serve["applications"][0]["args"]["llm_configs"][0]["engine_kwargs"]
    assert (engine["tensor_parallel_size"], engine["pipeline_parallel_size"]) == (8, 3)
    assert "deploy --serve-config /etc/llmfleet/serve.yaml --tp 8 --pp 3" in ud
    assert "LLMFLEET_API_TOKEN=" not in serve.__repr__()  # the token is read from SSM at boot, never here


def test_hosts_boot_after_what_they_read_at_boot():
    # Children do not inherit a component's depends_on; each host must itself wait for the IAM
    # grant, both SSM parameters and the VPC endpoints it uses during boot.
    from infra.program.offline import capture

    cap = capture("prod")
    # The head's and the workers' launch templates and groups (what launches a host).
    boots = [
        r
        for r in cap.resources
        if r["type"]
        in (
            "aws:ec2/launchTemplate:LaunchTemplate",
            "aws:autoscaling/group:Group",
        )
    ]
    assert len(boots) == 6
    for host in boots:
        deps = {d.rsplit("::", 1)[-1] for d in host["dependencies"]}
        assert {
            "iam-node-policy-attach",
            "token-parameter",
            "ray-token-parameter",
            "net-ssm",
            "net-ecr-dkr",
        } <= deps


@pytest.mark.parametrize("stack", ["prod", "dev", "onprem-l20"])
def test_the_plan_is_computed_once_per_program_run(stack, monkeypatch):
    """One plan of the stack, passed down: workers, user data, bootstrap scripts and outputs
    all read the same one (each planner call is a full memory/throughput model)."""
    import infra.stack.planner

    real, calls = infra.stack.planner.plan, []

    def counting(*a, **kw):
        calls.append(kw.get("model"))
        return real(*a, **kw)

    monkeypatch.setattr(infra.stack.planner, "plan", counting)
    c = capture(stack)
    assert c.outputs["tensor_parallel_size"] >= 1
    assert len(calls) == 1, calls


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "onprem-l20"])
def test_every_shipped_stack_writes_the_stack_outputs_contract(stack):
    from infra.stack.outputs import StackOutputs

    c = capture(stack)
    StackOutputs.check_keys(c.outputs)
    o = StackOutputs.parse(c.outputs)
    assert o.workers == o.replicas * o.pipeline_parallel_size
    assert o.served_model.count("/") == 1  # the Hub id the Serve app serves, not the catalog key


def test_a_stale_outputs_file_is_one_line_naming_the_key(tmp_path):
    from typer.testing import CliRunner

    from infra.cli import app
    from infra.stack.outputs import OutputsError, StackOutputs

    outs = json.loads((REPO_ROOT / "tests" / "data" / "stack_outputs_prod.json").read_text())
    outs.pop("served_model")
    with pytest.raises(OutputsError, match="^stack output 'served_model' is missing"):
        StackOutputs.parse(outs)
    with pytest.raises(OutputsError, match="'bogus' is not in StackOutputs"):
        StackOutputs.check_keys({**outs, "bogus": 1})
    f = tmp_path / "o.json"
    f.write_text(json.dumps(outs))
    res = CliRunner().invoke(app, ["render", "serve-config", "-s", "prod", "--outputs", str(f)])
    assert res.exit_code == 2 and "served_model" in res.output and "Traceback" not in res.output


def test_a_stack_deployed_before_plan_fits_was_dropped_still_parses():
    from infra.stack.outputs import OutputsError, StackOutputs

    outs = json.loads((REPO_ROOT / "tests" / "data" / "stack_outputs_prod.json").read_text())
    assert outs["plan_fits"] is True  # what programs before this one exported (read by nothing)
    assert StackOutputs.parse(outs) == StackOutputs.parse({k: v for k, v in outs.items() if k != "plan_fits"})
    with pytest.raises(OutputsError, match="'plan_fits' is not in StackOutputs"):
        StackOutputs.check_keys(outs)  # and no program exports it any more
