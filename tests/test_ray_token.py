"""The Ray cluster token (AWS): one random secret in SSM, read at boot by every host, never in user data."""

import pytest

from infra.components.secret_token import RAY_TOKEN_LENGTH, ray_token_parameter_name
from infra.program.offline import capture
from tests.hosts import hosts
from tests.node_scripts import node_script


@pytest.fixture(scope="module")
def cap():
    return capture("prod")


def test_one_random_token_in_its_own_secure_string(cap):
    [component] = [c for c in cap.of_type("llmfleet:components:SecretToken") if c["name"] == "ray-token"]
    pw = cap.named("ray-token-value")
    param = cap.named("ray-token-parameter")
    assert pw["parent"] == param["parent"] == component["name"]
    assert pw["inputs"]["length"] >= 32 and RAY_TOKEN_LENGTH >= 32
    assert pw["inputs"]["special"] is False  # it lands in a docker --env-file
    assert param["inputs"]["type"] == "SecureString" and param["inputs"]["value"] == "[secret]"
    assert param["inputs"]["name"] == ray_token_parameter_name("prod") == "/llmfleet/prod/ray-auth-token"
    assert cap.outputs["ray_token_parameter"] == param["outputs"]["name"]
    # Its own parameter, distinct from the endpoint token's.
    assert cap.outputs["token_parameter"] != cap.outputs["ray_token_parameter"]


def test_every_host_reads_it_and_no_token_value_is_in_user_data(cap):
    instances = hosts(cap)
    roles = sorted(i["inputs"]["tags"]["llmfleet:role"] for i in instances)
    assert roles == ["head", "worker", "worker", "worker"]
    # The offline engine's RandomPassword results (mock-<hash>): none may reach any user data.
    values = [pw["outputs"]["result"] for pw in cap.of_type("random:index/randomPassword:RandomPassword")]
    assert len(values) == 2 and all(values)
    for inst in instances:
        ud = node_script(cap, inst["inputs"]["tags"]["llmfleet:role"])
        assert not [v for v in values if v in inst["inputs"]["userData"]]
        assert "RAY_TOKEN=$(ssm_secret /llmfleet/prod/ray-auth-token)" in ud
        assert "--env-file /run/llmfleet/node.env" in ud
        assert not [v for v in values if v in ud]
        head = inst["inputs"]["tags"]["llmfleet:role"] == "head"
        assert ("ssm_secret /llmfleet/prod/endpoint-token" in ud) == head
