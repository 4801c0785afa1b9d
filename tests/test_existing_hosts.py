"""provider = existing: the real program under the offline engine, and the bootstrap renderer."""

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from infra.boot import cloud_init
from infra.boot.ssh_bootstrap import remote_create_command, render_bootstrap, script_sha256
from infra.boot.ssh_node import container_argv, expand, node_spec, stdin_secrets
from infra.program.offline import capture
from infra.rayconf.cluster_yaml import render_cluster_yaml, validate_with_ray
from infra.stack.resolve import resolve

STACK = "onprem-l20"
PINNED = "registry.lab.example:5000/llmfleet/node@sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def cap():
    return capture(STACK)


def commands(c):
    return c.of_type("command:remote:Command")


def script_of(create: str) -> str:
    """The script inside `bash -c '<script>' llmfleet-bootstrap`."""
    argv = shlex.split(create)
    assert argv[:2] == ["bash", "-c"] and argv[3] == "llmfleet-bootstrap"
    return argv[2]


def test_one_remote_command_per_host_under_one_component_and_no_ec2(cap):
    cmds = commands(cap)
    cfg = cap.config
    assert len(cmds) == len(cfg.hosts) == 4
    component = cap.of_type("llmfleet:components:ExistingHosts")
    assert len(component) == 1
    assert {c["parent"] for c in cmds} == {component[0]["name"]}
    assert not [r for r in cap.resources if r["type"].startswith("aws:")]
    for host in cfg.hosts:
        (cmd,) = [
            c
            for c in cmds
            if f"# llmfleet bootstrap of one {host.role} " in (script := script_of(c["inputs"]["create"]))
            and f"\nHOST='{host.address}'\n" in script
        ]
        assert cmd["name"].startswith(f"hosts-{host.role}-")


def test_commands_trigger_on_the_script_hash_stop_the_container_and_keep_secrets(cap):
    for cmd in commands(cap):
        inputs = cmd["inputs"]
        script = script_of(inputs["create"])
        assert inputs["triggers"] == [script_sha256(script)]
        role = "head" if "bootstrap of one head" in script else "worker"
        assert inputs["delete"].startswith(f"docker rm -f llmfleet-{role} ")
        # The connection carries the SSH private key: the whole object is a secret.
        assert inputs["connection"] == "[secret]"
        # The tokens go on stdin, as a secret, to every host (the Ray token), never in any script.
        assert inputs.get("stdin") == "[secret]"
        assert "mock-" not in inputs["create"]


def test_outputs_are_the_aws_names_and_the_token_is_secret(cap):
    o, cfg = cap.outputs, cap.config
    assert o["head_private_ip"] == "10.20.0.10"
    assert o["worker_private_ips"] == [w.private_ip for w in cfg.worker_hosts]
    assert o["worker_addresses"] == [w.address for w in cfg.worker_hosts]
    assert (o["gpu_model"], o["gpus_per_worker"], o["tensor_parallel_size"], o["pipeline_parallel_size"]) == (
        "L20",
        8,
        8,
        3,
    )
    assert o["endpoint_url"] == "http://10.20.0.10:8000/v1"
    assert o["api_token"] == o["ray_auth_token"] == "[secret]" and o["ssh_user"] == "llmfleet"
    assert o["image_ref"].startswith("registry.lab.example:5000/llmfleet/node@sha256:")
    assert "region" not in o  # neither ECR nor S3 in this stack


def test_cluster_yaml_from_these_outputs_passes_rays_validator(cap):
    doc = render_cluster_yaml(cap.outputs)
    validate_with_ray(doc)
    assert doc["provider"] == {
        "type": "local",
        "head_ip": "10.20.0.10",
        "worker_ips": [w.address for w in cap.config.worker_hosts],
    }
    # Plain SSH with the declared user: no SSM proxy on-prem.
    assert doc["auth"] == {"ssh_user": "llmfleet"}
    assert doc["docker"]["container_name"] == "llmfleet-head"


def test_a_config_change_changes_the_trigger_of_the_workers_only():
    before = {
        c["name"]: c["inputs"]["triggers"]
        for c in commands(capture(STACK, ["llmfleet:imageRegistry=" + PINNED]))
    }
    after = {
        c["name"]: c["inputs"]["triggers"]
        for c in commands(
            capture(STACK, ["llmfleet:imageRegistry=" + PINNED, "llmfleet:weightsPath=/nvme/models"])
        )
    }
    changed = {n for n in before if before[n] != after[n]}
    # The head's container mounts the model path too (its ingress reads the tokenizer there).
    assert changed == set(before)
    same = capture(STACK, ["llmfleet:imageRegistry=" + PINNED])
    assert {c["name"]: c["inputs"]["triggers"] for c in commands(same)} == before


def test_image_sources_pinned_pushed_or_ecr():
    pinned = capture(STACK, ["llmfleet:imageRegistry=" + PINNED])
    assert pinned.outputs["image_ref"] == PINNED
    assert not pinned.of_type("docker-build:index:Image")
    pushed = capture(STACK)
    (img,) = pushed.of_type("docker-build:index:Image")
    assert img["inputs"]["push"] is True
    assert img["inputs"]["tags"][0].startswith("registry.lab.example:5000/llmfleet/node:ctx-")
    ecr = capture(STACK, ["llmfleet:imageRegistry="])
    assert ecr.of_type("aws:ecr/repository:Repository") and not ecr.of_type("aws:ec2/instance:Instance")
    assert ".dkr.ecr." in ecr.outputs["image_ref"] and ecr.outputs["region"] == "us-east-1"
    head_script = next(c for c in commands(ecr) if "bootstrap of one head" in c["inputs"]["create"])
    assert "aws ecr get-login-password --region us-east-1" in head_script["inputs"]["create"]


