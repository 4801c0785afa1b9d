#!/usr/bin/env bash
# Installs the Debian packages the test suite and the local cluster use, when we can.
set -euo pipefail
need=()
command -v shellcheck >/dev/null || need+=(shellcheck)
command -v ip >/dev/null || need+=(iproute2)
[ -x /usr/sbin/iptables ] || need+=(iptables)  # the metadata-service guard's test (tests/test_imds_guard.py)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v prometheus >/dev/null || need+=(prometheus)  # `llmfleet local up` scrapes the hosts with it
command -v redis-server >/dev/null || need+=(redis-server)  # `llmfleet local up --gcs-redis` (GCS FT)
# The CPU node image (make image, tests/test_image_build.py): Debian's docker client/daemon (it
# builds with BuildKit), mmdebstrap for the base's root filesystem, the distribution registry,
# zstd for the base's cache tarball.
[ -x /usr/bin/docker ] || need+=(docker.io)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v zstd >/dev/null || need+=(zstd)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # On a machine that is thrown away after the run (.ci/run sets this), dpkg need not fsync
  # every file it unpacks (docker.io, prometheus: a few hundred MB), which is most of the
  # install's time on a slow disk; a crash mid-install there costs nothing.
  opts=()
  [ "${LLMFLEET_APT_UNSAFE_IO:-0}" = 1 ] && opts=(-o Dpkg::Options::=--force-unsafe-io)
  apt-get install -y -qq --no-install-recommends "${opts[@]}" "${need[@]}" >/dev/null
else
  echo "warning: missing ${need[*]} (not root or no apt-get); tests that need them will skip" >&2
fi
