"""Benchmark: the CPU engine behind Ray Serve vs the same decoder called in-process.

    .venv/bin/python benchmarks/bench_local_serving.py            # rich table
    .venv/bin/python benchmarks/bench_local_serving.py --json     # machine-readable
    .venv/bin/python benchmarks/bench_local_serving.py --samples 40 --concurrency 1 8 32

Measures, on the tiny DeepSeek-V3-architecture model:
- latency p50/p95 of one `--tokens`-token completion (greedy, ignore_eos) called directly on
  `BatchedDecoder` in this process, then through the Serve HTTP endpoint (ingress -> engine), and
  the serve/direct ratio: the fixed cost of HTTP + Serve routing + the batcher per request;
- throughput (requests/s, output tokens/s) through the endpoint at each `--concurrency`, with
  `--rounds` requests per client, plus the mean rows per decode forward in the engine during that run.
The cluster is the test one: single-node Ray, 2 logical GPUs, the app at TP 2 with gpu_model L20.
The direct figures are taken before Ray starts, so Ray's idle processes do not skew them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ray_cluster.tiny_model import MODEL_ID, ensure_tiny_model  # noqa: E402

TOKEN_ENV = "LLMFLEET_BENCH_TOKEN"
PROMPT = "A GPU cluster is a group of hosts that each carry several graphics processors."


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))]


def mean_rows(before: dict, after: dict) -> float:
    """Mean rows per decode forward between two step_batch_sizes histograms."""
    delta = {int(k): v - before.get(k, 0) for k, v in after.items()}
    steps = sum(delta.values())
    return round(sum(k * v for k, v in delta.items()) / steps, 2) if steps else 0.0


def bench_direct(model_dir: Path, tokens: int, samples: int) -> list[float]:
    from ray_cluster.engines.decoder import BatchedDecoder, GenRequest

    dec = BatchedDecoder(model_dir, torch_threads=1)
    req = GenRequest(dec.tokenizer(PROMPT)["input_ids"], tokens, temperature=0, ignore_eos=True)
    for _ in range(3):
        dec.generate(req)
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        res = dec.generate(req)
        out.append(time.perf_counter() - t0)
        assert res.completion_tokens == tokens
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body(tokens: int, i: int = 0) -> dict:
    return {
        "model": MODEL_ID,
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "seed": i,
    }


def bench_serve_latency(base: str, token: str, tokens: int, samples: int) -> list[float]:
    import httpx

    out = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        for i in range(3 + samples):
            t0 = time.perf_counter()
            r = c.post("/v1/completions", json=body(tokens, i))
            elapsed = time.perf_counter() - t0
            r.raise_for_status()
            assert r.json()["usage"]["completion_tokens"] == tokens
            if i >= 3:
                out.append(elapsed)
    return out


async def bench_throughput(base: str, token: str, tokens: int, concurrency: int, rounds: int) -> dict:
    import httpx

    lat: list[float] = []
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120, limits=limits
    ) as c:

        async def client(k: int) -> int:
            done = 0
            for j in range(rounds):
                t0 = time.perf_counter()
                r = await c.post("/v1/completions", json=body(tokens, k * rounds + j))
                lat.append(time.perf_counter() - t0)
                r.raise_for_status()
                done += r.json()["usage"]["completion_tokens"]
            return done

        t0 = time.perf_counter()
        toks = await asyncio.wait_for(asyncio.gather(*(client(k) for k in range(concurrency))), 600)
        wall = time.perf_counter() - t0
    n = concurrency * rounds
    return {
        "concurrency": concurrency,
        "requests": n,
        "seconds": round(wall, 3),
        "req_per_s": round(n / wall, 2),
        "tok_per_s": round(sum(toks) / wall, 1),
        "p50_ms": round(pct(lat, 50) * 1000, 1),
        "p95_ms": round(pct(lat, 95) * 1000, 1),
    }


def run(args: argparse.Namespace) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="llmfleet-bench-"))
    token = os.urandom(16).hex()
    os.environ.update({TOKEN_ENV: token, "LLMFLEET_DATA_DIR": str(data_dir)})
    model_dir = ensure_tiny_model(data_dir)
    direct = bench_direct(model_dir, args.tokens, args.samples)

    import ray
    from ray import serve

    from ray_cluster.engines.cpu import build_app

    port = free_port()
    try:
        ray.init(
            address="local",  # a new private cluster, never one already running here
            num_cpus=2,
            num_gpus=2,
            resources={"gpu_model:L20": 2},
            object_store_memory=100 * 1024 * 1024,
            include_dashboard=False,
            log_to_driver=False,
        )
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app_args = {
            "api_token_env": TOKEN_ENV,
            "tensor_parallel_size": 2,
            "gpu_model": "L20",
            "max_model_len": 512,
            "max_batch_size": max(args.concurrency),
            "batch_wait_timeout_s": args.batch_wait,
        }
        serve.run(build_app(app_args), name="bench", route_prefix="/")
        engine = serve.get_deployment_handle("CpuEngine", "bench")
        base = f"http://127.0.0.1:{port}"
        served = bench_serve_latency(base, token, args.tokens, args.samples)
        levels = []
        for c in args.concurrency:
            before = engine.stats.remote().result()["step_batch_sizes"]
            row = asyncio.run(bench_throughput(base, token, args.tokens, c, args.rounds))
            after = engine.stats.remote().result()["step_batch_sizes"]
            row["mean_batch"] = mean_rows(before, after)
            levels.append(row)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            import shutil

            shutil.rmtree(data_dir, ignore_errors=True)

    d50, d95, s50, s95 = pct(direct, 50), pct(direct, 95), pct(served, 50), pct(served, 95)
    return {
        "model": MODEL_ID,
        "tokens": args.tokens,
        "samples": args.samples,
        "direct_ms": {"p50": round(d50 * 1000, 1), "p95": round(d95 * 1000, 1)},
        "serve_ms": {"p50": round(s50 * 1000, 1), "p95": round(s95 * 1000, 1)},
        "ratio": {"p50": round(s50 / d50, 2), "p95": round(s95 / d95, 2)},
        "throughput": levels,
    }


def render(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    lat = Table(title=f"{res['tokens']}-token completion latency, {res['samples']} samples ({res['model']})")
    for col in ("path", "p50 ms", "p95 ms"):
        lat.add_column(col, justify="right" if col != "path" else "left")
    lat.add_row("direct (in-process decoder)", str(res["direct_ms"]["p50"]), str(res["direct_ms"]["p95"]))
    lat.add_row("Ray Serve HTTP endpoint", str(res["serve_ms"]["p50"]), str(res["serve_ms"]["p95"]))
    lat.add_row("ratio serve / direct", f"{res['ratio']['p50']}x", f"{res['ratio']['p95']}x")
    thr = Table(title="Throughput through the endpoint")
    for col in ("concurrency", "requests", "seconds", "req/s", "out tok/s", "p50 ms", "p95 ms", "mean batch"):
        thr.add_column(col, justify="right")
    for r in res["throughput"]:
        thr.add_row(
            *(
                str(r[k])
                for k in (
                    "concurrency",
                    "requests",
                    "seconds",
                    "req_per_s",
                    "tok_per_s",
                    "p50_ms",
                    "p95_ms",
                    "mean_batch",
                )
            )
        )
    console = Console()
    console.print(lat)
    console.print(thr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--rounds", type=int, default=4, help="requests per client at each concurrency")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--batch-wait", type=float, default=0.01, help="batch_wait_timeout_s of the engine")
    args = p.parse_args()
    res = run(args)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        render(res)


if __name__ == "__main__":
    main()
