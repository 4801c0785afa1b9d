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

# 1. Docker (the Deep Learning Base AMI ships it with the NVIDIA container toolkit)
systemctl start docker
docker info >/dev/null 2>&1 || die "docker is not running"

# 2. The head runs no engine: it stages only config/tokenizer files for the OpenAI ingress.
mkdir -p /opt/llmfleet/models/deepseek-r1
aws s3 cp --recursive --only-show-errors --exclude '*' --include '*.json' --include '*.txt' --include '*.model' --include '*.tiktoken' --include '*.jinja' s3://llmfleet-prod-weights/deepseek-r1/ /opt/llmfleet/models/deepseek-r1/
log "staged tokenizer/config from" s3://llmfleet-prod-weights/deepseek-r1/

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
    && [[ "$(cat /etc/llmfleet/llmfleet-head.run 2>/dev/null)" == 5d1e0159e0f7030e ]] \
    && [[ "$(docker inspect -f '{{.State.Running}}' llmfleet-head 2>/dev/null)" == true ]]; then
  log "container" llmfleet-head "already runs this image and arguments: left running"
else
aws ecr get-login-password | docker login --username AWS --password-stdin 123456789012.dkr.ecr.us-east-1.amazonaws.com
docker pull 123456789012.dkr.ecr.us-east-1.amazonaws.com/llmfleet-prod@sha256:abababababababababababababababababababababababababababababababab
docker rm -f llmfleet-head >/dev/null 2>&1 || true

docker run --detach --name llmfleet-head --restart unless-stopped --network host --ipc host --shm-size 16g --ulimit memlock=-1 --volume /opt/llmfleet/models/deepseek-r1:/opt/llmfleet/models/deepseek-r1:ro --env LLMFLEET_MODEL_PATH=/opt/llmfleet/models/deepseek-r1 --env-file /run/llmfleet/node.env --volume /etc/llmfleet:/etc/llmfleet:ro \
  123456789012.dkr.ecr.us-east-1.amazonaws.com/llmfleet-prod@sha256:abababababababababababababababababababababababababababababababab head --ip "${NODE_IP}" --block
install -d -m 0755 /etc/llmfleet
echo 5d1e0159e0f7030e > /etc/llmfleet/llmfleet-head.run
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
