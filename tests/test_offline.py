"""The offline engine: runs a program under the recording mocks, detects duplicates and unknown outputs."""

import shutil
import textwrap

import pytest

from infra.constants import REPO_ROOT
from infra.program.offline import OfflineError, capture
from infra.stack.config import ConfigError
from infra.stack.files import parse_override, raw_stack_config


@pytest.fixture
def project(tmp_path):
    """A scratch project with our Pulumi.yaml and one stack; the test writes __main__.py."""
    shutil.copy(REPO_ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "Pulumi.t.yaml").write_text(
        "config:\n  aws:region: us-west-2\n  llmfleet:model: deepseek-r1-distill-qwen-7b\n"
        "  llmfleet:gpuInstanceType: g6.xlarge\n  llmfleet:workerCount: 1\n"
        # a secret of the stack's own provider (the AWS provider's key): the owned hosts' SSH
        # key is refused on an aws stack (tests/test_providers.py)
        "  aws:secretKey:\n    secure: AAABAJ0x\n"
    )

    def write(body: str):
        (tmp_path / "__main__.py").write_text(textwrap.dedent(body))
        return tmp_path

    return write


def test_records_type_name_parent_and_camelcase_inputs(project):
    d = project("""
        import pulumi, pulumi_aws as aws
        class Box(pulumi.ComponentResource):
            def __init__(self, name, opts=None):
                super().__init__("llmfleet:test:Box", name, None, opts)
                self.inst = aws.ec2.Instance(f"{name}-vm", instance_type="g6.xlarge", ami="ami-1",
                    metadata_options=aws.ec2.InstanceMetadataOptionsArgs(http_tokens="required"),
                    root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(encrypted=True, volume_size=200),
                    opts=pulumi.ResourceOptions(parent=self))
                self.register_outputs({})
        b = Box("box")
        pulumi.export("ip", b.inst.private_ip)
        pulumi.export("key", pulumi.Config("aws").get_secret("secretKey"))
    """)
    cap = capture("t", project_dir=d)
    inst = cap.named("box-vm")
    assert inst["type"] == "aws:ec2/instance:Instance"
    assert inst["parent"] == "box"
    assert inst["inputs"]["instanceType"] == "g6.xlarge"
    assert inst["inputs"]["metadataOptions"]["httpTokens"] == "required"
    assert inst["inputs"]["rootBlockDevice"] == {"encrypted": True, "volumeSize": 200}
    assert cap.named("box")["parent"] is None
    assert cap.outputs["ip"].startswith("10.42.")
    assert cap.outputs["key"] == "[secret]"
    assert cap.config.region == "us-west-2"


def test_duplicate_logical_names_are_an_error(project):
    d = project("""
        import pulumi_aws as aws
        aws.ec2.Vpc("net", cidr_block="10.0.0.0/16")
        aws.ec2.Vpc("net", cidr_block="10.1.0.0/16")
    """)
    with pytest.raises(
        OfflineError, match=r"^duplicate resource URN urn:pulumi:t::llmfleet::aws:ec2/vpc:Vpc::net"
    ):
        capture("t", project_dir=d)


def test_an_output_the_mocks_do_not_know_is_an_error_not_a_skip(project):
    d = project("""
        import pulumi, pulumi_aws as aws
        vpc = aws.ec2.Vpc("net", cidr_block="10.0.0.0/16")
        pulumi.export("ipv6", vpc.ipv6_cidr_block)
    """)
    with pytest.raises(OfflineError, match=r"stack output outputs.ipv6 is unknown after the offline run"):
        capture("t", project_dir=d)


def test_program_errors_are_one_line(project):
    d = project("""
        raise ValueError("boom\\nsecond line")
    """)
    with pytest.raises(OfflineError, match=r"^program failed for stack t: ValueError: second line$"):
        capture("t", project_dir=d)


def test_overrides_and_secrets_in_raw_config(project):
    d = project("")
    raw, secrets = raw_stack_config("t", ["llmfleet:workerCount=2", "maxModelLen=4096"], project_dir=d)
    assert raw["llmfleet:workerCount"] == "2"
    assert raw["llmfleet:maxModelLen"] == "4096"
    assert raw["aws:secretKey"] == "[secret]" and "aws:secretKey" in secrets
    assert raw["llmfleet:endpointPort"] == "8000"  # project default from Pulumi.yaml
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("workerCount")
    # an unknown namespace is refused in one line naming the ones the project reads (issue #30)
    with pytest.raises(
        ConfigError, match=r"^-c 'foo:bar=1': unknown config namespace 'foo'; allowed: llmfleet:, aws:"
    ):
        raw_stack_config("t", ["foo:bar=1"], project_dir=d)
    with pytest.raises(ConfigError, match=r"did you mean llmfleet\?"):
        parse_override("lmfleet:workerCount=2")
    assert parse_override("aws:profile=ops") == ("aws:profile", "ops")
    with pytest.raises(ConfigError, match=r"--stack 'nope': no file stacks/Pulumi.nope.yaml; allowed: t"):
        raw_stack_config("nope", project_dir=d)


def test_two_captures_in_one_process_do_not_leak(project):
    d = project("""
        import pulumi, pulumi_aws as aws
        aws.ec2.Vpc("net", cidr_block="10.0.0.0/16")
        pulumi.export("n", 1)
    """)
    a = capture("t", project_dir=d)
    b = capture("t", project_dir=d)
    assert [r["name"] for r in a.resources] == [r["name"] for r in b.resources] == ["net"]


def test_capture_leaves_no_stack_config_in_pulumis_runtime(project):
    """Pulumi's runtime config is process-wide: after a capture it holds nothing of the stack."""
    import pulumi.runtime
    from pulumi.runtime.config import CONFIG

    d = project("""
        import pulumi
        pulumi.export("model", pulumi.Config("llmfleet").require("model"))
    """)
    cap = capture("t", project_dir=d)
    assert cap.outputs["model"] == "deepseek-r1-distill-qwen-7b"  # the program did read it
    assert CONFIG.get() == {}
    assert pulumi.runtime.get_config("llmfleet:model") is None
    assert not pulumi.runtime.is_config_secret("aws:secretKey")


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_shipped_stacks_capture_with_known_outputs(stack):
    cap = capture(stack)
    assert cap.outputs, "the program exports outputs"
    assert "[unknown]" not in str(cap.outputs)
