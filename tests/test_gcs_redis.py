"""llmfleet:gcsRedis: Ray GCS fault tolerance with an ElastiCache Redis (off by default)."""

from __future__ import annotations

import json
from decimal import Decimal
from functools import cache

from infra.boot.cloud_init import GCS_RECONNECT_ENV
from infra.components.gcs_redis import REDIS_PORT
from infra.cost.estimate import estimate_monthly_usd, price_resources
from infra.cost.pricing import snapshot_book
from infra.program.offline import capture
from ray_cluster import contract
from ray_cluster.node import REDACTED_REDIS, gcs_redis_args
from tests.node_scripts import node_script

RG = "aws:elasticache/replicationGroup:ReplicationGroup"


@cache
def cap(*overrides: str):
    return capture("prod", overrides)


def test_off_by_default_nothing_of_it_in_the_stack_or_the_scripts():
    c = cap()
    assert c.config.gcs_redis is False
    assert not [r for r in c.resources if "elasticache" in r["type"]]
    for role in ("head", "worker"):
        s = node_script(c, role)
        assert "RAY_REDIS_ADDRESS" not in s and GCS_RECONNECT_ENV not in s


def test_the_store_is_encrypted_token_protected_and_open_to_the_cluster_only():
    c = cap("llmfleet:gcsRedis=true")
    [rg] = c.of_type(RG)
    i = rg["inputs"]
    assert i["transitEncryptionEnabled"] is True and i["atRestEncryptionEnabled"] is True
    assert i["engine"] == "redis" and i["numCacheClusters"] == 1 and i["port"] == REDIS_PORT
    assert i["authToken"] == "[secret]"  # the random password, a secret output
    param = c.named("gcs-token-parameter")["inputs"]
    assert param["name"] == "/llmfleet/prod/gcs-redis-token" and param["type"] == "SecureString"
    assert param["keyId"] == c.named("secrets-key")["outputs"]["keyId"]  # the stack's key
    sg = c.named("gcs-sg")["id"]
    assert i["securityGroupIds"] == [sg]
    rules = [
        r["inputs"]
        for r in c.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if r["inputs"]["securityGroupId"] == sg
    ]
    cluster_sg = next(
        r["id"]
        for r in c.of_type("aws:ec2/securityGroup:SecurityGroup")
        if r["outputs"]["tags"].get("llmfleet:sg") == "cluster"
    )
    assert rules == [
        {
            **rules[0],
            "referencedSecurityGroupId": cluster_sg,
            "ipProtocol": "tcp",
            "fromPort": REDIS_PORT,
            "toPort": REDIS_PORT,
        }
    ]
    assert "cidrIpv4" not in rules[0]
    [subnets] = c.of_type("aws:elasticache/subnetGroup:SubnetGroup")
    assert subnets["inputs"]["subnetIds"] == [c.named("net-private")["id"]]


def test_the_head_starts_ray_on_the_store_and_the_workers_wait_for_it():
    c = cap("llmfleet:gcsRedis=true")
    [rg] = c.of_type(RG)
    host = rg["outputs"]["primaryEndpointAddress"]
    head, worker = node_script(c, "head"), node_script(c, "worker")
    # on the run line (not secret): turning the option on changes it, so the rollout restarts
    # the containers (test_day2's row); TLS (Ray: rediss://)
    assert f"--env RAY_REDIS_ADDRESS=rediss://{host}:{REDIS_PORT}" in head
    # the token: read from SSM at boot into the root-only env file, by name, never the value
    assert "ssm_secret /llmfleet/prod/gcs-redis-token" in head
    assert f'"{contract.GCS_REDIS_PASSWORD_ENV}=${{GCS_REDIS_TOKEN}}"' in head
    assert "--redis-password" not in head
    for s in (head, worker):
        assert f"--env {GCS_RECONNECT_ENV}=900" in s
    assert "RAY_REDIS_ADDRESS" not in worker and "gcs-redis-token" not in worker
    doc = json.loads(c.named("iam-node-policy")["inputs"]["policy"])
    [read] = [s for s in doc["Statement"] if s.get("Sid") == "ReadGcsRedisToken"]
    assert read["Action"] == ["ssm:GetParameter"]
    assert read["Resource"] == c.named("gcs-token-parameter")["outputs"]["arn"]


