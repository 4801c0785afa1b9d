"""User data: snapshot of head and worker, bash -n, shellcheck, and the contract with ray_cluster.node.

Update the snapshots after an intended change: LLMFLEET_UPDATE_SNAPSHOTS=1 pytest tests/test_cloud_init.py
"""

import os
import shutil
import subprocess

import pytest

from infra.boot.cloud_init import SERVE_CONFIG_PATH, NodeSpec, head_deploy_argv, node_args, render_user_data
from ray_cluster.node import build_parser
from ray_cluster.ray_start import head_start_command, worker_start_command
from tests.shell import assert_bash_and_shellcheck
from tests.snapshot import assert_snapshot

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/llmfleet-prod@sha256:" + "ab" * 32
COMMON = dict(
    region="us-east-1",
    image_ref=IMAGE,
    weights_s3_uri="s3://llmfleet-prod-weights/deepseek-r1/",
    model_path="/opt/llmfleet/models/deepseek-r1",
    weights_path="/opt/llmfleet/models",
    ray_token_parameter="/llmfleet/prod/ray-auth-token",
)
SERVE_YAML = "applications:\n- name: llm\n  import_path: ray_cluster.serve_app:build_app\n"
HEAD = NodeSpec(
    role="head",
    token_parameter="/llmfleet/prod/endpoint-token",
    serve_config=SERVE_YAML,
    tensor_parallel_size=8,
    pipeline_parallel_size=3,
    deploy_gpu_model="L40S",
    **COMMON,
)
WORKER = NodeSpec(
    role="worker", head_ip="10.42.0.10", gpus=8, gpu_model="L40S", nvme_disks=4, efa=True, **COMMON
)
SPECS = {"head": HEAD, "worker": WORKER}


@pytest.mark.parametrize("role", ["head", "worker"])
def test_snapshot(role):
    assert_snapshot(f"user_data_{role}.sh", render_user_data(SPECS[role]))


@pytest.mark.parametrize("role", ["head", "worker"])
def test_bash_syntax_and_shellcheck(role, tmp_path):
    script = tmp_path / f"{role}.sh"
    script.write_text(render_user_data(SPECS[role]))
    assert_bash_and_shellcheck(script)


def test_container_args_parse_with_the_node_cli():
    p = build_parser()
    h = p.parse_args([str(a) for a in node_args(HEAD)])
    assert h.cmd == "head" and h.block
    assert "--num-gpus=0" in head_start_command("10.0.0.1", block=h.block)  # the head advertises 0 GPUs
    w = p.parse_args([str(a) for a in node_args(WORKER)])
    assert (w.cmd, w.address, w.num_gpus, w.gpu_model, w.block) == (
        "worker",
        "10.42.0.10:6379",
        8,
        "L40S",
        True,
    )
    assert "--num-gpus=8" in worker_start_command(w.address, "10.42.0.11", w.num_gpus, w.gpu_model)


def test_head_reads_token_from_ssm_and_holds_no_secret():
    ud = render_user_data(HEAD)
    assert 'aws ssm get-parameter --name "$1" --with-decryption' in ud
    assert "API_TOKEN=$(ssm_secret /llmfleet/prod/endpoint-token)" in ud
    assert "--env-file /run/llmfleet/node.env" in ud
    assert "mdadm" not in ud and "--gpus" not in ud  # no NVMe array, no GPUs on the head
    assert "--exclude '*' --include '*.json'" in ud  # only tokenizer/config files
    assert 'head --ip "${NODE_IP}" --block' in ud


def test_worker_staging_variants():
    ud = render_user_data(WORKER)
    assert "--level=0" in ud and "Amazon EC2 NVMe Instance Storage" in ud
    assert "max_concurrent_requests 64" in ud and "manifest.json" in ud
    assert "endpoint-token" not in ud and "LLMFLEET_API_TOKEN" not in ud  # workers never see it
    assert "nvidia runtime" in ud and "EFA_ARGS[@]" in ud
    single = render_user_data(NodeSpec(**{**WORKER.__dict__, "nvme_disks": 0, "efa": False}))
    assert "mdadm" not in single and "lsblk" not in single and "EFA_ARGS" not in single


def test_rejects_bad_specs():
    with pytest.raises(ValueError, match="weights_s3_uri"):
        render_user_data(NodeSpec(**{**WORKER.__dict__, "weights_s3_uri": "https://x/"}))
    with pytest.raises(ValueError, match="head_ip"):
        render_user_data(NodeSpec(**{**WORKER.__dict__, "head_ip": ""}))
    with pytest.raises(ValueError, match="token_parameter"):
        render_user_data(NodeSpec(**{**HEAD.__dict__, "token_parameter": ""}))
    for spec in (HEAD, WORKER):
        with pytest.raises(ValueError, match="ray_token_parameter"):
            render_user_data(NodeSpec(**{**spec.__dict__, "ray_token_parameter": ""}))


