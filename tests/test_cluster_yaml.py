"""cluster.yaml from stack outputs: Ray's validator and bootstrap accept it; SSM proxy; commands."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from infra.cli import app
from infra.rayconf import cluster_yaml as cy
from ray_cluster import nic, node, ray_start

DATA = Path(__file__).parent / "data"
OUTPUTS_FILE = DATA / "stack_outputs_prod.json"
runner = CliRunner()


WORKERS = [
    ("10.42.0.11", "i-13f2830c39a84541c"),
    ("10.42.0.12", "i-5d5d3573775d033c9"),
    ("10.42.0.13", "i-6723b75268abf6c7c"),
]


@pytest.fixture
def outputs() -> dict:
    """The outputs as cluster.yaml sees them once the running workers are known (the AWS
    program names worker groups; `render` looks their instances up, see the moto test)."""
    o = json.loads(OUTPUTS_FILE.read_text())
    del o["worker_groups"]
    o["worker_private_ips"] = [ip for ip, _ in WORKERS]
    o["worker_instance_ids"] = [iid for _, iid in WORKERS]
    return o


def _moto_worker_groups(moto, groups: list[str]) -> dict[str, str]:
    """One Auto Scaling group of one per name (as the program makes them), plus another
    group's instance, which the lookup must skip. -> {ip: instance id}, in group order."""
    ec2, asg = moto("ec2"), moto("autoscaling")
    ami = "ami-0123456789abcdef0"  # moto does not validate AMIs (listing its catalog takes seconds)
    ec2.create_launch_template(
        LaunchTemplateName="workers", LaunchTemplateData={"ImageId": ami, "InstanceType": "m7i.large"}
    )
    for g in [*groups, "someone-elses-group"]:
        asg.create_auto_scaling_group(
            AutoScalingGroupName=g,
            LaunchTemplate={"LaunchTemplateName": "workers", "Version": "$Latest"},
            MinSize=1,
            MaxSize=1,
            DesiredCapacity=1,
            AvailabilityZones=["us-east-1a"],
        )
    mine = {}
    for r in ec2.describe_instances()["Reservations"]:
        for i in r["Instances"]:
            tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
            if tags.get("aws:autoscaling:groupName") in groups:
                mine[tags["aws:autoscaling:groupName"]] = (i["PrivateIpAddress"], i["InstanceId"])
    assert sorted(mine) == sorted(groups)
    return dict(mine[g] for g in groups)


def test_outputs_file_workers_are_the_groups_running_instances(tmp_path, monkeypatch):
    """The AWS outputs name the worker groups; render asks EC2 for their running instances by
    the aws:autoscaling:groupName tag (a replaced worker shows up with its new IP and id)."""
    import boto3
    from moto import mock_aws

    from tests.moto_fixtures import DUMMY_CREDS

    want = json.loads(OUTPUTS_FILE.read_text())
    assert want["worker_private_ips"] == [] and len(want["worker_groups"]) == 3
    for k, v in DUMMY_CREDS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        workers = _moto_worker_groups(
            lambda svc: boto3.client(svc, region_name="us-east-1"), want["worker_groups"]
        )
        out = tmp_path / "cluster.yaml"
        res = runner.invoke(
            app, ["render", "cluster-yaml", "--stack", "prod", "--outputs", str(OUTPUTS_FILE), "-o", str(out)]
        )
    assert res.exit_code == 0, res.output
    doc = yaml.safe_load(out.read_text())
    assert doc["provider"] == {
        "type": "local",
        "head_ip": want["head_private_ip"],
        "worker_ips": list(workers),
    }
    proxy = doc["auth"]["ssh_proxy_command"]
    assert all(f"{ip}) t={iid} ;;" in proxy for ip, iid in workers.items())
    assert doc["docker"]["image"] == want["image_ref"]
    # The written file passes Ray's validator and the first step of `ray up`.
    from ray.autoscaler._private.commands import _bootstrap_config
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(doc))
    boot = _bootstrap_config(doc, no_config_cache=True)
    assert boot["available_node_types"]["local.cluster.node"]["max_workers"] == 3


def test_without_outputs_or_offline_it_refuses_in_one_line(tmp_path):
    out = tmp_path / "cluster.yaml"
    res = runner.invoke(app, ["render", "cluster-yaml", "--stack", "prod", "-o", str(out)])
    assert res.exit_code == 2 and not out.exists()
    assert res.stdout == "" and len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith("error: --outputs is missing: allowed: --outputs FILE")


