"""A local cluster's state as `local up` writes it, for tests that need the file without a cluster
(`local chat` against a stand-in server, the state model's own tests)."""

from __future__ import annotations

from pathlib import Path

from infra.local import cluster, hosts
from infra.local.layout import plan_layout, plan_ports
from infra.local.state import LocalState, state_paths, write_secret


def new_state(sd: Path, name: str = "t", token: str = "tok", **fields: object) -> LocalState:
    """What `up` records before it starts any node (cluster._new_state itself), its token file
    written; `fields` then set as `up` sets them later (endpoint, hosts, watcher, ...)."""
    o = cluster.UpOptions(hosts=2, name=name, mode="loopback")
    lay = plan_layout(o.hosts, o.tp, o.pp)
    hs = hosts.plan_hosts(o.name, o.hosts, "loopback", subnet_index=1)
    paths = state_paths(sd, name)
    write_secret(paths["token"], token)
    st = cluster._new_state(
        o, "loopback", sd, paths, lay, plan_ports("loopback", 1, o.port), hs, o.model, sd / "m"
    )
    for key, value in fields.items():
        setattr(st, key, value)  # validate_assignment: a wrong type fails here, not in the test
    return st
