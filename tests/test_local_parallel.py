"""TP 2 x PP 2 in one replica: `llmfleet local up --hosts 2 --tp 2 --pp 2`, the production app.

On CPU, vLLM keeps a replica's ranks on its host (its Ray executor refuses CPU; Ray Serve LLM
runs vLLM's multiprocessing executor), so the four ranks are four worker processes on the one
worker host, bound to their cores. One cluster for the module: it checks that vLLM really runs
at TP 2 x PP 2 (its own rank processes and the tensor-parallel world), that greedy tokens equal
transformers' on the same weights, and that the preflight reserved the engine's bundles.
"""

from __future__ import annotations

import json
import os
import socket
import time
import zlib
from pathlib import Path

import openai
import pytest

from infra.local import hosts, layout, processes, state
from infra.local.tiny_model import MODEL_ID
from tests.test_local import ROOT, assert_engine_computes_the_checkpoint, cli, free_port

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    mode = layout.resolve_mode(os.environ.get("LLMFLEET_LOCAL_TEST_MODE", "auto"), ROOT)
    name = f"lp{os.getpid() % 100000}"
    seed = zlib.crc32(f"{name}{time.time()}".encode())
    subnet = 90 + seed % 9 if mode == "netns" else 3 + seed % 40
    port = free_port()
    sd = tmp_path_factory.mktemp("par-state")
    env = {state.STATE_DIR_ENV: str(sd), "LLMFLEET_DATA_DIR": str(tmp_path_factory.mktemp("par-data"))}
    try:
        r = cli("up", "--name", name, "--hosts", "2", "--tp", "2", "--pp", "2", "--subnet", str(subnet),
                "--port", str(port), "--mode", mode, "--json", env=env, timeout=900)  # fmt: skip
        assert r.returncode == 0, f"local up failed: {r.stderr[-2000:]}"
        doc = json.loads(r.stdout)
        yield {"name": name, "env": env, "doc": doc, "state": json.loads((sd / f"{name}.json").read_text())}
    finally:
        cli("down", "--name", name, env=env, timeout=120)
        hosts.teardown(hosts.prefix_for(name), cluster=name, state_dir=sd)


def _engine_logs(st: dict) -> str:
    logs = Path(st["temp_dir"]) / "session_latest" / "logs"
    return "\n".join(p.read_text(errors="replace") for p in logs.glob("worker-*.err"))


def test_vllm_runs_the_replica_at_tp2_pp2_on_the_worker_host(cluster):
    st = cluster["state"]
    worker = state.hostset(st).hosts[1]
    # Four rank processes of vLLM's multiprocessing executor, all on the worker host.
    ranks = [p for p in processes.host_pids(worker) if processes._comm(p).startswith("VLLM::Worker")]
    assert len(ranks) == 4, [processes._comm(p) for p in processes.host_pids(worker)]
    text = _engine_logs(st)
    assert "tensor_parallel_size=2, pipeline_parallel_size=2" in text
    assert "MultiprocExecutor" in text and "world_size=4" in text


def test_greedy_completion_is_transformers_across_the_four_ranks(cluster):
    d, st = cluster["doc"], cluster["state"]
    client = openai.OpenAI(base_url=d["endpoint"], api_key=d["token"], max_retries=0, timeout=120)
    assert_engine_computes_the_checkpoint(client, st["model_dir"], "Pipeline parallelism splits the model")
    chat = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
    )
    assert chat.usage.completion_tokens >= 1


def test_preflight_reserved_the_engines_bundles(cluster):
    deploy_log = Path(cluster["state"]["state_dir"]) / "logs" / cluster["name"] / "deploy.log"
    line = next(ln for ln in deploy_log.read_text().splitlines() if ln.startswith("preflight ok:"))
    # one replica on one host: TP 4 (its TP x PP ranks) x PP 1, an exact all-reduce over 4 ranks
    assert "TP=4 PP=1" in line and "sum 10/10" in line, line


def test_port_is_free_after_down(cluster):
    r = cli("down", "--name", cluster["name"], env=cluster["env"])
    assert r.returncode == 0
    head_ip = cluster["doc"]["hosts"][0]["ip"]
    with pytest.raises(OSError):
        socket.create_connection((head_ip, int(cluster["doc"]["endpoint"].rsplit(":", 1)[1].split("/")[0])), 2)
