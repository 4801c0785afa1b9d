"""llmfleet:hosts (provider = existing): each bad host list gives one line naming the entry."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infra.constants import REPO_ROOT
from infra.stack.config import ConfigError, load_stack_config
from infra.stack.files import load_config
from infra.stack.resolve import resolve
from tests.host_keys import HOST_KEY

HEAD = {"address": "10.0.0.10", "role": "head", "gpuCount": 0, "hostKey": HOST_KEY}


def worker(n: int, **kw):
    return {"address": f"10.0.0.{10 + n}", "role": "worker", "hostKey": HOST_KEY, **kw}


def existing(*entries, **extra):
    return {
        "llmfleet:provider": "existing",
        "llmfleet:sshPrivateKey": "[secret]",
        "llmfleet:hosts": json.dumps(list(entries)),
        **extra,
    }


BAD_HOSTS = [
    ("no head", [worker(1), worker(2)], "llmfleet:hosts = '[...]': no entry has role 'head'"),
    (
        "two heads",
        [HEAD, {**worker(1), "role": "head"}, worker(2)],
        "llmfleet:hosts[1] = '10.0.0.11': second head (entry 0 is the head)",
    ),
    (
        "duplicate address",
        [HEAD, worker(1), worker(1)],
        "llmfleet:hosts[2].address = '10.0.0.11': duplicates entry 1",
    ),
    (
        "zero GPUs",
        [HEAD, worker(1), worker(2, gpuCount=0)],
        "llmfleet:hosts[2].gpuCount = 0: worker 10.0.0.12 has no GPUs",
    ),
    (
        "unknown GPU model",
        [HEAD, worker(1, gpuModel="L21")],
        "llmfleet:hosts[1].gpuModel = 'L21': allowed: L20, L40S",
    ),
    (
        "unknown GPU model on the head",
        [{**HEAD, "gpuCount": 8, "gpuModel": "RTX9090"}, worker(1)],
        "llmfleet:hosts[0].gpuModel = 'RTX9090': allowed: L20",
    ),
    (
        "negative GPU count",
        [HEAD, worker(1, gpuCount=-8)],
        "llmfleet:hosts[1].gpuCount = -8: allowed: a number >= 0",
    ),
    (
        "bad role",
        [HEAD, {**worker(1), "role": "gpu"}],
        "llmfleet:hosts[1].role = 'gpu': allowed: 'head' or 'worker'",
    ),
    (
        "a DNS name without privateIp",
        [HEAD, {**worker(1), "address": "gpu-01.lab"}],
        "llmfleet:hosts[1].privateIp = (unset): address gpu-01.lab is a name and Ray binds an IP",
    ),
    (
        "two hosts on one IP",
        [HEAD, {**worker(1), "address": "gpu-01.lab", "privateIp": "10.0.0.10"}],
        "llmfleet:hosts[1].privateIp = '10.0.0.10': same IP as entry 0",
    ),
    (
        "address with shell characters",
        [HEAD, {**worker(1), "address": "gpu;reboot"}],
        "llmfleet:hosts[1].address = 'gpu;reboot': allowed: an IPv4 address or a DNS name",
    ),
    (
        "bad ssh user",
        [HEAD, worker(1, sshUser="root me")],
        "llmfleet:hosts[1].sshUser = 'root me': allowed: a Unix user name",
    ),
    (
        "unknown field",
        [HEAD, worker(1, gpus=8)],
        "llmfleet:hosts[1].gpus = 8: unknown field; allowed: address, sshUser, role",
    ),
    (
        "workers differ",
        [HEAD, worker(1), worker(2, gpuCount=4)],
        "llmfleet:hosts = '[...]': workers differ in gpuModel/gpuCount",
    ),
]


@pytest.mark.parametrize(
    ("hosts", "expected"), [(h, e) for _, h, e in BAD_HOSTS], ids=[i for i, _, _ in BAD_HOSTS]
)
def test_bad_host_list_is_one_line_naming_the_entry(hosts, expected):
    with pytest.raises(ConfigError) as err:
        load_stack_config(existing(*hosts))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(expected), msg


def test_alarm_topic_is_refused_where_the_stack_creates_no_alarms():
    arn = "arn:aws:sns:us-east-1:123456789012:llmfleet-alarms"
    with pytest.raises(ConfigError) as err:
        load_stack_config(existing(HEAD, worker(1), **{"llmfleet:alarmTopicArn": arn}))
    assert str(err.value) == (
        f"llmfleet:alarmTopicArn = {arn!r}: the alarms watch the EC2 head and worker groups; "
        "allowed with provider aws"
    )


def test_no_ssh_key_names_the_secret_key_and_how_to_set_it():
    raw = existing(HEAD, worker(1))
    del raw["llmfleet:sshPrivateKey"]
    with pytest.raises(ConfigError, match=r"^llmfleet:sshPrivateKey = .*pulumi config set --secret"):
        load_stack_config(raw)


def test_declared_hosts_drive_the_plan_not_workercount_auto():
    # 4 declared workers: the plan takes 4 nodes (PP 4) although 3 would fit.
    cfg = load_stack_config(existing(HEAD, *(worker(i) for i in range(1, 5))))
    plan = resolve(cfg).plan
    assert cfg.worker_count == "auto" and resolve(cfg).workers == 4
    assert (plan.gpu, plan.gpus_per_node, plan.nodes, plan.pipeline_parallel_size) == ("L20", 8, 4, 4)
    # Two L20 servers cannot hold DeepSeek-R1 FP8: the plan says so (the GPU-fit policy reports it).
    two = resolve(load_stack_config(existing(HEAD, worker(1), worker(2)))).plan
    assert not two.fits and "needs at least 3 nodes of 8" in two.reason


def test_host_gpu_model_matches_ignoring_case_like_the_gpu_option():
    workers = [worker(1, gpuModel="l20"), worker(2, gpuModel="l20"), worker(3, gpuModel="L20")]
    cfg = load_stack_config(existing({**HEAD, "gpuCount": 8, "gpuModel": "l40s"}, *workers))
    # the canonical id everywhere it is used: the plan, and the Ray resource each worker advertises
    assert [h.gpu_model for h in cfg.hosts] == ["L40S", "L20", "L20", "L20"]
    assert resolve(cfg).plan.gpu == "L20"
    with pytest.raises(ConfigError, match=r"llmfleet:hosts\[1\]\.gpuModel = 'l21': allowed: L20"):
        load_stack_config(existing(HEAD, worker(1, gpuModel="l21")))


def test_ray_ip_is_private_ip_else_the_address():
    cfg = load_stack_config(existing(HEAD, {**worker(1), "address": "gpu-01.lab", "privateIp": "10.1.0.5"}))
    assert [h.ray_ip for h in cfg.hosts] == ["10.0.0.10", "10.1.0.5"]


def test_onprem_stack_file_is_valid_and_its_key_is_secret():
    cfg = load_config("onprem-l20")
    assert cfg.provider == "existing" and cfg.ssh_private_key == "[secret]"
    assert cfg.head_host.gpu_count == 0 and len(cfg.worker_hosts) == 3
    assert {(w.gpu_model, w.gpu_count) for w in cfg.worker_hosts} == {("L20", 8)}
    assert resolve(cfg).plan.fits and cfg.host_hourly_usd == pytest.approx(3.80)


def test_cli_shows_a_bad_host_as_one_line_without_traceback():
    bad = json.dumps([HEAD, worker(1), worker(1)])
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "llmfleet"),
            "preview",
            "--stack",
            "onprem-l20",
            "-c",
            f"llmfleet:hosts={bad}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0
    assert len(lines) == 1 and "llmfleet:hosts[2].address = '10.0.0.11': duplicates entry 1" in lines[0], (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr
