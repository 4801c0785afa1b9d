"""`llmfleet local up --image REF`: each host's node runs in the node image, as on the real hosts.

Each host gets one container, `docker run -d --name <prefix>-h<i> --restart ...`, with the node
contract's own options (`ray_cluster.contract.docker_run_options`: host network, --ipc host,
the env file with the tokens, the checkpoint mounted read-only, and on the head the directory of
the Serve config it deploys), and the image's entrypoint (`python3 -m ray_cluster.node`) with the
same head/worker arguments the venv mode runs. The deploy is `ray_cluster.node deploy` run
inside the head container (`docker exec`).

Host network means the root network namespace (dockerd's), so image mode runs the loopback
hosts: each host its own 127.0.<k>.<10+i> address and Ray ports, in one network namespace.
Every container carries LLMF_HOST=<host> like a venv-mode host's processes, so the host's
processes (`processes.host_pids`) include the container's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from infra.local.docker import DOCKER, DockerError, docker
from infra.local.hosts import HOST_ENV, Host, HostSet
from infra.local.layout import TOKEN_ENV, Layout, LocalError, Ports, node_argv, omp_threads_bind
from infra.local.state import HostEntry, LocalState
from ray_cluster import contract

LABEL = "llmfleet.cluster"
# What the containers read (the checkpoint, the Serve config) is staged here, not left under the
# state or data dirs: the node runs as the image's uid 1000, and a mount under /root (the image's
# /root is 0700) or in a 0700 directory is unreadable to it. vLLM then takes the missing model
# directory for a Hugging Face repo id and the deploy fails. Production mounts /opt-style paths
# the same way (same path on the host and in the container, read-only).
NODE_ROOT = Path("/var/lib/llmfleet/local")


def node_dir(cluster: str) -> Path:
    return NODE_ROOT / cluster


def stage_model(cluster: str, model_dir: Path) -> Path:
    """A copy of the checkpoint (the tiny model is ~1.5 MB) under node_dir; start_nodes makes
    the whole node_dir readable to the image's uid."""
    import shutil

    dest = node_dir(cluster) / "model"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(model_dir, dest)
    return dest