def test_head_deploys_the_serve_config_with_the_node_cli():
    text = render_user_data(HEAD)
    # The config lands beside the container (mounted read-only) before the deploy unit runs.
    assert f"cat > {SERVE_CONFIG_PATH} <<'LLMFLEET_EOF'\n{SERVE_YAML}LLMFLEET_EOF" in text
    assert "--volume /etc/llmfleet:/etc/llmfleet:ro" in text
    assert text.index("docker run") < text.index("systemd-run --unit=llmfleet-deploy")
    argv = head_deploy_argv(HEAD)
    assert argv[:3] == ["python", "-m", "ray_cluster.node"]
    d = build_parser().parse_args(argv[3:])
    assert (d.cmd, d.serve_config, d.tp, d.pp, d.gpu_model) == ("deploy", SERVE_CONFIG_PATH, 8, 3, "L40S")
    assert d.token_env == "LLMFLEET_API_TOKEN" and d.endpoint == "http://127.0.0.1:8000"
    # Workers never deploy.
    assert "llmfleet-deploy" not in render_user_data(WORKER)


@pytest.mark.parametrize("role", ["head", "worker"])
def test_every_host_reads_the_ray_token_into_the_containers_env_file(role):
    ud = render_user_data(SPECS[role])
    assert "ssm_secret /llmfleet/prod/ray-auth-token)" in ud
    assert "--env-file /run/llmfleet/node.env" in ud
    # The secrets are in the file before the container that reads it starts.
    assert ud.index("> /run/llmfleet/node.env") < ud.index("docker run")
    assert ("ssm_secret /llmfleet/prod/endpoint-token)" in ud) == (role == "head")


