"""`llmfleet bench --plot FILE.png`: output tokens/s against TPOT, one point per concurrency,
measured and the planner's prediction side by side (matplotlib, headless Agg backend)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from infra.bench.sweep import BenchError, StepStats


def plot_series(steps: list[StepStats]) -> dict:
    """The data behind the plot: {"measured": [...], "predicted": [...]}, each point
    {"concurrency", "tpot_ms", "output_tokens_per_s"}; steps without a figure are left out."""
    measured = [
        {"concurrency": s.concurrency, "tpot_ms": s.tpot_ms_p50, "output_tokens_per_s": s.output_tokens_per_s}
        for s in steps
        if s.tpot_ms_p50 is not None and s.succeeded
    ]
    predicted = [
        {
            "concurrency": s.concurrency,
            "tpot_ms": s.predicted["tpot_ms"],
            "output_tokens_per_s": s.predicted["output_tokens_per_s"],
        }
        for s in steps
        if s.predicted and s.predicted.get("fits")
    ]
    return {"measured": measured, "predicted": predicted}


def write_plot(steps: list[StepStats], path: Path, title: str) -> dict:
    """Write the PNG; returns the series drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError(
            "--plot needs matplotlib; install the bench extra (uv sync --extra bench) or pip install matplotlib"
        ) from None
    series = plot_series(steps)
    if not series["measured"]:
        raise BenchError(f"--plot {path}: no step succeeded, nothing to draw")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for name, style in (("measured", "o-"), ("predicted", "s--")):
        pts = series[name]
        if not pts:
            continue
        ax.plot([p["tpot_ms"] for p in pts], [p["output_tokens_per_s"] for p in pts], style, label=name)
        for p in pts:
            ax.annotate(f"c={p['concurrency']}", (p["tpot_ms"], p["output_tokens_per_s"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)  # fmt: skip
    ax.set_xlabel("TPOT p50 (ms per output token, one stream)")
    ax.set_ylabel("output tokens/s (cluster)")
    if series["predicted"]:
        # Measured and predicted can be orders of magnitude apart (a CPU cluster against a GPU plan).
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_title(textwrap.fill(title, 90), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return series