def test_the_password_reaches_ray_start_from_the_env_file_only():
    env = {contract.GCS_REDIS_PASSWORD_ENV: "s3cret", "RAY_REDIS_ADDRESS": "rediss://h:6379"}
    assert gcs_redis_args(env) == ["--redis-password=s3cret"]
    assert gcs_redis_args({contract.GCS_REDIS_PASSWORD_ENV: "s3cret"}) == []  # no store: nothing
    assert gcs_redis_args({}) == []
    assert "s3cret" not in REDACTED_REDIS


def test_cost_prices_the_cache_node():
    bare, redis = cap(), cap("llmfleet:gcsRedis=true")
    est = price_resources(redis.resources, snapshot_book("us-east-1"))
    [node] = [r for r in est.resources if r.resource_type == RG]
    assert node.monthly_cost == Decimal("0.065") * 730  # cache.t4g.medium, one node
    assert RG not in est.unsupported and not [w for w in est.warnings if "elasticache" in w]
    a = estimate_monthly_usd(bare.resources, "us-east-1")
    b = estimate_monthly_usd(redis.resources, "us-east-1")
    assert b - a == node.monthly_cost


# ---------------------------------------------------------------- `llmfleet local up --gcs-redis`
# Only what it renders is tested here; the local cluster with --gcs-redis has never been run.


def test_local_redis_gets_its_own_port_and_its_password_only_from_a_file():
    from infra.local import prometheus
    from infra.local.layout import gcs_redis_env, plan_ports, redis_conf, redis_server_argv

    for mode in ("netns", "loopback"):
        ports = plan_ports(mode, 1, 8000)
        taken = {ports.gcs, ports.dashboard, ports.http, prometheus.port_for(mode, ports)}
        assert ports.redis not in taken, mode
    conf = redis_conf("10.77.1.2", 6380, "/var/lib/x", "pw-123")
    lines = conf.splitlines()
    assert "bind 10.77.1.2" in lines and "port 6380" in lines and "requirepass pw-123" in lines
    assert "appendonly yes" in lines and "protected-mode yes" in lines
    argv = redis_server_argv("/state/gcs-redis/redis.conf", "/usr/bin/redis-server")
    assert argv == ["/usr/bin/redis-server", "/state/gcs-redis/redis.conf"]
    head = gcs_redis_env("head", "10.77.1.2", 6380, "pw-123")
    assert head["RAY_REDIS_ADDRESS"] == "10.77.1.2:6380" and head[contract.GCS_REDIS_PASSWORD_ENV] == "pw-123"
    assert gcs_redis_args(head) == ["--redis-password=pw-123"]  # what the head's node adds
    worker = gcs_redis_env("worker", "10.77.1.2", 6380, "pw-123")
    assert worker == {GCS_RECONNECT_ENV: "120"}


def test_local_gcs_redis_is_refused_with_an_image():
    from typer.testing import CliRunner

    from infra.cli import app

    res = CliRunner().invoke(app, ["local", "up", "--gcs-redis", "--image", "x@sha256:" + "0" * 64])
    assert res.exit_code != 0 and "--gcs-redis: allowed only without --image" in res.output


def test_the_logged_ray_start_masks_the_password(monkeypatch, capsys):
    import pytest

    import ray_cluster.node as node

    def no_exec(*_a):
        raise SystemExit(0)

    monkeypatch.setattr(node.os, "execvpe", no_exec)
    with pytest.raises(SystemExit):
        node._run_ray(["ray", "start", "--head", "--redis-password=s3cret"], {}, block=True)
    err = capsys.readouterr().err
    assert "s3cret" not in err and REDACTED_REDIS in err


# ---------------------------------------------------------------- serving from every host's proxy
# With the option the NLB targets every serving host's Serve proxy: an instance target group the
# head's and the workers' groups register with, each host an ingress replica and the API token.

TG = "aws:lb/targetGroup:TargetGroup"
GROUP = "aws:autoscaling/group:Group"
ON = "llmfleet:gcsRedis=true"


