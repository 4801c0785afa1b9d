"""No stack value runs as code, and dangerous values are refused (issue #25).

1. The review's values: `llmfleet preview` (the real typer app, in-process) exits 2 with one
   line naming the key, for each.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from infra.cli import app

RUNNER = CliRunner()
TOUCH = "/opt/$(touch${IFS}/tmp/x)"

# (stack, overrides, the key the one line must start with)
REFUSED = [
    ("prod", [f"llmfleet:weightsPath={TOUCH}"], "llmfleet:weightsPath"),
    ("prod", ["llmfleet:weightsPath=/etc"], "llmfleet:weightsPath"),
    ("prod", ["llmfleet:weightsPath=/"], "llmfleet:weightsPath"),
    ("prod", ["llmfleet:weightsPath=/opt/../../etc"], "llmfleet:weightsPath"),
    ("prod", ["llmfleet:weightsPath=/var/lib/docker/x"], "llmfleet:weightsPath"),
    ("prod", ["llmfleet:weightsPath=/opt//x"], "llmfleet:weightsPath"),
    ("prod", ["llmfleet:weightsPath=/opt/x\ntouch /tmp/x"], "llmfleet:weightsPath"),
    ("prod", ['llmfleet:weightsUri=s3://bucket/a"b/'], "llmfleet:weightsUri"),
    ("prod", ["llmfleet:weightsUri=s3://xn--bucket/a/"], "llmfleet:weightsUri"),
    ("prod", ["llmfleet:weightsUri=s3://192.168.1.1/a/"], "llmfleet:weightsUri"),
    ("prod", ["llmfleet:weightsUri=s3://my..bucket/a/"], "llmfleet:weightsUri"),
    ("prod", ["llmfleet:weightsUri=s3://bucket-s3alias/a/"], "llmfleet:weightsUri"),
    ("prod", ["llmfleet:weightsUri=s3://bucket/a/../b/"], "llmfleet:weightsUri"),
    ("prod", ["llmfleet:endpointPort=6379"], "llmfleet:endpointPort"),
    ("prod", ["llmfleet:endpointPort=22"], "llmfleet:endpointPort"),
    ("prod", ["llmfleet:endpointPort=8265"], "llmfleet:endpointPort"),
    ("prod", ["llmfleet:endpointPort=12000"], "llmfleet:endpointPort"),
    ("prod", ["llmfleet:endpointPort=9400"], "llmfleet:endpointPort"),
    ("prod", ['llmfleet:endpointAllowedCidrs=["0.0.0.0/1","128.0.0.0/1"]'], "llmfleet:endpointAllowedCidrs"),
    ("prod", ['llmfleet:endpointAllowedCidrs=["8.8.8.0/24"]'], "llmfleet:endpointAllowedCidrs"),
    ("prod", ["llmfleet:maxMonthlyUsd=inf"], "llmfleet:maxMonthlyUsd"),
    ("prod", ["llmfleet:maxMonthlyUsd=nan"], "llmfleet:maxMonthlyUsd"),
    ("prod", ["llmfleet:maxMonthlyUsd=-5"], "llmfleet:maxMonthlyUsd"),
    ("onprem-l20", ["llmfleet:hostHourlyUsd=inf"], "llmfleet:hostHourlyUsd"),
    ("prod", ["aws:region=cn-north-1"], "aws:region"),
    ("prod", ["aws:region=us-gov-west-1"], "aws:region"),
    ("onprem-l20", ["llmfleet:weightsUri=http://weights.lab.example/r1/"], "llmfleet:weightsUri"),
    ("onprem-l20", ["llmfleet:weightsUri=https://weights.lab.example/r1/?x=$(id)"], "llmfleet:weightsUri"),
    ("onprem-l20", ["llmfleet:weightsUri=/etc"], "llmfleet:weightsUri"),
    ("prod", ["llmfleet:workerCount=2", "llmfleet:replicas=3"], "llmfleet:workerCount"),
    ("onprem-l20", ["llmfleet:workerCount=2"], "llmfleet:workerCount"),
    ("onprem-l20", ["llmfleet:replicas=2"], "llmfleet:replicas"),
    # 'auto' = replicas x the planner's 3 nodes = 90 workers: only the plan knows, so the
    # program refuses it (one line through the offline engine's RunError).
    ("prod", ["llmfleet:replicas=30"], "program failed for stack prod: RunError: llmfleet:replicas"),
    ("prod", ["llmfleet:baseImage=vllm/vllm-openai:v1;id"], "llmfleet:baseImage"),
    ("onprem-l20", ["llmfleet:imageRegistry=registry.lab.example:5000/x y"], "llmfleet:imageRegistry"),
    ("prod", ['llmfleet:tags={"team": "a\\nb"}'], "llmfleet:tags"),
]


@pytest.mark.parametrize(("stack", "overrides", "key"), REFUSED, ids=[" ".join(o) for _, o, _ in REFUSED])
def test_the_reviews_values_are_refused_with_one_line_naming_the_key(stack, overrides, key):
    args = ["preview", "--stack", stack, "--json"]
    for o in overrides:
        args += ["-c", o]
    result = RUNNER.invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {key}"), lines[0]
    assert result.stdout == ""


ACCEPTED = [
    ["llmfleet:weightsPath=/data/llmfleet/models"],
    ["llmfleet:weightsPath=/opt/llmfleet/models/"],  # one trailing '/' is dropped
    ["llmfleet:weightsPath=/mnt/nvme0/w_1.x"],
    ["llmfleet:weightsUri=s3://my-bucket.example-1/deepseek-ai/DeepSeek-R1/"],
    ["llmfleet:endpointPort=8443"],
    ['llmfleet:endpointAllowedCidrs=["10.1.0.0/16","172.16.4.0/24","192.168.0.0/16","100.64.0.0/10"]'],
    ['llmfleet:endpointAllowedCidrs=["8.8.8.0/24"]', "llmfleet:endpointAllowPublicCidrs=true"],
    ["aws:region=eu-west-1"],
    ["llmfleet:baseImage=vllm/vllm-openai@sha256:" + "ab" * 32],
]


@pytest.mark.parametrize("overrides", ACCEPTED, ids=[" ".join(o) for o in ACCEPTED])
def test_ordinary_values_still_load(overrides):
    from infra.stack.files import load_config

    load_config("prod", overrides)


def test_internal_cidrs_may_be_the_stacks_own_public_vpc_range_only_if_private():
    """The VPC's CIDR is private by its own rule, and counts as private for the endpoint."""
    from infra.stack.files import load_config

    cfg = load_config(
        "prod", ["llmfleet:vpcCidr=10.99.0.0/16", 'llmfleet:endpointAllowedCidrs=["10.99.3.0/24"]']
    )
    assert cfg.endpoint_allowed_cidrs == ["10.99.3.0/24"]


