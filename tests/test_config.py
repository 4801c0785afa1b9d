"""The typed stack config: every bad value gives one line naming the key, the value and what is allowed."""

import json
import re

import pytest
import yaml

from infra.catalog import load_catalog
from infra.constants import REPO_ROOT
from infra.stack.config import (
    PROVIDERS,
    ConfigError,
    _is_default,
    declared_keys,
    load_stack_config,
)
from infra.stack.files import available_stacks, load_config
from infra.stack.host_spec import HOST_KEY_ALLOWED
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
    # the key's range ends (256, 1,048,576) pass the key's own check; the model's limit decides next
    (
        {"llmfleet:maxModelLen": "1048576"},
        "llmfleet:maxModelLen = 1048576: allowed: up to 163840 for deepseek-r1",
    ),
    (
        {"llmfleet:maxModelLen": "255"},
        "llmfleet:maxModelLen = '255': allowed: 'auto' or an integer from 256 to 1,048,576",
    ),
    (
        {"llmfleet:maxModelLen": "1048577"},
        "llmfleet:maxModelLen = '1048577': allowed: 'auto' or an integer from 256 to 1,048,576",
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


# One set for every entry point that takes a --stack (infra/stack/names.py is the one definition).
STACK_NAMES_OK = ["dev", "prod", "a", "prod-eu.2", "_x", "-x", "a" * 100]
STACK_REFS_OK = ["myorg/dev", "my-org/llmfleet/prod.eu", "o_1/llmfleet/" + "a" * 100]
STACK_NAMES_BAD = [
    "",
    ".",
    "..",
    ".hidden",
    "dev\n",
    "prod dev",
    "x$(id)",
    "a\nb",
    "..\\x",
    "a" * 101,
    "dév",
    "a:b",
    "a\\b",
]
STACK_REFS_BAD = ["../../etc/passwd", "dev/", "/dev", "org//dev", "a/b/c/d", "org/../dev", "org/" + "a" * 101]


def test_a_stack_name_is_checked_the_same_way_everywhere_before_it_becomes_a_path():
    """The name lands in stacks/Pulumi.<name>.yaml, resource names, SSM paths and the hosts'
    scripts: the stack file lookup, the config model, `llmfleet init` and the Automation API's
    arguments accept and refuse the same names (ORG/NAME and ORG/PROJECT/NAME where a CLI takes them)."""
    from infra import deploy
    from infra.stack.files import stack_name
    from infra.stack.names import STACK_NAME_ALLOWED, STACK_NAME_RE, STACK_REF_RE

    def cfg_refuses(name: str) -> bool:
        try:
            load_stack_config({}, name)
        except ConfigError as e:
            if str(e).startswith("--stack"):
                assert str(e) == f"--stack {name!r}: allowed: {STACK_NAME_ALLOWED}"
                return True
        return False

    def deploy_refuses(name: str) -> bool:
        try:
            deploy.build_stack_args(name)
        except deploy.DeployError as e:
            assert str(e).startswith(
                f"--stack {name!r}: not a stack name; allowed: NAME, ORG/NAME"
            ) and "\n" not in str(e)
            return True
        return False

    for name in STACK_NAMES_OK + STACK_REFS_OK:
        assert stack_name(name) == name.rsplit("/", 1)[-1], name
        assert not deploy_refuses(name), name
    for name in STACK_NAMES_OK:
        assert STACK_NAME_RE.fullmatch(name) and not cfg_refuses(name), name
    for name in STACK_REFS_OK:  # a qualified name is a CLI form; the model takes the short name
        assert not STACK_NAME_RE.fullmatch(name) and cfg_refuses(name), name
    for name in STACK_NAMES_BAD + STACK_REFS_BAD:
        assert not STACK_NAME_RE.fullmatch(name) and not STACK_REF_RE.fullmatch(name), name
        with pytest.raises(
            ConfigError, match=rf"^--stack {re.escape(repr(name))}: not a stack name; allowed: "
        ):
            stack_name(name)
        assert cfg_refuses(name) and deploy_refuses(name), name


def test_cross_key_rules_for_lora_adapters_in_full():
    """config_rules.check_lora: the model must take adapters (the catalog's reason in the line),
    and the adapters may not sit inside the weights prefix the hosts stage and verify."""
    from infra.stack import lora

    r1 = {"llmfleet:model": "deepseek-r1", "llmfleet:lora": {"adapters": "s3://llmfleet-adapters-test/dev/"}}
    with pytest.raises(ConfigError) as e:
        load_stack_config(r1, "t")
    assert str(e.value) == (
        "llmfleet:model = 'deepseek-r1': cannot take LoRA adapters (llmfleet:lora is set): "
        f"{load_catalog().models['deepseek-r1'].lora.reason}; allowed: {', '.join(lora.supported_models())}"
    )
    qwen = {
        "llmfleet:model": "deepseek-r1-distill-qwen-7b",
        "llmfleet:weightsUri": "s3://llmfleet-weights-test/qwen",
    }
    inside = "which the hosts stage and verify as one checkpoint; allowed: an s3:// prefix outside it"
    for adapters in ("s3://llmfleet-weights-test/qwen/adapters", "s3://llmfleet-weights-test/qwen/"):
        with pytest.raises(ConfigError) as e:
            load_stack_config({**qwen, "llmfleet:lora": {"adapters": adapters}}, "t")
        assert str(e.value) == (
            f"llmfleet:lora.adapters = {adapters.rstrip('/') + '/'!r}: is inside llmfleet:weightsUri "
            f"'s3://llmfleet-weights-test/qwen/', {inside}"
        )
    beside = {**qwen, "llmfleet:lora": {"adapters": "s3://llmfleet-weights-test/qwen2/"}}
    assert load_stack_config(beside, "t").lora.adapters == "s3://llmfleet-weights-test/qwen2/"
    nfs = {
        **beside,
        "llmfleet:weightsUri": "/opt/qwen",
        "llmfleet:lora": {"adapters": "s3://llmfleet-weights-test/"},
    }
    assert load_stack_config(nfs, "t").lora.adapters == "s3://llmfleet-weights-test/"
    assert load_stack_config({"llmfleet:model": "deepseek-r1"}, "t").lora is None  # unset: no refusal


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "llmfleet:schedule=mon-fri 08:00-20:00 Europe/Berlin",
            "llmfleet:schedule = 'mon-fri 08:00-20:00 Europe/Berlin': it scales the workers' Auto Scaling "
            "groups; allowed with provider aws",
        ),
        (
            "llmfleet:idleStopMinutes=30",
            "llmfleet:idleStopMinutes = 30: it scales the workers' Auto Scaling groups; allowed with provider aws",
        ),
    ],
)
def test_scale_to_zero_keys_on_owned_hosts_are_refused_in_full(override, message):
    """config_rules.check_scale_to_zero: hosts you own have no Auto Scaling group to scale."""
    with pytest.raises(ConfigError) as e:
        load_config("onprem-l20", [override])
    assert str(e.value) == message
    load_config("prod", [override])  # the same key on AWS: fine


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
    assert set(fields) - set(declared) == {"tags", "hosts", "engineArgs", "serveOptions", "lora"}
    assert set(declared) <= set(fields)
    for key, decl in declared.items():
        assert decl["type"] in ("string", "integer", "boolean", "array"), key
        assert decl.get("description"), key
        assert "default" in decl, f"{key}: a declared key without a default is required by Pulumi"
        full = f"llmfleet:{key}"
        value = decl["default"] if not isinstance(decl["default"], list) else json.dumps(decl["default"])
        field = declared_keys()[full]
        if full in declared_keys("aws"):
            parsed = load_stack_config({full: value})
            assert getattr(parsed, _attr(key)) == field.get_default(call_default_factory=True), key
        else:  # a key of owned hosts only: their model needs hosts to load, so the key alone
            assert _is_default(full, value), key


