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

# 0. The node container (uid 1000, host network) must not reach the metadata service and the
#    instance role's credentials; root keeps it (infra/boot/imds_guard.py says why this holds).
cat > /usr/local/sbin/llmfleet-imds-guard <<'LLMFLEET_GUARD_EOF'
#!/bin/bash
set -euo pipefail
iptables -w -C OUTPUT -d 169.254.169.254/32 -m owner --uid-owner 1000 -j REJECT 2>/dev/null || iptables -w -I OUTPUT 1 -d 169.254.169.254/32 -m owner --uid-owner 1000 -j REJECT
if [ -e /proc/net/if_inet6 ] && ip6tables -w -L OUTPUT -n >/dev/null 2>&1; then ip6tables -w -C OUTPUT -d fd00:ec2::254/128 -m owner --uid-owner 1000 -j REJECT 2>/dev/null || ip6tables -w -I OUTPUT 1 -d fd00:ec2::254/128 -m owner --uid-owner 1000 -j REJECT; fi
LLMFLEET_GUARD_EOF
chmod 0755 /usr/local/sbin/llmfleet-imds-guard
cat > /etc/systemd/system/llmfleet-imds-guard.service <<'LLMFLEET_GUARD_EOF'
[Unit]
Description=llmfleet: the node container's uid may not reach the instance metadata service
Before=docker.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/llmfleet-imds-guard

[Install]
RequiredBy=docker.service
LLMFLEET_GUARD_EOF
systemctl daemon-reload
systemctl enable llmfleet-imds-guard.service >/dev/null 2>&1
/usr/local/sbin/llmfleet-imds-guard || die "cannot install the metadata-service guard (iptables)"

# 1. Docker (the Deep Learning Base AMI ships it with the NVIDIA container toolkit)
systemctl start docker
docker info >/dev/null 2>&1 || die "docker is not running"
docker info --format '{{json .Runtimes}}' | grep -q nvidia \
  || die "docker has no nvidia runtime (nvidia-container-toolkit missing)"
GPUS_SEEN=$(nvidia-smi -L | grep -c '^GPU ' || true)
[[ "${GPUS_SEEN}" -ge 8 ]] || die "expected 8 GPUs, nvidia-smi sees ${GPUS_SEEN}"
log "docker + nvidia runtime ok, ${GPUS_SEEN} GPUs"

# Docker: live-restore.
# dockerd is restarted only when daemon.json changes in a way a reload cannot apply; a rollout
# that finds it unchanged leaves dockerd alone.
# SIGHUP through the unit's ExecReload (Docker's own docker.service has one), else directly.
reload_dockerd() { systemctl reload docker 2>/dev/null || kill -s HUP "$(pidof dockerd)"; }
DOCKER_ACTION=$(python3 -c 'import json, os, sys
p, want, reloadable = sys.argv[1], json.loads(sys.argv[2]), set(json.loads(sys.argv[3]))
old = json.load(open(p)) if os.path.exists(p) else {}
new = {**old, **want}
if new == old:
    print("unchanged")
    sys.exit(0)
changed = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
with open(p + ".new", "w") as f:
    json.dump(new, f, indent=2)
os.replace(p + ".new", p)
print("reload" if changed <= reloadable else "restart")
' /etc/docker/daemon.json \
  '{"live-restore": true}' '["debug", "labels", "live-restore", "max-concurrent-downloads", "max-concurrent-uploads", "max-download-attempts", "default-runtime", "runtimes", "authorization-plugins", "insecure-registries", "registry-mirrors", "shutdown-timeout", "features"]') || die "cannot update /etc/docker/daemon.json"
case "${DOCKER_ACTION}" in
  unchanged) log "docker daemon config unchanged: dockerd left running" ;;
  reload) reload_dockerd; log "docker daemon config reloaded (live-restore)" ;;
  restart)
    # The reload first: live-restore must be on in the running daemon before it stops (a
    # SIGHUP is applied asynchronously, so wait until the daemon reports it).
    reload_dockerd
    for _ in $(seq 30); do
      [[ "$(docker info --format '{{.LiveRestoreEnabled}}' 2>/dev/null)" == true ]] && break
      sleep 1
    done
    systemctl restart docker
    log "dockerd restarted (live-restore kept the containers running)" ;;
  *) die "unexpected docker config action ${DOCKER_ACTION}" ;;
esac
docker info >/dev/null 2>&1 || die "docker is not running after its config update"

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

# 2b. Stage the checkpoint: many ranged GETs in parallel (one S3 connection ~5 Gbps). The ready
#     marker holds the checkpoint's identity (URI + manifest/listing hash): the same identity
#     skips the download; another one (a new weightsUri, a re-uploaded checkpoint) re-stages,
#     after clearing the directory when it held a known other checkpoint (stale shards of it
#     would be loaded too). A marker from before identities (empty) syncs in place: only what
#     differs is downloaded, `--delete` drops what the source no longer has.
aws configure set default.s3.max_concurrent_requests 64
aws configure set default.s3.multipart_chunksize 64MB
aws configure set default.s3.max_queue_size 10000
mkdir -p /opt/llmfleet/models/deepseek-r1
IDENT_DIR=$(mktemp -d)
aws s3api list-objects-v2 --bucket llmfleet-prod-weights --prefix deepseek-r1/ \
  --query 'Contents[].{Key: Key, Size: Size, ETag: ETag}' --output json > "${IDENT_DIR}/s3-listing" \
  || die "cannot list" s3://llmfleet-prod-weights/deepseek-r1/
