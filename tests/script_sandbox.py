"""Run a rendered host script for real, with nothing of this machine at stake.

The script runs under the real bash, chrooted into an overlay over a prepared root (in a mount
and pid namespace of its own, plus `--map-root-user` when not root), so every absolute path it
writes (/etc/llmfleet, /run/llmfleet, /var/log, a mount point) lands in a temp dir. Inside there are only bash and
a few text filters and file tools (grep, cut, head, tr, awk, wc, cat, sed, xargs, chmod, mv, dirname, mkdir); every other command the
script calls (aws, docker, systemctl, curl, mount, mkfs.xfs, mdadm, lsblk, nvidia-smi,
python3, ...) reaches bash's `command_not_found_handle`, which records its argv in /calls.log
and answers like a healthy host (an IMDS IP, 8 GPUs, one NVMe disk, a running container).
Commands the scripts probe with `command -v` are stub files calling the same handler.

The injection check: a payload carries `touch /llmfleet-sentinel` (or a `: >` redirect, a
builtin no PATH can stub); the stub `touch` really creates files, so the sentinel existing
afterwards means a value ran as code.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SENTINEL = "/llmfleet-sentinel"
TEXT_TOOLS = (
    "bash",
    "grep",
    "cut",
    "head",
    "tr",
    "awk",
    "wc",
    "cat",
    "sed",
    "sort",
    "xargs",
    "chmod",
    "mv",
    "dirname",
    "mkdir",
    "seq",
    "basename",
)
# Probed with `command -v` by the SSH bootstrap: they must exist as files.
PROBED = (
    "docker",
    "nvidia-smi",
    "nvidia-container-cli",
    "aws",
    "curl",
    "rsync",
    "sudo",
    "python3",
    "systemctl",
)
# Directories a healthy host has (the scripts write files into them with shell redirects).
HOST_DIRS = (
    "tmp", "dev", "run/llmfleet", "etc/llmfleet/prometheus", "etc/docker", "etc/systemd/system",
    "var/log", "var/lib/llmfleet/prometheus-sd", "usr/local/sbin", "sys/class/net/eth1",
)  # fmt: skip

# Bash imports this function into every bash it starts (the script, `bash -c`, llmfleet-apply).
HANDLER = r"""() {
  # one write per call (O_APPEND): stubs that run side by side (xargs -P) never interleave a line
  local line; line=$(printf '%q ' "$@"); printf '%s\n' "$line" >> /calls.log
  local name="$1"; shift
  case "$name" in tee|gunzip) cat; return 0 ;; esac  # filters: stdin through
  # a stub reads its stdin where the real command would (no SIGPIPE for the writer)
  if [ "$name" = base64 ] || [[ " $* " == *" /dev/stdin "* ]] || [[ " $* " == *" --password-stdin "* ]]; then
    cat > /dev/null
  fi
  case "$name" in
    touch) for f in "$@"; do case "$f" in -*) ;; *) { : > "$f"; } 2>/dev/null || true ;; esac; done ;;
    curl)
      local out="" prev=""
      for a in "$@"; do if [ "$prev" = -o ]; then out="$a"; fi; prev="$a"; done
      if [ -n "$out" ]; then if [ -f /canned/curl ]; then cat /canned/curl > "$out" 2>/dev/null || true; fi
      else echo 10.0.0.5; fi ;;
    nvidia-smi) for i in 0 1 2 3 4 5 6 7; do echo "GPU $i: NVIDIA L40S (UUID: GPU-$i)"; done ;;
    lsblk) echo "/dev/nvme1n1 Amazon EC2 NVMe Instance Storage" ;;
    mountpoint|blkid) return 1 ;;
    date) echo 1700000000 ;;
    mktemp) local t="/tmp/mktemp.$RANDOM"  # made, as the real one does: scripts redirect into it
      if [ "${1:-}" = -d ]; then mkdir -p "$t"; else : > "$t"; fi; echo "$t" ;;
    id) if [ "${1:-}" = -u ] || [ "${1:-}" = -g ]; then echo 0; else echo root; fi ;;
    df) printf 'Filesystem 1G-blocks Used Available Capacity Mounted\n/dev/x 99999 1 99999 1%% /\n' ;;
    du) echo "0	/x" ;;
    install) if [ "${1:-}" = -d ]; then  # directories are made: later lines write into them
        local skip=""; for a in "${@:2}"; do
          if [ -n "$skip" ]; then skip=""; continue; fi
          case "$a" in -m|-o|-g) skip=1 ;; -*) ;; *) mkdir -p "$a" 2>/dev/null || true ;; esac
        done
      fi ;;
    realpath) for a in "$@"; do case "$a" in -*) ;; *) echo "$a" ;; esac; done ;;
    sha256sum) echo "0000000000000000000000000000000000000000000000000000000000000000  x" ;;
    sudo) if [ "${1:-}" = -n ]; then shift; fi; "$@" ;;
    docker)
      case "${1:-} ${2:-}" in
        "info --format") echo '{"nvidia":{"path":"nvidia-container-runtime"},"runc":{}}' ;;
        "inspect -f") echo running ;;
        "container inspect") return 1 ;;
      esac ;;
    aws) if [[ " $* " == *" describe-network-interfaces "* ]]; then  # the head's fixed interface
           if [[ "$*" == *InstanceId* ]]; then echo 10.0.0.5; else echo 02:00:00:00:00:01; fi; return 0
         fi
         if [ -f /canned/aws ] && [[ " $* " == *" get-parameter "* ]] && [[ " $* " != *" --with-decryption "* ]]; then
           cat /canned/aws
         elif [[ " $* " == *" get-parameter "* ]]; then echo "tok3n"; fi ;;
    base64) if [ -f /canned/base64 ]; then cat /canned/base64; fi ;;
    # the docker daemon step (infra/boot/metrics.py) prints what dockerd needs
    python3) if [[ " $* " == *" /etc/docker/daemon.json "* ]]; then echo unchanged; fi ;;
  esac
  return 0
}"""


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    calls: list[str]  # each stubbed command's argv, `printf %q` quoted, in call order
    injected: bool  # the sentinel exists: a value ran as code


def _libs(binary: str) -> set[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    return set(re.findall(r"(/\S+)", out))


def make_root(root: Path) -> None:
    """A root with bash, the text tools, their libraries and the host's directories."""
    files: set[str] = set()
    for tool in TEXT_TOOLS:
        path = shutil.which(tool)
        if path:
            real = os.path.realpath(path)
            files |= {real, *_libs(real)}
            dest = root / "bin" / tool
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(real, dest)
    for f in files:
        dest = root / f.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)
    (root / "bin" / "sh").symlink_to("bash")  # `xargs sh -c` in the SSH bootstrap
    for d in HOST_DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    # the head's fixed interface as the kernel lists it (the stub aws gives the same MAC)
    (root / "sys/class/net/eth1/address").write_text("02:00:00:00:00:01\n")
    (root / "dev" / "null").write_text("")  # a plain file: writes vanish in the temp dir
    (root / "proc").mkdir(exist_ok=True)  # a fresh procfs of the run's own pid namespace
    (root / "dev" / "fd").symlink_to("/proc/self/fd")  # bash's process substitution
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        (root / "dev" / name).symlink_to(f"/proc/self/fd/{i}")
    (root / "canned").mkdir(exist_ok=True)
    stubs = root / "stubs"
    stubs.mkdir(exist_ok=True)
    for name in PROBED:
        stub = stubs / name
        stub.write_text(f'#!/bin/bash\ncommand_not_found_handle {name} "$@"\n')
        stub.chmod(0o755)


