"""The local cluster's image mode, without docker: each host's `docker run` argv is the node
contract's options + the image + the same node arguments as the venv mode (the real run is
tests/test_image_build.py)."""

import pytest

from infra.local import containers, hosts
from infra.local.layout import LocalError, node_argv, plan_layout, plan_ports
from ray_cluster import contract


def _plan():
    hs = hosts.plan_hosts("c1", 2, "loopback", 5)
    return hs, plan_layout(2, 2, 2), plan_ports("loopback", 5, 8123)


@pytest.mark.parametrize("role", ["head", "worker"])
def test_run_argv_is_the_contracts_options_the_image_and_the_node_args(tmp_path, role):
    hs, layout, ports = _plan()
    host = hs.hosts[0 if role == "head" else 1]
    venv = node_argv(role, host, hs.hosts[0], ports, layout, "/tmp/llmf-c1", python="python3")
    args = containers.node_args(venv)
    assert venv == [*contract.IMAGE_ENTRYPOINT, *args]
    env_file = tmp_path / "node.env"
    cfg = "/state/c1-config" if role == "head" else None
    argv = containers.run_argv(
        role, host, "reg/llmfleet-node@sha256:ab", args, cluster="c1", model_dir="/m",
        env_file=env_file, config_dir=cfg, extra_env={"X": "1"}, temp_dir="/tmp/llmf-c1",
    )  # fmt: skip
    opts = contract.docker_argv(
        [containers._memlock_here(o) for o in
         contract.docker_run_options(role, "/m", device="cpu", config_dir=cfg, env_file=str(env_file))]
    )  # fmt: skip
    i = argv.index("--restart")
    assert argv[i + 2 : i + 2 + len(opts)] == opts  # right after name and restart policy
    assert "--gpus" not in argv  # device=cpu
    assert ("/state/c1-config:/state/c1-config:ro" in argv) == (role == "head")  # Serve config dir
    # The one local addition, after the contract's: Ray's temp dir from the host (SD file, logs).
    assert argv[i + 2 + len(opts) : i + 4 + len(opts)] == ["--volume", "/tmp/llmf-c1:/tmp/llmf-c1"]
    assert argv[-len(args) - 1 :] == ["reg/llmfleet-node@sha256:ab", *args]
    assert f"{hosts.HOST_ENV}={host.name}" in argv  # host_pids/teardown find the container's processes
    assert argv[i + 1] == ("no" if role == "head" else "unless-stopped")


def test_env_file_is_private(tmp_path):
    p = containers.write_env_file(tmp_path / "n.env", {"A": "1", "B": "two"})
    assert p.read_text() == "A=1\nB=two\n" and p.stat().st_mode & 0o777 == 0o600


def test_image_mode_is_loopback_only():
    assert containers.resolve_mode("auto") == containers.resolve_mode("loopback") == "loopback"
    with pytest.raises(LocalError, match=r"--mode 'netns' with --image: allowed auto or loopback"):
        containers.resolve_mode("netns")


def test_node_args_refuses_other_commands():
    with pytest.raises(ValueError):
        containers.node_args(["python3", "-m", "something.else", "head"])


def test_memlock_is_the_contracts_unless_this_machine_caps_it():
    import resource

    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    got = containers._memlock_here(("--ulimit", "memlock=-1"))
    assert got == (
        ("--ulimit", "memlock=-1")
        if hard == resource.RLIM_INFINITY
        else ("--ulimit", f"memlock={hard}:{hard}")
    )
    assert containers._memlock_here(("--ipc", "host")) == ("--ipc", "host")