def serve_doc(c) -> dict:
    """The Serve config the head's node script writes (serve.yaml)."""
    import re

    import yaml

    m = re.search(r"<<'LLMFLEET_EOF'\n(.*?)\nLLMFLEET_EOF", node_script(c, "head"), re.S)
    assert m is not None
    return yaml.safe_load(m.group(1))


def test_off_the_nlb_targets_the_heads_address_and_only_the_head_serves():
    c = cap()
    [tg] = c.of_type(TG)
    assert tg["inputs"]["targetType"] == "ip" and tg["inputs"]["healthCheck"]["protocol"] == "TCP"
    [att] = c.of_type("aws:lb/targetGroupAttachment:TargetGroupAttachment")
    assert att["inputs"]["targetId"] == c.outputs["head_private_ip"]
    assert all("targetGroupArns" not in g["inputs"] for g in c.of_type(GROUP))
    doc = serve_doc(c)
    assert doc["proxy_location"] == "HeadOnly"
    ingress = doc["applications"][0]["args"]["ingress_deployment_config"]
    assert ingress["ray_actor_options"]["resources"] == {contract.HEAD_RESOURCE: 0.001}
    worker = node_script(c, "worker")
    assert "endpoint-token" not in worker and "LLMFLEET_API_TOKEN" not in worker


def test_on_every_hosts_group_registers_with_one_instance_target_group_checked_at_serves_healthz():
    c = cap(ON)
    [tg] = c.of_type(TG)
    i = tg["inputs"]
    port = c.config.endpoint_port
    assert i["targetType"] == "instance" and i["protocol"] == "TCP" and i["port"] == port
    assert i["preserveClientIp"] == "false"  # as the head's ip target: the NLB's address reaches the hosts
    # Serve's own proxy health route (Ray 2.60: 200 ready, 503 draining)
    assert i["healthCheck"] == {
        **i["healthCheck"],
        "protocol": "HTTP",
        "path": "/-/healthz",
        "matcher": "200",
        "port": str(port),
    }
    assert not c.of_type("aws:lb/targetGroupAttachment:TargetGroupAttachment")  # the groups register
    groups = c.of_type(GROUP)
    names = {g["inputs"]["name"] for g in groups}
    assert names == {c.outputs["head_group"], *c.outputs["worker_groups"]}
    for g in groups:
        assert g["inputs"]["targetGroupArns"] == [tg["outputs"]["arn"]], g["name"]
        # EC2 health checks still: a proxy down while the engine loads is not a broken host
        assert g["inputs"]["healthCheckType"] == "EC2", g["name"]
    [listener] = c.of_type("aws:lb/listener:Listener")
    assert listener["inputs"]["defaultActions"][0]["targetGroupArn"] == tg["outputs"]["arn"]


def test_on_every_host_runs_a_proxy_and_one_gated_ingress_replica():
    from infra.rayconf.serve_config import validate_serve_config

    off, on = serve_doc(cap()), serve_doc(cap(ON))
    c = cap(ON)
    assert on["proxy_location"] == "EveryNode"
    ingress = on["applications"][0]["args"]["ingress_deployment_config"]
    hosts = 1 + len(c.outputs["worker_groups"])  # the head and every worker at full scale
    assert hosts == 4  # prod: 3 workers (README: "4 for prod")
    assert ingress == {
        "max_replicas_per_node": 1,
        "num_replicas": hosts,
        "ray_actor_options": {"num_cpus": 1},
    }
    # the same app otherwise: the same gated class, token env, engine config
    for doc in (off, on):
        doc.pop("proxy_location")
        doc["applications"][0]["args"].pop("ingress_deployment_config")
    assert on == off
    assert validate_serve_config(serve_doc(c)) == []  # Ray's own schema takes it


