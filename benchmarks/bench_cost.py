"""Benchmark: start-up (`--help`, `plan`) and `llmfleet cost --stack prod --json` at 3, 8 and 32 workers.

    python benchmarks/bench_cost.py                       # table (any venv with the project installed)
    python benchmarks/bench_cost.py --json                # machine-readable
    python benchmarks/bench_cost.py --repeat 5 --workers 3 8 16 32
    python benchmarks/bench_cost.py --baseline ../other   # also time another checkout, same run

Every CLI figure is a fresh `sys.executable -m infra.cli` process with PYTHONPATH set to the
checkout, so it runs from any checkout with the project's venv (not only `.venv` at the repo
root), and `--baseline DIR` times another checkout (an older commit) interleaved with this one,
run for run, so both see the same machine load.
- `cli_s`: the whole command as a user runs it (a fresh process: imports, offline capture of the
  real program under Pulumi mocks, pricing, JSON).
- `cli_cpu_s`: that process's CPU time (user + sys), which other load on the machine does not inflate.
- `inproc_s`: capture + price in one warm process (this checkout), so the per-worker growth is not
  hidden by the fixed interpreter/import cost. A least-squares line t = a + b*workers is fitted to
  it; R^2 near 1 and small residuals mean linear growth.
- `price_only_s`: infra.cost.estimate alone (pricing + JSON) on the captured resources.
Each figure is the median of --repeat runs. Exit 1 if this checkout's 32-worker CLI run takes
BUDGET_S or more, or `--help` / `plan` take START_BUDGET_S or more.
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
# The in-process figures import this checkout's code, not whichever checkout the venv's
# editable install points at (the CLI figures set PYTHONPATH for the same reason).
sys.path.insert(0, str(REPO))
BUDGET_S = 2.0  # cost --stack prod at 32 workers
START_BUDGET_S = 0.5  # --help, plan
PYCACHE = ""  # --pycache DIR
STARTUP = {
    "--help": ["--help"],
    "plan": ["plan", "--model", "deepseek-r1", "--gpu", "L20"],
}


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_llmfleet(repo: Path, args: list[str], ok=(0,)) -> tuple[float, float, str]:
    """(wall s, CPU s, stdout) of one `llmfleet ARGS` process of checkout `repo`. CPU time does
    not grow when other work loads the machine, so it is reported beside the wall time."""
    cmd = [sys.executable, "-m", "infra.cli", *args]
    env = {**os.environ, "PYTHONPATH": str(repo), "COLUMNS": "80"}
    if PYCACHE:  # bytecode cached as a default Python does after the first run
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = PYCACHE
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, check=False)
    elapsed, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode not in ok:
        sys.exit(f"{repo}: {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return elapsed, cpu, proc.stdout


def run_cli(repo: Path, workers: int) -> tuple[float, float, dict]:
    args = ["cost", "--stack", "prod", "--json", "-c", f"llmfleet:workerCount={workers}"]
    wall, cpu, out = run_llmfleet(repo, args, ok=(0, 4))  # 4 = over budget, still a complete estimate
    return wall, cpu, json.loads(out)


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


def _bytecode_state() -> str:
    """Whether the children find pulumi_aws compiled: with neither a __pycache__ in the venv nor
    leave to write one, each run compiles its 1.3 MB generated modules again."""
    import importlib.util

    spec = importlib.util.find_spec("pulumi_aws")
    cached = spec is not None and spec.origin and (Path(spec.origin).parent / "ec2" / "__pycache__").is_dir()
    if cached:
        return "venv bytecode present"
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return "none (PYTHONDONTWRITEBYTECODE set, venv without __pycache__): every run compiles"
    return "written by the first run"


def _median(xs: list[float], places: int = 3) -> float:
    return round(statistics.median(xs), places)


def measure(repos: list[Path], workers: list[int], repeat: int) -> dict[str, dict]:
    """Per checkout: start-up rows and cost rows, the checkouts' runs interleaved."""
    raw: dict[str, dict] = {str(r): {"startup": {}, "cost": {}} for r in repos}
    for _ in range(repeat):
        for name, args in STARTUP.items():
            for r in repos:
                t, c, _out = run_llmfleet(r, args)
                raw[str(r)]["startup"].setdefault(name, []).append((t, c))
        for n in workers:
            for r in repos:
                t, c, doc = run_cli(r, n)
                raw[str(r)]["cost"].setdefault(n, []).append((t, c, doc))
    out: dict[str, dict] = {}
    for r, d in raw.items():
        startup = [
            {"command": k, "wall_s": _median([t for t, _ in v]), "cpu_s": _median([c for _, c in v])}
            for k, v in d["startup"].items()
        ]
        cost_rows = []
        for n, v in d["cost"].items():
            doc = v[-1][2]
            cost_rows.append(
                {
                    "workers": n,
                    "resources_priced": len(doc["projects"][0]["breakdown"]["resources"]),
                    "totalMonthlyCost": doc["totalMonthlyCost"],
                    "cli_s": _median([t for t, _, _ in v]),
                    "cli_cpu_s": _median([c for _, c, _ in v]),
                }
            )
        out[r] = {"startup": startup, "cost": cost_rows}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[3, 8, 32])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="another checkout to time in the same run (repeatable)",
    )
    ap.add_argument(
        "--pycache",
        metavar="DIR",
        default="",
        help="children write and reuse bytecode under DIR (PYTHONPYCACHEPREFIX), after one warm-up run; "
        "default: the environment as it is (with PYTHONDONTWRITEBYTECODE=1 and a venv installed "
        "without bytecode, every run compiles pulumi_aws from source)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    global PYCACHE
    PYCACHE = args.pycache

    repos = [REPO, *(b.resolve() for b in args.baseline)]
    if PYCACHE:
        for r in repos:  # write the bytecode once, outside the timed runs
            run_cli(r, args.workers[0])
    load_before = os.getloadavg()
    per_repo = measure(repos, args.workers, args.repeat)
    run_inproc(args.workers[0])  # warm imports and caches once
    inproc = {n: [run_inproc(n) for _ in range(args.repeat)] for n in args.workers}
    rows = per_repo[str(REPO)]["cost"]
    for r in rows:
        r["inproc_s"] = _median([t for t, _ in inproc[r["workers"]]], 4)
        r["price_only_s"] = _median([p for _, p in inproc[r["workers"]]], 5)
    xs = [float(r["workers"]) for r in rows]
    a, b, r2 = linear_fit(xs, [r["inproc_s"] for r in rows])
    ca, cb, cr2 = linear_fit(xs, [r["cli_s"] for r in rows])
    worst = max(r["cli_s"] for r in rows if r["workers"] == max(args.workers))
    start_worst = max(s["wall_s"] for s in per_repo[str(REPO)]["startup"])
    result = {
        "checkouts": per_repo,
        "rows": rows,
        "inproc_fit": {"intercept_s": round(a, 4), "s_per_worker": round(b, 5), "r2": round(r2, 4)},
        "cli_fit": {"intercept_s": round(ca, 4), "s_per_worker": round(cb, 5), "r2": round(cr2, 4)},
        "budget_s": BUDGET_S,
        "start_budget_s": START_BUDGET_S,
        "bytecode": f"cached under {PYCACHE}" if PYCACHE else _bytecode_state(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "within_budget": worst < BUDGET_S and start_worst < START_BUDGET_S,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result, repos, args)
    return 0 if result["within_budget"] else 1


def _print(result: dict, repos: list[Path], args) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    st = Table(title=f"start-up (median of {args.repeat} fresh processes)")
    for col in ("checkout", "command", "wall s", "CPU s"):
        st.add_column(col, justify="left" if col in ("checkout", "command") else "right")
    for r in repos:
        for s in result["checkouts"][str(r)]["startup"]:
            st.add_row(str(r), s["command"], f"{s['wall_s']:.3f}", f"{s['cpu_s']:.3f}")
    console.print(st)
    ct = Table(title=f"llmfleet cost --stack prod --json (median of {args.repeat})")
    for col in ("checkout", "workers", "priced", "USD/month", "CLI s", "CLI CPU s"):
        ct.add_column(col, justify="left" if col == "checkout" else "right")
    for r in repos:
        for row in result["checkouts"][str(r)]["cost"]:
            ct.add_row(
                str(r),
                str(row["workers"]),
                str(row["resources_priced"]),
                row["totalMonthlyCost"],
                f"{row['cli_s']:.3f}",
                f"{row['cli_cpu_s']:.3f}",
            )
    console.print(ct)
    it = Table(title=f"this checkout, in one warm process (median of {args.repeat})")
    for col in ("workers", "capture + price s", "fit s", "pricing s"):
        it.add_column(col, justify="right")
    fit = result["inproc_fit"]
    for row in result["rows"]:
        line = fit["intercept_s"] + fit["s_per_worker"] * row["workers"]
        it.add_row(str(row["workers"]), f"{row['inproc_s']:.4f}", f"{line:.4f}", f"{row['price_only_s']:.4f}")
    console.print(it)
    la, lb = result["load_average_before"], result["load_average_after"]
    console.print(f"load average before / after: {la[0]:.2f} / {lb[0]:.2f}; bytecode: {result['bytecode']}")
    cf = result["cli_fit"]
    console.print(
        f"in-process: {fit['intercept_s']:.4f} s + {fit['s_per_worker'] * 1000:.2f} ms/worker "
        f"(R^2 {fit['r2']:.3f}); CLI: {cf['intercept_s']:.3f} s + {cf['s_per_worker'] * 1000:.2f} ms/worker "
        f"(R^2 {cf['r2']:.3f}); within budget ({BUDGET_S} s at {max(args.workers)} workers, "
        f"{START_BUDGET_S} s start-up): {result['within_budget']}"
    )


if __name__ == "__main__":
    sys.exit(main())
