"""infra/local/state.py: the one model of `<state dir>/<name>.json`. Round trip through the file,
a file the previous version (an untyped dict) wrote, and the one-line errors of a corrupt file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.local import cluster, layout
from infra.local.layout import LocalError
from infra.local.state import (
    GcsRedis,
    HostEntry,
    LoraStore,
    PrometheusRecord,
    Supervised,
    load_state,
    public_doc,
    save_state,
)
from infra.status.local import local_status
from tests.local_state_fixtures import new_state

# A state file as the previous `local up` wrote it (its dict's keys, every optional record set):
# a cluster started before this version must still be readable by `status`, `chat` and `down`.
PREVIOUS = {
    "name": "old",
    "mode": "netns",
    "state_dir": "/root/.cache/llmfleet/local",
    "created": 1796000000.5,
    "layout": {"hosts": 3, "tp": 1, "pp": 1, "trainers": 1, "replicas": 1},
    "routing": "prefix",
    "engine": "vllm (CPU build) via Ray Serve LLM",
    "ports": {"gcs": 6379, "dashboard": 8265, "http": 8000, "redis": 6380, "s3": 6381},
    "endpoint": "http://10.213.0.10:8000/v1",
    "model": "llmfleet/tiny-llama",
    "model_dir": "/root/.cache/llmfleet/models/tiny-llama",
    "token_file": "/root/.cache/llmfleet/local/old.token",
    "token_env": "LLMFLEET_API_TOKEN",
    "serve_config": "/root/.cache/llmfleet/local/old-serve.yaml",
    "image": None,
    "options": {"engine_args": {"max_model_len": 256}, "serve_options": {}},
    "temp_dir": "/tmp/llmf-old",
    "restart_delay_s": 3.0,
    "hostset": {
        "cluster": "old",
        "prefix": "llmf-old",
        "mode": "netns",
        "subnet": "10.213.0.0/24",
        "root_ip": "10.213.0.1",
        "bridge": "lfb1a2b3c",
        "hosts": [
            {"name": "llmf-old-h0", "ip": "10.213.0.10", "netns": "llmf-old-h0", "ifname": "eth0",
             "veth": "lfv1a2b3ch0", "ray_port_args": []},
            {"name": "llmf-old-h1", "ip": "10.213.0.11", "netns": "llmf-old-h1", "ifname": "eth0",
             "veth": "lfv1a2b3ch1", "ray_port_args": []},
            {"name": "llmf-old-h2", "ip": "10.213.0.12", "netns": "llmf-old-h2", "ifname": "eth0",
             "veth": "lfv1a2b3ch2", "ray_port_args": []},
        ],
        "state_file": "/root/.cache/llmfleet/local/hosts-old.json",
    },
    "hosts": [
        {"name": "llmf-old-h0", "ip": "10.213.0.10", "role": "head", "ranks": 0, "supervisor_pid": 101,
         "log": "/l/h0.log"},
        {"name": "llmf-old-h1", "ip": "10.213.0.11", "role": "worker", "ranks": 1, "supervisor_pid": None,
         "log": "/l/h1.log"},
        {"name": "llmf-old-h2", "ip": "10.213.0.12", "role": "trainer", "ranks": 0, "supervisor_pid": 103,
         "log": "/l/h2.log"},
    ],
    "ready": True,
    "lora": {"supervisor_pid": 104, "endpoint": "http://10.213.0.10:6381", "adapters": "s3://a/b", "log": "/l/s"},
    "prometheus": {"missing": "prometheus not found in PATH; apt-get install prometheus"},
    "sample": "hello",
    "watcher": {"supervisor_pid": 105, "log": "/l/watch.log"},
    "asleep": True,
}  # fmt: skip

# The first local clusters wrote no routing, engine, options, layout trainers nor redis/s3 ports.
OLDEST = {
    **{k: v for k, v in PREVIOUS.items() if k not in ("routing", "engine", "options", "lora", "asleep")},
    "layout": {"hosts": 3, "tp": 1, "pp": 1, "replicas": 2},
    "ports": {"gcs": 6379, "dashboard": 8265, "http": 8000},
}


def _without_nulls(v: object) -> object:
    if isinstance(v, dict):
        return {k: _without_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_without_nulls(x) for x in v]
    return v


def _write(sd: Path, name: str, doc: object) -> Path:
    path = sd / f"{name}.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_round_trip_of_what_up_records(tmp_path):
    st = new_state(tmp_path, "rt", token="s3cret")
    st.hosts.append(
        HostEntry(name="llmf-rt-h0", ip="127.0.1.10", role="head", ranks=0, supervisor_pid=7, log="/l")
    )
    st.watcher = Supervised(supervisor_pid=8, log="/w")
    st.gcs_redis = GcsRedis(supervisor_pid=9, port=6380, log="/r")
    st.lora = LoraStore(supervisor_pid=10, endpoint="http://127.0.1.10:6381", adapters="s3://x/y", log="/s")
    st.prometheus = PrometheusRecord(
        pid=11, url="http://127.0.1.10:9090", config="/c", data_dir="/d", log="/p"
    )
    st.ready, st.sample, st.reused = True, "hi", True
    save_state(st, tmp_path)

    back = load_state("rt", tmp_path)
    assert back is not None
    assert back.model_dump() == {**st.model_dump()}  # every recorded field, nested records too
    assert back.reused is False  # in memory only: a later `up` decides it again
    assert "reused" not in json.loads((tmp_path / "rt.json").read_text())
    # the typed parts come back as the objects the readers use
    assert (
        back.ports == st.ports
        and back.hostset == st.hostset
        and back.layout.layout() == layout.Layout(2, 1, 1)
    )
    assert public_doc(back) == {
        "endpoint": st.endpoint,
        "token": "s3cret",
        "model": st.model,
        "hosts": [{"name": "llmf-rt-h0", "ip": "127.0.1.10"}],
    }


def test_a_file_the_previous_version_wrote_still_loads(tmp_path):
    _write(tmp_path, "old", PREVIOUS)
    st = load_state("old", tmp_path)
    assert st is not None
    assert [h.role for h in st.hosts] == ["head", "worker", "trainer"] and st.hosts[1].supervisor_pid is None
    assert st.layout.layout() == layout.Layout(3, 1, 1, trainers=1) and st.ports.s3 == 6381
    assert st.lora is not None and st.lora.adapters == "s3://a/b"
    assert st.prometheus is not None and st.prometheus.url is None and st.prometheus.missing
    assert (
        st.options.engine_args == {"max_model_len": 256}
        and st.asleep
        and st.base_url == "http://10.213.0.10:8000"
    )
    assert st.hostset.hosts[2].netns == "llmf-old-h2"
    # written back, the same values under the same keys (a `sleep` on an old cluster changes only
    # what it sets); the records' unset optional keys come back as null
    save_state(st, tmp_path)
    assert _without_nulls(json.loads((tmp_path / "old.json").read_text())) == _without_nulls(PREVIOUS)


def test_the_oldest_files_get_the_defaults_their_readers_assumed(tmp_path):
    _write(tmp_path, "old", OLDEST)
    st = load_state("old", tmp_path)
    assert st is not None
    assert (st.routing, st.engine, st.layout.trainers, st.lora, st.asleep) == (
        "pow2",
        layout.ENGINE,
        0,
        None,
        False,
    )
    assert (st.ports.redis, st.ports.s3) == (6380, 6381)
    assert st.options.engine_args == {} == st.options.serve_options


@pytest.mark.parametrize(
    ("doc", "what"),
    [
        ("{not json", "not JSON: "),
        ("[]", "state = []: allowed: "),
        ({k: v for k, v in PREVIOUS.items() if k != "endpoint"}, "(endpoint: required and missing)"),
        ({**PREVIOUS, "bogus": 1}, "(unknown key bogus)"),
        (
            {**PREVIOUS, "hosts": [{**PREVIOUS["hosts"][0], "supervisor_pid": "abc"}]},  # type: ignore[dict-item]
            "(hosts[0].supervisor_pid = 'abc': allowed: a",
        ),
        (
            {**PREVIOUS, "hosts": [{**PREVIOUS["hosts"][0], "role": "gpu"}]},  # type: ignore[dict-item]
            "(hosts[0].role = 'gpu': allowed: 'head', 'worker' or 'trainer')",
        ),
        ({**PREVIOUS, "watcher": {"log": "/w"}}, "(watcher.supervisor_pid: required and missing)"),
    ],
)
def test_a_corrupt_file_is_one_line_naming_the_key(tmp_path, doc, what):
    path = _write(tmp_path, "bad", doc)
    with pytest.raises(LocalError) as e:
        load_state("bad", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"state file {path} is corrupt (")
    assert what in msg and msg.endswith("; run `llmfleet local down` to clean up")


def test_a_wrong_value_set_in_memory_fails_where_it_is_set(tmp_path):
    st = new_state(tmp_path)
    with pytest.raises(ValueError, match="supervisor_pid"):
        st.hosts.append(HostEntry(name="h", ip="1", role="head", ranks=0, supervisor_pid="x", log="/l"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="asleep"):
        st.asleep = "later"  # type: ignore[assignment]


def test_no_file_is_no_cluster(tmp_path):
    assert load_state("absent", tmp_path) is None


def test_local_status_and_down_on_a_corrupt_file(tmp_path, monkeypatch):
    """The commands that read the file: `status` says it in one line, `down` still cleans up."""
    monkeypatch.setenv("LLMFLEET_STATE_DIR", str(tmp_path))
    path = _write(tmp_path, "bad", {**PREVIOUS, "name": "bad", "bogus": 1})
    with pytest.raises(LocalError, match=r"is corrupt \(unknown key bogus\)"):
        local_status("bad", tmp_path, probe=False)
    removed = cluster.down("bad")
    assert f"state {path}" in removed and not path.exists()