FAKE_AWS = """#!/bin/bash
# fake aws CLI: `ssm get-parameter --name N ...` prints the value stored for N
case "$*" in
  *"--name /llmfleet/prod/ray-auth-token "*) echo "{ray}" ;;
  *"--name /llmfleet/prod/endpoint-token "*) echo "{api}" ;;
  *) echo "unexpected: $*" >&2; exit 1 ;;
esac
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root for a mount namespace"
)
@pytest.mark.parametrize("role", ["head", "worker"])
def test_secrets_section_writes_a_root_only_env_file_and_prints_nothing(role, tmp_path):
    """Runs the rendered secrets step with a fake `aws`, /run bind-mounted to a temp dir."""
    ud = render_user_data(SPECS[role])
    start = ud.index("# 3. Secrets")
    section = ud[start : ud.index("umask 022", start)] + "umask 022\n"
    ray, api = "r" * 64, "a" * 48
    (tmp_path / "bin").mkdir()
    aws = tmp_path / "bin" / "aws"
    aws.write_text(FAKE_AWS.format(ray=ray, api=api))
    aws.chmod(0o755)
    (tmp_path / "run").mkdir()
    script = tmp_path / "secrets.sh"
    script.write_text(
        "set -euo pipefail\ndie() { echo \"FAILED: $*\"; exit 1; }\n" + section
        + "stat -c '%a' /run/llmfleet /run/llmfleet/node.env\n"
    )  # fmt: skip
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", 'mount --bind "$1" /run && exec bash "$2"', "_",
         str(tmp_path / "run"), str(script)],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["700", "600"]
    assert ray not in proc.stdout + proc.stderr and api not in proc.stdout + proc.stderr
    env = dict(line.split("=", 1) for line in (tmp_path / "run/llmfleet/node.env").read_text().splitlines())
    want = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": ray}
    if role == "head":
        want["LLMFLEET_API_TOKEN"] = api
    assert env == want


def test_a_rollout_keeps_the_container_only_when_its_run_line_is_unchanged():
    """Serve-config-only change: the head container (the Ray head) stays; a new model path or
    image: the container restarts (its mount / image changed)."""
    import dataclasses
    import re

    def run_digest(spec):
        return re.search(r'\.run 2>/dev/null\)" == (\w+) ]]', render_user_data(spec)).group(1)

    assert run_digest(HEAD) == run_digest(dataclasses.replace(HEAD, serve_config=SERVE_YAML + "# v2\n"))
    other_model = dataclasses.replace(WORKER, model_path="/opt/llmfleet/models/other")
    assert run_digest(WORKER) != run_digest(other_model)
    assert run_digest(WORKER) != run_digest(dataclasses.replace(WORKER, image_ref=IMAGE[:-2] + "cd"))
    assert "LLMFLEET_APPLY_MODE:-boot" in render_user_data(WORKER)  # a boot always restarts it


# ------------------------------------------------------------------ the weights marker, run
FAKE_S3_AWS = """#!/bin/bash
# fake aws CLI over a directory standing for the bucket prefix ($FAKE_S3); logs every call
echo "aws $*" >> "$CALLS"
case "$1 $2" in
  "configure set") ;;
  "s3 cp")
    if [[ "$*" == *--recursive* ]]; then cp "$FAKE_S3"/*.json "${@: -1}"
    else cp "$FAKE_S3/manifest.json" "${@: -1}"; fi ;;
  "s3api list-objects-v2")
    python3 - "$FAKE_S3" "$6" <<'EOF'
import hashlib, json, os, sys
root, prefix = sys.argv[1], sys.argv[2]
print(json.dumps([{"Key": prefix + n, "Size": os.path.getsize(os.path.join(root, n)),
                   "ETag": hashlib.md5(open(os.path.join(root, n), "rb").read()).hexdigest()}
                  for n in sorted(os.listdir(root))], indent=4))
EOF
    ;;
  "s3 sync") cp -r "$FAKE_S3"/. "${@: -1}" ;;
  *) echo "unexpected: $*" >&2; exit 1 ;;
esac
"""


def _bucket(root, shard: bytes):
    import hashlib
    import json

    root.mkdir(parents=True, exist_ok=True)
    (root / "model-00001.safetensors").write_bytes(shard)
    (root / "config.json").write_text("{}")
    files = [
        {"path": p.name, "size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        for p in sorted(root.iterdir())
        if p.name != "manifest.json"
    ]
    (root / "manifest.json").write_text(json.dumps({"files": files}))


def _stage(tmp_path, spec: NodeSpec, bucket) -> tuple[int, str, list[str]]:
    """Runs the rendered staging step of `spec` with the fake aws; returns (rc, output, aws calls)."""
    ud = render_user_data(spec)
    start = ud.index("# 2b. Stage" if spec.role == "worker" else "# 2. The head")
    end = ud.index("\nfi\n", ud.index("WEIGHTS_ID=", start)) + 4
    end = ud.index("\n", ud.index('log "weights ready', start)) + 1 if spec.role == "worker" else end
    (tmp_path / "bin").mkdir(exist_ok=True)
    aws = tmp_path / "bin" / "aws"
    aws.write_text(FAKE_S3_AWS)
    aws.chmod(0o755)
    calls = tmp_path / "calls"
    calls.write_text("")
    script = tmp_path / "stage.sh"
    script.write_text(
        'set -euo pipefail\nlog() { echo "$*"; }\ndie() { echo "FAILED: $*"; exit 1; }\n'
        + ud[start:end]
        + 'echo "restaged=${WEIGHTS_RESTAGED:-}"\n'
    )
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "CALLS": str(calls),
           "FAKE_S3": str(bucket)}  # fmt: skip
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr, calls.read_text().splitlines()


def test_the_ready_marker_holds_the_weights_identity_and_a_new_one_restages(tmp_path):
    import dataclasses

    from ray_cluster.contract import READY_MARKER, read_weights_fingerprint

    models = tmp_path / "models"
    model = models / "deepseek-r1"
    spec = dataclasses.replace(WORKER, weights_path=str(models), model_path=str(model), metrics=None)
    a, b = tmp_path / "s3a", tmp_path / "s3b"
    _bucket(a, b"A" * 64)
    _bucket(b, b"B" * 32)
    # a fresh host stages, verifies and writes URI + manifest hash
    rc, out, calls = _stage(tmp_path, spec, a)
    assert rc == 0 and "restaged=1" in out, out
    marker = (model / READY_MARKER).read_text()
    assert marker.startswith(f"uri={spec.weights_s3_uri}\nmanifest.json sha256:") and marker.endswith("\n")
    assert any(c.startswith("aws s3 sync --delete") for c in calls)
    fingerprint = read_weights_fingerprint(str(model))
    # the next rollout: the same identity downloads nothing and leaves the container alone
    rc, out, calls = _stage(tmp_path, spec, a)
    assert rc == 0 and "restaged=\n" in out and not any("sync" in c for c in calls), out
    # another weightsUri for the same model: the old shards go, the new checkpoint is staged
    (model / "stale-00009.safetensors").write_bytes(b"old")
    moved = dataclasses.replace(spec, weights_s3_uri="s3://other-bucket/deepseek-r1-v2/")
    rc, out, _ = _stage(tmp_path, moved, b)
    assert rc == 0 and "restaged=1" in out and "cleared" in out, out
    assert not (model / "stale-00009.safetensors").exists()
    assert (model / "model-00001.safetensors").read_bytes() == b"B" * 32
    assert read_weights_fingerprint(str(model)) not in (None, fingerprint)
    # the same URI with a re-uploaded checkpoint (another manifest) re-stages too
    _bucket(b, b"C" * 32)
    rc, out, _ = _stage(tmp_path, moved, b)
    assert rc == 0 and "restaged=1" in out and (model / "model-00001.safetensors").read_bytes() == b"C" * 32
    # the head computes the same identity: its marker, hence its fingerprint, is the workers'
    head_dir = tmp_path / "head"
    head = dataclasses.replace(
        HEAD, weights_path=str(head_dir), model_path=str(head_dir / "deepseek-r1"), metrics=None,
        weights_s3_uri=moved.weights_s3_uri,
    )  # fmt: skip
    rc, out, _ = _stage(tmp_path, head, b)
    assert rc == 0, out
    assert read_weights_fingerprint(head.model_path) == read_weights_fingerprint(str(model))


def test_a_marker_from_before_identities_syncs_in_place_and_clearing_stays_under_the_weights_path(tmp_path):
    import dataclasses

    from ray_cluster.contract import READY_MARKER

    models, bucket = tmp_path / "models", tmp_path / "s3"
    _bucket(bucket, b"A" * 64)
    model = models / "deepseek-r1"
    model.mkdir(parents=True)
    (model / "model-00001.safetensors").write_bytes(b"A" * 64)
    (model / READY_MARKER).write_text("")  # `touch`ed by the previous node script
    spec = dataclasses.replace(WORKER, weights_path=str(models), model_path=str(model), metrics=None)
    rc, out, _ = _stage(tmp_path, spec, bucket)
    assert rc == 0 and "cleared" not in out and "restaged=1" in out, out
    assert (model / READY_MARKER).read_text().startswith("uri=")
    # a model directory that is a symlink out of the weights path is never emptied
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep").write_text("x")
    (model / READY_MARKER).write_text("uri=s3://elsewhere/\nmanifest.json sha256:0\n")
    link_models = tmp_path / "m2"
    link_models.mkdir()
    (link_models / "deepseek-r1").symlink_to(outside)
    (outside / READY_MARKER).write_text("uri=s3://elsewhere/\nmanifest.json sha256:0\n")
    linked = dataclasses.replace(
        spec, weights_path=str(link_models), model_path=str(link_models / "deepseek-r1")
    )
    rc, out, _ = _stage(tmp_path, linked, bucket)
    assert rc != 0 and "refusing to clear" in out and (outside / "keep").exists(), out


def test_model_path_must_be_under_the_weights_path():
    import dataclasses

    for bad in ("/opt/llmfleet/models", "/opt/llmfleet/models/../etc", "/etc/deepseek-r1"):
        with pytest.raises(ValueError, match="model_path .*: allowed a normalized path under weights_path"):
            render_user_data(dataclasses.replace(WORKER, model_path=bad))


def test_without_a_manifest_the_identity_is_the_listings_and_a_failed_manifest_get_stops(tmp_path):
    import dataclasses

    from ray_cluster.contract import READY_MARKER

    models, bucket = tmp_path / "models", tmp_path / "s3"
    _bucket(bucket, b"A" * 64)
    (bucket / "manifest.json").unlink()
    spec = dataclasses.replace(
        WORKER, weights_path=str(models), model_path=str(models / "deepseek-r1"), metrics=None
    )
    rc, out, _ = _stage(tmp_path, spec, bucket)
    assert rc == 0 and "restaged=1" in out, out
    assert (models / "deepseek-r1" / READY_MARKER).read_text().splitlines()[1].startswith("listing sha256:")
    # the listing names a manifest the GET cannot read: stop, never fall back to another identity
    _bucket(bucket, b"A" * 64)
    (tmp_path / "bin" / "aws").write_text(
        FAKE_S3_AWS.replace('else cp "$FAKE_S3/manifest.json" "${@: -1}"', "else exit 1")
    )
    script = (tmp_path / "stage.sh").read_text()
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"),
           "FAKE_S3": str(bucket)}  # fmt: skip
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode != 0 and "FAILED: cannot read" in proc.stdout, proc.stdout + proc.stderr