def _world_readable(root: Path) -> None:
    """root and everything below it readable (0755 dirs, 0644 files), and NODE_ROOT's own
    directories traversable whatever the umask that made them."""
    for p in [NODE_ROOT.parent, NODE_ROOT, root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def resolve_mode(mode: str) -> str:
    """Image mode runs on the host network, i.e. loopback hosts (see the module doc)."""
    if mode not in ("auto", "loopback"):
        raise LocalError(
            f"--mode {mode!r} with --image: allowed auto or loopback (containers use the host network)"
        )
    return "loopback"


def check_image(ref: str) -> None:
    """The image is in the daemon, or pullable (the local registry); one line if not."""
    if docker("image", "inspect", ref, check=False).returncode == 0:
        return
    r = docker("pull", "--quiet", ref, check=False)
    if r.returncode != 0:
        tail = (r.stderr or "").strip().splitlines()[-1:] or [""]
        raise LocalError(f"--image {ref}: cannot pull it ({tail[0]}); build one with `make image`")


def container_name(host: Host) -> str:
    return host.name


def write_env_file(path: Path, env: dict[str, str]) -> Path:
    """The host env file the contract mounts as --env-file: the tokens, never argv."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{k}={v}\n" for k, v in env.items())
    return path


def run_argv(
    role: str,
    host: Host,
    image: str,
    node_args: list[str],
    *,
    cluster: str,
    model_dir: str,
    env_file: Path,
    config_dir: str | None,
    extra_env: dict[str, str],
    temp_dir: str | None = None,
) -> list[str]:
    """`docker run` of one host's node: the contract's options, the image's entrypoint.

    One local addition: Ray's temp dir is mounted from the host (same path), so that Prometheus,
    which runs on the host, reads Ray's service-discovery file there, and Ray's logs outlive the
    containers (`local down` keeps them with --keep-logs, and a failed `up` keeps them)."""
    opts = contract.docker_run_options(
        role, model_dir, device="cpu", config_dir=config_dir, env_file=str(env_file)
    )
    opts = [_memlock_here(o) for o in opts]
    if temp_dir:
        opts.append(("--volume", f"{temp_dir}:{temp_dir}"))
    # Like the production units: the head is not restarted (no GCS fault tolerance), workers are.
    restart = "no" if role == "head" else "unless-stopped"
    env = {HOST_ENV: host.name, **extra_env}
    return [
        DOCKER, "run", "--detach", "--name", container_name(host), "--restart", restart,
        *contract.docker_argv(opts),
        *[x for k, v in env.items() for x in ("--env", f"{k}={v}")],
        "--label", f"{LABEL}={cluster}",
        image, *node_args,
    ]  # fmt: skip


def _memlock_here(opt: tuple[str, str]) -> tuple[str, str]:
    """memlock=-1 (the contract's, for NCCL's pinned memory) cannot exceed this machine's hard
    limit when dockerd cannot raise it (runc: "error setting rlimit type 8"); the CPU engine
    pins nothing, so the local containers get the hard limit instead. Real hosts keep -1."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    if opt == ("--ulimit", "memlock=-1") and hard != resource.RLIM_INFINITY:
        return ("--ulimit", f"memlock={hard}:{hard}")
    return opt


def node_args(argv: list[str]) -> list[str]:
    """The arguments after the node entrypoint, from a venv-mode node argv (layout.node_argv)."""
    n = len(contract.IMAGE_ENTRYPOINT)
    if argv[1:n] != list(contract.IMAGE_ENTRYPOINT[1:]):
        raise ValueError(f"not a ray_cluster.node argv: {argv[:n]}")
    return argv[n:]


def start(argv: list[str]) -> int:
    """Start one container; returns its main process's pid (the host's "supervisor")."""
    name = argv[argv.index("--name") + 1]
    docker("rm", "--force", name, check=False)  # a leftover of a failed run
    try:
        docker(*argv[1:])
    except DockerError as e:
        raise LocalError(f"{name}: {e}") from None
    pid = docker("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
    return int(pid) if pid.isdigit() else 0


def exec_argv(host: Host, argv: list[str]) -> list[str]:
    """Run argv inside the host's container (the deploy: `python3 -m ray_cluster.node deploy`)."""
    return [DOCKER, "exec", container_name(host), *argv]


def logs(host: Host, path: Path) -> None:
    """The container's output into the host's log file (as the supervisor writes it in venv mode)."""
    r = docker("logs", container_name(host), check=False)
    path.write_text((r.stdout or "") + (r.stderr or ""))


def remove(cluster: str) -> list[str]:
    """Remove every container of the cluster (found by label); idempotent, no daemon: nothing."""
    if not os.access(DOCKER, os.X_OK):
        return []
    r = docker("ps", "--all", "--quiet", "--filter", f"label={LABEL}={cluster}", check=False)
    ids = (r.stdout or "").split() if r.returncode == 0 else []
    if ids:
        docker("rm", "--force", *ids, check=False)
    return [f"container {i}" for i in ids]


def start_nodes(
    st: LocalState,
    hs: HostSet,
    layout: Layout,
    ports: Ports,
    token: str,
    image: str,
    paths: dict[str, Path],
    save: Callable[[LocalState, Path], None],
) -> str:
    """One node container per host, pids saved as they start; returns the Serve config path the
    head container deploys (in the config directory the contract mounts on the head)."""

    sd = Path(st.state_dir)
    config_dir = node_dir(st.name) / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    paths["logs"].mkdir(parents=True, exist_ok=True)  # venv mode's supervisors make it; others log there
    serve = config_dir / "serve.yaml"
    serve.write_text(paths["serve"].read_text())
    _world_readable(node_dir(st.name))
    # RAY_AUTH_MODE=disabled as in venv mode: Ray's ports stay on this machine's loopback.
    env_file = write_env_file(sd / f"{st.name}.env", {TOKEN_ENV: token, "RAY_AUTH_MODE": "disabled"})
    temp = Path(st.temp_dir)
    temp.mkdir(parents=True, exist_ok=True)
    temp.chmod(0o1777)  # like /tmp: the image's uid writes Ray's session dirs into it
    head = hs.hosts[0]
    for i, h in enumerate(hs.hosts):
        role = "head" if i == 0 else "worker"
        args = node_args(node_argv(role, h, head, ports, layout, st.temp_dir, python="python3"))
        extra = {}
        if role == "worker":
            extra["VLLM_CPU_OMP_THREADS_BIND"] = omp_threads_bind(layout.ranks_per_host, worker_index=i - 1)
        argv = run_argv(
            role, h, image, args, cluster=st.name, model_dir=st.model_dir, env_file=env_file,
            config_dir=str(config_dir) if role == "head" else None, extra_env=extra,
            temp_dir=st.temp_dir,
        )  # fmt: skip
        pid = start(argv)
        st.hosts.append(
            HostEntry(name=h.name, ip=h.ip, role=role, ranks=0 if role == "head" else layout.ranks_per_host,
                      supervisor_pid=pid, container=container_name(h), log=str(paths["logs"] / f"{h.name}.log"))
        )  # fmt: skip
        save(st, sd)
    return str(serve)


def down(st: LocalState | None, name: str, sd: Path, log_dir: Path) -> list[str]:
    """Keep each container's output in the host's log, then remove the containers and files."""
    import shutil

    if st and log_dir.exists():
        for h in st.hosts:
            if h.container:
                logs(Host(name=h.name, ip=h.ip), log_dir / f"{h.name}.log")
    removed = remove(name)
    for p in (node_dir(name), sd / f"{name}.env"):
        if p.exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(str(p))
    return removed
