#!/bin/bash
# llmfleet head bootstrap (rendered by infra/boot/cloud_init.py; do not edit on the host).
set -euo pipefail
exec > >(tee -a /var/log/llmfleet-boot.log) 2>&1
export AWS_DEFAULT_REGION=us-east-1

log() { echo "llmfleet[head] $(date -u +%FT%TZ) $*"; }
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

# 2. The head runs no engine: it stages only config/tokenizer files for the OpenAI ingress,
#    again whenever the checkpoint's identity (URI, manifest) differs from the one staged.
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
  MODEL_REAL=$(realpath -m /opt/llmfleet/models/deepseek-r1); WEIGHTS_REAL=$(realpath -m /opt/llmfleet/models)
  [[ "${MODEL_REAL}" == "${WEIGHTS_REAL}"/?* ]] || die "refusing to clear ${MODEL_REAL}: not under ${WEIGHTS_REAL}"
  find "${MODEL_REAL}" -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +
  log "cleared ${MODEL_REAL} (it held another checkpoint)"
  aws s3 cp --recursive --only-show-errors --exclude '*' --include '*.json' --include '*.txt' --include '*.model' --include '*.tiktoken' --include '*.jinja' s3://llmfleet-prod-weights/deepseek-r1/ /opt/llmfleet/models/deepseek-r1/
  printf '%s\n' "${WEIGHTS_ID}" > "${MARKER}"
  log "staged tokenizer/config from" s3://llmfleet-prod-weights/deepseek-r1/
fi

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
API_TOKEN=$(ssm_secret /llmfleet/prod/endpoint-token) || die "cannot read SSM parameter" /llmfleet/prod/endpoint-token
[[ -n "${API_TOKEN}" ]] || die "SSM parameter" /llmfleet/prod/endpoint-token "is empty"
{
  printf "%s\n" "RAY_AUTH_MODE=token"
  printf "%s\n" "RAY_AUTH_TOKEN=${RAY_TOKEN}"
  printf "%s\n" "LLMFLEET_API_TOKEN=${API_TOKEN}"
} > /run/llmfleet/node.env
unset RAY_TOKEN API_TOKEN
umask 022

# The Serve deploy config (rendered by infra/rayconf/serve_config.py; no secrets in it).
install -d -m 0755 /etc/llmfleet
cat > /etc/llmfleet/serve.yaml <<'LLMFLEET_EOF'
applications:
- name: llm
  import_path: ray_cluster.serve_app:build_app
LLMFLEET_EOF

# 4. Pull the image by digest and start the node (entrypoint: python -m ray_cluster.node).
#    A rollout (infra/boot/node_apply.py) leaves a running container alone when its whole run
#    line (image, mounts, args) is unchanged, so a Serve-config-only update never restarts Ray;
#    a boot always starts it afresh.
if [[ "${LLMFLEET_APPLY_MODE:-boot}" == rollout ]] \
    && [[ "$(cat /etc/llmfleet/llmfleet-head.run 2>/dev/null)" == 4b19d1df322ecb42 ]] \
    && [[ -z "${WEIGHTS_RESTAGED:-}" ]] \
    && [[ "$(docker inspect -f '{{.State.Running}}' llmfleet-head 2>/dev/null)" == true ]]; then
  log "container" llmfleet-head "already runs this image and arguments: left running"
else
aws ecr get-login-password | docker login --username AWS --password-stdin 123456789012.dkr.ecr.us-east-1.amazonaws.com
docker pull 123456789012.dkr.ecr.us-east-1.amazonaws.com/llmfleet-prod@sha256:abababababababababababababababababababababababababababababababab
docker rm -f llmfleet-head >/dev/null 2>&1 || true

docker run --detach --name llmfleet-head --restart unless-stopped --network host --ipc host --shm-size 16g --ulimit memlock=-1 --user 1000 --security-opt no-new-privileges --volume /opt/llmfleet/models/deepseek-r1:/opt/llmfleet/models/deepseek-r1:ro --env LLMFLEET_MODEL_PATH=/opt/llmfleet/models/deepseek-r1 --env-file /run/llmfleet/node.env --volume /etc/llmfleet:/etc/llmfleet:ro \
  123456789012.dkr.ecr.us-east-1.amazonaws.com/llmfleet-prod@sha256:abababababababababababababababababababababababababababababababab head --ip "${NODE_IP}" --block
install -d -m 0755 /etc/llmfleet
echo 4b19d1df322ecb42 > /etc/llmfleet/llmfleet-head.run
log "started container" llmfleet-head
fi

# 5. Bootstrap the inference actors once the workers have joined, then keep watching: the
#    deploy watcher re-applies the Serve config when /etc/llmfleet/serve.yaml changes (a rollout
#    rewrites it above) or when a worker comes back. A new deploy command (another layout)
#    restarts the unit; the same one leaves it running.
if systemctl is-active --quiet llmfleet-deploy \
    && [[ "$(cat /etc/llmfleet/deploy.sha 2>/dev/null)" == f62beacc8361d53b ]]; then
  log "deploy watcher already running: it re-applies the Serve config in place"
else
  systemctl stop llmfleet-deploy >/dev/null 2>&1 || true
  systemctl reset-failed llmfleet-deploy >/dev/null 2>&1 || true
  echo f62beacc8361d53b > /etc/llmfleet/deploy.sha
  systemd-run --unit=llmfleet-deploy --property=Restart=always --property=RestartSec=30 \
    docker exec llmfleet-head python -m ray_cluster.node deploy --serve-config /etc/llmfleet/serve.yaml --tp 8 --pp 3 --replicas 1 --device gpu --gpu-model L40S --endpoint http://127.0.0.1:8000 --token-env LLMFLEET_API_TOKEN --timeout 7200 --watch
  log "deploy unit started: journalctl -u llmfleet-deploy"
fi