def _attr(key):
    return next(
        n for m in PROVIDERS.values() for n, f in m.model_fields.items() if f.alias == f"llmfleet:{key}"
    )


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


# --- single-key rules, value by value (the mutation run of config_values.py found these unasserted) ---


def _refusal(key, value):
    with pytest.raises(ConfigError) as e:
        load_stack_config({key: value}, "t")
    return str(e.value)


S3_ALLOWED = (
    "allowed: s3://BUCKET/PREFIX/ where BUCKET follows AWS's naming rules (3-63 lower-case letters, digits, "
    "'.', '-'; no '..', not an IP, no xn-- prefix or -s3alias suffix) and PREFIX is components of "
    "letters, digits, '.', '_', '-' (PREFIX/ at most 1024 bytes, AWS's key limit)"
)


@pytest.mark.parametrize(
    ("uri", "normalised"),
    [
        ("s3://my-bucket.v2/models/deepseek-r1", "s3://my-bucket.v2/models/deepseek-r1/"),
        ("s3://abc/r1/", "s3://abc/r1/"),
        ("s3://abc", "s3://abc/"),  # the whole bucket
        ("s3://" + "a" * 63 + "/m_1/", "s3://" + "a" * 63 + "/m_1/"),
        ("s3://abc/" + "a/" * 511 + "b", "s3://abc/" + "a/" * 511 + "b/"),  # PREFIX/ of 1024 bytes
        ("s3://abc/" + "a" * 1023 + "/", "s3://abc/" + "a" * 1023 + "/"),
    ],
)
def test_s3_weights_uris_that_are_allowed(uri, normalised):
    assert load_stack_config({"llmfleet:weightsUri": uri}, "t").weights_uri == normalised