def run(
    template: Path, script: str, args: list[str] = (), stdin: str = "", canned: dict | None = None
) -> Run:
    """`bash /script.sh ARGS` in a fresh overlay over `template` (made by make_root): every
    write of the run lands in its own upper directory, removed afterwards (20 s at most)."""
    work = Path(tempfile.mkdtemp(prefix="llmfleet-run-"))
    upper, scratch, merged = work / "upper", work / "work", work / "merged"
    for d in (upper, scratch, merged):
        d.mkdir()
    (upper / "script.sh").write_text(script)
    (upper / "calls.log").write_text("")
    if canned:
        (upper / "canned").mkdir()
        for name, text in canned.items():
            (upper / "canned" / name).write_text(text)
    prefix = ["unshare", "--mount", "--pid", "--fork"]
    if os.geteuid() != 0:
        prefix.insert(1, "--map-root-user")
    mount, chroot = shutil.which("mount"), shutil.which("chroot")
    inner = (
        f'{mount} -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4" '
        f'&& {mount} -t proc proc "$4/proc" && cd "$4" '
        f'&& PATH=/stubs:/bin exec {chroot} "$4" /bin/bash /script.sh "${{@:5}}"'
    )
    env = {
        "PATH": os.environ.get(
            "PATH", "/usr/sbin:/usr/bin:/sbin:/bin"
        ),  # unshare's; the script's is /stubs:/bin
        "HOME": "/tmp",
        "LC_ALL": "C",
        "BASH_FUNC_command_not_found_handle%%": HANDLER,
    }
    proc = subprocess.run(
        [
            *prefix,
            "bash",
            "-c",
            inner,
            "sandbox",
            str(template),
            str(upper),
            str(scratch),
            str(merged),
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
    )
    calls = (upper / "calls.log").read_text().splitlines()
    injected = (upper / SENTINEL.lstrip("/")).exists()
    shutil.rmtree(work, ignore_errors=True)
    return Run(proc.returncode, proc.stdout, proc.stderr, calls, injected)


@functools.cache
def available() -> bool:
    """The whole sandbox works here (unshare with mount and pid namespaces, overlayfs, procfs;
    a user namespace when not root): one trivial run says so."""
    if not all(shutil.which(t) for t in ("unshare", "ldd", "mount", "chroot")):
        return False
    root = Path(tempfile.mkdtemp(prefix="llmfleet-probe-"))
    try:
        make_root(root)
        probe = run(root, "echo ok > /dev/stdout\n")
        return probe.returncode == 0 and probe.stdout.strip() == "ok"
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(root, ignore_errors=True)
