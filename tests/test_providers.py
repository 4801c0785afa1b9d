"""Issue #31 item 4: a provider seam. llmfleet:provider picks one entry of three tables (the
config model, the program function, the account checks); an owned-host stack's model holds no
AWS network, ACM, Route 53 or SNS key, and such a key set on it is refused in one line."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from infra.account_check.run import CHECKS
from infra.program import PROGRAMS
from infra.stack.config import (
    PROVIDERS,
    AnyStackConfig,
    AwsStackConfig,
    ConfigError,
    OwnedStackConfig,
    StackConfig,
    declared_keys,
    load_stack_config,
)
from infra.stack.files import available_stacks, load_config

AWS_ONLY = {
    # network
    "llmfleet:vpcCidr",
    "llmfleet:natGateway",
    "llmfleet:availabilityZone",
    "llmfleet:endpointPublic",
    "llmfleet:endpointAllowedCidrs",
    "llmfleet:endpointAllowPublicCidrs",
    # ACM, Route 53, SNS
    "llmfleet:endpointCertificateArn",
    "llmfleet:endpointDnsName",
    "llmfleet:endpointHostedZoneId",
    "llmfleet:alarmTopicArn",
}


def test_the_three_tables_name_the_same_providers():
    assert set(PROVIDERS) == set(PROGRAMS) == set(CHECKS) == {"aws", "existing"}
    assert PROVIDERS["aws"] is AwsStackConfig and PROVIDERS["existing"] is OwnedStackConfig
    # the same table as a tagged union: the provider's value picks the model
    union = TypeAdapter(AnyStackConfig)
    assert type(union.validate_python({"llmfleet:provider": "aws"})) is AwsStackConfig
    with pytest.raises(ValidationError, match="does not match any of the expected tags: 'aws', 'existing'"):
        union.validate_python({"llmfleet:provider": "gcp"})


def test_an_owned_stacks_model_has_no_aws_network_acm_route53_or_sns_key():
    owned = set(declared_keys("existing"))
    assert not owned & AWS_ONLY
    assert AWS_ONLY <= set(declared_keys("aws"))
    # nor does the base every provider shares (what the planner, Serve config and cost model take)
    assert not {f.alias for f in StackConfig.model_fields.values()} & AWS_ONLY
    assert not {"llmfleet:hosts", "llmfleet:sshPrivateKey"} & set(declared_keys("aws"))


def test_every_shipped_stack_loads_into_its_providers_model():
    for stack in available_stacks():
        cfg = load_config(stack, [])
        assert type(cfg) is PROVIDERS[cfg.provider], stack
    owned = load_config("onprem-l20", [])
    assert not hasattr(owned, "vpc_cidr") and not hasattr(owned, "alarm_topic_arn")


@pytest.mark.parametrize(
    ("key", "value", "line"),
    [
        (
            "llmfleet:vpcCidr",
            "10.0.0.0/16",
            "llmfleet:vpcCidr = '10.0.0.0/16': the address range of the stack's AWS VPC; "
            "allowed with provider aws",
        ),
        (
            "llmfleet:endpointDnsName",
            "llm.example.com",
            "llmfleet:endpointDnsName = 'llm.example.com': the Route 53 alias points at the AWS load "
            "balancer; allowed with provider aws",
        ),
        (
            "llmfleet:natGateway",
            "true",
            "llmfleet:natGateway = 'true': a key of llmfleet:provider aws; allowed with provider aws",
        ),
        (  # an owned head is not an instance the stack launches: the key would do nothing
            "llmfleet:headInstanceType",
            "g6e.xlarge",
            "llmfleet:headInstanceType = 'g6e.xlarge': a key of llmfleet:provider aws; allowed with provider aws",
        ),
    ],
)
def test_an_aws_key_set_on_an_owned_stack_is_refused_in_one_line(key, value, line):
    with pytest.raises(ConfigError) as e:
        load_config("onprem-l20", [f"{key}={value}"])
    assert str(e.value) == line


def test_an_aws_key_at_its_default_is_dropped_from_an_owned_stack():
    # Pulumi.yaml declares every key with its default and the CLI hands all of them to the
    # program: those are not the user's and must not stop an owned stack
    cfg = load_config("onprem-l20", ["llmfleet:vpcCidr=10.42.0.0/16", "llmfleet:natGateway=false"])
    assert isinstance(cfg, OwnedStackConfig)


def test_hosts_on_an_aws_stack_and_an_unknown_provider_are_refused():
    with pytest.raises(ConfigError) as e:
        load_stack_config({"llmfleet:hosts": '[{"address": "10.0.0.10", "role": "head"}]'}, "dev")
    assert str(e.value) == "llmfleet:hosts = '[...]': hosts are only used with llmfleet:provider=existing"
    with pytest.raises(ConfigError) as e:
        load_stack_config({"llmfleet:provider": "gcp"}, "dev")
    assert str(e.value) == "llmfleet:provider = 'gcp': allowed: aws, existing"


@pytest.mark.parametrize(
    ("key", "value", "line"),
    [
        (  # a secret: its value is never shown, not even in the refusal
            "llmfleet:sshPrivateKey",
            "-----BEGIN OPENSSH PRIVATE KEY----- s3cr3t",
            "llmfleet:sshPrivateKey = '[secret]': the SSH key reaches hosts you own; EC2 hosts are "
            "reached over SSM; allowed with provider existing",
        ),
        (
            "llmfleet:hostHourlyUsd",
            "3.80",
            "llmfleet:hostHourlyUsd = '3.80': the price of hosts you own; EC2 hosts are priced from the "
            "catalog; allowed with provider existing",
        ),
    ],
)
def test_an_owned_host_key_set_on_an_aws_stack_is_refused_in_one_line(key, value, line):
    """The seam is one-way in neither direction: an aws stack holds no owned-host key either."""
    with pytest.raises(ConfigError) as e:
        load_stack_config({key: value}, "dev")
    assert str(e.value) == line
    with pytest.raises(ConfigError) as e:  # a shipped aws stack with the key set from the CLI
        load_config("prod", [f"{key}={value}"])
    assert str(e.value) == line and "s3cr3t" not in str(e.value)