@pytest.mark.parametrize(
    "uri",
    [
        "s3://ab/r1/",  # 2 characters
        "s3://" + "a" * 64 + "/r1/",  # 64 characters
        "s3://My-Bucket/r1/",  # upper case
        "s3://-abc/r1/",  # not a letter or digit at an end
        "s3://a..b/r1/",
        "s3://192.168.1.10/r1/",  # an IP address
        *(f"s3://{p}bucket/r1/" for p in ("xn--", "sthree-", "amzn-s3-demo-")),
        *(f"s3://bucket{s}/r1/" for s in ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")),
        "s3://bucket/a/../b/",
        "s3://bucket/a//b/",
        "s3://bucket/a b/",
        "s3://bucket/r1/;id/",
        "s3://abc/" + "a" * 1024 + "/",  # PREFIX/ of 1025 bytes: past AWS's key limit
        "s3://abc/" + "a/" * 512 + "b",
    ],
)
def test_s3_uris_that_are_refused_for_weights_and_for_lora_adapters(uri):
    """llmfleet:weightsUri and llmfleet:lora.adapters are one S3 check (config_values.s3_uri)."""
    assert _refusal("llmfleet:weightsUri", uri) == f"llmfleet:weightsUri = {uri!r}: {S3_ALLOWED}"
    # a model the catalog lets take adapters
    lora = {"llmfleet:model": "deepseek-r1-distill-qwen-7b", "llmfleet:lora": {"adapters": uri}}
    with pytest.raises(ConfigError) as e:
        load_stack_config(lora, "t")
    assert str(e.value) == f"llmfleet:lora.adapters = {uri!r}: {S3_ALLOWED}"


def test_s3_uri_needs_its_scheme():
    from infra.stack.config_values import s3_uri

    assert s3_uri("s3://bucket/r1") == "s3://bucket/r1/"
    for v in ("bucket/r1/", "S3://bucket/r1/", "xs3://bucket/r1/"):
        with pytest.raises(ValueError, match=r"^allowed: s3://BUCKET/PREFIX/"):
            s3_uri(v)


@pytest.mark.parametrize(
    ("uri", "kept"),
    [
        ("https://models.example.com/r1/", "https://models.example.com/r1/"),
        ("https://models.example.com:8443/a/b_c/", "https://models.example.com:8443/a/b_c/"),
        ("https://models.example.com:65535/r1/", "https://models.example.com:65535/r1/"),
        ("https://models.example.com:1/r1/", "https://models.example.com:1/r1/"),
        ("https://models.example.com", "https://models.example.com"),
        ("https://models.example.com/", "https://models.example.com/"),
        ("https://models.example.com/X/", "https://models.example.com/X/"),
        ("file:///mnt/nfs/r1/", "file:///mnt/nfs/r1"),  # the NFS mount, one trailing '/' dropped
        ("/mnt/nfs/r1", "/mnt/nfs/r1"),
        ("", None),  # Pulumi.yaml's default: unset
    ],
)
def test_other_weights_uris_that_are_allowed(uri, kept):
    assert load_stack_config({"llmfleet:weightsUri": uri}, "t").weights_uri == kept


HTTPS_ALLOWED = "allowed: https://HOST[:PORT]/DIR/ of letters, digits, '.', '_', '-' (no query), PORT 1-65535"
URI_ALLOWED = "allowed: s3://BUCKET/PREFIX/, https://HOST/DIR/ (with a SHA256SUMS) or an absolute path (NFS)"


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        (
            "http://models.example.com/r1/",
            "plain http lets anyone on the path swap the weights and their SHA256SUMS; " + URI_ALLOWED,
        ),
        ("https://models.example.com/r1/?x=1", HTTPS_ALLOWED),
        ("https://models.example.com/a/../b/", HTTPS_ALLOWED),
        ("https://models.example.com/a b/", HTTPS_ALLOWED),
        ("https://-models.example.com/r1/", HTTPS_ALLOWED),
        ("https://models.example.com:843100/r1/", HTTPS_ALLOWED),
        ("https://models.example.com:65536/r1/", HTTPS_ALLOWED),  # 5 digits, past the last port
        ("https://models.example.com:0/r1/", HTTPS_ALLOWED),
        (
            "file:///etc/r1",
            "an NFS path: /etc/r1 is or is inside a system directory; " + WEIGHTS_PATH_ALLOWED,
        ),
        ("file:///mnt/../etc", "an NFS path: " + WEIGHTS_PATH_ALLOWED),
        ("/home", "an NFS path: /home is or is inside a system directory; " + WEIGHTS_PATH_ALLOWED),
        ("file://server/r1", URI_ALLOWED),  # a host in a file URI: not a local mount
        ("models/r1", URI_ALLOWED),
    ],
)
def test_other_weights_uris_that_are_refused(uri, allowed):
    assert _refusal("llmfleet:weightsUri", uri) == f"llmfleet:weightsUri = {uri!r}: {allowed}"


