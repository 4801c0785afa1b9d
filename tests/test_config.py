"""The typed stack config: every bad value gives one line naming the key, the value and what is allowed."""

import json

import pytest
import yaml

from infra.constants import REPO_ROOT
from infra.stack.config import ConfigError, StackConfig, declared_keys, load_stack_config
from infra.stack.files import available_stacks, load_config
from infra.stack.resolve import resolve
from tests.host_keys import keyed

HOSTS_OK = keyed(
    {"address": "10.0.0.10", "role": "head", "gpuCount": 0},
    {"address": "10.0.0.11", "role": "worker"},
)


def hosts(*entries):
    return {
        "llmfleet:provider": "existing",
        "llmfleet:sshPrivateKey": "[secret]",
        "llmfleet:hosts": json.dumps(keyed(*entries)),
    }


BAD = [
    (
        {"llmfleet:workerCount": "abc"},
        "llmfleet:workerCount = 'abc': allowed: 'auto' or an integer from 1 to 64",
    ),
    ({"llmfleet:workerCount": "0"}, "llmfleet:workerCount = '0': allowed: 'auto' or an integer from 1 to 64"),
    (
        {"llmfleet:model": "gpt5"},
        "llmfleet:model = 'gpt5': allowed: deepseek-r1, deepseek-r1-distill-qwen-7b, "
        "deepseek-r1-distill-qwen-32b, deepseek-r1-distill-llama-70b",
    ),
    (
        {"llmfleet:quantization": "fp4"},
        "llmfleet:quantization = 'fp4': allowed: 'fp8', 'bf16', 'int8' or 'int4'",
    ),
    (
        {"llmfleet:maxModelLen": "12"},
        "llmfleet:maxModelLen = '12': allowed: 'auto' or an integer from 256 to 1,048,576",
    ),
    (
        {"llmfleet:maxModelLen": "xyz"},
        "llmfleet:maxModelLen = 'xyz': allowed: 'auto' or an integer from 256 to 1,048,576",
    ),
    (
        {"llmfleet:maxModelLen": True},
        "llmfleet:maxModelLen = true: allowed: 'auto' or an integer from 256 to 1,048,576",
    ),
    (
        {"llmfleet:targetConcurrency": "0"},
        "llmfleet:targetConcurrency = '0': allowed: a number >= 1",
    ),
    (
        {"llmfleet:maxModelLen": "200000"},
        "llmfleet:maxModelLen = 200000: allowed: up to 163840 for deepseek-r1",
    ),
    (
        {"llmfleet:gpuInstanceType": "m7i.xlarge"},
        "llmfleet:gpuInstanceType = 'm7i.xlarge': allowed: g6e.xlarge, "
        "g6e.12xlarge, g6e.48xlarge, g6.xlarge, g5.xlarge, p4d.24xlarge, p5.48xlarge, p5en.48xlarge, "
        "p4de.24xlarge, g6.48xlarge, p6-b200.48xlarge",
    ),
    (
        {"llmfleet:headInstanceType": "g6e.xlarge"},
        "llmfleet:headInstanceType = 'g6e.xlarge': the head advertises 0 "
        "GPUs, so a GPU type is wasted; allowed: m7i.xlarge, m7i.2xlarge, m7i.4xlarge",
    ),
    (
        {"llmfleet:weightsUri": "ftp://x"},
        "llmfleet:weightsUri = 'ftp://x': allowed: s3://BUCKET/PREFIX/, https://HOST/DIR/ (with a SHA256SUMS) "
        "or an absolute path (NFS)",
    ),
    (
        {"llmfleet:endpointPublic": "true"},
        "llmfleet:endpointAllowedCidrs = []: a public endpoint "
        "(llmfleet:endpointPublic=true) needs at least one allowed CIDR",
    ),
    (
        {"llmfleet:endpointAllowedCidrs": '["0.0.0.0/0"]'},
        'llmfleet:endpointAllowedCidrs = ["0.0.0.0/0"]: an internal endpoint cannot admit 0.0.0.0/0 or ::/0',
    ),
    (
        {"llmfleet:endpointAllowedCidrs": '["10.0.0.0/33"]'},
        'llmfleet:endpointAllowedCidrs = ["10.0.0.0/33"]: entry '
        "'10.0.0.0/33' is not a CIDR; allowed: CIDRs such as 203.0.113.0/24",
    ),
    (
        {"llmfleet:endpointAllowedCidrs": "not json"},
        "llmfleet:endpointAllowedCidrs = 'not json': not valid JSON; allowed: a YAML/JSON list",
    ),
    ({"llmfleet:spot": "maybe"}, "llmfleet:spot = 'maybe': allowed: true or false"),
    ({"llmfleet:maxMonthlyUsd": "-5"}, "llmfleet:maxMonthlyUsd = '-5': allowed: a number > 0"),
    (
        {"llmfleet:tags": '{"aws:x": "y"}'},
        'llmfleet:tags = {"aws:x": "y"}: tag key \'aws:x\' is reserved; allowed: '
        "keys not starting with aws: or llmfleet:",
    ),
    ({"aws:region": "mars-1"}, "aws:region = 'mars-1': allowed: an AWS region name such as us-east-1"),
    (
        {"aws:region": "us-nowhere-9"},
        "aws:region = 'us-nowhere-9': not a region in botocore's region data; allowed: an AWS region "
        "such as us-east-1, us-west-2 or eu-west-1 (aws ec2 describe-regions lists your account's)",
    ),
    (
        {"llmfleet:endpointAllowedCidrs": '["10.0.0.0/8", "::/0"]'},
        'llmfleet:endpointAllowedCidrs = ["10.0.0.0/8", "::/0"]: an internal endpoint cannot admit 0.0.0.0/0 or ::/0',
    ),
    (
        {"llmfleet:endpointCertificateArn": "arn:aws:iam::123456789012:server-certificate/x"},
        "llmfleet:endpointCertificateArn = 'arn:aws:iam::123456789012:server-certificate/x': allowed: an ACM "
        "certificate ARN such as arn:aws:acm:us-east-1:123456789012:certificate/<uuid>",
    ),
    (
        {
            "llmfleet:endpointCertificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/12345678-1234-1234-1234-123456789012"
        },
        "llmfleet:endpointCertificateArn = 'arn:aws:acm:eu-west-1:123456789012:certificate/"
        "12345678-1234-1234-1234-123456789012': the NLB takes a certificate from its own region; allowed: "
        "an ACM certificate in us-east-1",
    ),
    *[
        (
            {"llmfleet:alarmTopicArn": arn},
            f"llmfleet:alarmTopicArn = {arn!r}: allowed: a standard SNS topic ARN such as "
            "arn:aws:sns:us-east-1:123456789012:llmfleet-alarms",
        )
        for arn in (
            "llmfleet-alarms",  # a topic name, not its ARN
            "arn:aws:sqs:us-east-1:123456789012:llmfleet-alarms",  # another service
            "arn:aws:sns:us-east-1:12345:llmfleet-alarms",  # not a 12-digit account
            "arn:aws:sns:us-east-1:123456789012:",  # no topic name
            "arn:aws:sns:us-east-1:123456789012:llmfleet alarms",  # a character SNS does not allow
            "arn:aws:sns:us-east-1:123456789012:llmfleet-alarms.fifo",  # FIFO: SQS subscribers only
            "arn:aws:sns:us-east-1:123456789012:llmfleet-alarms:0b2c7d1e-sub",  # a subscription
        )
    ],
    (
        {"llmfleet:alarmTopicArn": "arn:aws:sns:eu-west-1:123456789012:llmfleet-alarms"},
        "llmfleet:alarmTopicArn = 'arn:aws:sns:eu-west-1:123456789012:llmfleet-alarms': a CloudWatch "
        "alarm notifies a topic in its own region; allowed: an SNS topic in us-east-1",
    ),
    (
        {"llmfleet:endpointDnsName": "llm.example.com"},
        "llmfleet:endpointHostedZoneId = (unset): the alias record needs both; allowed: set "
        "llmfleet:endpointDnsName and llmfleet:endpointHostedZoneId together",
    ),
    (
        {"llmfleet:endpointDnsName": "LLM_x", "llmfleet:endpointHostedZoneId": "Z123"},
        "llmfleet:endpointDnsName = 'LLM_x': allowed: a lower-case DNS name such as llm.example.com",
    ),
    (
        {"llmfleet:availabilityZone": "eu-west-1a"},
        "llmfleet:availabilityZone = 'eu-west-1a': allowed: a zone of "
        "aws:region us-east-1 such as us-east-1a",
    ),
    (
        {"llmfleet:gpuInstanceType": "p4d.24xlarge", "llmfleet:quantization": "fp8"},
        "llmfleet:quantization = 'fp8': A100-40GB has no native FP8; allowed here: bf16, int8, int4",
    ),
    (
        {"llmfleet:vpcCidr": "8.8.0.0/16"},
        "llmfleet:vpcCidr = '8.8.0.0/16': allowed: a private IPv4 CIDR from /16 to /20, such as 10.42.0.0/16",
    ),
    (
        {"llmfleet:gpuMemoryUtilization": "1.5"},
        "llmfleet:gpuMemoryUtilization = '1.5': allowed: a number <= 0.98",
    ),
    (
        {"llmfleet:capacityReservationId": "res-1"},
        "llmfleet:capacityReservationId = 'res-1': allowed: a capacity "
        "reservation id such as cr-0123456789abcdef0",
    ),
    (
        {"llmfleet:hosts": json.dumps(HOSTS_OK)},
        "llmfleet:hosts = '[...]': hosts are only used with llmfleet:provider=existing",
    ),
    (
        hosts({"address": "a", "role": "worker"}),
        "llmfleet:hosts = '[...]': no entry has role 'head'; allowed: exactly one head",
    ),
    (
        hosts({"address": "a", "role": "head"}, {"address": "b", "role": "head"}),
        "llmfleet:hosts[1] = 'b': second head (entry 0 is the head); allowed: exactly one head",
    ),
    (
        hosts({"address": "a", "role": "head"}, {"address": "a", "role": "worker"}),
        "llmfleet:hosts[1].address = 'a': duplicates entry 0; allowed: one entry per host",
    ),
    (
        hosts({"address": "a", "role": "head"}, {"address": "b", "role": "worker", "gpuCount": 0}),
        "llmfleet:hosts[1].gpuCount = 0: worker b has no GPUs; allowed: an integer >= 1",
    ),
    (
        hosts({"address": "a", "role": "head"}, {"address": "b", "role": "worker", "gpuModel": "X9"}),
        "llmfleet:hosts[1].gpuModel = 'X9': allowed: L20, L40S, L4, A10G, H20, A100-40GB, A100-80GB, H100, H200, B200",
    ),
    (hosts({"address": "a", "role": "boss"}), "llmfleet:hosts[0].role = 'boss': allowed: 'head' or 'worker'"),
    (
        {"llmfleet:provider": "existing", "llmfleet:hosts": json.dumps(HOSTS_OK)},
        "llmfleet:sshPrivateKey = (unset): "
        "provider 'existing' needs an SSH key: pulumi config set --secret sshPrivateKey < key",
    ),
]


