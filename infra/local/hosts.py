"""Several "hosts" on one machine, for tests and `llmfleet local up`.

As root, each host is a network namespace `<prefix>-h<i>` with its own IP, its `eth0` a veth
whose peer sits on a Linux bridge in the root namespace. The root namespace holds `.1` on
the bridge, so it reaches every host and every host reaches every other.

Without root, hosts are plain processes on distinct loopback addresses 127.0.<k>.<10+i>
(the whole 127/8 routes to `lo` on Linux); ports that Ray binds on every node must then
differ per host, which `Host.ray_port_args` provides.

Every process started with `run_in_host` carries `LLMF_HOST=<namespace-or-name>` in its
environment (Ray daemons inherit it), so `teardown(prefix)` finds them in either mode, from
any process. A JSON state file records what was created.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

HOST_ENV = "LLMF_HOST"
DEFAULT_SUBNET_BASE = "10.213"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,20}$")


class HostsError(RuntimeError):
    """One-line reason a host set could not be created."""


@dataclass
class Host:
    name: str  # namespace name when namespaced
    ip: str
    netns: str | None = None
    ifname: str = "eth0"  # interface holding ip inside the host
    veth: str | None = None  # root-side veth end
    ray_port_args: list[str] = field(default_factory=list)


@dataclass
class HostSet:
    cluster: str
    prefix: str
    mode: str  # "netns" or "loopback"
    subnet: str
    root_ip: str | None
    bridge: str | None
    hosts: list[Host]
    state_file: str | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> HostSet:
        hosts = [Host(**h) for h in data["hosts"]]
        return cls(**{**data, "hosts": hosts})


def is_root() -> bool:
    return os.geteuid() == 0


def prefix_for(cluster: str) -> str:
    return f"llmf-{cluster}"


def _short(cluster: str) -> str:
    # Interface names are capped at 15 chars, so links use a hash of the cluster name.
    return hashlib.sha1(cluster.encode()).hexdigest()[:6]


def bridge_name(cluster: str) -> str:
    return f"lfb{_short(cluster)}"


def veth_name(cluster: str, i: int) -> str:
    return f"lfv{_short(cluster)}h{i}"


def plan_hosts(
    cluster: str, n: int, mode: str, subnet_index: int = 0, subnet_base: str = DEFAULT_SUBNET_BASE
) -> HostSet:
    """The names and addresses for n hosts (pure; nothing is created)."""
    if not _NAME_RE.match(cluster):
        raise HostsError(f"cluster name {cluster!r} must match {_NAME_RE.pattern}")
    if not 1 <= n <= 200:
        raise HostsError(f"host count {n} must be between 1 and 200")
    if not 0 <= subnet_index <= 255:
        raise HostsError(f"subnet index {subnet_index} must be between 0 and 255")
    prefix = prefix_for(cluster)
    if mode == "netns":
        subnet = ipaddress.ip_network(f"{subnet_base}.{subnet_index}.0/24")
        hosts = [
            Host(
                name=f"{prefix}-h{i}",
                ip=str(subnet[10 + i]),
                netns=f"{prefix}-h{i}",
                veth=veth_name(cluster, i),
            )
            for i in range(n)
        ]
        return HostSet(cluster, prefix, mode, str(subnet), str(subnet[1]), bridge_name(cluster), hosts)
    if mode == "loopback":
        subnet = ipaddress.ip_network(f"127.0.{subnet_index}.0/24")
        hosts = []
        for i in range(n):
            # Ports every Ray node binds at a fixed default; distinct per host on a shared stack.
            base = 20000 + subnet_index * 1000 + i * 10
            args = [
                f"--dashboard-agent-listen-port={base}",
                f"--dashboard-agent-grpc-port={base + 1}",
                f"--runtime-env-agent-port={base + 2}",
                f"--metrics-export-port={base + 3}",
                f"--ray-client-server-port={base + 4}",
            ]
            hosts.append(Host(name=f"{prefix}-h{i}", ip=str(subnet[10 + i]), ifname="lo", ray_port_args=args))
        return HostSet(cluster, prefix, mode, str(subnet), None, None, hosts)
    raise HostsError(f"mode {mode!r} is not one of: netns, loopback")


def _ip(*parts: str | None, check: bool = True) -> subprocess.CompletedProcess:
    # A netns host's names (netns, veth, bridge) are None in loopback mode: never an argument.
    args = [p for p in parts if p is not None]
    if len(args) != len(parts):
        raise HostsError(f"`ip {' '.join(map(str, parts))}`: a name of a netns host is missing")
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise HostsError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc


def subnet_in_use(subnet: str) -> str | None:
    """The device that already routes an overlapping subnet in the root namespace, if any."""
    net = ipaddress.ip_network(subnet)
    routes = json.loads(_ip("-j", "route", "show").stdout or "[]")
    for r in routes:
        dst = r.get("dst", "")
        if dst and dst != "default":
            try:
                if ipaddress.ip_network(dst, strict=False).overlaps(net):
                    return r.get("dev", "?")
            except ValueError:
                continue
    return None


def state_path(state_dir: str | os.PathLike, cluster: str) -> Path:
    return Path(state_dir) / f"hosts-{cluster}.json"


def create(
    cluster: str,
    n: int,
    state_dir: str | os.PathLike | None = None,
    mode: str | None = None,
    subnet_index: int = 0,
    subnet_base: str = DEFAULT_SUBNET_BASE,
) -> HostSet:
    """Create n hosts (namespaces when root, else loopback addresses). Cleans up on failure."""
    mode = mode or ("netns" if is_root() else "loopback")
    hs = plan_hosts(cluster, n, mode, subnet_index, subnet_base)
    if state_dir is not None:
        path = state_path(state_dir, cluster)
        path.parent.mkdir(parents=True, exist_ok=True)
        hs.state_file = str(path)
        # Written before creating anything, so a crash mid-way is still torn down.
        path.write_text(json.dumps(hs.to_json(), indent=2))
    if mode == "loopback":
        return hs
    if not is_root():
        raise HostsError("mode 'netns' needs root; use mode 'loopback'")
    teardown(hs.prefix, cluster=cluster, keep_state=True)  # leftovers of an earlier run
    used = subnet_in_use(hs.subnet)
    if used:
        if hs.state_file:
            Path(hs.state_file).unlink(missing_ok=True)
        raise HostsError(f"subnet {hs.subnet} is already routed via {used}; pick another subnet index")
    try:
        plen = ipaddress.ip_network(hs.subnet).prefixlen
        _ip("link", "add", hs.bridge, "type", "bridge")
        _ip("addr", "add", f"{hs.root_ip}/{plen}", "dev", hs.bridge)
        _ip("link", "set", hs.bridge, "up")
        _allow_forwarding(hs.bridge or "")
        for h in hs.hosts:
            _ip("netns", "add", h.netns)
            _ip("link", "add", h.veth, "type", "veth", "peer", "name", f"{h.veth}p")
            _ip("link", "set", f"{h.veth}p", "netns", h.netns)
            _ip("-n", h.netns, "link", "set", f"{h.veth}p", "name", h.ifname)
            _ip("-n", h.netns, "addr", "add", f"{h.ip}/{plen}", "dev", h.ifname)
            _ip("-n", h.netns, "link", "set", h.ifname, "up")
            _ip("-n", h.netns, "link", "set", "lo", "up")
            _ip("-n", h.netns, "route", "add", "default", "via", hs.root_ip)
            _ip("link", "set", h.veth, "master", hs.bridge)
            _ip("link", "set", h.veth, "up")
    except BaseException:
        teardown(hs.prefix, cluster=cluster, state_dir=state_dir)
        raise
    return hs


def _forward_rule(bridge: str) -> list[str]:
    return [
        "FORWARD",
        "-i",
        bridge,
        "-o",
        bridge,
        "-m",
        "comment",
        "--comment",
        f"llmfleet {bridge}",
        "-j",
        "ACCEPT",
    ]


def _bridge_netfilter_on() -> bool:
    try:
        return Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text().strip() == "1"
    except OSError:
        return False  # br_netfilter not loaded: bridged frames never reach iptables


def _allow_forwarding(bridge: str) -> None:
    """Host-to-host frames on our bridge pass iptables' FORWARD chain when br_netfilter is loaded,
    and Docker sets that chain's policy to DROP: without this rule the hosts cannot reach each
    other once a dockerd has run on the machine. Scoped to this bridge; teardown removes it."""
    iptables = shutil.which("iptables")
    if iptables and _bridge_netfilter_on():
        subprocess.run([iptables, "-w", "-I", *_forward_rule(bridge)], check=True, capture_output=True)


def _drop_forwarding(bridge: str) -> bool:
    iptables = shutil.which("iptables")
    removed = False
    while (
        iptables
        and subprocess.run([iptables, "-w", "-D", *_forward_rule(bridge)], capture_output=True).returncode
        == 0
    ):
        removed = True
    return removed


def load(state_dir: str | os.PathLike, cluster: str) -> HostSet | None:
    path = state_path(state_dir, cluster)
    if not path.exists():
        return None
    hs = HostSet.from_json(json.loads(path.read_text()))
    hs.state_file = str(path)
    return hs


def run_in_host(
    host: Host, argv: list[str], env: dict[str, str] | None = None, **popen_kw
) -> subprocess.Popen:
    """Start argv inside the host (netns exec when namespaced); env is added to os.environ."""
    full_env = {**os.environ, **(env or {}), HOST_ENV: host.name}
    cmd = ["ip", "netns", "exec", host.netns, *argv] if host.netns else list(argv)
    return subprocess.Popen(cmd, env=full_env, **popen_kw)


def _netns_names() -> list[str]:
    proc = _ip("netns", "list", check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _pids_tagged(prefix: str) -> set[int]:
    """PIDs whose environment has LLMF_HOST=<prefix>-h*."""
    want = f"{HOST_ENV}={prefix}-h".encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(var.startswith(want) for var in environ.split(b"\0")):
            pids.add(int(entry.name))
    return pids


def _pids_in_netns(names: list[str]) -> set[int]:
    pids = set()
    for ns in names:
        out = _ip("netns", "pids", ns, check=False).stdout
        pids.update(int(p) for p in out.split() if p.isdigit())
    return pids


def terminate(find: Callable[[], set[int]], grace: float = 5.0, kill_wait: float = 3.0) -> None:
    """SIGTERM what `find()` returns, then SIGKILL whatever is left after `grace` s; each time
    wait (at most `grace` / `kill_wait` s) until `find()` comes back empty."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_wait)):
        pids = find()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and find():
            time.sleep(0.1)