REPOSITORY_ALLOWED = (
    "allowed: a Docker repository such as registry.example:5000/llmfleet/node (PORT 1-65535), "
    "or REPO@sha256:<64 hex>"
)
IMAGE_ALLOWED = "allowed: an image pinned by digest, REPO:TAG@sha256:<64 hex> or REPO@sha256:<64 hex> (a registry PORT 1-65535)"
PORTS_ALLOWED = (
    "allowed: a port from 1 to 65535 other than 22, 6379, 8076, 8077, 8265, 9090, 9100, 9400, 10001, 52365, 52366, "
    "52367, 52368 and 10002-19999 (Ray's worker ports), e.g. 8000"
)
TAG_RULES = "breaks AWS's tag rules; allowed: keys of 1-128 and values of 0-256 letters, digits, spaces and _ . : / = + - @"
WORKERS_ALLOWED = "allowed: 'auto' or an integer from 1 to 64"
PARTITION = (
    "whose ARNs the stack does not build (it builds arn:aws:...); allowed: a region of the aws partition "
    "such as us-east-1, us-west-2 or eu-west-1"
)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("aws:region", "cn-north-1", f"a region of partition aws-cn, {PARTITION}"),
        ("aws:region", "us-gov-west-1", f"a region of partition aws-us-gov, {PARTITION}"),
        ("aws:region", "US-EAST-1", "allowed: an AWS region name such as us-east-1"),
        (
            "llmfleet:availabilityZone",
            "us-east-1",
            "allowed: an availability zone name such as us-east-1a, or unset for auto",
        ),
        (
            "llmfleet:model",
            "deepseek-r2",
            "did you mean deepseek-r1? allowed: deepseek-r1, deepseek-r1-distill-qwen-7b, "
            "deepseek-r1-distill-qwen-32b, deepseek-r1-distill-llama-70b",
        ),
        (
            "llmfleet:headInstanceType",
            "t9.nano",
            # every catalog instance type, in the catalog's order
            "allowed: " + ", ".join(load_catalog().instances),
        ),
        ("llmfleet:workerCount", "65", WORKERS_ALLOWED),
        ("llmfleet:workerCount", "-1", WORKERS_ALLOWED),
        ("llmfleet:workerCount", "1.5", WORKERS_ALLOWED),
        ("llmfleet:workerCount", "autos", WORKERS_ALLOWED),
        ("llmfleet:endpointPort", "22", f"port 22 is SSH's on the head; {PORTS_ALLOWED}"),
        ("llmfleet:endpointPort", "6379", f"port 6379 is the Ray GCS's on the head; {PORTS_ALLOWED}"),
        ("llmfleet:endpointPort", "8265", f"port 8265 is the Ray dashboard's on the head; {PORTS_ALLOWED}"),
        ("llmfleet:endpointPort", "8077", f"port 8077 is a Ray node port's on the head; {PORTS_ALLOWED}"),
        ("llmfleet:endpointPort", "9100", f"port 9100 is node exporter's on the head; {PORTS_ALLOWED}"),
        ("llmfleet:endpointPort", "10002", f"port 10002 is a Ray worker port's on the head; {PORTS_ALLOWED}"),
        ("llmfleet:endpointPort", "19999", f"port 19999 is a Ray worker port's on the head; {PORTS_ALLOWED}"),
        (
            "llmfleet:imageRegistry",
            "Registry/Repo",
            REPOSITORY_ALLOWED,
        ),
        (
            "llmfleet:imageRegistry",
            "r.example/" + "a" * 246,  # 256 characters
            REPOSITORY_ALLOWED,
        ),
        # a registry port is 1-65535, as the https weights URL's (docker would refuse it only at boot)
        ("llmfleet:imageRegistry", "registry.example:0/llmfleet/node", REPOSITORY_ALLOWED),
        ("llmfleet:imageRegistry", "registry.example:65536/llmfleet/node", REPOSITORY_ALLOWED),
        ("llmfleet:imageRegistry", "registry.example:123456/llmfleet/node", REPOSITORY_ALLOWED),
        ("llmfleet:baseImage", f"registry.example:65536/vllm@sha256:{'a' * 64}", IMAGE_ALLOWED),
        ("llmfleet:baseImage", f"registry.example:0/vllm:v1@sha256:{'a' * 64}", IMAGE_ALLOWED),
        ("llmfleet:vpcCidr", "nope", "allowed: an IPv4 CIDR from /16 to /20, such as 10.42.0.0/16"),
        (
            "llmfleet:vpcCidr",
            "100.64.0.0/16",
            "allowed: a private IPv4 CIDR from /16 to /20, such as 10.42.0.0/16",
        ),
        (
            "llmfleet:tags",
            '{"llmfleet:stack": "x"}',
            "tag key 'llmfleet:stack' is reserved; allowed: keys not starting with aws: or llmfleet:",
        ),
        ("llmfleet:tags", '{"Team": "a;b"}', f"tag 'Team': 'a;b' {TAG_RULES}"),
        ("llmfleet:tags", '{"k;": "v"}', f"tag 'k;': 'v' {TAG_RULES}"),
        ("llmfleet:tags", '{"": "v"}', f"tag '': 'v' {TAG_RULES}"),
        ("llmfleet:tags", json.dumps({"k" * 129: "v"}), f"tag {'k' * 129!r}: 'v' {TAG_RULES}"),
        ("llmfleet:tags", json.dumps({"k": "v" * 257}), f"tag 'k': {'v' * 257!r} {TAG_RULES}"),
        (
            "llmfleet:logRetentionDays",
            "2",
            "allowed: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, "
            "2557, 2922, 3288, 3653 (CloudWatch's values)",
        ),
        (
            "llmfleet:capacityBlockId",
            "cr-x",
            "allowed: the Capacity Block's capacity reservation id such as cr-0123456789abcdef0 "
            "(aws ec2 describe-capacity-reservations --filters Name=reservation-type,Values=capacity-block)",
        ),
        (
            "llmfleet:capacityReservationId",
            "cr-0123456789abcdef0a",  # 18 hex digits
            "allowed: a capacity reservation id such as cr-0123456789abcdef0",
        ),
        (
            "llmfleet:endpointDnsName",
            "LLM.example.com",
            "allowed: a lower-case DNS name such as llm.example.com",
        ),
        (
            "llmfleet:endpointDnsName",
            "llm.example.comX.",  # only the root's '.' is dropped before the check
            "allowed: a lower-case DNS name such as llm.example.com",
        ),
        (
            "llmfleet:endpointHostedZoneId",
            "z1",
            "allowed: a Route 53 hosted zone id such as Z0123456789ABCDEFGHIJ",
        ),
        (
            "llmfleet:baseImage",
            "vllm/vllm-openai:v0.29.0",  # a tag alone moves
            IMAGE_ALLOWED,
        ),
        ("llmfleet:weightsPath", "/", WEIGHTS_PATH_ALLOWED),
        ("llmfleet:weightsPath", "//m", WEIGHTS_PATH_ALLOWED),
        ("llmfleet:weightsPath", "/a/./b", WEIGHTS_PATH_ALLOWED),
        ("llmfleet:weightsPath", "/a/../b", WEIGHTS_PATH_ALLOWED),
        ("llmfleet:weightsPath", "/.m", WEIGHTS_PATH_ALLOWED),
        ("llmfleet:weightsPath", "/m;id", WEIGHTS_PATH_ALLOWED),
        *(
            (
                "llmfleet:weightsPath",
                p,
                f"{p.rstrip('/')} is or is inside a system directory; {WEIGHTS_PATH_ALLOWED}",
            )
            for p in ("/data/", "/home", "/etc", "/etc/m", "/var/lib/docker/m", "/usr/share/m")
        ),
        (
            "llmfleet:schedule",
            ' ["mon-fri 08:00-12:00 UTC"',
            "not a valid list; allowed: a YAML list of windows or text with ';'",
        ),
        (
            "llmfleet:schedule",
            5,  # a YAML number: neither text nor a list
            "allowed: text such as 'mon-fri 08:00-20:00 Europe/Berlin' or a list of such windows",
        ),
        *(
            ("llmfleet:idleStopMinutes", v, "allowed: 0 or unset (never), or minutes from 10 to 1440")
            for v in (2.5, "abc", "9", "1441")
        ),
        # ray_cluster.schedule's own line, passed on as it is
        (
            "llmfleet:schedule",
            "mon 25:00-26:00 UTC",
            "time '25:00': allowed: HH:MM from 00:00 to 23:59 (24:00 as a closing)",
        ),
    ],
)
def test_each_single_key_rule_refuses_with_what_is_allowed(key, value, message):
    shown = value if key == "llmfleet:tags" else repr(value)  # a mapping is shown as its JSON
    assert _refusal(key, value) == f"{key} = {shown}: {message}"