def test_on_every_worker_reads_the_api_token_into_its_env_file_and_restarts_for_it():
    c = cap(ON)
    worker = node_script(c, "worker")
    name = c.outputs["token_parameter"]
    assert f"API_TOKEN=$(ssm_secret {name})" in worker
    assert f'"{contract.TOKEN_ENV}=${{API_TOKEN}}"' in worker  # into the root-only env file
    run = next(line for line in worker.splitlines() if line.startswith("docker run"))
    assert contract.TOKEN_ENV not in run and "API_TOKEN" not in run  # never on a run line
    for lt in c.of_type("aws:ec2/launchTemplate:LaunchTemplate"):
        import base64

        assert name not in base64.b64decode(lt["inputs"]["userData"]).decode()  # boot contract only


def test_a_worker_that_gains_the_token_restarts_its_container_on_a_rollout():
    """The env file is read at `docker run`: a stack already on gcsRedis (the same run line)
    must still restart each worker's container, or its ingress replica has no token."""
    import re

    from infra.boot.cloud_init import NodeSpec, render_user_data

    base = dict(
        role="worker",
        region="us-east-1",
        image_ref="r.example/img@sha256:" + "a" * 64,
        weights_s3_uri="s3://b/p/",
        model_path="/opt/dlami/nvme/m",
        weights_path="/opt/dlami/nvme",
        ray_token_parameter="/llmfleet/prod/ray-token",
        head_ip="10.0.0.10",
        gpus=8,
        gcs_fault_tolerant=True,
    )

    def marker(script: str) -> str:
        [digest] = re.findall(r"echo ([0-9a-f]{16}) > /etc/llmfleet/llmfleet-worker.run", script)
        return digest

    without = render_user_data(NodeSpec(**base))
    with_token = render_user_data(NodeSpec(**base, token_parameter="/llmfleet/prod/endpoint-token"))
    assert "endpoint-token" not in without and "endpoint-token" in with_token
    assert marker(without) != marker(with_token)


def test_the_serving_port_reaches_every_host_from_the_nlbs_group_only():
    """Head and workers sit in the cluster group, on and off alike (so the workers admitted the
    serving port from the NLB before the option, too): the port from the endpoint group only,
    every other port (Ray's) from the cluster group itself, no CIDR rule."""
    for c in (cap(), cap(ON)):
        sgs = {
            r["outputs"]["tags"]["llmfleet:sg"]: r["id"]
            for r in c.of_type("aws:ec2/securityGroup:SecurityGroup")
        }
        cluster, endpoint = sgs["cluster"], sgs["endpoint"]
        worker_lt = next(
            lt
            for lt in c.of_type("aws:ec2/launchTemplate:LaunchTemplate")
            if lt["inputs"]["name"].endswith("-worker")
        )
        assert {sg for nic in worker_lt["inputs"]["networkInterfaces"] for sg in nic["securityGroups"]} == {
            cluster
        }
        rules = [
            r["inputs"]
            for r in c.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
            if r["inputs"]["securityGroupId"] == cluster
        ]
        assert all("cidrIpv4" not in r and "cidrIpv6" not in r for r in rules)
        port = c.config.endpoint_port
        serving = [r for r in rules if r.get("fromPort") == port and r.get("toPort") == port]
        assert [r["referencedSecurityGroupId"] for r in serving] == [endpoint]
        others = [r for r in rules if r not in serving]
        assert [(r["referencedSecurityGroupId"], r["ipProtocol"]) for r in others] == [(cluster, "-1")]