@pytest.mark.parametrize("raw,message", BAD, ids=[m.split(" ")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_config_is_one_line(raw, message):
    with pytest.raises(ConfigError) as e:
        load_stack_config(raw, "t")
    assert str(e.value) == message
    assert "\n" not in str(e.value)


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(
        ConfigError, match=r"^llmfleet:workercount = '2': unknown key; did you mean llmfleet:workerCount\?$"
    ):
        load_stack_config({"llmfleet:workercount": "2"})
    with pytest.raises(
        ConfigError, match=r"^llmfleet:nope = 'x': unknown key; allowed keys: llmfleet:provider"
    ):
        load_stack_config({"llmfleet:nope": "x"})


def test_secret_values_never_appear_in_errors():
    raw = {
        "llmfleet:provider": "existing",
        "llmfleet:hosts": json.dumps(HOSTS_OK),
        "llmfleet:sshPrivateKey": ["-----BEGIN OPENSSH PRIVATE KEY----- s3cr3t"],  # wrong type: rejected
    }
    with pytest.raises(ConfigError) as e:
        load_stack_config(raw)
    assert str(e.value) == "llmfleet:sshPrivateKey = '[secret]': allowed: input should be a valid string"
    assert "s3cr3t" not in str(e.value)


def test_defaults_and_derived_values():
    cfg = load_stack_config({}, "prod")
    assert cfg.worker_count == "auto" and resolve(cfg).workers == 3
    assert cfg.gpu_model == "L40S" and cfg.gpus_per_worker == 8
    assert cfg.effective_quantization == "fp8"
    assert cfg.common_tags == {"Project": "llmfleet", "llmfleet:stack": "prod"}
    # Pulumi.yaml's "" and 0 defaults mean unset.
    cfg = load_stack_config(
        {"llmfleet:availabilityZone": "", "llmfleet:maxMonthlyUsd": "0", "llmfleet:quantization": ""}
    )
    assert cfg.availability_zone is None and cfg.max_monthly_usd is None and cfg.quantization is None


def test_alarm_topic_in_the_stacks_region_is_accepted():
    assert load_stack_config({}).alarm_topic_arn is None
    assert load_stack_config({"llmfleet:alarmTopicArn": ""}).alarm_topic_arn is None  # Pulumi.yaml's default
    for region, arn in (
        ("us-east-1", "arn:aws:sns:us-east-1:123456789012:llmfleet-alarms"),
        ("eu-west-1", "arn:aws:sns:eu-west-1:123456789012:Pager_Duty-1"),
    ):
        cfg = load_stack_config({"aws:region": region, "llmfleet:alarmTopicArn": arn})
        assert cfg.alarm_topic_arn == arn


def test_existing_hosts_mode_uses_declared_gpus():
    raw = hosts(
        *HOSTS_OK,
        {"address": "10.0.0.12", "role": "worker", "gpuModel": "L20", "gpuCount": 8},
        {"address": "10.0.0.13", "role": "worker"},
    )
    cfg = load_stack_config(raw)
    assert cfg.gpu_model == "L20" and cfg.gpus_per_worker == 8 and resolve(cfg).workers == 3
    assert resolve(cfg).plan.fits and resolve(cfg).plan.pipeline_parallel_size == 3


def test_pulumi_yaml_declares_every_key_with_the_model_defaults():
    proj = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())
    assert proj["name"] == "llmfleet" and proj["stackConfigDir"] == "stacks"
    declared = proj["config"]
    fields = {k.split(":", 1)[1]: f for k, f in declared_keys().items() if k.startswith("llmfleet:")}
    # Pulumi's project schema has no object type: these are documented in comments instead.
    assert set(fields) - set(declared) == {"tags", "hosts", "engineArgs", "serveOptions"}
    assert set(declared) <= set(fields)
    for key, decl in declared.items():
        assert decl["type"] in ("string", "integer", "boolean", "array"), key
        assert decl.get("description"), key
        assert "default" in decl, f"{key}: a declared key without a default is required by Pulumi"
        parsed = load_stack_config(
            {
                f"llmfleet:{key}": decl["default"]
                if not isinstance(decl["default"], list)
                else json.dumps(decl["default"])
            }
        )
        assert getattr(parsed, _attr(key)) == getattr(StackConfig(), _attr(key)), key


def _attr(key):
    return next(n for n, f in StackConfig.model_fields.items() if f.alias == f"llmfleet:{key}")


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_shipped_stacks_are_valid(stack):
    assert stack in available_stacks()
    cfg = load_config(stack)
    assert resolve(cfg).plan.fits, resolve(cfg).plan.reason


WEIGHTS_PATH_ALLOWED = (
    "allowed: an absolute path of components made of letters, digits, '.', '_' and '-' (no '..', '.', "
    "'//' or spaces), not / nor a system directory (/etc, /usr, /boot, /var/lib/docker, ...)"
)


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        # host bits set: parsed strictly, never widened to the network silently
        (
            "llmfleet:endpointAllowedCidrs",
            '["10.0.0.1/8"]',
            "entry '10.0.0.1/8' is not a CIDR; allowed: CIDRs such as 203.0.113.0/24",
        ),
        ("llmfleet:vpcCidr", "10.42.0.1/16", "allowed: an IPv4 CIDR from /16 to /20, such as 10.42.0.0/16"),
        (
            "llmfleet:vpcCidr",
            "10.0.0.0/15",
            "allowed: a private IPv4 CIDR from /16 to /20, such as 10.42.0.0/16",
        ),
        (
            "llmfleet:vpcCidr",
            "10.42.0.0/21",
            "allowed: a private IPv4 CIDR from /16 to /20, such as 10.42.0.0/16",
        ),
        (
            "llmfleet:vpcCidr",
            "fd00::/16",
            "allowed: a private IPv4 CIDR from /16 to /20, such as 10.42.0.0/16",
        ),
        # the same path on every host, whatever a host's working directory
        ("llmfleet:weightsPath", "opt/models", WEIGHTS_PATH_ALLOWED),
        ("llmfleet:weightsPath", "/opt/my models", WEIGHTS_PATH_ALLOWED),
    ],
)
def test_cidrs_are_strict_and_the_weights_path_absolute(key, value, allowed):
    with pytest.raises(ConfigError) as e:
        load_stack_config({key: value}, "t")
    msg = str(e.value)
    assert msg.startswith(f"{key} = ") and value in msg and msg.endswith(f": {allowed}")


