"""infra/local/rollout.py without a cluster: the node config's one-line errors and the local hosts
as the production planner orders them (the cluster run is tests/test_faults.py)."""

from __future__ import annotations

import pytest

from infra.local import rollout as lr
from infra.local.layout import LocalError
from infra.local.state import HostEntry
from infra.rollout import plan as p
from tests.local_state_fixtures import new_state


def test_node_config_parses_and_bad_values_are_one_line():
    assert lr.parse_node_config('{"ray_args": ["--object-store-memory=1000"]}', "w:2").ray_args == [
        "--object-store-memory=1000"
    ]
    assert lr.parse_node_config("{}", "w:1").ray_args == []
    for text, needle in (
        ("{", "w:3: not JSON"),
        ('{"ray_args": ["--x; rm -rf /"]}', "ray_args[0] = '--x; rm -rf /'"),
        ('{"ray_args": ["object-store"]}', "ray_args[0] = 'object-store'"),
        ('{"ray_args": ["--num-cpus=1\\n"]}', "ray_args[0] = '--num-cpus=1\\n'"),
        ('{"env": {}}', "env"),
    ):
        with pytest.raises(LocalError) as e:
            lr.parse_node_config(text, "w:3")
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_worker_hosts_are_one_replica_each_in_the_planners_order(tmp_path):
    st = new_state(tmp_path, hosts=[
        HostEntry(name=f"h{i}", ip=f"10.0.0.{i}", role=role, ranks=0, supervisor_pid=None, log="/l")
        for i, role in enumerate(("head", "worker", "trainer", "worker"))
    ])  # fmt: skip
    hosts = lr.worker_hosts(st)
    assert [(h.instance_id, h.replica) for h in hosts] == [("h1", 0), ("h3", 1)]  # never a trainer
    steps = p.plan_rollout(hosts, ["worker"])
    assert [(s.host.instance_id, s.gate) for s in steps] == [
        ("h1", p.GATE_REPLICA),
        ("h3", p.GATE_DEPLOYMENT),
    ]
    assert lr.parameter_name("fx", "worker") == "/llmfleet/local-fx/node/worker"