# ---------------------------------------------------------------- the renderer (pure)


@pytest.fixture(scope="module")
def cfg(cap):
    return cap.config


@pytest.mark.parametrize(
    "weights",
    [None, "s3://llm-weights/deepseek-r1/", "https://mirror.lab/deepseek-r1/", "/mnt/nfs/deepseek-r1"],
)
def test_every_script_is_bash_and_shellcheck_clean(tmp_path, weights):
    cfg = capture(STACK, [f"llmfleet:weightsUri={weights or ''}", "llmfleet:imageRegistry=" + PINNED]).config
    for host in cfg.hosts:
        for image in (PINNED, "123456789012.dkr.ecr.us-east-1.amazonaws.com/llmfleet-x@sha256:" + "cd" * 32):
            path = tmp_path / f"{host.role}-{host.ray_ip}.sh"
            path.write_text(render_bootstrap(resolve(cfg), host, "10.20.0.10", image))
            subprocess.run(["bash", "-n", str(path)], check=True)
            if shutil.which("shellcheck"):
                res = subprocess.run(["shellcheck", "-S", "info", str(path)], capture_output=True, text=True)
                assert res.returncode == 0, res.stdout


def test_container_is_the_one_cloud_init_starts(cfg):
    worker = cfg.worker_hosts[0]
    spec = node_spec(resolve(cfg), worker, "10.20.0.10", PINNED)
    argv = expand(container_argv(spec), {"NODE_IP": worker.ray_ip})
    assert argv[:2] == ["docker", "run"] and "--gpus" in argv and PINNED in argv
    assert argv[argv.index(PINNED) + 1 :] == [
        "worker",
        "--address",
        "10.20.0.10:6379",
        "--num-gpus",
        "8",
        "--gpu-model",
        "L20",
        "--ip",
        "10.20.0.11",
        "--block",
    ]
    assert cloud_init.docker_run_argv(spec) == argv[: argv.index(PINNED)]
    head = node_spec(resolve(cfg), cfg.head_host, "10.20.0.10", PINNED)
    head_argv = expand(container_argv(head), {"NODE_IP": "10.20.0.10"})
    assert "--gpus" not in head_argv and head_argv[-4:] == ["head", "--ip", "10.20.0.10", "--block"]


def test_script_has_no_secret_and_embeds_the_ray_start_line(cfg):
    worker = cfg.worker_hosts[1]
    script = render_bootstrap(resolve(cfg), worker, "10.20.0.10", PINNED)
    assert "ray start --address=10.20.0.10:6379 --num-gpus=8" in script
    assert "--node-ip-address=10.20.0.12" in script
    assert "[secret]" not in script and "PRIVATE KEY" not in script
    assert remote_create_command(script).startswith("bash -c '#!/usr/bin/env bash")


def test_one_ray_token_for_the_cluster_and_each_host_gets_what_its_role_needs(cap):
    pws = {r["name"]: r for r in cap.of_type("random:index/randomPassword:RandomPassword")}
    assert set(pws) == {"hosts-api-token", "hosts-ray-token"}
    ray = pws["hosts-ray-token"]["inputs"]
    assert ray["length"] >= 32 and ray["special"] is False  # env-file safe
    assert stdin_secrets("worker", "R1") == "RAY_AUTH_TOKEN=R1\n"
    assert stdin_secrets("head", "R1", "A2") == "RAY_AUTH_TOKEN=R1\nLLMFLEET_API_TOKEN=A2\n"


def test_every_container_gets_the_env_file_and_every_script_writes_it(cfg):
    for host in cfg.hosts:
        spec = node_spec(resolve(cfg), host, "10.20.0.10", PINNED)
        argv = container_argv(spec)
        assert argv[argv.index("--env-file") + 1] == "/run/llmfleet/node.env"
        script = render_bootstrap(resolve(cfg), host, "10.20.0.10", PINNED)
        assert "install -m 0600 /dev/stdin /run/llmfleet/node.env" in script
        assert '"RAY_AUTH_TOKEN=$ray_token"' in script
        assert ('"LLMFLEET_API_TOKEN=$api_token"' in script) == (host.role == "head")


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_the_heads_deploy_unit_passes_systemd_analyze(cfg, tmp_path):
    """The owned head's deploy watcher unit (Restart=always, enabled): systemd accepts every line."""
    from infra.boot.ssh_bootstrap import DEPLOY_UNIT_PATH, deploy_unit

    head = next(h for h in cfg.hosts if h.role == "head")
    unit = tmp_path / Path(DEPLOY_UNIT_PATH).name
    text = deploy_unit(node_spec(resolve(cfg), head, str(head.ray_ip), PINNED))
    unit.write_text(text)
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stderr
    assert "Restart=always" in text and " --watch\n" in text
