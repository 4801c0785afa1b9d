#!/usr/bin/env bash
# The CPU base of images/Dockerfile: Debian bookworm (Python 3.11, as the project and the cp311
# torch wheel) from the Debian mirror with mmdebstrap, plus vLLM's CPU build and the pinned
# Python packages of requirements.txt in a venv at /opt/venv, turned into an image with
# `docker import` (no registry, no Docker Hub). Debian packages and PyPI (+ the torch wheel on
# disk) only.
#
#   usage: images/cpu-base/build.sh TAG
#   env:   DOCKER (default /usr/bin/docker), UV (default uv), WHEELS (default /opt/wheels),
#          DEBIAN_MIRROR (default http://deb.debian.org/debian)
#
# The venv is filled by uv on this machine, not by pip inside a container: the packages come
# from uv's cache (which the project's own install already filled from PyPI), so this takes
# seconds where pip in a container takes minutes. uv downloads whatever the cache lacks. The
# venv is relocatable and points at /usr/bin/python3.11, the same path on this bookworm host
# and in the image.
set -euo pipefail
# All in one function, called on the last line: bash parses it whole before running it, so an
# edit to this file during a build cannot change what the build runs.
main() {
tag=${1:?usage: build.sh TAG}
here=$(cd "$(dirname "$0")" && pwd)
docker=${DOCKER:-/usr/bin/docker}
uv=${UV:-uv}
wheels=${WHEELS:-/opt/wheels}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
python=/usr/bin/python3.11

[ -x "$python" ] || { echo "error: $python not found: the venv is made with this bookworm host's Python 3.11" >&2; exit 2; }
command -v mmdebstrap >/dev/null || { echo "error: mmdebstrap not found (apt-get install mmdebstrap)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/llmfleet-cpu-base.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root

# python3 for the interpreter; iproute2 for ray_cluster.nic (`ip`); libnuma1 for vLLM's CPU
# kernels (_C.so links it); g++ and python3.11-dev for torch.compile's inductor, which vLLM runs
# at engine start unless enforce_eager (PP 2 on CPU stays compiled); passwd for the Dockerfile's
# useradd; procps for ps. No docs.
t0=$(date +%s)
# shellcheck disable=SC2016  # "$1" is the root directory; mmdebstrap's hook expands it
mmdebstrap --quiet --variant=minbase --mode=root \
  --include=python3.11,python3.11-dev,g++,iproute2,libnuma1,passwd,procps,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  bookworm "$root" "deb $mirror bookworm main" "deb $mirror bookworm-updates main"
t1=$(date +%s)
echo "cpu-base: debian root $((t1 - t0)) s" >&2

"$uv" venv --quiet --relocatable --seed --python "$python" "$root/opt/venv"
# --no-deps: requirements.txt is the complete, locked set (uv.lock's closure, `make image-lock`);
# --require-hashes: every file must match uv.lock's hash, from the cache or downloaded.
"$uv" pip install --quiet --no-config --python "$root/opt/venv/bin/python" --no-deps --require-hashes \
  --find-links "$wheels" --compile-bytecode -r "$here/requirements.txt"
t2=$(date +%s)
echo "cpu-base: python packages $((t2 - t1)) s" >&2

tar --numeric-owner -C "$root" -c . | "$docker" import \
  --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --message "llmfleet CPU base (images/cpu-base)" - "$tag" >/dev/null
echo "cpu-base: docker import $(($(date +%s) - t2)) s" >&2
}

main "$@"
