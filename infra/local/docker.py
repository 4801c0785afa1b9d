"""Docker on this machine for the node image: the client, the daemon and a local registry.

- The client is Debian's `/usr/bin/docker` (package docker.io): it builds with BuildKit. A newer
  client may come first in PATH without buildx, and then falls back to the legacy builder.
- `daemon()` uses a running dockerd, or starts one (this machine has no systemd) and stops it
  again when the block ends, so a test leaves nothing behind.
- `registry()` runs Debian's `docker-registry` (the distribution registry) on 127.0.0.1, which
  dockerd treats as an insecure (HTTP) registry by default, so no TLS set-up is needed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

DOCKER = os.environ.get("LLMFLEET_DOCKER", "/usr/bin/docker")
DOCKERD = "/usr/sbin/dockerd"
# Every container here uses the host network and every build --network none, so dockerd needs no
# iptables rules: with them it sets the FORWARD policy to DROP (br_netfilter on), which cuts the
# local cluster's netns hosts off from each other.
DOCKERD_ARGV = [DOCKERD, "--iptables=false"]
REGISTRY = "/usr/bin/docker-registry"
SOCKET = "/var/run/docker.sock"


class DockerError(RuntimeError):
    """One line: what failed and what to do."""


def docker(*args: str, check: bool = True, capture: bool = True, timeout: float | None = None, **kw):
    """Run the BuildKit-capable client; a failure raises DockerError with its last stderr line."""
    env = {**os.environ, "DOCKER_BUILDKIT": "1", **kw.pop("env", {})}
    r = subprocess.run(
        [DOCKER, *args], env=env, text=True, capture_output=capture, timeout=timeout, check=False, **kw
    )
    if check and r.returncode != 0:
        tail = (r.stderr or "").strip().splitlines()[-1:] if capture else []
        raise DockerError(f"docker {args[0]} failed (exit {r.returncode}): {' '.join(tail)}")
    return r


def missing_tools() -> list[str]:
    """The Debian packages this needs that are not installed (scripts/system-deps.sh installs them)."""
    need = {"docker.io": DOCKER, "mmdebstrap": "/usr/bin/mmdebstrap", "docker-registry": REGISTRY}
    return [pkg for pkg, path in need.items() if not os.access(path, os.X_OK)]


def daemon_up() -> bool:
    return os.path.exists(SOCKET) and docker("info", check=False, timeout=20).returncode == 0


@contextlib.contextmanager
def daemon(log: Path | None = None, timeout: float = 60.0) -> Iterator[bool]:
    """A working dockerd for the block; yields whether this call started it (and stops it after)."""
    if daemon_up():
        yield False
        return
    if os.geteuid() != 0 or not os.access(DOCKERD, os.X_OK):
        raise DockerError("no docker daemon and cannot start one (needs root and the docker.io package)")
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(DOCKERD_ARGV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not daemon_up():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DockerError(f"dockerd did not start (exit {proc.poll()}); see {log or 'its output'}")
            time.sleep(0.5)
        yield True
    finally:
        proc.send_signal(signal.SIGTERM)  # dockerd stops its containers and containerd itself
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if not isinstance(out, int):  # subprocess.DEVNULL is an int
            out.close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_registry(storage: Path, port: int, log: Path, new_session: bool = False) -> subprocess.Popen:
    """Debian's distribution registry on 127.0.0.1:port, blobs under storage; returns the process."""
    if not os.access(REGISTRY, os.X_OK):
        raise DockerError(f"{REGISTRY} not found: apt-get install docker-registry")
    storage.mkdir(parents=True, exist_ok=True)
    conf = storage / "config.yml"
    conf.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    out = open(log, "ab")
    proc = subprocess.Popen(
        [REGISTRY, "serve", str(conf)], stdout=out, stderr=subprocess.STDOUT, start_new_session=new_session
    )
    out.close()
    deadline = time.monotonic() + 20
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise DockerError(f"docker-registry did not listen on 127.0.0.1:{port}; see {log}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def registry(storage: Path | None = None) -> Iterator[str]:
    """A registry for the block; yields its address (127.0.0.1:PORT)."""
    tmp = None if storage else tempfile.mkdtemp(prefix="llmfleet-registry-")
    root = storage or Path(tmp or ".")  # tmp is set when storage is not
    port = free_port()
    proc = start_registry(root, port, root / "registry.log")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- `make image`
# `make image` leaves the daemon and the registry running (the printed ref must stay pullable
# for `llmfleet local up --image`); what it started is recorded here so `make image-stop`
# stops exactly that and nothing else.
STARTED_DOCKERD = Path("/run/llmfleet-dockerd.started")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def ensure_daemon(log=print, timeout: float = 60.0) -> None:
    if daemon_up():
        return
    if os.geteuid() != 0 or not os.access(DOCKERD, os.X_OK):
        raise DockerError("no docker daemon and cannot start one (needs root and the docker.io package)")
    logf = open("/var/log/llmfleet-dockerd.log", "ab")
    proc = subprocess.Popen(DOCKERD_ARGV, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    logf.close()
    STARTED_DOCKERD.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while not daemon_up():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise DockerError("dockerd did not start; see /var/log/llmfleet-dockerd.log")
        time.sleep(0.5)
    log(f"started dockerd (pid {proc.pid}); `make image-stop` stops it")


def ensure_registry(storage: Path, log=print) -> str:
    """The registry `make image` pushes to: the one it started before, else a new one."""
    pidfile = storage / "registry.pid"
    if pidfile.exists():
        pid, port = (int(x) for x in pidfile.read_text().split())
        with socket.socket() as s:
            if _alive(pid) and s.connect_ex(("127.0.0.1", port)) == 0:
                return f"127.0.0.1:{port}"
    port = free_port()
    storage.mkdir(parents=True, exist_ok=True)
    # A session of its own, so it outlives `make image`.
    proc = start_registry(storage, port, storage / "registry.log", new_session=True)
    pidfile.write_text(f"{proc.pid} {port}")
    log(f"started docker-registry on 127.0.0.1:{port} (pid {proc.pid}); `make image-stop` stops it")
    return f"127.0.0.1:{port}"


def stop_started(storage: Path) -> list[str]:
    """Stop the registry and the dockerd that `make image` started (and nothing else)."""
    done = []
    pidfile = storage / "registry.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text().split()[0])
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            done.append(f"docker-registry (pid {pid})")
        pidfile.unlink()
    if STARTED_DOCKERD.exists():
        pid = int(STARTED_DOCKERD.read_text())
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            for _ in range(60):
                if not _alive(pid):
                    break
                time.sleep(0.5)
            done.append(f"dockerd (pid {pid})")
        STARTED_DOCKERD.unlink()
    return done