if python3 -c 'import json, sys; pages = json.load(open(sys.argv[1])) or []; sys.exit(0 if any(o["Key"] == sys.argv[2] for p in pages for o in (p if isinstance(p, list) else [p])) else 1)' "${IDENT_DIR}/s3-listing" deepseek-r1/manifest.json; then
  aws s3 cp --only-show-errors s3://llmfleet-prod-weights/deepseek-r1/manifest.json "${IDENT_DIR}/manifest.json" \
    || die "cannot read" s3://llmfleet-prod-weights/deepseek-r1/manifest.json
  WEIGHTS_SUM="manifest.json sha256:$(sha256sum "${IDENT_DIR}/manifest.json" | cut -d' ' -f1)"
else
  WEIGHTS_SUM="listing sha256:$(sha256sum "${IDENT_DIR}/s3-listing" | cut -d' ' -f1)"
fi
WEIGHTS_ID=$(printf 'uri=%s\n%s' s3://llmfleet-prod-weights/deepseek-r1/ "${WEIGHTS_SUM}")
MARKER=/opt/llmfleet/models/deepseek-r1/.llmfleet-ready
if [[ "$(cat "${MARKER}" 2>/dev/null)" != "${WEIGHTS_ID}" ]]; then
  if [[ -s "${MARKER}" ]]; then
    MODEL_REAL=$(realpath -m /opt/llmfleet/models/deepseek-r1); WEIGHTS_REAL=$(realpath -m /opt/llmfleet/models)
    [[ "${MODEL_REAL}" == "${WEIGHTS_REAL}"/?* ]] || die "refusing to clear ${MODEL_REAL}: not under ${WEIGHTS_REAL}"
    find "${MODEL_REAL}" -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +
    log "cleared ${MODEL_REAL} (it held another checkpoint)"
  fi
  rm -f "${MARKER}"  # interrupted from here on, the next apply stages again
  START=$(date +%s)
  aws s3 sync --delete --only-show-errors s3://llmfleet-prod-weights/deepseek-r1/ /opt/llmfleet/models/deepseek-r1/
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
    python3 "${VERIFY_PY}" /opt/llmfleet/models/deepseek-r1 "${IDENT_DIR}/s3-listing" deepseek-r1/ \
      || die "weights do not match the S3 listing"
  fi
  printf '%s\n' "${WEIGHTS_ID}" > "${MARKER}"
  # The node container restarts below: Ray reads the new fingerprint only at `ray start`.
  WEIGHTS_RESTAGED=1
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
    && [[ "$(cat /etc/llmfleet/llmfleet-worker.run 2>/dev/null)" == 8e9ebd91a8611a81 ]] \
    && [[ -z "${WEIGHTS_RESTAGED:-}" ]] \
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
docker run --detach --name llmfleet-worker --restart unless-stopped --network host --ipc host --shm-size 16g --ulimit memlock=-1 --user 1000 --security-opt no-new-privileges --volume /opt/llmfleet/models/deepseek-r1:/opt/llmfleet/models/deepseek-r1:ro --env LLMFLEET_MODEL_PATH=/opt/llmfleet/models/deepseek-r1 --env-file /run/llmfleet/node.env --gpus all "${EFA_ARGS[@]}" \
  123456789012.dkr.ecr.us-east-1.amazonaws.com/llmfleet-prod@sha256:abababababababababababababababababababababababababababababababab worker --address 10.42.0.10:6379 --num-gpus 8 --gpu-model L40S --ip "${NODE_IP}" --block
install -d -m 0755 /etc/llmfleet
echo 8e9ebd91a8611a81 > /etc/llmfleet/llmfleet-worker.run
log "started container" llmfleet-worker
fi

# 6. Health agent: marks this instance Unhealthy in its Auto Scaling group (which replaces it)
#    on a fatal GPU XID, a missing GPU, or a node container / raylet down past 900 s.
install -d -m 0755 /usr/local/lib/llmfleet
# (--log-driver none: the file goes to this host, not to the containers' CloudWatch group)
docker run --rm --log-driver none --entrypoint cat 123456789012.dkr.ecr.us-east-1.amazonaws.com/llmfleet-prod@sha256:abababababababababababababababababababababababababababababababab /opt/llmfleet/ray_cluster/node_health.py > /usr/local/lib/llmfleet/node_health.py.new
cat > /etc/systemd/system/llmfleet-health.service.new <<'LLMFLEET_HEALTH_EOF'
[Unit]
Description=llmfleet: mark this GPU worker Unhealthy in its Auto Scaling group when it cannot serve
After=docker.service llmfleet-apply.service

[Service]
ExecStart=/usr/bin/python3 /usr/local/lib/llmfleet/node_health.py --container llmfleet-worker --gpus 8 --head 10.42.0.10 --region us-east-1 --grace 900
Restart=always
RestartSec=30

[Install]
WantedBy=multi-user.target
LLMFLEET_HEALTH_EOF
HEALTH_CHANGED=0
for f in /usr/local/lib/llmfleet/node_health.py /etc/systemd/system/llmfleet-health.service; do
  if cmp -s "${f}.new" "${f}"; then rm -f "${f}.new"; else mv "${f}.new" "${f}"; HEALTH_CHANGED=1; fi
done
systemctl daemon-reload
systemctl enable llmfleet-health.service
# --no-block: at a reboot this script runs inside llmfleet-apply.service, which the agent's
# unit is ordered after; a blocking start would wait for this very script to end.
if [[ "${HEALTH_CHANGED}" == 1 ]]; then
  systemctl --no-block restart llmfleet-health.service
else
  systemctl --no-block start llmfleet-health.service
fi
log "health agent: journalctl -u llmfleet-health"
