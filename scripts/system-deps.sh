#!/usr/bin/env bash
# The Debian packages a set of commands uses, installed with apt-get when run as root.
#
#   scripts/system-deps.sh demo    what `make demo` runs (`llmfleet local up --hosts 2`, `local chat`,
#                                  and the `local status` the README suggests next)
#   scripts/system-deps.sh test    what `make test` runs: the demo's packages and the tests' own
#   scripts/system-deps.sh --list SET      the set's rows (package, check, if missing, used by), tab-separated
#   scripts/system-deps.sh --dry-run SET   say what would be installed, install nothing
#
# It says which packages it installs, and that it does so as root, before it does; not root (or
# no apt-get), it installs nothing and prints what is missing and the command that installs it.
set -euo pipefail

# One row per package. set: `demo` rows are in both sets, `test` rows only in `test`.
# check: a command on PATH, or an absolute path that must be executable.
# if missing: `required` (the set's commands fail without it: exit 1 when it cannot be installed)
# or `optional` (a feature is off or tests skip). used by: the code that calls it
# (tests/test_system_deps.py holds every demo row to it).
# The demo needs no iptables: infra/local/hosts.py adds its FORWARD rule only when br_netfilter
# is on, which Docker turns on, and Debian's docker.io brings iptables with it.
# (read with bash builtins only: the script runs before anything else is known to be installed)
read -r -d '' TABLE <<'EOF' || true
# set	package	check	if missing	used by
demo	iproute2	ip	required	infra/local/hosts.py (network-namespace hosts, as root) ray_cluster/nic.py (each node's NIC, `ip -j addr`, in every mode)
demo	prometheus	prometheus	optional	infra/local/prometheus.py (`local up` scrapes the hosts; `local status` and `local top` read it)
test	shellcheck	shellcheck	optional	tests/shell.py (user data and node scripts)
test	iptables	/usr/sbin/iptables	optional	infra/boot/imds_guard.py (tests/test_imds_guard.py) infra/local/hosts.py (the FORWARD rule)
test	redis-server	redis-server	optional	infra/local/cluster.py (`local up --gcs-redis`, tests/test_faults.py)
test	openssh-server	/usr/sbin/sshd	optional	tests/test_ssh_bootstrap.py tests/test_hosts_trust.py (the existing-hosts bootstrap over real SSH)
test	openssh-client	ssh	optional	tests/test_ssh_bootstrap.py tests/test_hosts_trust.py
test	docker.io	/usr/bin/docker	optional	infra/local/docker.py (`make image`, tests/test_image_build.py; builds with BuildKit)
test	mmdebstrap	mmdebstrap	optional	images/cpu-base/build.sh (the CPU base's root filesystem)
test	docker-registry	/usr/bin/docker-registry	optional	infra/local/docker.py (the local registry the image is pushed to)
test	zstd	zstd	optional	infra/local/image_build.py (the CPU base's cache tarball)
EOF

usage() {
  echo "usage: $0 [--list | --dry-run] demo|test" >&2
  exit 2
}

mode=install
case "${1:-}" in
  --list) mode=list; shift ;;
  --dry-run) mode=dry-run; shift ;;
esac
[ $# -eq 1 ] || usage
set_name=$1
case "$set_name" in
  demo | test) ;;
  *) echo "error: set '$set_name' is not one of: demo, test" >&2; exit 2 ;;
esac

rows=()
while IFS=$'\t' read -r row_set pkg check kind used; do
  [[ "$row_set" == \#* ]] && continue
  [ "$set_name" = test ] || [ "$row_set" = demo ] || continue
  rows+=("$pkg"$'\t'"$check"$'\t'"$kind"$'\t'"$used")
done <<<"$TABLE"

[ ${#rows[@]} -gt 0 ] || { echo "error: $0: no packages read for set '$set_name'" >&2; exit 1; }
if [ "$mode" = list ]; then
  printf '%s\n' "${rows[@]}"
  exit 0
fi

present() {
  if [[ "$1" == /* ]]; then [ -x "$1" ]; else command -v "$1" >/dev/null; fi
}

all=() need=() required=() lost=()
for row in "${rows[@]}"; do
  IFS=$'\t' read -r pkg check kind used <<<"$row"
  all+=("$pkg")
  if ! present "$check"; then
    need+=("$pkg")
    if [ "$kind" = required ]; then required+=("$pkg"); else lost+=("$pkg: $used"); fi
  fi
done

tag="system-deps ($set_name)"
if [ ${#need[@]} -eq 0 ]; then
  echo "$tag: Debian packages ${all[*]}: all installed"
  exit 0
fi

apt_cmd="apt-get install -y --no-install-recommends ${need[*]}"
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  if [ "$mode" = dry-run ]; then
    echo "$tag: would install Debian packages as root (apt-get): ${need[*]}"
    exit 0
  fi
  echo "$tag: installing Debian packages as root (apt-get): ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # On a machine that is thrown away after the run (.ci/run sets this), dpkg need not fsync
  # every file it unpacks (docker.io, prometheus: a few hundred MB), which is most of the
  # install's time on a slow disk; a crash mid-install there costs nothing.
  opts=()
  [ "${LLMFLEET_APT_UNSAFE_IO:-0}" = 1 ] && opts=(-o Dpkg::Options::=--force-unsafe-io)
  apt-get install -y -qq --no-install-recommends "${opts[@]}" "${need[@]}" >/dev/null
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then why="no apt-get here"; else why="not root"; fi
echo "$tag: missing Debian packages ${need[*]}; $why, so nothing is installed; install them as root: $apt_cmd" >&2
if [ ${#required[@]} -gt 0 ]; then
  echo "error: $tag: ${required[*]} is required; install it and run again" >&2
  exit 1
fi
# What goes without each one (the tests that need it skip; the feature is off).
for line in "${lost[@]}"; do
  echo "$tag: without $line" >&2
done
