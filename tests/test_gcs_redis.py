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