def test_the_workers_role_reads_exactly_the_token_and_the_pack_passes_and_flags_a_wildcard():
    """One instance role serves every host (infra/components/iam.py), so the workers' grant on the
    endpoint token is the head's: ssm:GetParameter on that one parameter, kms:Decrypt on the
    stack's key through SSM. The host-role policies pass on the gcsRedis stack and still flag
    a grant widened to '*'."""
    import copy

    from policy.host_roles import HOST_ROLE_POLICIES
    from policy.runner import run_policies

    c = cap(ON)
    worker_lt = next(
        lt
        for lt in c.of_type("aws:ec2/launchTemplate:LaunchTemplate")
        if lt["inputs"]["name"].endswith("-worker")
    )
    profile = c.named("iam-profile")
    assert worker_lt["inputs"]["iamInstanceProfile"]["name"] == profile["outputs"]["name"]
    assert profile["inputs"]["role"] == c.named("iam-role")["outputs"]["name"]
    doc = json.loads(c.named("iam-node-policy")["inputs"]["policy"])
    [read] = [s for s in doc["Statement"] if s.get("Sid") == "ReadEndpointToken"]
    assert read["Action"] == ["ssm:GetParameter"]
    assert read["Resource"] == c.named("token-parameter")["outputs"]["arn"]
    assert read["Resource"].endswith(":parameter" + c.outputs["token_parameter"])
    [decrypt] = [s for s in doc["Statement"] if s.get("Sid") == "DecryptStackSecureStrings"]
    assert (
        decrypt["Action"] == ["kms:Decrypt"]
        and decrypt["Resource"] == c.named("secrets-key")["outputs"]["arn"]
    )

    def violations(resources):
        return run_policies(resources, {}, HOST_ROLE_POLICIES, stack=c.config).violations

    assert list(violations(c.resources)) == []
    widened = copy.deepcopy(c.resources)
    pol = next(r for r in widened if r["name"] == "iam-node-policy")
    wide = copy.deepcopy(doc)
    next(s for s in wide["Statement"] if s.get("Sid") == "ReadEndpointToken")["Resource"] = "*"
    pol["inputs"]["policy"] = pol["outputs"]["policy"] = json.dumps(wide)
    [v] = violations(widened)
    assert v.policy == "host-role-secrets-scoped" and "ssm:GetParameter on '*'" in v.message


def test_idle_stop_with_gcs_redis_is_refused_in_one_line():
    import pytest

    from infra.constants import REPO_ROOT
    from infra.stack.config import ConfigError
    from infra.stack.files import load_config

    with pytest.raises(ConfigError) as e:
        load_config("prod", [ON, "llmfleet:idleStopMinutes=30"])
    msg = str(e.value)
    assert msg == (
        "llmfleet:idleStopMinutes = 30: idle stop sees only the head's requests, and with "
        "llmfleet:gcsRedis=true the workers' proxies serve too; allowed: unset, or "
        "llmfleet:gcsRedis=false (llmfleet:schedule works with both)"
    )
    # the README quotes its start
    readme = " ".join((REPO_ROOT / "README.md").read_text().split())
    assert " ".join(msg.split("; allowed")[0].split()) in readme
    load_config("prod", [ON, "llmfleet:schedule=mon-fri 08:00-20:00 UTC"])  # a schedule: fine
    load_config("prod", ["llmfleet:idleStopMinutes=30"])  # idle stop alone: fine


def test_the_watcher_never_deletes_the_app_for_an_ingress_replica_a_missing_host_held():
    """Serve's status while a host is missing (infra/rayconf/serving.py ingress_hosts): the
    ingress deployment UNHEALTHY with its other replicas RUNNING, the lost one PENDING_ALLOCATION
    until the host is back. The watcher's decision (serve_rest.app_needs_restart) keeps the app:
    it serves from the other hosts. With the ingress on the head alone, the same head loss
    leaves it no RUNNING replica and the watcher would start the whole app afresh."""
    from ray_cluster.serve_rest import app_needs_restart

    apps = {"llm": "UNHEALTHY"}
    engine = {"status": "HEALTHY", "replicas": 1}  # the engine survived the head (GCS on the store)
    every_node = {
        "llm": {"LLMServer:m": engine, "BearerOpenAiIngress": {"status": "UNHEALTHY", "replicas": 3}}
    }
    head_only = {
        "llm": {"LLMServer:m": engine, "BearerOpenAiIngress": {"status": "UNHEALTHY", "replicas": 0}}
    }
    assert app_needs_restart(apps, every_node) is False
    assert app_needs_restart(apps, head_only) is True
    # and no re-apply at all while the host comes back within the watcher's first backoff
    # (a head replacement: the new head's node takes the pending replica)
    from ray_cluster.watch import BACKOFF_FIRST_S, AppBackoff

    backoff = AppBackoff()
    assert backoff.step(apps, 0.0) is None and backoff.step(apps, BACKOFF_FIRST_S - 1) is None
    assert backoff.step({"llm": "RUNNING"}, BACKOFF_FIRST_S) is None and backoff.failing_since is None