def test_weights_path_and_cidrs_that_are_allowed():
    cfg = load_stack_config(
        {
            "llmfleet:weightsPath": "/data/BOX/",  # only the trailing slash goes
            "llmfleet:vpcCidr": "172.16.0.0/20",
            # private IPv4 and IPv6 (ULA) ranges: an internal endpoint admits only private sources
            "llmfleet:endpointAllowedCidrs": '["10.1.0.0/16", "fd12:3456::/32"]',
        },
        "t",
    )
    assert cfg.weights_path == "/data/BOX" and cfg.vpc_cidr == "172.16.0.0/20"
    assert cfg.endpoint_allowed_cidrs == ["10.1.0.0/16", "fd12:3456::/32"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("llmfleet:baseImage", "vllm/vllm-openai:v0.29.0@sha256:" + "a" * 64),
        ("llmfleet:availabilityZone", "us-east-1a"),
        ("llmfleet:capacityReservationId", "cr-0123456789abcdef0"),
        ("llmfleet:endpointHostedZoneId", "Z0123456789ABCDEFGHIJ"),
    ],
)
def test_a_trailing_newline_is_not_part_of_a_valid_value(key, value):
    """The rules match whole values: a pattern's `$` alone also matches before a final newline."""
    with pytest.raises(ConfigError) as e:
        load_stack_config({key: value + "\n"}, "t")
    assert str(e.value).startswith(f"{key} = ") and "\n" not in str(e.value)