SAME = object()


@pytest.mark.parametrize(
    ("key", "value", "attr", "parsed"),
    [
        ("aws:region", "eu-west-1", "region", "eu-west-1"),
        ("llmfleet:availabilityZone", "us-east-1a", "availability_zone", "us-east-1a"),
        ("llmfleet:model", "DeepSeek-R1", "model", "deepseek-r1"),  # the catalog's spelling
        ("llmfleet:gpuInstanceType", "g6e.xlarge", "gpu_instance_type", "g6e.xlarge"),
        ("llmfleet:headInstanceType", "m7i.xlarge", "head_instance_type", "m7i.xlarge"),
        ("llmfleet:workerCount", " AUTO ", "worker_count", "auto"),
        ("llmfleet:workerCount", " 3 ", "worker_count", 3),
        ("llmfleet:workerCount", "1", "worker_count", 1),
        ("llmfleet:workerCount", "64", "worker_count", 64),
        ("llmfleet:workerCount", 2, "worker_count", 2),  # a YAML integer, not text
        ("llmfleet:maxMonthlyUsd", " 0 ", "max_monthly_usd", None),  # 0 means no budget
        ("llmfleet:maxMonthlyUsd", "", "max_monthly_usd", None),
        ("llmfleet:maxMonthlyUsd", "0.5", "max_monthly_usd", 0.5),
        ("llmfleet:imageRegistry", "", "image_registry", None),
        ("llmfleet:capacityReservationId", "", "capacity_reservation_id", None),
        ("llmfleet:endpointPort", "20000", "endpoint_port", 20000),
        ("llmfleet:endpointPort", "10000", "endpoint_port", 10000),
        ("llmfleet:imageRegistry", "registry.example:5000/llmfleet/node", "image_registry", SAME),
        ("llmfleet:imageRegistry", "r.example/" + "a" * 245, "image_registry", SAME),  # 255: the longest
        ("llmfleet:imageRegistry", "registry.example:65535/llmfleet/node", "image_registry", SAME),
        ("llmfleet:imageRegistry", "registry.example:1/llmfleet/node", "image_registry", SAME),
        ("llmfleet:baseImage", f"registry.example:65535/vllm@sha256:{'a' * 64}", "base_image", SAME),
        ("llmfleet:vpcCidr", "10.42.0.0/16", "vpc_cidr", "10.42.0.0/16"),
        ("llmfleet:tags", json.dumps({"k" * 128: "v" * 256}), "tags", {"k" * 128: "v" * 256}),
        ("llmfleet:tags", '{"Team": ""}', "tags", {"Team": ""}),
        ("llmfleet:tags", '{"k": "v"}', "tags", {"k": "v"}),  # a one-character key
        (
            "llmfleet:tags",
            '{"cost-center": "a b_c.d:e/f=g+h-i@j"}',
            "tags",
            {"cost-center": "a b_c.d:e/f=g+h-i@j"},
        ),
        ("llmfleet:logRetentionDays", "3653", "log_retention_days", 3653),
        ("llmfleet:capacityBlockId", "", "capacity_block_id", None),
        (
            "llmfleet:capacityReservationId",
            "cr-0123456789abcdef0",
            "capacity_reservation_id",
            "cr-0123456789abcdef0",
        ),
        ("llmfleet:endpointHostedZoneId", "", "endpoint_hosted_zone_id", None),
        ("llmfleet:weightsPath", "/etcetera/m", "weights_path", "/etcetera/m"),  # not under /etc
        ("llmfleet:weightsPath", "/var/lib/m", "weights_path", "/var/lib/m"),
        ("llmfleet:weightsPath", "/opt/m/", "weights_path", "/opt/m"),
        ("llmfleet:maxModelLen", "256", "max_model_len", 256),  # the key's lowest
        ("llmfleet:idleStopMinutes", "  ", "idle_stop_minutes", None),  # blank: never
        ("llmfleet:idleStopMinutes", " 0 ", "idle_stop_minutes", None),
        ("llmfleet:idleStopMinutes", "10", "idle_stop_minutes", 10),
        ("llmfleet:idleStopMinutes", " 1440 ", "idle_stop_minutes", 1440),
        # a list as JSON text (how `pulumi config set` stores one), leading blanks and all
        (
            "llmfleet:schedule",
            ' ["mon-fri 08:00-12:00 UTC", "mon-fri 13:00-17:00 UTC"]',
            "schedule",
            "mon-fri 08:00-12:00 UTC; mon-fri 13:00-17:00 UTC",
        ),
    ],
)
def test_each_single_key_rule_keeps_what_is_allowed(key, value, attr, parsed):
    cfg = load_stack_config({key: value}, "t")
    assert getattr(cfg, attr) == (value if parsed is SAME else parsed)


