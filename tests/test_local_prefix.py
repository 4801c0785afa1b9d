"""llmfleet:routing prefix on a real local cluster: requests sharing a long prefix land on one
replica, counted by vLLM's own prefix-cache hit counter on each worker host.

Its own cluster (tests/test_local.py's runs the default router, which its spread, sweep and tune
tests need): 3 hosts = 2 replicas, `--routing prefix`, and the tiny Llama model. The tiny
DeepSeek model is MLA, and vLLM's CPU build turns prefix caching off for MLA on a CPU without
AMX, so its engines report no prefix-cache queries at all; the Llama twin (same tokenizer, chat
template, heads and layers) has plain attention and caches.

Left out: the same requests on a second cluster with the default router (pow2). It would cost
another cluster start (60-90 s) in CI; instead the same cluster shows its router spreading
requests that share no prefix over both replicas, with no cache hits anywhere, and then the
shared prefix concentrating on one, with all the hits there. (pow2 with one request at a time
picks between two idle replicas at random: all 8 on one would be a 1 in 128 chance.)
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import openai
import pytest
import yaml

from infra.local import state, status
from infra.local.tiny_model import LLAMA_MODEL_ID, TINY_MODEL_IDS
from tests.test_local import cli, own_cluster

# ~570 tokens of the tiny tokenizer: 4 full blocks of vLLM's CPU KV cache (128 tokens each)
SHARED_PREFIX = " ".join(["Tensor parallelism splits every layer across the GPUs of one host."] * 40)
BLOCK = 128
N = 8


def test_up_refuses_an_unknown_model_in_one_line_before_starting_anything(tmp_path):
    r = cli("up", "--name", "lpbad", "--hosts", "3", "--model", "llmfleet/nope",
            env={state.STATE_DIR_ENV: str(tmp_path)})  # fmt: skip
    assert r.returncode == 2, r.stderr  # a usage error, as click's own (checked before any host)
    assert r.stderr.strip() == f"error: --model 'llmfleet/nope': allowed: {', '.join(TINY_MODEL_IDS)}"
    assert not list(tmp_path.iterdir())  # no state, no host


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from own_cluster(tmp_path_factory, "lp", "--routing", "prefix", "--model", LLAMA_MODEL_ID)


def _settled(
    st: state.LocalState, workers: list[str], done: float, quiet: float = 11.0, timeout: float = 90.0
) -> dict:
    """{counter: {worker IP: value}} for vLLM's finished-request and prefix-cache counters once
    `done` requests finished in all and nothing moved for `quiet` s (Ray's metrics agents export
    every ~10 s: a fresh read can lag the requests)."""
    names = (status.REQUESTS_FINISHED, status.PREFIX_CACHE_HITS, status.PREFIX_CACHE_QUERIES)
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        vals = {k: status.engine_counter_by_host(st, k) for k in names}
        vals = {k: {w: v.get(w, 0.0) for w in workers} for k, v in vals.items()}
        if vals != last:
            last, since = vals, time.monotonic()
        elif sum(vals[status.REQUESTS_FINISHED].values()) >= done and time.monotonic() - since >= quiet:
            return vals
        time.sleep(1)
    raise AssertionError(f"vLLM's counters did not reach {done} finished requests and settle: {last}")


def _delta(after: dict, before: dict) -> dict:
    return {k: {w: after[k][w] - before[k][w] for w in after[k]} for k in after}


@pytest.mark.ray
def test_a_shared_prefix_lands_on_one_replica_by_vllms_prefix_cache_hits(cluster):
    from infra.rayconf.serve_config import PREFIX_ROUTER

    d, st = cluster["doc"], cluster["st"]
    assert d["model"] == LLAMA_MODEL_ID and st.routing == "prefix"
    llm = yaml.safe_load(Path(st.serve_config).read_text())["applications"][0]["args"]["llm_configs"][0]
    assert llm["deployment_config"]["request_router_config"]["request_router_class"] == PREFIX_ROUTER
    assert llm["engine_kwargs"]["enable_prefix_caching"] is True
    workers = [h.ip for h in st.hosts[1:]]
    client = openai.OpenAI(base_url=d["endpoint"], api_key=d["token"], max_retries=0, timeout=60)

    def ask(prompt: str) -> None:  # one at a time: the load stays even, so the router goes by prefix
        c = client.completions.create(model=LLAMA_MODEL_ID, prompt=prompt, max_tokens=2, temperature=0)
        assert c.usage.prompt_tokens >= 4 * BLOCK, c.usage

    start = _settled(st, workers, done=0)
    done0 = sum(start[status.REQUESTS_FINISHED].values())

    # 1. no shared prefix (a fresh first block each): the router balances, nothing is a hit
    for _ in range(N):
        ask(f"{uuid.uuid4().hex} {SHARED_PREFIX}")
    mid = _settled(st, workers, done=done0 + N)
    spread = _delta(mid, start)
    assert sorted(spread[status.REQUESTS_FINISHED].values()) != [0, N], f"no spread: {spread}"
    assert all(v >= 1 for v in spread[status.REQUESTS_FINISHED].values()), spread
    assert all(v > 0 for v in spread[status.PREFIX_CACHE_QUERIES].values()), spread  # caching is on
    assert sum(spread[status.PREFIX_CACHE_HITS].values()) == 0, spread

    # 2. one long shared prefix: every request on one replica, its cache hits there only
    for i in range(N):
        ask(f"{SHARED_PREFIX} Question {i}?")
    end = _settled(st, workers, done=done0 + 2 * N)
    shared = _delta(end, mid)
    finished, hits = shared[status.REQUESTS_FINISHED], shared[status.PREFIX_CACHE_HITS]
    assert sorted(finished.values()) == [0, N], f"the shared prefix went to both replicas: {shared}"
    chosen = max(finished, key=finished.get)
    # the first request fills the cache; each later one finds at least its 4 full prefix blocks
    assert hits[chosen] >= (N - 1) * 4 * BLOCK, shared
    assert all(hits[w] == 0 for w in workers if w != chosen), shared