def test_onprem_without_host_keys_is_refused(tmp_path):
    """The shipped onprem-l20 with its (example) hostKey lines taken out, as a user who never
    pinned their hosts would have it: one line naming the first host's hostKey."""
    from infra.constants import REPO_ROOT
    from infra.stack.config import ConfigError
    from infra.stack.files import load_config

    (tmp_path / "stacks").mkdir()
    (tmp_path / "Pulumi.yaml").write_text((REPO_ROOT / "Pulumi.yaml").read_text())
    text = (REPO_ROOT / "stacks" / "Pulumi.onprem-l20.yaml").read_text()
    unkeyed = "".join(ln for ln in text.splitlines(keepends=True) if "hostKey:" not in ln)
    assert unkeyed.count("address:") == 4 and unkeyed != text
    (tmp_path / "stacks" / "Pulumi.onprem-l20.yaml").write_text(unkeyed)
    with pytest.raises(ConfigError) as err:
        load_config("onprem-l20", project_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        "llmfleet:hosts[0].hostKey = (unset): an unverified 10.20.0.10 would get the Ray"
    ), msg
    assert "llmfleet hosts trust --stack" in msg


@pytest.mark.parametrize(
    "key",
    [
        "ssh-ed25519",
        "ssh-ed25519 AAAA",
        "ssh-ed25519 not-base64!",
        # an RSA blob labelled ed25519: the wire format names its own type
        "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQC7",
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBJ4mvEhT0x2r0f7VN8sPvH4m4MLmU3cT9ypAyzS1xq6 $(id)",
    ],
)
def test_a_malformed_host_key_is_refused(key):
    import json

    from infra.stack.config import ConfigError
    from infra.stack.files import load_config
    from tests.host_keys import keyed

    hosts = keyed(
        {"address": "10.20.0.10", "role": "head", "gpuCount": 0},
        {"address": "10.20.0.11", "role": "worker", "hostKey": key},
    )
    with pytest.raises(ConfigError) as err:
        load_config("onprem-l20", [f"llmfleet:hosts={json.dumps(hosts)}"])
    assert str(err.value).startswith("llmfleet:hosts[1].hostKey = "), str(err.value)


def test_endpoint_ports_refused_include_the_metrics_agents_ports():
    """config_values keeps its own list (infra.stack imports nothing above it): in step here."""
    from infra.boot import metrics
    from infra.stack.config_values import RESERVED_PORTS
    from ray_cluster.contract import DASHBOARD_PORT, GCS_PORT

    listen_port = int(metrics.PROMETHEUS_LISTEN.rsplit(":", 1)[1])
    assert {metrics.DCGM_PORT, listen_port, GCS_PORT, DASHBOARD_PORT, 22} <= set(RESERVED_PORTS)