def teardown(
    prefix: str,
    cluster: str | None = None,
    state_dir: str | os.PathLike | None = None,
    keep_state: bool = False,
) -> list[str]:
    """Kill every process of the hosts, delete namespaces, veths and bridge. Idempotent.

    Returns what was removed (for logs). Safe when nothing exists.
    """
    removed: list[str] = []
    if cluster is None and prefix.startswith("llmf-"):
        cluster = prefix[len("llmf-") :]
    hs = load(state_dir, cluster) if (state_dir is not None and cluster) else None
    root = is_root()
    namespaces = [ns for ns in _netns_names() if ns.startswith(f"{prefix}-h")] if root else []

    def find() -> set[int]:
        return (_pids_in_netns(namespaces) | _pids_tagged(prefix)) - {os.getpid()}

    terminate(find)
    if root:
        for ns in namespaces:
            if _ip("netns", "del", ns, check=False).returncode == 0:
                removed.append(f"netns {ns}")
        links = set()
        if cluster:
            links.add(bridge_name(cluster))
            links.update(veth_name(cluster, i) for i in range(len(namespaces)))
        if hs and hs.bridge:
            links.add(hs.bridge)
            links.update(h.veth for h in hs.hosts if h.veth)
        # veth ends vanish with their namespace peer; the bridge does not.
        for link in sorted(links):
            if _ip("link", "del", link, check=False).returncode == 0:
                removed.append(f"link {link}")
            if link.startswith("lfb") and _drop_forwarding(link):
                removed.append(f"iptables FORWARD rule for {link}")
    if state_dir is not None and cluster and not keep_state:
        path = state_path(state_dir, cluster)
        if path.exists():
            path.unlink()
            removed.append(f"state {path}")
    return removed