def test_capacity_block_and_dns_values_that_are_allowed():
    block = "cr-0123456789abcdef0"
    cfg = load_stack_config(
        {
            "llmfleet:capacityBlockId": block,
            "llmfleet:availabilityZone": "us-east-1a",
            "llmfleet:spot": "false",
        },
        "t",
    )
    assert cfg.capacity_block_id == block
    cfg = load_stack_config(
        {
            "llmfleet:endpointDnsName": "llm.example.com.",
            "llmfleet:endpointHostedZoneId": "Z0123456789ABCDEFGHIJ",
        },
        "t",
    )
    assert cfg.endpoint_dns_name == "llm.example.com"  # the root's '.' goes
    assert cfg.endpoint_hosted_zone_id == "Z0123456789ABCDEFGHIJ"


# --- rules across keys (config_rules.py), each refusal in full and the case next to it that passes ---

BLOCK = {
    "llmfleet:capacityBlockId": "cr-0123456789abcdef0",
    "llmfleet:availabilityZone": "us-east-1a",
    "llmfleet:spot": "false",
}
NOT_PRIVATE = (
    "is not private; allowed for an internal endpoint: CIDRs inside 10.0.0.0/8, 172.16.0.0/12, "
    "192.168.0.0/16, 100.64.0.0/10, fc00::/7 or the VPC 10.42.0.0/16 (or set llmfleet:endpointAllowPublicCidrs=true)"
)
HEAD = {"address": "10.0.0.10", "role": "head", "gpuCount": 0}