def test_offline_prod_renders_and_validates(tmp_path):
    out = tmp_path / "cluster.yaml"
    res = runner.invoke(app, ["render", "cluster-yaml", "--stack", "prod", "--offline", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "offline placeholders" in res.stderr
    doc = yaml.safe_load(out.read_text())
    cy.validate_with_ray(doc)
    # Offline there are no instances to look up (every host is a group's): the head's fixed
    # address only, and no SSM proxy (it would need the head's instance id).
    assert doc["provider"]["worker_ips"] == [] and doc["max_workers"] == 0
    assert "ssh_proxy_command" not in doc["auth"]


def test_stdout_is_pure_yaml(outputs, tmp_path):
    f = tmp_path / "o.json"
    f.write_text(json.dumps(outputs))
    res = runner.invoke(app, ["render", "cluster-yaml", "-s", "prod", "--outputs", str(f)])
    assert res.exit_code == 0
    assert yaml.safe_load(res.stdout)["cluster_name"] == outputs["cluster_name"]


def test_missing_output_is_one_line_exit_2(outputs, tmp_path):
    del outputs["head_private_ip"]
    f = tmp_path / "o.json"
    f.write_text(json.dumps(outputs))
    res = runner.invoke(app, ["render", "cluster-yaml", "-s", "prod", "--outputs", str(f)])
    assert res.exit_code == 2
    assert "'head_private_ip' is missing" in res.output
    assert "Traceback" not in res.output


def test_image_must_be_pinned_by_digest(outputs):
    outputs["image_ref"] = "123456789012.dkr.ecr.us-east-1.amazonaws.com/llmfleet:latest"
    with pytest.raises(cy.RenderError, match=r"image_ref = .*sha256"):
        cy.render_cluster_yaml(outputs)


def test_ray_rejection_carries_rays_message(outputs):
    doc = cy.render_cluster_yaml(outputs)
    doc["docker"]["gpus"] = "all"  # not a key of Ray's docker schema
    with pytest.raises(cy.RenderError, match=r"Ray rejected cluster.yaml: .*'gpus'"):
        cy.validate_with_ray(doc)


def test_docker_section(outputs):
    from infra.boot.cloud_init import docker_run_argv

    d = cy.render_cluster_yaml(outputs)["docker"]
    assert d["container_name"] == "llmfleet-head" and d["pull_before_run"] is True
    assert "--gpus=all" in d["worker_run_options"] and "--gpus=all" not in d["head_run_options"]
    for role in ("head", "worker"):
        # the node contract's options, as the units pass them (minus the network: see below)
        unit = docker_run_argv(_spec(role, outputs))
        pairs = list(
            zip(unit[7::2], unit[8::2], strict=True)
        )  # after docker run --detach --name N --restart P
        assert d[f"{role}_run_options"] == [f"{k}={v}" for k, v in pairs if k != "--network"]
        assert {"--ipc=host", "--ulimit=memlock=-1"} <= set(d[f"{role}_run_options"])
    # Ray adds --net=host to `docker run` itself; a second network flag makes Docker fail.
    from ray.autoscaler._private.docker import docker_start_cmds

    cmd = docker_start_cmds(
        "ubuntu",
        d["image"],
        {},
        d["container_name"],
        d["run_options"] + d["worker_run_options"],
        "c",
        "/root",
        "docker",
    )
    argv = shlex.split(cmd)
    assert sum(a.startswith(("--net", "--network")) for a in argv) == 1
    assert argv[argv.index(d["image"]) + 1] == "bash" and "--entrypoint=" in argv


def _run_proxy(proxy: str, host: str, tmp_path: Path) -> subprocess.CompletedProcess:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    aws = fake / "aws"
    aws.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    aws.chmod(0o755)
    cmd = proxy.replace("%h", host).replace("%p", "22")
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    # ssh runs a ProxyCommand as `$SHELL -c "exec <command>"`.
    return subprocess.run(
        ["/bin/sh", "-c", f"exec {cmd}"], capture_output=True, text=True, env=env, timeout=10
    )


def test_ssm_proxy_maps_each_ip_to_its_instance(outputs, tmp_path):
    proxy = cy.render_cluster_yaml(outputs)["auth"]["ssh_proxy_command"]
    pairs = [(outputs["head_private_ip"], outputs["head_instance_id"])]
    pairs += list(zip(outputs["worker_private_ips"], outputs["worker_instance_ids"], strict=True))
    for ip, iid in pairs:
        p = _run_proxy(proxy, ip, tmp_path)
        assert p.returncode == 0, p.stderr
        args = p.stdout.split()
        assert args[:2] == ["ssm", "start-session"]
        assert args[args.index("--target") + 1] == iid
        assert args[args.index("--document-name") + 1] == "AWS-StartSSHSession"
        assert args[args.index("--parameters") + 1] == "portNumber=22"
        assert args[args.index("--region") + 1] == "us-east-1"
    bad = _run_proxy(proxy, "10.9.9.9", tmp_path)
    assert bad.returncode == 1 and "10.9.9.9 is not a host" in bad.stderr and bad.stdout == ""


def test_existing_hosts_use_plain_ssh(outputs):
    for k in ("head_instance_id", "worker_instance_ids", "region"):
        outputs.pop(k)
    outputs["head_address"] = "gpu-head.example.net"
    outputs["worker_addresses"] = ["gpu1.example.net", "gpu2.example.net", "gpu3.example.net"]
    doc = cy.render_cluster_yaml(outputs, ssh_private_key="~/.ssh/llmfleet")
    assert doc["auth"] == {"ssh_user": "ubuntu", "ssh_private_key": "~/.ssh/llmfleet"}
    assert doc["provider"]["head_ip"] == "gpu-head.example.net"
    assert doc["provider"]["worker_ips"] == outputs["worker_addresses"]
    # The start commands use the private IPs, where Ray listens.
    assert f"--ip {outputs['head_private_ip']}" in doc["head_start_ray_commands"][0]
    cy.validate_with_ray(doc)


def test_half_of_the_instance_ids_is_an_error(outputs):
    outputs.pop("head_instance_id")
    with pytest.raises(cy.RenderError, match="come together"):
        cy.render_cluster_yaml(outputs)


def _unit_argv(spec) -> list[str]:
    """What the host's unit runs (cloud-init: entrypoint + node_args), for a known IP."""
    from infra.boot.cloud_init import ShellVar, node_args

    return [*cy.NODE_ENTRYPOINT, *(a for a in node_args(spec) if not isinstance(a, ShellVar))]


def _spec(role: str, outputs: dict):
    from infra.boot.cloud_init import NodeSpec

    return NodeSpec(
        role=role,
        region="us-east-1",
        image_ref=outputs["image_ref"],
        weights_s3_uri="s3://b/p/",
        model_path=outputs["model_path"],
        weights_path="/opt/llmfleet/models",
        token_parameter="/t",
        head_ip=outputs["head_private_ip"] if role == "worker" else "",
        gpus=outputs["gpus_per_worker"] if role == "worker" else 0,
        gpu_model=outputs["gpu_model"] if role == "worker" else "",
    )


def test_start_commands_are_the_units_commands(outputs):
    doc = cy.render_cluster_yaml(outputs)
    head_ip = outputs["head_private_ip"]
    head_unit = _unit_argv(_spec("head", outputs))
    # The unit passes `--ip $NODE_IP --block`; here the IP is the head's own and the launcher waits.
    assert head_unit[-2:] == ["--ip", "--block"]
    assert cy.head_node_argv(head_ip) == [*head_unit[:-2], "--ip", head_ip]
    assert doc["head_start_ray_commands"][0].endswith(
        "|| " + ray_start.shell_command(cy.head_node_argv(head_ip))
    )
    worker_unit = _unit_argv(_spec("worker", outputs))
    assert worker_unit[-2:] == ["--ip", "--block"]
    assert shlex.split(doc["worker_start_ray_commands"][0]) == worker_unit[:-2]


@pytest.mark.parametrize("role", ["head", "worker"])
def test_every_role_gets_the_units_env_file(outputs, role):
    """The hosts' units pass the secrets file (Ray token, endpoint token) with --env-file; the
    launcher's containers get the same one, so `ray exec/submit` in them carry the Ray token."""
    from infra.boot.cloud_init import docker_run_argv

    unit = docker_run_argv(_spec(role, outputs))
    env_file = unit[unit.index("--env-file") + 1]
    opts = cy.render_cluster_yaml(outputs)["docker"][f"{role}_run_options"]
    assert [o for o in opts if o.startswith("--env-file")] == [f"--env-file={env_file}"]


def test_commands_run_the_node_builders(outputs, monkeypatch):
    """Executed by the node module, the rendered commands run exactly node's `ray start` argv."""
    head_ip, worker_ip = outputs["head_private_ip"], "10.42.1.22"
    ran: list[tuple[list[str], dict]] = []
    monkeypatch.setattr(node, "_run_ray", lambda argv, env, block, **kw: ran.append((argv, env)) or 0)
    monkeypatch.setattr(node, "wait_for_tcp", lambda *a, **kw: None)
    monkeypatch.setattr(
        nic, "read_interfaces", lambda: [nic.Iface("ens5", head_ip), nic.Iface("ens5", worker_ip)]
    )
    monkeypatch.setattr(nic, "source_ip_towards", lambda host, port=6379: worker_ip)
    # In the image `ray` is on PATH; here node would resolve this venv's absolute ray path.
    monkeypatch.setattr(node, "_ray_bin", lambda: "ray")
    doc = cy.render_cluster_yaml(outputs)

    head_cmd = doc["head_start_ray_commands"][0].split("|| ", 1)[1]
    assert node.main(shlex.split(head_cmd)[3:]) == 0
    # every node passes the agents' fixed ports (ray_cluster.contract.AGENT_PORTS)
    assert ran[-1][0] == ray_start.head_start_command(head_ip, extra=node.agent_port_args([]))
    assert node.main(shlex.split(doc["worker_start_ray_commands"][0])[3:]) == 0
    argv, env = ran[-1]
    assert argv == ray_start.worker_start_command(
        f"{head_ip}:6379",
        worker_ip,
        num_gpus=outputs["gpus_per_worker"],
        gpu_model=outputs["gpu_model"],
        extra=node.agent_port_args([]),
    )
    assert env["NCCL_SOCKET_IFNAME"] == "ens5" and env["VLLM_HOST_IP"] == worker_ip
