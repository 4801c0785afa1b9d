"""The planner's leave-one-out table: each published point of infra/catalog/calibration.yaml
predicted by a fit on all the others (infra.stack.perf_fit.leave_one_out), as markdown.

    python benchmarks/calibration_table.py          # the table benchmarks/RESULTS.md carries
    python benchmarks/calibration_table.py --check  # exit 1 if RESULTS.md's copy differs

tests/test_planner.py runs the check, so the table in RESULTS.md is the one the code computes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "RESULTS.md"
BEGIN = "<!-- calibration-table:begin -->"
END = "<!-- calibration-table:end -->"


def _layout(c) -> str:
    fabric = f" over {c.fabric}" if c.nodes > 1 else ""
    return f"{c.nodes} x {c.gpus_per_node} {c.gpu}, TP {c.tensor_parallel} x PP {c.pipeline_parallel}{fabric}"


def table() -> str:
    sys.path.insert(0, str(REPO))
    from infra.catalog import load_catalog
    from infra.stack import perf_fit

    cals = load_catalog().calibrations
    rows = [
        "| point | engine, quantization | layout | in / out, concurrency | measured tok/s | predicted | ratio |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in perf_fit.leave_one_out():
        c = cals[r.id]
        shape = f"{c.input_len:,} / {c.output_len:,}, {c.concurrency} ({c.arrivals})"
        prefill = ", chunked prefill" if c.chunked_prefill else ""
        rows.append(
            f"| `{r.id}` | {c.engine}, {c.quantization}{prefill} | {_layout(c)} | {shape} | "
            f"{r.measured:,.1f} | {r.predicted:,.1f} | {r.ratio:.2f} |"
        )
    for r in perf_fit.ttft_residuals():
        rows.append(
            f"| TTFT `{r.id}` (full fit) | | | | {r.measured:.3f} s | {r.predicted:.3f} s | {r.ratio:.2f} |"
        )
    return "\n".join(rows)


def _in_results() -> str:
    text = RESULTS.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if benchmarks/RESULTS.md's table differs")
    args = ap.parse_args()
    now = table()
    if args.check:
        if _in_results() != now:
            print("benchmarks/RESULTS.md: the leave-one-out table is stale; paste this between the markers:")
            print(now)
            return 1
        return 0
    print(now)
    return 0


if __name__ == "__main__":
    sys.exit(main())