def _worker(i, **fields):
    return {"address": f"10.0.0.{10 + i}", "role": "worker", **fields}


CROSS_KEY_REFUSED = [
    (
        {**hosts(HEAD, _worker(1)), "llmfleet:capacityBlockId": "cr-0123456789abcdef0"},
        "llmfleet:capacityBlockId = 'cr-0123456789abcdef0': a Capacity Block holds EC2 workers; "
        "allowed with provider aws",
    ),
    (
        {**BLOCK, "llmfleet:spot": "true"},
        "llmfleet:capacityBlockId = 'cr-0123456789abcdef0': workers in a Capacity Block are not spot; "
        "set llmfleet:spot=false",
    ),
    (
        {**BLOCK, "llmfleet:capacityReservationId": "cr-0123456789abcdef1"},
        "llmfleet:capacityBlockId = 'cr-0123456789abcdef0': workers target one reservation; allowed: "
        "capacityBlockId or capacityReservationId, not both",
    ),
    (
        {**BLOCK, "llmfleet:availabilityZone": ""},
        "llmfleet:availabilityZone = (unset): workers must launch in the Capacity Block's AZ; allowed: that AZ "
        "(aws ec2 describe-capacity-reservations --capacity-reservation-ids cr-0123456789abcdef0)",
    ),
    (
        {**BLOCK, "llmfleet:pricingModel": "spot"},
        "llmfleet:pricingModel = 'spot': workers in a Capacity Block pay its fee; allowed: on-demand, "
        "savings-plan-1y, savings-plan-3y (for the head)",
    ),
    (
        {"llmfleet:pricingModel": "spot"},
        "llmfleet:pricingModel = 'spot': spot prices spot workers; set llmfleet:spot=true, or allowed: "
        "on-demand, savings-plan-1y, savings-plan-3y",
    ),
    *(
        (
            {"llmfleet:pricingModel": m, "llmfleet:spot": "true"},
            f"llmfleet:pricingModel = {m!r}: llmfleet:spot=true runs the workers on spot; allowed: spot, "
            "or set llmfleet:spot=false",
        )
        for m in ("on-demand", "savings-plan-1y", "savings-plan-3y")
    ),
    *(
        (
            {"llmfleet:endpointAllowedCidrs": json.dumps([c])},
            f"llmfleet:endpointAllowedCidrs = {json.dumps([c])}: entry {c!r} {NOT_PRIVATE}",
        )
        # narrower than /0 is not enough: half the internet, a public IPv6 range, a TEST-NET
        for c in ("203.0.113.0/24", "0.0.0.0/1", "2001:db8::/32", "198.18.5.0/24")
    ),
    (
        {"llmfleet:workerCount": "3", "llmfleet:replicas": "2"},
        "llmfleet:workerCount = 3: allowed: 'auto' or a multiple of llmfleet:replicas (2); every replica "
        "takes the same number of hosts",
    ),
    (
        {"llmfleet:endpointHostedZoneId": "Z0123456789ABCDEFGHIJ"},
        "llmfleet:endpointDnsName = (unset): the alias record needs both; allowed: set llmfleet:endpointDnsName "
        "and llmfleet:endpointHostedZoneId together",
    ),
    (
        {"llmfleet:provider": "existing", "llmfleet:sshPrivateKey": "[secret]"},
        "llmfleet:hosts = []: provider 'existing' needs a list of hosts, one with role head",
    ),
    (
        hosts(HEAD),
        "llmfleet:hosts = '[...]': no entry has role 'worker'; allowed: at least one GPU worker",
    ),
    (
        {**hosts(HEAD, _worker(1)), "llmfleet:workerCount": "2"},
        "llmfleet:workerCount = 2: allowed: 'auto' or 1 (the number of worker hosts)",
    ),
    (
        {**hosts(HEAD, _worker(1), _worker(2), _worker(3)), "llmfleet:replicas": "2"},
        "llmfleet:replicas = 2: allowed: a divisor of the 3 worker hosts (each replica takes the same hosts)",
    ),
    (
        hosts({**HEAD, "gpuCount": 2, "gpuModel": "X9"}, _worker(1)),
        "llmfleet:hosts[0].gpuModel = 'X9': allowed: L20, L40S, L4, A10G, H20, A100-40GB, A100-80GB, H100, "
        "H200, B200",
    ),
    (
        {
            "llmfleet:provider": "existing",
            "llmfleet:sshPrivateKey": "[secret]",
            "llmfleet:hosts": json.dumps([HEAD, _worker(1)]),  # no hostKey
        },
        "llmfleet:hosts[0].hostKey = (unset): an unverified 10.0.0.10 would get the Ray and endpoint tokens; "
        + HOST_KEY_ALLOWED,
    ),
    (
        hosts(HEAD, _worker(1, gpuCount=1, gpuModel="X9")),  # one GPU is a declared GPU too
        "llmfleet:hosts[1].gpuModel = 'X9': allowed: L20, L40S, L4, A10G, H20, A100-40GB, A100-80GB, H100, "
        "H200, B200",
    ),
    (
        hosts(HEAD, _worker(1), _worker(2, gpuCount=4)),
        "llmfleet:hosts = '[...]': workers differ in gpuModel/gpuCount; allowed: identical workers "
        "(tensor parallel = GPUs per host, pipeline parallel = hosts)",
    ),
    (
        hosts(HEAD, _worker(1), {**_worker(2), "role": "head"}),
        "llmfleet:hosts[2] = '10.0.0.12': second head (entry 0 is the head); allowed: exactly one head",
    ),
]


