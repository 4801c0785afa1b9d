"""The production rollout (infra/rollout/) on a local cluster: the same planner, state machine and
SSM parameter versions/labels (`run_rollout`, `role_versions`, `SsmRunner.restore/promote`, on
any SSM endpoint: a moto server here), with a local executor in place of SSM Run Command.

A local host's *node config* is a small JSON document kept as the role's SSM parameter (the
local stand-in for the node script): extra `ray start` arguments for the host's node. Applying
version V to a host (what `llmfleet-apply NAME:V rollout` does on EC2) reads that version,
restarts the host's supervised node with it, and returns when the node is alive in the Ray
cluster again (infra/boot/node_apply.py's contract), or fails with the node log's last lines.

Only worker hosts are rolled here: the local head's node carries no script of its own (its Serve
config is rolled by rewriting the file its deploy watcher follows).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from infra.local import hosts
from infra.local.layout import LocalError, node_argv
from infra.local.processes import host_pids, last_lines, pid_alive, start_node
from infra.local.state import LocalState, load_state, save_state
from infra.local.status import host_alive
from infra.rollout import plan as p
from infra.rollout.ssm import SsmRunner
from infra.validation import first_error
from ray_cluster.node import last_error_line

# One `ray start` option: `--name` or `--name=value`, no whitespace. The value goes to `ray start`
# as one argv element (never a shell), and Ray validates it: a bad one is a node that fails to
# start, which is what a rollout must catch.
RayArg = Annotated[str, StringConstraints(pattern=r"^--[a-z][a-z0-9-]*(=\S*)?$")]

NODE_ALIVE_TIMEOUT_S = 300.0
# Like systemd's StartLimitBurst: a node that failed to start this many times in a row since the
# apply fails the apply at once (a bad config fails the same way each time; a slow start, on a
# loaded machine, fails `ray start`'s 30 s registration wait now and then and succeeds later).
START_FAILURES = 3
EXITED = "supervisor: node exited"


class LocalNodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ray_args: list[RayArg] = []


def parameter_name(cluster: str, role: str) -> str:
    return f"/llmfleet/local-{cluster}/node/{role}"


def parse_node_config(text: str, where: str) -> LocalNodeConfig:
    """A parameter's value -> LocalNodeConfig; one line naming the key, the value and what is allowed."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise LocalError(f"{where}: not JSON ({e.msg} at line {e.lineno}); allowed: a JSON object") from None
    try:
        return LocalNodeConfig.model_validate(doc)
    except ValidationError as e:
        f = first_error(e)
        raise LocalError(f"{where}: {f.path or 'value'} = {f.input!r}: {f.allowed()}") from None


def worker_hosts(st: LocalState) -> list[p.Host]:
    """The cluster's worker hosts as the planner sees them: one replica per worker host (stage 0);
    the "instance id" is the host's name, which is how every message names it."""
    workers = [h for h in st.hosts if h.role == "worker"]
    return [p.Host("worker", h.name, f"worker-{i}", i, 0) for i, h in enumerate(workers)]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(v.decode(errors="replace").split("=", 1) for v in raw.split(b"\0") if b"=" in v)


class LocalRunner(SsmRunner):
    """SsmRunner's parameter writes (restore, promote) on `ssm`; `apply` restarts a local host's
    node with the parameter version instead of sending SSM Run Command."""

    def __init__(
        self,
        ssm: Any,
        name: str,
        state_dir: Path,
        *,
        alive_timeout_s: float = NODE_ALIVE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        super().__init__(ssm, clock=clock, sleep=sleep)
        self.name = name
        self.state_dir = state_dir
        self.alive_timeout_s = alive_timeout_s

    def _state(self) -> LocalState:
        st = load_state(self.name, self.state_dir)
        if st is None:
            raise LocalError(f"no local cluster {self.name!r} in {self.state_dir}")
        return st

    def apply(self, host: p.Host, parameter: str, version: int) -> tuple[bool, str]:
        try:
            value = self.ssm.get_parameter(Name=f"{parameter}:{version}")["Parameter"]["Value"]
            cfg = parse_node_config(value, f"{parameter}:{version}")
            log, offset = self.restart_node(host.instance_id, cfg)
        except LocalError as e:
            return False, str(e)
        return self._wait_alive(host.instance_id, log, offset)

    def restart_node(self, host_name: str, cfg: LocalNodeConfig) -> tuple[Path, int]:
        """Stop the host's supervised node (gracefully: the supervisor stops `ray start --block`)
        and start it again with the config's extra `ray start` arguments, in the same environment."""
        st = self._state()
        entry = st.host(host_name)
        if entry is None or entry.role != "worker":
            raise LocalError(f"host {host_name}: not a worker host of local cluster {self.name!r}")
        hs = st.hostset
        host = next(h for h in hs.hosts if h.name == host_name)
        prefix = hosts.prefix_for(self.name)
        old = entry.supervisor_pid
        alive = old is not None and pid_alive(old, prefix)
        env = _environ(old) if alive and old is not None else {}

        if alive and old is not None:
            os.kill(old, signal.SIGTERM)
        hosts.terminate(lambda: host_pids(host), grace=20.0, kill_wait=5.0)
        argv = node_argv("worker", host, hs.hosts[0], st.ports, st.layout.layout(), st.temp_dir)
        argv += [f"--ray-arg={a}" for a in cfg.ray_args]
        log = Path(entry.log)
        offset = log.stat().st_size if log.exists() else 0
        entry.supervisor_pid = start_node(host, argv, env, st.restart_delay_s, log)
        save_state(st, self.state_dir)
        return log, offset

    def _wait_alive(self, host_name: str, log: Path, offset: int) -> tuple[bool, str]:

        deadline = self.clock() + self.alive_timeout_s
        while True:
            self.sleep(2.0)
            if host_alive(self._state(), host_name):
                return True, ""
            with open(log, errors="replace") as f:
                f.seek(offset)
                text = f.read()
            runs = text.split(EXITED)
            if len(runs) > START_FAILURES:
                why = last_error_line(runs[-2]) or "no output"
                return False, f"node failed to start {len(runs) - 1} times: {why}"
            if self.clock() >= deadline:
                why = last_lines(log, 2) or "no output"
                return False, f"node not alive in the Ray cluster after {self.alive_timeout_s:.0f} s: {why}"
