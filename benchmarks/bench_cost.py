"""Benchmark: wall time of `llmfleet cost --stack prod --json` at 3, 8 and 32 workers.

    .venv/bin/python benchmarks/bench_cost.py            # table
    .venv/bin/python benchmarks/bench_cost.py --json     # machine-readable
    .venv/bin/python benchmarks/bench_cost.py --repeat 5 --workers 3 8 16 32

Two measurements per worker count:
- `cli_s`: the whole command as a user runs it (a fresh process: imports, offline capture of the
  real program under Pulumi mocks, pricing, JSON). This is what the 3 s budget at 32 workers is for.
- `cli_cpu_s`: that process's CPU time (user + sys), which other load on the machine does not inflate.
- `inproc_s`: capture + price in one warm process, so the per-worker growth is not hidden by the
  fixed interpreter/import cost. A least-squares line t = a + b*workers is fitted to it; R^2 near 1
  and small residuals mean linear growth.
- `price_only_s`: infra.cost.estimate alone (pricing + JSON) on the captured resources.
Each figure is the median of --repeat runs. Exit 1 if the 32-worker CLI run takes 3 s or more.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = [str(REPO / ".venv" / "bin" / "llmfleet")]
BUDGET_S = 3.0


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_cli(workers: int) -> tuple[float, float, dict]:
    """(wall s, CPU s, JSON) of one `llmfleet cost` process. CPU time does not grow when other
    work loads the machine, so it is reported beside the wall time."""
    cmd = [*CLI, "cost", "--stack", "prod", "--json", "-c", f"llmfleet:workerCount={workers}"]
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    elapsed, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode not in (0, 4):  # 4 = over budget, still a complete estimate
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return elapsed, cpu, json.loads(proc.stdout)


def run_inproc(workers: int) -> tuple[float, float]:
    """(capture + price s, price-only s) in this warm process."""
    import datetime as dt

    from infra.catalog import load_catalog
    from infra.cost import estimate as cost
    from infra.cost import infracost
    from infra.cost.pricing import snapshot_book
    from infra.program.offline import capture

    t0 = time.perf_counter()
    cap = capture("prod", [f"llmfleet:workerCount={workers}"])
    t1 = time.perf_counter()
    est = cost.price_resources(
        cap.resources,
        snapshot_book(cap.config.region),
        weights_gib=load_catalog().models[cap.config.model].checkpoint_gib,
    )
    info = infracost.ProjectInfo("prod", ".", "pulumi_program")
    proj = infracost.project(info, infracost.breakdown(est), infracost.summary(est))
    infracost.document([proj], infracost.RunMetadata(), dt.datetime.now(dt.UTC))
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """(intercept, slope, R^2) of the least-squares line."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return intercept, slope, 1 - ss_res / ss_tot if ss_tot else 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[3, 8, 32])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    rows = []
    run_inproc(args.workers[0])  # warm imports and caches once
    for n in args.workers:
        cli_times, cli_cpu, doc = [], [], {}
        for _ in range(args.repeat):
            t, c, doc = run_cli(n)
            cli_times.append(t)
            cli_cpu.append(c)
        runs = [run_inproc(n) for _ in range(args.repeat)]
        inproc, price_only = [r[0] for r in runs], [r[1] for r in runs]
        resources = doc["projects"][0]["breakdown"]["resources"]
        rows.append(
            {
                "workers": n,
                "resources_priced": len(resources),
                "totalMonthlyCost": doc["totalMonthlyCost"],
                "cli_s": round(statistics.median(cli_times), 3),
                "cli_cpu_s": round(statistics.median(cli_cpu), 3),
                "inproc_s": round(statistics.median(inproc), 4),
                "price_only_s": round(statistics.median(price_only), 5),
            }
        )
    xs = [float(r["workers"]) for r in rows]
    a, b, r2 = linear_fit(xs, [r["inproc_s"] for r in rows])
    ca, cb, cr2 = linear_fit(xs, [r["cli_s"] for r in rows])
    worst = max(r["cli_s"] for r in rows if r["workers"] == max(args.workers))
    result = {
        "rows": rows,
        "inproc_fit": {"intercept_s": round(a, 4), "s_per_worker": round(b, 5), "r2": round(r2, 4)},
        "cli_fit": {"intercept_s": round(ca, 4), "s_per_worker": round(cb, 5), "r2": round(cr2, 4)},
        "budget_s": BUDGET_S,
        "load_average": os.getloadavg(),
        "within_budget": worst < BUDGET_S,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"llmfleet cost --stack prod (median of {args.repeat})")
        for col in (
            "workers",
            "priced",
            "USD/month",
            "CLI s",
            "CLI CPU s",
            "in-process s",
            "fit s",
            "pricing s",
        ):
            t.add_column(col, justify="right")
        for r in rows:
            t.add_row(
                str(r["workers"]),
                str(r["resources_priced"]),
                r["totalMonthlyCost"],
                f"{r['cli_s']:.3f}",
                f"{r['cli_cpu_s']:.3f}",
                f"{r['inproc_s']:.4f}",
                f"{a + b * r['workers']:.4f}",
                f"{r['price_only_s']:.4f}",
            )
        console = Console()
        console.print(t)
        console.print(f"load average during the run: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        console.print(
            f"in-process: {a:.4f} s + {b * 1000:.2f} ms/worker (R^2 {r2:.3f}); "
            f"CLI: {ca:.3f} s + {cb * 1000:.2f} ms/worker (R^2 {cr2:.3f}); "
            f"{max(args.workers)} workers {'<' if result['within_budget'] else '>='} {BUDGET_S} s"
        )
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
