#!/bin/bash
# llmfleet worker bootstrap (rendered by infra/boot/cloud_init.py; do not edit on the host).
set -euo pipefail
exec > >(tee -a /var/log/llmfleet-boot.log) 2>&1
export AWS_DEFAULT_REGION=us-east-1

log() { echo "llmfleet[worker] $(date -u +%FT%TZ) $*"; }
die() { log "FAILED: $*"; exit 1; }

# IMDSv2 only (httpTokens=required): a session token first, then the private IP.
IMDS_TOKEN=$(curl -sS -X PUT http://169.254.169.254/latest/api/token \
  -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
NODE_IP=$(curl -sS -H "X-aws-ec2-metadata-token: ${IMDS_TOKEN}" \
  http://169.254.169.254/latest/meta-data/local-ipv4)
[[ -n "${NODE_IP}" ]] || die "no private IP from IMDS"
log "private IP ${NODE_IP}"

# 1. Docker (the Deep Learning Base AMI ships it with the NVIDIA container toolkit)
systemctl start docker
docker info >/dev/null 2>&1 || die "docker is not running"
docker info --format '{{json .Runtimes}}' | grep -q nvidia \
  || die "docker has no nvidia runtime (nvidia-container-toolkit missing)"
GPUS_SEEN=$(nvidia-smi -L | grep -c '^GPU ' || true)
[[ "${GPUS_SEEN}" -ge 8 ]] || die "expected 8 GPUs, nvidia-smi sees ${GPUS_SEEN}"
log "docker + nvidia runtime ok, ${GPUS_SEEN} GPUs"

# 2a. Instance-store NVMe -> the weights path (RAID0 over all of them when more than one).
WEIGHTS_MNT=/opt/llmfleet/models
if ! mountpoint -q "${WEIGHTS_MNT}"; then
  mapfile -t NVME_DEVS < <(lsblk -dpno NAME,MODEL | awk '/Amazon EC2 NVMe Instance Storage/ {print $1}')
  [[ "${#NVME_DEVS[@]}" -ge 1 ]] || die "no instance-store NVMe disks found"
  if [[ "${#NVME_DEVS[@]}" -gt 1 ]]; then
    DEV=/dev/md/llmfleet
    if [[ ! -e "${DEV}" ]]; then
      mdadm --create "${DEV}" --run --level=0 --raid-devices="${#NVME_DEVS[@]}" "${NVME_DEVS[@]}"
    fi
  else
    DEV="${NVME_DEVS[0]}"
  fi
  blkid "${DEV}" >/dev/null 2>&1 || mkfs.xfs -f -L llmfleet "${DEV}"
  mkdir -p "${WEIGHTS_MNT}"
  mount -o noatime "${DEV}" "${WEIGHTS_MNT}"
  log "mounted ${DEV} (${#NVME_DEVS[@]} NVMe disks) at ${WEIGHTS_MNT}"
fi

# 2b. Stage the checkpoint: many ranged GETs in parallel (one S3 connection ~5 Gbps).
aws configure set default.s3.max_concurrent_requests 64
aws configure set default.s3.multipart_chunksize 64MB
aws configure set default.s3.max_queue_size 10000
mkdir -p /opt/llmfleet/models/deepseek-r1
if [[ ! -f /opt/llmfleet/models/deepseek-r1/.llmfleet-ready ]]; then
  START=$(date +%s)
  aws s3 sync --only-show-errors s3://llmfleet-prod-weights/deepseek-r1/ /opt/llmfleet/models/deepseek-r1/
  log "downloaded $(du -sh /opt/llmfleet/models/deepseek-r1 | cut -f1) in $(( $(date +%s) - START )) s"

  # 2c. Verify against manifest.json (sizes, sha256 when listed), else against the S3 listing.
  VERIFY_PY=$(mktemp)
  cat > "${VERIFY_PY}" <<'PYEOF'
import json, os, subprocess, sys
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
PYEOF
  if [[ -f /opt/llmfleet/models/deepseek-r1/manifest.json ]]; then
    python3 "${VERIFY_PY}" /opt/llmfleet/models/deepseek-r1 /opt/llmfleet/models/deepseek-r1/manifest.json || die "weights do not match manifest.json"
  else
    LISTING=$(mktemp)
    aws s3api list-objects-v2 --bucket llmfleet-prod-weights --prefix deepseek-r1/ \
      --query 'Contents[].{Key: Key, Size: Size}' --output json > "${LISTING}"
    python3 "${VERIFY_PY}" /opt/llmfleet/models/deepseek-r1 "${LISTING}" deepseek-r1/ \
      || die "weights do not match the S3 listing"
  fi
  touch /opt/llmfleet/models/deepseek-r1/.llmfleet-ready
fi
log "weights ready at" /opt/llmfleet/models/deepseek-r1

# 3. Secrets from SSM at boot (role credentials over IMDSv2) into a root-only env file that the
#    container gets with --env-file. The Ray token (the same on every host) is defense in depth
#    beside the security group; the user data holds only parameter names.
install -d -m 0700 /run/llmfleet
umask 077
ssm_secret() {  # retried: the instance role's new grants take a moment to reach SSM
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    aws ssm get-parameter --name "$1" --with-decryption --query Parameter.Value --output text && return 0
    sleep 6
  done
  return 1
}
RAY_TOKEN=$(ssm_secret /llmfleet/prod/ray-auth-token) || die "cannot read SSM parameter" /llmfleet/prod/ray-auth-token
[[ -n "${RAY_TOKEN}" ]] || die "SSM parameter" /llmfleet/prod/ray-auth-token "is empty"
{
  printf "%s\n" "RAY_AUTH_MODE=token"
  printf "%s\n" "RAY_AUTH_TOKEN=${RAY_TOKEN}"
} > /run/llmfleet/node.env
unset RAY_TOKEN
umask 022

# 4. Pull the image by digest and start the node (entrypoint: python -m ray_cluster.node).
#    A rollout (infra/boot/node_apply.py) leaves a running container alone when its whole run
#    line (image, mounts, args) is unchanged, so a Serve-config-only update never restarts Ray;
#    a boot always starts it afresh.
if [[ "${LLMFLEET_APPLY_MODE:-boot}" == rollout ]] \
    && [[ "$(cat /etc/llmfleet/llmfleet-worker.run 2>/dev/null)" == 7a20b068b4aa8f2f ]] \
    && [[ "$(docker inspect -f '{{.State.Running}}' llmfleet-worker 2>/dev/null)" == true ]]; then
  log "container" llmfleet-worker "already runs this image and arguments: left running"
else
aws ecr get-login-password | docker login --username AWS --password-stdin 123456789012.dkr.ecr.us-east-1.amazonaws.com
docker pull 123456789012.dkr.ecr.us-east-1.amazonaws.com/llmfleet-prod@sha256:abababababababababababababababababababababababababababababababab
docker rm -f llmfleet-worker >/dev/null 2>&1 || true
# EFA: hand the verbs devices to the container (NCCL's aws-ofi plugin uses them).
EFA_ARGS=()
for dev in /dev/infiniband/uverbs*; do
  if [[ -e "${dev}" ]]; then EFA_ARGS+=(--device "${dev}"); fi
done
docker run --detach --name llmfleet-worker --restart unless-stopped --network host --ipc host --shm-size 16g --ulimit memlock=-1 --volume /opt/llmfleet/models/deepseek-r1:/opt/llmfleet/models/deepseek-r1:ro --env LLMFLEET_MODEL_PATH=/opt/llmfleet/models/deepseek-r1 --env-file /run/llmfleet/node.env --gpus all "${EFA_ARGS[@]}" \
  123456789012.dkr.ecr.us-east-1.amazonaws.com/llmfleet-prod@sha256:abababababababababababababababababababababababababababababababab worker --address 10.42.0.10:6379 --num-gpus 8 --gpu-model L40S --ip "${NODE_IP}" --block
install -d -m 0755 /etc/llmfleet
echo 7a20b068b4aa8f2f > /etc/llmfleet/llmfleet-worker.run
log "started container" llmfleet-worker
fi
