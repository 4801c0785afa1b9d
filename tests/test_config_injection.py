"""No stack value runs as code, and dangerous values are refused (issue #25).

1. The review's values: `llmfleet preview` (the real typer app, in-process) exits 2 with one
   line naming the key, for each; ordinary values still load.
2. Property (hypothesis), per renderer: shell-metacharacter payloads put straight into every
   string the node scripts, metrics snippets, the EC2 launcher and the SSH bootstrap are
   rendered from (no config check in between) never run: each script passes `bash -n`, runs to
   its end in a sandbox (tests/script_sandbox.py) and the payload's sentinel is never created.
3. Property (hypothesis), per stack key: arbitrary strings (unicode, control characters) and
   the same payloads, fed to every key the model declares (`declared_keys()`, so a new key is
   covered) and into the fields of the JSON keys, are either refused with the one-line
   ConfigError naming the key, or render scripts that pass `bash -n` and, when the value
   carries a shell metacharacter, run in the sandbox without the payload running.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from infra.cli import app
from tests import script_sandbox
from tests.script_sandbox import SENTINEL

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
    # 'auto' = replicas x the planner's 3 nodes = 90 workers: only the plan knows, so resolve()
    # refuses it, before the offline engine runs the program.
    ("prod", ["llmfleet:replicas=30"], "llmfleet:replicas = 30: workerCount 'auto' makes 30 x 3 = 90"),
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
    # with --json the one error is one JSON object on stdout (the CLI's error shape), nothing on stderr
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stdout
    assert json.loads(lines[0])["error"]["message"].startswith(key), lines[0]
    assert result.stderr == ""


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


def test_the_node_agents_fixed_ports_are_refused_and_guarded_by_the_pack():
    """Every node passes its agents fixed ports (ray_cluster.contract.AGENT_PORTS): the endpoint
    may not take one, and the pack treats each as a Ray port (only from the cluster SG)."""
    from infra.stack.config import ConfigError
    from infra.stack.config_values import RESERVED_PORTS
    from infra.stack.files import load_config
    from policy.network import RAY_PORTS
    from ray_cluster.contract import AGENT_PORTS

    ports = {port for _, port in AGENT_PORTS}
    assert ports <= set(RESERVED_PORTS) and ports <= set(RAY_PORTS)
    for port in sorted(ports):
        with pytest.raises(ConfigError) as err:
            load_config("prod", [f"llmfleet:endpointPort={port}"])
        assert str(err.value).startswith(f"llmfleet:endpointPort = '{port}': port {port} is"), str(err.value)


# ---------------------------------------------------------------- the renderers, payloads straight in

PAYLOADS = [
    f"$(touch {SENTINEL})",
    f"`touch {SENTINEL}`",
    f'";touch {SENTINEL};"',
    f"';touch {SENTINEL};'",
    f"\ntouch {SENTINEL}\n",
    f"\r\ntouch {SENTINEL} #",
    f"$({{ :>{SENTINEL}; }})",
    f";: >{SENTINEL}",
    f'"$(touch {SENTINEL})"',
    f"'\"$(touch${{IFS}}{SENTINEL})\"'",
    f"&& touch {SENTINEL} #",
    f"|touch {SENTINEL}",
    f'\\"; touch {SENTINEL}; #',
    f"${{IFS}}$(touch${{IFS}}{SENTINEL})",
    f"\nLLMFLEET_EOF\ntouch {SENTINEL}\n",
    f"\nLLMFLEET_PROM_EOF\ntouch {SENTINEL}\n",
    f"\nPYEOF\ntouch {SENTINEL}\n",
    f"%s%q$(touch {SENTINEL})",
]
# Text around a payload: anything a UTF-8 script can hold (no NUL, no lone surrogate).
AROUND = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6)
PAYLOAD = st.builds(lambda a, p, b: a + p + b, AROUND, st.sampled_from(PAYLOADS), AROUND)

# Fixed examples by default (a red build is the code, not the draw); LLMFLEET_HYPOTHESIS_EXPLORE=1
# draws new ones each run.
DERANDOMIZE = os.environ.get("LLMFLEET_HYPOTHESIS_EXPLORE") != "1"
# Rules across keys that name the key to change rather than the one set (the provider needs
# hosts, a public endpoint needs CIDRs, a DNS name needs its zone, a Capacity Block its AZ).
CROSS_KEYS = {
    "llmfleet:hosts", "llmfleet:endpointAllowedCidrs", "llmfleet:endpointHostedZoneId", "llmfleet:endpointDnsName",
    "llmfleet:availabilityZone", "llmfleet:sshPrivateKey", "llmfleet:workerCount", "llmfleet:replicas",
    "llmfleet:pricingModel", "llmfleet:quantization", "llmfleet:alarmTopicArn", "llmfleet:capacityBlockId",
}  # fmt: skip
# No shrinking in the sandbox tests: each example is a real run, and a failing one is reported
# as drawn (its payloads say what ran) instead of after minutes of shrinking.
SANDBOX = dict(
    deadline=None, suppress_health_check=[HealthCheck.too_slow], phases=[Phase.explicit, Phase.generate]
)
needs_sandbox = pytest.mark.skipif(
    not script_sandbox.available(), reason="needs unshare (root, or user namespaces) and ldd"
)


@cache
def _template() -> Path:
    root = Path(tempfile.mkdtemp(prefix="llmfleet-sandbox-"))
    atexit.register(shutil.rmtree, root, True)
    script_sandbox.make_root(root)
    return root


def sandbox_run(script: str, stdin: str = "", canned: dict | None = None) -> script_sandbox.Run:
    """A run over a fresh overlay (a payload's file never survives into the next run)."""
    return script_sandbox.run(_template(), script, stdin=stdin, canned=canned)


def _bash_n(script: str) -> None:
    import subprocess

    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _spec_fields() -> list[tuple[str, str]]:
    """(object, field) for every str field of NodeSpec and HostMetrics but the role and the
    container name (both fixed by the code: llmfleet-head / llmfleet-worker, no stack value)."""
    from infra.boot.cloud_init import NodeSpec
    from infra.boot.metrics import HostMetrics

    fixed = ("role", "container_name")
    spec = [("spec", f.name) for f in dataclasses.fields(NodeSpec) if f.type == "str" and f.name not in fixed]
    return spec + [("metrics", f.name) for f in dataclasses.fields(HostMetrics) if f.type == "str"]


def _specs():
    from infra.boot.metrics import HostMetrics
    from tests.test_cloud_init import HEAD, WORKER

    hm = HostMetrics(
        boot_log_group="/llmfleet/x/boot",
        container_log_group="/llmfleet/x/containers",
        remote_write_url="https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws-1/api/v1/remote_write",
        prometheus_image="123456789012.dkr.ecr.us-east-1.amazonaws.com/p@sha256:" + "a" * 64,
        dcgm_image="123456789012.dkr.ecr.us-east-1.amazonaws.com/d@sha256:" + "b" * 64,
        cluster="llmfleet-x",
    )
    return {r: dataclasses.replace(s, metrics=hm) for r, s in (("head", HEAD), ("worker", WORKER))}


# The last command of each script (its stdout goes through a `tee` that the sandbox's end may cut).
LAST_CALL = {"head": "systemd-run --unit=llmfleet-deploy", "worker": " -a :9400 "}


def _with(spec, where: tuple[str, str], value: str):
    obj, field = where
    if field == "weights_s3_uri":
        value = f"s3://bucket/{value}/"
    if obj == "spec":
        return dataclasses.replace(spec, **{field: value})
    return dataclasses.replace(spec, metrics=dataclasses.replace(spec.metrics, **{field: value}))


@needs_sandbox
@settings(max_examples=12, **SANDBOX)
@given(
    role=st.sampled_from(["head", "worker"]),
    payloads=st.fixed_dictionaries({w: PAYLOAD for w in _spec_fields()}),
)
def test_no_value_in_a_node_script_runs_as_code(role, payloads):
    """A payload in every string the script is rendered from at once (one sandbox run covers
    them all); a field whose payload the renderer refuses (a heredoc marker line) keeps its
    ordinary value."""
    from infra.boot.cloud_init import render_user_data

    spec = _specs()[role]
    for where, payload in payloads.items():
        candidate = _with(spec, where, payload)
        try:
            render_user_data(candidate)
        except ValueError:
            continue
        spec = candidate
    script = render_user_data(spec)
    _bash_n(script)
    run = sandbox_run(script)
    assert not run.injected, (payloads, run.calls)
    assert run.returncode == 0, (payloads, run.stdout[-500:], run.stderr[-500:])
    assert any(LAST_CALL[role] in c for c in run.calls), run.calls[-3:]  # it ran to its end


@needs_sandbox
@settings(max_examples=6, **SANDBOX)
@given(role=st.sampled_from(["head", "worker"]), payload=PAYLOAD)
def test_no_value_in_the_ec2_launcher_runs_as_code(role, payload):
    """The user data (boot contract) with payloads in the region and parameter name: the
    launcher's llmfleet-apply runs too, on a node script the stub SSM hands back."""
    from infra.boot.node_apply import launcher_user_data

    for region, param in ((payload, f"/llmfleet/x/node/{role}"), ("us-east-1", "/llmfleet/x/" + payload)):
        try:
            script = launcher_user_data(role, region, param)
        except ValueError:
            continue
        _bash_n(script)
        run = sandbox_run(script, canned={"base64": "echo node-script-ran\n"})
        assert not run.injected, (region, param, run.calls)
        assert "node-script-ran" in run.stdout, (run.stdout[-300:], run.stderr[-300:])


HOST_FIELDS = ("address", "ssh_user", "gpu_model", "private_ip", "host_key")


@needs_sandbox
@settings(max_examples=12, **SANDBOX)
@given(
    role=st.sampled_from(["head", "worker"]),
    source=st.sampled_from(["s3://b/", "https://h.example/"]),
    payloads=st.fixed_dictionaries(
        {f: PAYLOAD for f in ("weights_path", "weights_uri", "stack", "image_ref", "head_ip", *HOST_FIELDS)}
    ),
)
def test_no_value_in_the_ssh_bootstrap_runs_as_code(role, source, payloads):
    """A payload in every string of the stack and the host the bootstrap is rendered from; a
    payload another layer refuses (the planner's GPU ids, the Serve config's absolute model
    path) keeps that field's ordinary value."""
    from infra.boot.ssh_bootstrap import render_bootstrap
    from infra.boot.ssh_node import stdin_secrets
    from infra.rayconf.serve_config import ServeConfigError
    from infra.stack.files import load_config
    from infra.stack.planner import PlanInputError
    from infra.stack.resolve import resolve

    base = load_config("onprem-l20", ["llmfleet:weightsUri=s3://llm-weights/deepseek-r1/"])
    i = next(i for i, h in enumerate(base.hosts) if h.role == role)

    def render(values: dict) -> str:
        host = base.hosts[i].model_copy(update={f: values[f] for f in HOST_FIELDS if f in values})
        # model_copy skips validation: the renderer gets each payload as if a check had let it by
        cfg = base.model_copy(
            update={
                **{f: values[f] for f in ("weights_path", "stack") if f in values},
                **({"weights_uri": source + values["weights_uri"]} if "weights_uri" in values else {}),
                "hosts": [*base.hosts[:i], host, *base.hosts[i + 1 :]],
            }
        )
        return render_bootstrap(
            resolve(cfg),
            host,
            values.get("head_ip", "10.20.0.10"),
            values.get("image_ref", "r.example/n@sha256:" + "a" * 64),
        )

    values: dict = {}
    for field, payload in payloads.items():
        try:
            render({**values, field: payload})
        except (ValueError, PlanInputError, ServeConfigError):
            continue
        values[field] = payload
    script = render(values)
    _bash_n(script)
    canned = {"curl": "0" * 64 + "  config.json\n"}
    run = sandbox_run(script, stdin=stdin_secrets(role, "r" * 32, "a" * 32), canned=canned)
    assert not run.injected, (values, run.calls)
    assert run.returncode == 0 and "ready (container" in run.stdout, (
        values,
        run.stdout[-400:],
        run.stderr[-400:],
    )


@needs_sandbox
@pytest.mark.parametrize(
    ("line", "ok"),
    [
        ("0" * 64 + "  config.json", True),
        ("0" * 64 + " *model-00001-of-00163.safetensors", True),
        ("0" * 64 + "  sub/dir/tokenizer.json", True),
        ("0" * 64 + "  ../../etc/cron.d/x", False),
        ("0" * 64 + "  /etc/passwd", False),
        ("0" * 64 + "  a/../../x", False),
        ("0" * 64 + "  a b", False),
        ("0" * 64 + "  -o", False),
        ("0" * 64 + "  $(touch /llmfleet-sentinel)", False),
        ("deadbeef  config.json", False),
    ],
)
def test_sha256sums_names_stay_inside_the_model_directory(line, ok):
    """The host checks every SHA256SUMS line before a name becomes a path; a bad one is a
    one-line failure before any download."""
    from infra.boot.ssh_bootstrap import MESSAGE_PREFIX, render_bootstrap
    from infra.boot.ssh_node import stdin_secrets
    from infra.stack.files import load_config
    from infra.stack.resolve import resolve

    cfg = load_config("onprem-l20", ["llmfleet:weightsUri=https://weights.lab.example/deepseek-r1/"])
    host = cfg.worker_hosts[0]
    script = render_bootstrap(resolve(cfg), host, "10.20.0.10", "r.example/n@sha256:" + "a" * 64)
    manifest = "0" * 64 + "  config.json\n" + line + "\n"
    run = sandbox_run(script, stdin=stdin_secrets("worker", "r" * 32), canned={"curl": manifest})
    assert not run.injected
    fetched = [c for c in run.calls if c.startswith("curl ") and "--create-dirs" in c]
    if ok:
        assert run.returncode == 0, run.stderr
        assert len(fetched) == 2  # both names, each into the model directory
    else:
        lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
        assert run.returncode == 1 and len(lines) == 1, run.stderr
        assert lines[0].startswith(f"{MESSAGE_PREFIX} weights failed") and "SHA256SUMS line" in lines[0]
        assert not fetched


# ---------------------------------------------------------------- every stack key, through the config

AWS_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/llmfleet-x@sha256:" + "ab" * 32
NEAR_VALID = [
    "/opt/llmfleet/",
    "s3://bucket/w/",
    "https://h.example/w/",
    "10.0.0.1",
    "us-east-1",
    "vllm/x:v1",
    "ssh-ed25519 ",
]
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
VALUE = st.one_of(
    ANY_TEXT,
    PAYLOAD,
    st.builds(lambda v, p: v + p, st.sampled_from(NEAR_VALID), st.one_of(PAYLOAD, ANY_TEXT)),
)
SHELL_CHARS = set("$`\"'\\;&|<>(){}*?[]~#!\n\r\t ") | {chr(c) for c in range(32)}


def _keys() -> list[str]:
    from infra.stack.config import declared_keys

    return sorted(declared_keys())  # a key the model gains is fed here too


def _host_fields() -> list[str]:
    from infra.stack.host_spec import HostSpec

    return [f.alias or n for n, f in HostSpec.model_fields.items()]


def _aws_scripts(stack) -> list[str]:
    """What cluster.py renders for the head and a worker (ids from the mocks' shapes) and the
    launcher user data: the node scripts and the boot contract."""
    from infra.boot.cloud_init import NodeSpec, render_user_data
    from infra.boot.metrics import HostMetrics
    from infra.boot.node_apply import launcher_user_data, node_parameter_name
    from infra.catalog import load_catalog
    from infra.constants import cluster_name
    from infra.rayconf.serving import serve_config_yaml

    cfg, plan = stack.cfg, stack.plan
    wt = load_catalog().instances[cfg.gpu_instance_type]
    name = cluster_name(cfg)
    common = dict(
        region=cfg.region,
        image_ref=AWS_IMAGE,
        weights_s3_uri=cfg.weights_uri or f"s3://{name}-weights/{cfg.model}/",
        model_path=cfg.model_path,
        weights_path=cfg.weights_path,
        ray_token_parameter=f"/llmfleet/{cfg.stack}/ray-auth-token",
        endpoint_port=cfg.endpoint_port,
        metrics=HostMetrics(
            boot_log_group=f"/llmfleet/{name}/boot",
            container_log_group=f"/llmfleet/{name}/containers",
            remote_write_url="https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws-1/api/v1/remote_write",
            prometheus_image=AWS_IMAGE,
            dcgm_image=AWS_IMAGE,
            cluster=name,
        ),
    )
    head = NodeSpec(
        role="head",
        token_parameter=f"/llmfleet/{cfg.stack}/endpoint-token",
        serve_config=serve_config_yaml(cfg, plan),
        tensor_parallel_size=plan.tensor_parallel_size,
        pipeline_parallel_size=plan.pipeline_parallel_size,
        replicas=cfg.replicas,
        deploy_gpu_model=wt.gpu or "",
        **common,
    )
    worker = NodeSpec(
        role="worker", head_ip="10.42.0.10", gpus=wt.gpu_count, gpu_model=wt.gpu or "", nvme_disks=wt.nvme_disks,
        **common,
    )  # fmt: skip
    return [render_user_data(head), render_user_data(worker)] + [
        launcher_user_data(r, cfg.region, node_parameter_name(cfg.stack, r)) for r in ("head", "worker")
    ]


def _existing_scripts(stack) -> list[str]:
    from infra.boot.ssh_bootstrap import render_bootstrap

    cfg = stack.cfg
    image = cfg.image_registry if cfg.image_registry and "@sha256:" in cfg.image_registry else AWS_IMAGE
    return [render_bootstrap(stack, h, str(cfg.head_host.ray_ip), image) for h in cfg.hosts]


def _feed(raw: dict, key: str, value: str, pick) -> dict:
    """raw with `value` put into `key` (into a field of the JSON keys)."""
    raw = dict(raw)
    if key == "llmfleet:tags":
        raw[key] = json.dumps(pick(st.sampled_from([{"team": value}, {value: "x"}])))
    elif key == "llmfleet:endpointAllowedCidrs":
        raw[key] = json.dumps([value])
    elif key == "llmfleet:hosts":
        hosts = json.loads(raw.get(key) or "[]") or [{"address": "10.0.0.1", "role": "head"}]
        i = pick(st.integers(0, len(hosts) - 1))
        hosts[i] = {**hosts[i], pick(st.sampled_from(_host_fields())): value}
        raw[key] = json.dumps(hosts)
    else:
        raw[key] = value
    return raw


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=DERANDOMIZE
)
@given(
    stack_name=st.sampled_from(["prod", "onprem-l20"]),
    key=st.sampled_from(_keys()),
    value=VALUE,
    data=st.data(),
)
def test_every_stack_key_refuses_in_one_line_or_renders_safe_scripts(stack_name, key, value, data):
    from infra.rayconf.serve_config import ServeConfigError
    from infra.stack.config import ConfigError, declared_keys, load_stack_config
    from infra.stack.files import raw_stack_config
    from infra.stack.resolve import resolve

    raw, _ = raw_stack_config(stack_name)
    raw = _feed(raw, key, value, data.draw)
    try:
        stack = resolve(load_stack_config(raw, stack_name))
        scripts = _existing_scripts(stack) if stack.cfg.provider == "existing" else _aws_scripts(stack)
    except (ConfigError, ServeConfigError) as e:
        msg = str(e)
        assert "\n" not in msg and "\r" not in msg, msg
        named = msg.split(" = ", 1)[0].split("[", 1)[0]
        assert named in declared_keys(), msg  # it names a key (the one to change)
        # the key fed, unless a rule across keys names the other one the value needs
        assert named == key or key in msg or named in CROSS_KEYS, (key, msg)
        return
    for script in scripts:
        _bash_n(script)
    if SHELL_CHARS & set(value) and script_sandbox.available():
        for script in scripts[:2]:  # accepted with a shell character: run them (rare, slow)
            run = sandbox_run(script, stdin="RAY_AUTH_TOKEN=r\nLLMFLEET_API_TOKEN=a\n")
            assert not run.injected, (key, value, run.calls)