@pytest.mark.parametrize(
    ("raw", "message"), CROSS_KEY_REFUSED, ids=[m.split(":")[1] for _, m in CROSS_KEY_REFUSED]
)
def test_cross_key_rules_refuse_in_one_line(raw, message):
    with pytest.raises(ConfigError) as e:
        load_stack_config(raw, "t")
    assert str(e.value) == message


@pytest.mark.parametrize(
    "raw",
    [
        {**BLOCK, "llmfleet:pricingModel": "savings-plan-1y"},  # the head's commitment
        {"llmfleet:pricingModel": "spot", "llmfleet:spot": "true"},
        {"llmfleet:endpointAllowedCidrs": '["203.0.113.0/24"]', "llmfleet:endpointAllowPublicCidrs": "true"},
        {"llmfleet:endpointPublic": "true", "llmfleet:endpointAllowedCidrs": '["203.0.113.0/24"]'},
        # inside the stack's own VPC, which Python counts private (198.18.0.0/15, RFC 2544)
        {"llmfleet:vpcCidr": "198.18.0.0/16", "llmfleet:endpointAllowedCidrs": '["198.18.5.0/24"]'},
        {"llmfleet:workerCount": "4", "llmfleet:replicas": "2"},
        {"llmfleet:maxModelLen": "163840"},  # deepseek-r1's whole context, the limit itself
        {
            "llmfleet:endpointCertificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/"
            "12345678-1234-1234-1234-123456789012"
        },
        {**hosts(HEAD, _worker(1), _worker(2)), "llmfleet:workerCount": "2", "llmfleet:replicas": "2"},
        hosts({**HEAD, "gpuCount": 2, "gpuModel": "L20"}, _worker(1)),  # the head's GPUs go unused
        # a head's declared model is checked only when it declares GPUs; a worker needs one GPU
        hosts({**HEAD, "gpuModel": "X9"}, _worker(1, gpuCount=1), _worker(2, gpuCount=1)),
    ],
)
def test_cross_key_rules_pass_their_neighbours(raw):
    cfg = load_stack_config(raw, "t")
    for key, value in raw.items():
        if key in ("llmfleet:workerCount", "llmfleet:replicas"):
            assert str(getattr(cfg, _attr(key.split(":")[1]))) == value


def test_a_cross_key_check_raises_the_key_value_and_what_is_allowed():
    """Each check takes a validated StackConfig; its error carries the parts of the line too."""
    from infra.stack.config_rules import CrossKeyError, check_commitments

    cfg = load_stack_config({}, "t").model_copy(update={"pricing_model": "spot"})
    with pytest.raises(CrossKeyError) as e:
        check_commitments(cfg)
    allowed = "spot prices spot workers; set llmfleet:spot=true, or allowed: on-demand, savings-plan-1y, savings-plan-3y"
    assert (e.value.key, e.value.value, e.value.allowed) == ("llmfleet:pricingModel", "spot", allowed)
    assert str(e.value) == f"llmfleet:pricingModel = 'spot': {allowed}"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("- a\n- b\n", "the top level is a list; allowed: a YAML mapping"),
        ("config: [1, 2]\n", "config is a list; allowed: a mapping of keys to values"),
    ],
)
def test_a_stack_file_that_is_not_a_mapping_is_one_line(tmp_path, body, message):
    import shutil

    from infra.stack.files import raw_stack_config

    shutil.copy(REPO_ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "Pulumi.t.yaml").write_text(body)
    with pytest.raises(ConfigError, match=message) as e:
        raw_stack_config("t", project_dir=tmp_path)
    assert "\n" not in str(e.value)


def test_subnet_of_holds_across_address_families():
    # ipaddress raises comparing an IPv4 with an IPv6 network; the rules and the policy pack's
    # CIDR checks ask across families (a private list holds both) and need a plain False.
    from ipaddress import ip_network as net

    from infra.stack.config_rules import subnet_of

    assert subnet_of(net("10.1.0.0/16"), net("10.0.0.0/8"))
    assert not subnet_of(net("11.0.0.0/16"), net("10.0.0.0/8"))
    assert subnet_of(net("fd00::/16"), net("fc00::/7"))
    assert not subnet_of(net("2001:db8::/32"), net("fc00::/7"))
    assert not subnet_of(net("2001:db8::/32"), net("10.0.0.0/8"))
    assert not subnet_of(net("10.1.0.0/16"), net("::/0"))
