"""The user data each EC2 host boots with: a pure function from a NodeSpec to a bash script.

Boot order (DESIGN.md, production bootstrap):
  1. Docker (and, on GPU workers, the NVIDIA runtime and the GPU count) are checked.
  2. Workers assemble the instance-store NVMe disks (RAID0 when there are several) at the
     weights path and stage the checkpoint from S3 in parallel, verify it against
     manifest.json (else against the S3 listing) and write a ready marker holding the
     checkpoint's identity (URI + manifest/listing hash): another identity re-stages. The head
     stages only the small files (config, tokenizer) that the OpenAI ingress reads.
  3. Every host reads the Ray cluster token (and the head also the endpoint token) from SSM
     at boot into a root-only env file the container gets with --env-file; nothing secret is
     in the user data itself, only parameter names.
  4. The node container starts `python -m ray_cluster.node head|worker ... --block`
     (the image's entrypoint), with host networking so Ray binds the host's private IP.
  5. The head then bootstraps the inference actors: a transient systemd unit runs
     `python -m ray_cluster.node deploy` in the head container, which waits until the
     cluster holds TP x PP GPUs, runs the gang/all-reduce preflight, deploys the Serve
     config written beside it (no secrets in it) and reports ready after a real completion.

The script is rendered here and checked with `bash -n` and shellcheck in the tests.
This module stays a little over 400 lines on purpose: it is one script, rendered section by
section in boot order, and a reader follows the boot by reading it top to bottom.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from dataclasses import dataclass
from typing import Literal

from infra.boot import health_agent, imds_guard, metrics
from infra.boot.metrics import HostMetrics
from infra.constants import S3_MAX_CONCURRENT_REQUESTS
from infra.stack.host_spec import is_ipv4
from ray_cluster import contract
from ray_cluster.contract import GCS_PORT, HOST_ENV_FILE

TOKEN_ENV = contract.TOKEN_ENV
# Ray 2.60 token auth: every node and driver runs RAY_AUTH_MODE=token with the same token.
RAY_TOKEN_ENV = "RAY_AUTH_TOKEN"
# Explicit in the env file too: `ray status` / `ray job submit` run with `docker exec` (the
# launcher's probe, operators) do not go through ray_cluster.node.auth_env.
RAY_AUTH_ENV = {"RAY_AUTH_MODE": "token"}
# With llmfleet:gcsRedis: how long a raylet waits for the GCS (a head replacement: boot, attach,
# pull, start) before it exits. Ray reads RAY_<config name> for its system config.
GCS_RECONNECT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
GCS_RECONNECT_TIMEOUT_S = 900
NVME_MODEL = "Amazon EC2 NVMe Instance Storage"
READY_MARKER = contract.READY_MARKER
# One S3 connection tops out near 5 Gbps (FACTS.md), so the copy runs many ranged GETs at
# once: 64 connections x 64 MiB parts keeps a 100-400 Gbps NIC busy.
S3_MULTIPART_CHUNKSIZE = "64MB"
# Files the head's OpenAI ingress reads (tokenizer, chat template, config): no weight shards.
HEAD_INCLUDES = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja")
CONFIG_DIR = contract.HOST_CONFIG_DIR
SERVE_CONFIG_PATH = f"{CONFIG_DIR}/serve.yaml"
# Workers stage hundreds of GiB before they join: the deploy waits up to two hours for them.
DEPLOY_TIMEOUT_S = 7200


class ShellVar(str):
    """An argv element that is a shell variable, expanded at boot (e.g. the node's own IP)."""


@dataclass(frozen=True)
class NodeSpec:
    role: Literal["head", "worker"]
    region: str
    image_ref: str  # repo@sha256:digest
    weights_s3_uri: str  # s3://bucket/prefix/ (ends with /)
    model_path: str  # where the checkpoint lands on every host
    weights_path: str  # mount point of the NVMe array (model_path lives under it)
    # SSM SecureString name of the endpoint token: the head's, and with llmfleet:gcsRedis every
    # worker's too (each host then runs an ingress replica behind the NLB); "" = a worker without
    token_parameter: str = ""
    ray_token_parameter: str = ""  # every host: SSM SecureString name of the Ray cluster token
    head_ip: str = ""  # a worker: the head to join; the head (with head_eni_id): its fixed address
    head_eni_id: str = ""  # head only: the interface holding the fixed address (infra/components/head.py)
    # llmfleet:gcsRedis (infra/components/gcs_redis.py): the head's rediss:// address and the
    # auth token's SSM name; every host then waits longer for a GCS that comes back
    gcs_redis_address: str = ""
    gcs_redis_token_parameter: str = ""
    gcs_fault_tolerant: bool = False
    gpus: int = 0  # worker only
    gpu_model: str = ""  # worker only
    nvme_disks: int = 0
    efa: bool = False
    endpoint_port: int = 8000
    container_name: str = ""
    # head only: the Serve deploy config (YAML text) and the layout the deploy waits for
    serve_config: str = ""
    tensor_parallel_size: int = 0
    pipeline_parallel_size: int = 0
    replicas: int = 1
    deploy_gpu_model: str = ""
    # Metrics and logs (infra/boot/metrics.py); None: the host ships none (e.g. older tests)
    metrics: HostMetrics | None = None

    @property
    def container(self) -> str:
        return self.container_name or f"llmfleet-{self.role}"


def node_args(spec: NodeSpec) -> list[str]:
    """Arguments after the image's entrypoint (`python -m ray_cluster.node`)."""
    ip = ShellVar("NODE_IP")
    if spec.role == "head":
        # head advertises 0 GPUs (ray_cluster.ray_start.head_start_command); dashboard stays on
        # loopback and is reached through an SSM port forward.
        return contract.head_args(ip=ip)
    if not spec.head_ip or spec.gpus < 1:
        raise ValueError("a worker needs head_ip and gpus >= 1")
    return contract.worker_args(
        address=f"{spec.head_ip}:{GCS_PORT}", gpus=spec.gpus, gpu_model=spec.gpu_model or None, ip=ip
    )


def _sh(argv: list[str]) -> str:
    return " ".join(f'"${{{a}}}"' if isinstance(a, ShellVar) else shlex.quote(a) for a in argv)


def _registry(image_ref: str) -> str:
    return image_ref.split("/", 1)[0]


def docker_run_argv(spec: NodeSpec) -> list[str]:
    opts = contract.docker_run_options(
        spec.role, spec.model_path, config_dir=CONFIG_DIR if spec.role == "head" else None
    )
    return (
        ["docker", "run", "--detach", "--name", spec.container, "--restart", "unless-stopped"]
        + contract.docker_argv(opts)
        + gcs_env_args(spec)
    )


def gcs_env_args(spec: NodeSpec) -> list[str]:
    """llmfleet:gcsRedis's settings that are not secret, on the run line rather than in the env
    file: turning the option on or off then changes the run line, so a rollout restarts the
    containers that must pick it up (the env file alone would leave them running as they were).
    The store's password stays in the env file (_secrets)."""
    out: list[str] = []
    if spec.gcs_fault_tolerant:
        # a raylet waits this long for its GCS to come back at the same address (Ray's default
        # 60 s would make it exit before a replaced head is up)
        out += ["--env", f"{GCS_RECONNECT_ENV}={GCS_RECONNECT_TIMEOUT_S}"]
    if spec.role == "head" and spec.gcs_redis_address:
        # read by Ray 2.60 at `ray start --head` (ray/_private/node.py); rediss:// is TLS
        out += ["--env", f"RAY_REDIS_ADDRESS={spec.gcs_redis_address}"]
    return out


def _header(spec: NodeSpec) -> str:
    return f"""#!/bin/bash
# llmfleet {spec.role} bootstrap (rendered by infra/boot/cloud_init.py; do not edit on the host).
set -euo pipefail
exec > >(tee -a /var/log/llmfleet-boot.log) 2>&1
export AWS_DEFAULT_REGION={shlex.quote(spec.region)}

log() {{ echo "llmfleet[{spec.role}] $(date -u +%FT%TZ) $*"; }}
die() {{ log "FAILED: $*"; exit 1; }}

# IMDSv2 only (httpTokens=required): a session token first, then the private IP.
IMDS_TOKEN=$(curl -sS -X PUT http://169.254.169.254/latest/api/token \\
  -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
NODE_IP=$(curl -sS -H "X-aws-ec2-metadata-token: ${{IMDS_TOKEN}}" \\
  http://169.254.169.254/latest/meta-data/local-ipv4)
[[ -n "${{NODE_IP}}" ]] || die "no private IP from IMDS"
log "private IP ${{NODE_IP}}"
""" + (_head_interface(spec) if spec.role == "head" and spec.head_eni_id else "")


# The source-based routing table of the head's fixed interface.
HEAD_ENI_TABLE = 1001
HEAD_ENI_ATTACH_TRIES = 60  # x 10 s: a replaced head's interface detaches as the old one terminates


def _head_interface(spec: NodeSpec) -> str:
    """The head's fixed address (infra/components/head.py): attach its interface as device 1
    (waiting while a terminating predecessor still holds it), give the interface its address
    with a source-based route, and use it as the node's IP. Idempotent: every boot and rollout
    runs it; an interface already attached here is only configured again."""
    if not spec.head_ip:
        raise ValueError("a head with head_eni_id needs head_ip (the interface's fixed address)")
    eni, ip, table = shlex.quote(spec.head_eni_id), shlex.quote(spec.head_ip), HEAD_ENI_TABLE
    return f"""
# 0. The head's fixed address: its own interface, attached at every boot.
IMDS="http://169.254.169.254/latest/meta-data"
INSTANCE_ID=$(curl -sS -H "X-aws-ec2-metadata-token: ${{IMDS_TOKEN}}" "${{IMDS}}/instance-id")
HEAD_ENI={eni}
ATTACHED=""
for _ in $(seq {HEAD_ENI_ATTACH_TRIES}); do
  ATTACHED=$(aws ec2 describe-network-interfaces --network-interface-ids "${{HEAD_ENI}}" \
    --query 'NetworkInterfaces[0].Attachment.InstanceId' --output text || true)
  [[ "${{ATTACHED}}" == "${{INSTANCE_ID}}" ]] && break
  if [[ "${{ATTACHED}}" == None ]]; then
    aws ec2 attach-network-interface --network-interface-id "${{HEAD_ENI}}" \
      --instance-id "${{INSTANCE_ID}}" --device-index 1 >/dev/null || true
  fi
  sleep 10
done
[[ "${{ATTACHED}}" == "${{INSTANCE_ID}}" ]] || die "interface ${{HEAD_ENI}} not attached (held by ${{ATTACHED}})"
MAC=$(aws ec2 describe-network-interfaces --network-interface-ids "${{HEAD_ENI}}" \
  --query 'NetworkInterfaces[0].MacAddress' --output text)
DEV=""
for _ in $(seq 30); do
  for d in /sys/class/net/*; do [[ "$(cat "${{d}}/address")" == "${{MAC}}" ]] && DEV=$(basename "${{d}}"); done
  [[ -n "${{DEV}}" ]] && break
  sleep 2
done
[[ -n "${{DEV}}" ]] || die "no device with the interface's MAC ${{MAC}}"
CIDR=$(curl -sS -H "X-aws-ec2-metadata-token: ${{IMDS_TOKEN}}" "${{IMDS}}/network/interfaces/macs/${{MAC}}/subnet-ipv4-cidr-block")
GW=$(python3 -c 'import ipaddress, sys; print(ipaddress.ip_network(sys.argv[1])[1])' "${{CIDR}}")
ip link set dev "${{DEV}}" up
ip addr replace {ip}/"${{CIDR#*/}}" dev "${{DEV}}"
# Replies from the fixed address leave by its own interface (EC2 drops a packet whose source
# address is not the sending interface's).
ip route replace "${{CIDR}}" dev "${{DEV}}" src {ip} table {table}
ip route replace default via "${{GW}}" dev "${{DEV}}" table {table}
ip rule show | grep -qF -- "from "{ip}" lookup {table}" || ip rule add from {ip} table {table} priority {table}
NODE_IP={ip}
log "fixed address ${{NODE_IP}} on ${{DEV}}"
"""


def _checks(spec: NodeSpec) -> str:
    out = """
# 1. Docker (the Deep Learning Base AMI ships it with the NVIDIA container toolkit)
systemctl start docker
docker info >/dev/null 2>&1 || die "docker is not running"
"""
    if spec.role == "worker":
        out += f"""docker info --format '{{{{json .Runtimes}}}}' | grep -q nvidia \\
  || die "docker has no nvidia runtime (nvidia-container-toolkit missing)"
GPUS_SEEN=$(nvidia-smi -L | grep -c '^GPU ' || true)
[[ "${{GPUS_SEEN}}" -ge {spec.gpus} ]] || die "expected {spec.gpus} GPUs, nvidia-smi sees ${{GPUS_SEEN}}"
log "docker + nvidia runtime ok, ${{GPUS_SEEN}} GPUs"
"""
    return out


def _nvme(spec: NodeSpec) -> str:
    wp = shlex.quote(spec.weights_path)
    if spec.nvme_disks == 0:
        return f"""
# 2a. No instance store on this type: the weights go to the (larger) root volume.
mkdir -p {wp}
"""
    return f"""
# 2a. Instance-store NVMe -> the weights path (RAID0 over all of them when more than one).
WEIGHTS_MNT={wp}
if ! mountpoint -q "${{WEIGHTS_MNT}}"; then
  mapfile -t NVME_DEVS < <(lsblk -dpno NAME,MODEL | awk '/{NVME_MODEL}/ {{print $1}}')
  [[ "${{#NVME_DEVS[@]}}" -ge 1 ]] || die "no instance-store NVMe disks found"
  if [[ "${{#NVME_DEVS[@]}}" -gt 1 ]]; then
    DEV=/dev/md/llmfleet
    if [[ ! -e "${{DEV}}" ]]; then
      mdadm --create "${{DEV}}" --run --level=0 --raid-devices="${{#NVME_DEVS[@]}}" "${{NVME_DEVS[@]}}"
    fi
  else
    DEV="${{NVME_DEVS[0]}}"
  fi
  blkid "${{DEV}}" >/dev/null 2>&1 || mkfs.xfs -f -L llmfleet "${{DEV}}"
  mkdir -p "${{WEIGHTS_MNT}}"
  mount -o noatime "${{DEV}}" "${{WEIGHTS_MNT}}"
  log "mounted ${{DEV}} (${{#NVME_DEVS[@]}} NVMe disks) at ${{WEIGHTS_MNT}}"
fi
"""


_VERIFY_PY = r"""import json, os, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
root, source = sys.argv[1], sys.argv[2]
if source.endswith(".json"):
    doc = json.load(open(source))
    files = doc.get("files", doc)
    expect = {f["path"]: (int(f["size"]), f.get("sha256")) for f in files}
else:  # S3 listing (list-objects-v2 JSON): sizes only
    prefix = sys.argv[3]
    expect = {}
    for page in json.load(open(source)) or []:
        for o in page if isinstance(page, list) else [page]:
            if not o["Key"].endswith("/"):
                expect[o["Key"][len(prefix):]] = (int(o["Size"]), None)
expect.pop("manifest.json", None)
bad = []
def check(item):
    rel, (size, sha) = item
    p = os.path.join(root, rel)
    if not os.path.isfile(p) or os.path.getsize(p) != size:
        return f"{rel}: size {os.path.getsize(p) if os.path.isfile(p) else 'missing'} != {size}"
    if sha:
        got = subprocess.run(["sha256sum", p], capture_output=True, text=True, check=True).stdout.split()[0]
        if got != sha:
            return f"{rel}: sha256 mismatch"
    return None
with ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as ex:
    bad = [b for b in ex.map(check, expect.items()) if b]
if not expect or bad:
    print("verify failed: " + ("; ".join(bad[:5]) if bad else "no files expected"), file=sys.stderr)
    sys.exit(1)
print(f"verified {len(expect)} files")
"""


_HAS_KEY_PY = (
    "import json, sys; pages = json.load(open(sys.argv[1])) or []; "
    'sys.exit(0 if any(o["Key"] == sys.argv[2] for p in pages for o in (p if isinstance(p, list) else [p])) else 1)'
)


def _weights_identity(spec: NodeSpec) -> str:
    """Bash that sets WEIGHTS_ID: the checkpoint's URI and the sha256 of its manifest.json, else
    of its S3 listing (keys, sizes, ETags). Head and workers compute the same text, which the
    ready marker holds and whose fingerprint each worker advertises (ray_cluster.contract).
    Whether there is a manifest is read from the listing, so a failed GET of it stops the
    script rather than silently giving this host a listing-based identity the others lack.
    The listing's file name has no `.json`: the verify step reads a `.json` as a manifest."""
    bucket, _, prefix = spec.weights_s3_uri[len("s3://") :].partition("/")
    return f"""IDENT_DIR=$(mktemp -d)
aws s3api list-objects-v2 --bucket {shlex.quote(bucket)} --prefix {shlex.quote(prefix)} \\
  --query 'Contents[].{{Key: Key, Size: Size, ETag: ETag}}' --output json > "${{IDENT_DIR}}/s3-listing" \\
  || die "cannot list" {shlex.quote(spec.weights_s3_uri)}
if python3 -c {shlex.quote(_HAS_KEY_PY)} "${{IDENT_DIR}}/s3-listing" {shlex.quote(prefix + "manifest.json")}; then
  aws s3 cp --only-show-errors {shlex.quote(spec.weights_s3_uri + "manifest.json")} "${{IDENT_DIR}}/manifest.json" \\
    || die "cannot read" {shlex.quote(spec.weights_s3_uri + "manifest.json")}
  WEIGHTS_SUM="manifest.json sha256:$(sha256sum "${{IDENT_DIR}}/manifest.json" | cut -d' ' -f1)"
else
  WEIGHTS_SUM="listing sha256:$(sha256sum "${{IDENT_DIR}}/s3-listing" | cut -d' ' -f1)"
fi
WEIGHTS_ID=$(printf 'uri=%s\\n%s' {shlex.quote(spec.weights_s3_uri)} "${{WEIGHTS_SUM}}")
MARKER={shlex.quote(f"{spec.model_path}/{READY_MARKER}")}"""


def _clear_model_dir(spec: NodeSpec, indent: str) -> str:
    """Bash that empties the model directory, only when it resolves under the weights path (a
    symlink or a bad path never makes it delete anything else)."""
    mp, wp = shlex.quote(spec.model_path), shlex.quote(spec.weights_path)
    lines = [
        f"MODEL_REAL=$(realpath -m {mp}); WEIGHTS_REAL=$(realpath -m {wp})",
        '[[ "${MODEL_REAL}" == "${WEIGHTS_REAL}"/?* ]] || die "refusing to clear ${MODEL_REAL}: not under ${WEIGHTS_REAL}"',
        'find "${MODEL_REAL}" -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +',
        'log "cleared ${MODEL_REAL} (it held another checkpoint)"',
    ]
    return "\n".join(indent + line for line in lines)


def _stage(spec: NodeSpec) -> str:
    src = spec.weights_s3_uri
    prefix = src[len("s3://") :].partition("/")[2]
    mp = shlex.quote(spec.model_path)
    if spec.role == "head":
        includes = " ".join(f"--include {shlex.quote(p)}" for p in HEAD_INCLUDES)
        return f"""
# 2. The head runs no engine: it stages only config/tokenizer files for the OpenAI ingress,
#    again whenever the checkpoint's identity (URI, manifest) differs from the one staged.
mkdir -p {mp}
{_weights_identity(spec)}
if [[ "$(cat "${{MARKER}}" 2>/dev/null)" != "${{WEIGHTS_ID}}" ]]; then
{_clear_model_dir(spec, "  ")}
  aws s3 cp --recursive --only-show-errors --exclude '*' {includes} {shlex.quote(src)} {mp}/
  printf '%s\\n' "${{WEIGHTS_ID}}" > "${{MARKER}}"
  log "staged tokenizer/config from" {shlex.quote(src)}
fi
"""
    return f"""
# 2b. Stage the checkpoint: many ranged GETs in parallel (one S3 connection ~5 Gbps). The ready
#     marker holds the checkpoint's identity (URI + manifest/listing hash): the same identity
#     skips the download; another one (a new weightsUri, a re-uploaded checkpoint) re-stages,
#     after clearing the directory when it held a known other checkpoint (stale shards of it
#     would be loaded too). A marker from before identities (empty) syncs in place: only what
#     differs is downloaded, `--delete` drops what the source no longer has.
aws configure set default.s3.max_concurrent_requests {S3_MAX_CONCURRENT_REQUESTS}
aws configure set default.s3.multipart_chunksize {S3_MULTIPART_CHUNKSIZE}
aws configure set default.s3.max_queue_size 10000
mkdir -p {mp}
{_weights_identity(spec)}
if [[ "$(cat "${{MARKER}}" 2>/dev/null)" != "${{WEIGHTS_ID}}" ]]; then
  if [[ -s "${{MARKER}}" ]]; then
{_clear_model_dir(spec, "    ")}
  fi
  rm -f "${{MARKER}}"  # interrupted from here on, the next apply stages again
  START=$(date +%s)
  aws s3 sync --delete --only-show-errors {shlex.quote(src)} {mp}/
  log "downloaded $(du -sh {mp} | cut -f1) in $(( $(date +%s) - START )) s"

  # 2c. Verify against manifest.json (sizes, sha256 when listed), else against the S3 listing.
  VERIFY_PY=$(mktemp)
  cat > "${{VERIFY_PY}}" <<'PYEOF'
{_VERIFY_PY}PYEOF
  if [[ -f {mp}/manifest.json ]]; then
    python3 "${{VERIFY_PY}}" {mp} {mp}/manifest.json || die "weights do not match manifest.json"
  else
    python3 "${{VERIFY_PY}}" {mp} "${{IDENT_DIR}}/s3-listing" {shlex.quote(prefix)} \\
      || die "weights do not match the S3 listing"
  fi
  printf '%s\\n' "${{WEIGHTS_ID}}" > "${{MARKER}}"
  # The node container restarts below: Ray reads the new fingerprint only at `ray start`.
  WEIGHTS_RESTAGED=1
fi
log "weights ready at" {mp}
"""


# Why a Ray token at all: the security group already admits Ray's ports from the cluster's own
# SG only. The token is defense in depth beside it: anything else that reaches a host inside
# the VPC (a mis-scoped SG rule, another workload in the subnet) still cannot join the cluster,
# submit jobs or drive the GCS/dashboard without it. It is one shared secret, so every host
# reads the same SSM parameter; user data carries only the parameter's name.
def _secrets(spec: NodeSpec) -> str:
    env_dir = HOST_ENV_FILE.rsplit("/", 1)[0]
    reads = [("RAY_TOKEN", spec.ray_token_parameter)]
    lines = [f"{k}={v}" for k, v in RAY_AUTH_ENV.items()]
    lines.append(f"{RAY_TOKEN_ENV}=${{RAY_TOKEN}}")
    if spec.role == "head" or spec.token_parameter:
        # The ingress replica's bearer gate reads it where it runs (ray_cluster/serve_app.py):
        # the head, and with llmfleet:gcsRedis every worker (infra/rayconf/serving.py ingress_hosts).
        reads.append(("API_TOKEN", spec.token_parameter))
        lines.append(f"{TOKEN_ENV}=${{API_TOKEN}}")
    if spec.role == "head" and spec.gcs_redis_address:
        if not spec.gcs_redis_token_parameter:
            raise ValueError("gcs_redis_address needs gcs_redis_token_parameter (the auth token's SSM name)")
        # The GCS store's token reaches `ray start` from this env file (ray_cluster/node.py),
        # never a run line; its address is on the run line (gcs_env_args).
        reads.append(("GCS_REDIS_TOKEN", spec.gcs_redis_token_parameter))
        lines.append(f"{contract.GCS_REDIS_PASSWORD_ENV}=${{GCS_REDIS_TOKEN}}")
    fetch = "\n".join(
        f'{var}=$(ssm_secret {shlex.quote(name)}) || die "cannot read SSM parameter" {shlex.quote(name)}\n'
        f'[[ -n "${{{var}}}" ]] || die "SSM parameter" {shlex.quote(name)} "is empty"'
        for var, name in reads
    )
    body = "\n".join(f'  printf "%s\\n" "{line}"' for line in lines)
    names = " ".join(var for var, _ in reads)
    return f"""
# 3. Secrets from SSM at boot (role credentials over IMDSv2) into a root-only env file that the
#    container gets with --env-file. The Ray token (the same on every host) is defense in depth
#    beside the security group; the user data holds only parameter names.
install -d -m 0700 {shlex.quote(env_dir)}
umask 077
ssm_secret() {{  # retried: the instance role's new grants take a moment to reach SSM
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    aws ssm get-parameter --name "$1" --with-decryption --query Parameter.Value --output text && return 0
    sleep 6
  done
  return 1
}}
{fetch}
{{
{body}
}} > {shlex.quote(HOST_ENV_FILE)}
unset {names}
umask 022
"""


def _efa_devices(spec: NodeSpec) -> str:
    if not spec.efa or spec.role != "worker":
        return ""
    return """
# EFA: hand the verbs devices to the container (NCCL's aws-ofi plugin uses them).
EFA_ARGS=()
for dev in /dev/infiniband/uverbs*; do
  if [[ -e "${dev}" ]]; then EFA_ARGS+=(--device "${dev}"); fi
done
"""


def _start(spec: NodeSpec) -> str:
    registry = _registry(spec.image_ref)
    run = _sh(docker_run_argv(spec))
    if spec.efa and spec.role == "worker":
        run += ' "${EFA_ARGS[@]}"'
    c, img = shlex.quote(spec.container), shlex.quote(spec.image_ref)
    line = f"{run} {img} {_sh(node_args(spec))}"
    if spec.role == "worker" and spec.token_parameter:
        # The env file is read at `docker run` only: a worker that gains the API token (an
        # ingress replica will run there) must restart its container even when the run line is
        # the same (a stack already on gcsRedis), or the replica would start without the token.
        line += f" {TOKEN_ENV}"
    digest = hashlib.sha256(line.encode()).hexdigest()[:16]
    marker = shlex.quote(f"{CONFIG_DIR}/{spec.container}.run")
    return f"""
# 4. Pull the image by digest and start the node (entrypoint: python -m ray_cluster.node).
#    A rollout (infra/boot/node_apply.py) leaves a running container alone when its whole run
#    line (image, mounts, args) is unchanged, so a Serve-config-only update never restarts Ray;
#    a boot always starts it afresh.
if [[ "${{LLMFLEET_APPLY_MODE:-boot}}" == rollout ]] \\
    && [[ "$(cat {marker} 2>/dev/null)" == {digest} ]] \\
    && [[ -z "${{WEIGHTS_RESTAGED:-}}" ]] \\
    && [[ "$(docker inspect -f '{{{{.State.Running}}}}' {c} 2>/dev/null)" == true ]]; then
  log "container" {c} "already runs this image and arguments: left running"
else
aws ecr get-login-password | docker login --username AWS --password-stdin {shlex.quote(registry)}
docker pull {img}
docker rm -f {c} >/dev/null 2>&1 || true
{_efa_devices(spec).strip()}
{run} \\
  {img} {_sh(node_args(spec))}
install -d -m 0755 {CONFIG_DIR}
echo {digest} > {marker}
log "started container" {c}
fi
"""


def head_deploy_argv(spec: NodeSpec) -> list[str]:
    """What the head runs inside its container to bootstrap the inference actors."""
    if spec.role != "head" or spec.tensor_parallel_size < 1 or spec.pipeline_parallel_size < 1:
        raise ValueError("deploy runs on the head and needs tensor/pipeline parallel sizes >= 1")
    return contract.node_deploy_argv(
        "python",
        SERVE_CONFIG_PATH,
        spec.tensor_parallel_size,
        spec.pipeline_parallel_size,
        replicas=spec.replicas,
        gpu_model=spec.deploy_gpu_model or None,
        timeout=DEPLOY_TIMEOUT_S,
        token_env=TOKEN_ENV,
        endpoint=f"http://127.0.0.1:{spec.endpoint_port}",
    )


def _serve_config_file(spec: NodeSpec) -> str:
    if spec.role != "head" or not spec.serve_config:
        return ""
    # A quoted heredoc ends only at a line that is exactly its marker: no value expands in it.
    if "LLMFLEET_EOF" in spec.serve_config.splitlines():
        raise ValueError("serve_config must not contain a line LLMFLEET_EOF (the heredoc marker)")
    return f"""
# The Serve deploy config (rendered by infra/rayconf/serve_config.py; no secrets in it).
install -d -m 0755 {CONFIG_DIR}
cat > {SERVE_CONFIG_PATH} <<'LLMFLEET_EOF'
{spec.serve_config.rstrip()}
LLMFLEET_EOF
"""


def _deploy(spec: NodeSpec) -> str:
    if spec.role != "head" or not spec.serve_config:
        return ""
    run = _sh(["docker", "exec", spec.container, *head_deploy_argv(spec), "--watch"])
    digest = hashlib.sha256(run.encode()).hexdigest()[:16]
    return f"""
# 5. Bootstrap the inference actors once the workers have joined, then keep watching: the
#    deploy watcher re-applies the Serve config when {SERVE_CONFIG_PATH} changes (a rollout
#    rewrites it above) or when a worker comes back. A new deploy command (another layout)
#    restarts the unit; the same one leaves it running.
if systemctl is-active --quiet llmfleet-deploy \\
    && [[ "$(cat {CONFIG_DIR}/deploy.sha 2>/dev/null)" == {digest} ]]; then
  log "deploy watcher already running: it re-applies the Serve config in place"
else
  systemctl stop llmfleet-deploy >/dev/null 2>&1 || true
  systemctl reset-failed llmfleet-deploy >/dev/null 2>&1 || true
  echo {digest} > {CONFIG_DIR}/deploy.sha
  systemd-run --unit=llmfleet-deploy --property=Restart=always --property=RestartSec=30 \\
    {run}
  log "deploy unit started: journalctl -u llmfleet-deploy"
fi
"""


def render_user_data(spec: NodeSpec) -> str:
    """The whole boot script for one host."""
    if spec.role not in ("head", "worker"):
        raise ValueError(f"role {spec.role!r}: allowed head, worker")
    # Absolute paths only: a path that starts with '-' would be an option to mkdir or mount.
    if not spec.model_path.startswith("/") or not spec.weights_path.startswith("/"):
        raise ValueError(
            f"model_path {spec.model_path!r}, weights_path {spec.weights_path!r}: allowed absolute paths"
        )
    if not spec.weights_s3_uri.startswith("s3://") or not spec.weights_s3_uri.endswith("/"):
        raise ValueError(f"weights_s3_uri {spec.weights_s3_uri!r}: allowed s3://BUCKET/PREFIX/")
    # The head's address becomes NODE_IP, which later lines hand to `ip` and to sed's s///
    # (the Prometheus config): an IPv4 address and nothing else.
    if spec.head_ip and not is_ipv4(spec.head_ip):
        raise ValueError(f"head_ip {spec.head_ip!r}: allowed an IPv4 address")
    wp = spec.weights_path.rstrip("/")
    if (
        not wp.startswith("/")
        or posixpath.normpath(spec.model_path) != spec.model_path
        or not spec.model_path.startswith(wp + "/")
    ):
        # the node script empties the model directory before another checkpoint: never elsewhere
        raise ValueError(
            f"model_path {spec.model_path!r}: allowed a normalized path under weights_path {spec.weights_path!r}"
        )
    if spec.role == "head" and not spec.token_parameter:
        raise ValueError("the head needs token_parameter")
    if not spec.ray_token_parameter:
        raise ValueError("every host needs ray_token_parameter (the Ray cluster token's SSM name)")
    m = spec.metrics
    parts = [_header(spec), _checks(spec), metrics.docker_daemon(m, spec.region, spec.role)]
    parts.insert(1, imds_guard.node_script_section())  # step 0: before any container runs
    if spec.role == "worker":
        parts.append(_nvme(spec))
    parts += [_stage(spec), _secrets(spec), _serve_config_file(spec), _start(spec)]
    if m:  # after the node container: boot log shipper, and DCGM (workers) or Prometheus (head)
        parts.append(metrics.agents(m, spec.region, spec.role, spec.image_ref, spec.container))
    parts.append(health_agent.install(spec))  # what heals itself: see that module
    parts.append(_deploy(spec))
    return "".join(parts).replace("\n\n\n", "\n\n")
