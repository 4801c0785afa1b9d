"""Hardware comparison: one row per catalog GPU, its smallest fitting layout, cost and speed.

`llmfleet plan --compare` shows these rows; each is a `planner.plan` of the model on that GPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from infra.catalog import load_catalog
from infra.stack import perf
from infra.stack.arch import GIB
from infra.stack.planner import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEFAULT_INPUT_LEN,
    DEFAULT_OUTPUT_LEN,
    DEFAULT_TARGET_CONCURRENCY,
    Plan,
    PlanInputError,
    plan,
)


@dataclass
class CompareRow:
    gpu: str
    fits: bool
    quantization: str
    nodes: int
    gpus_per_node: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    instance_type: str | None
    usd_per_hour: float | None
    effective_concurrency: int
    concurrency_capped: bool
    decode_tokens_per_s_expected: float
    decode_tokens_per_s_per_user: float
    tpot_ms: float
    ttft_ms: float
    usd_per_million_output_tokens: float | None
    note: str

    @classmethod
    def of(cls, p: Plan, note: str) -> CompareRow:
        """The row of one plan: every field but `note` is the plan's own (the prices only when
        it fits: a layout that does not fit has no price to compare)."""
        row: dict[str, Any] = {f.name: getattr(p, f.name) for f in fields(cls) if f.name != "note"}
        if not p.fits:
            row.update(usd_per_hour=None, usd_per_million_output_tokens=None)
        return cls(**row, note=note)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _layout_candidates(gpu: str, checkpoint_gib: float) -> tuple[list[int], list[str]]:
    """(GPUs per node to try for `gpu`, instance types left out): the GPU counts of its AWS
    instance types whose local disks hold the checkpoint (workers stage the weights onto
    instance-store NVMe), else 8 GPUs per node as hardware only."""
    ok: set[int] = set()
    too_small: list[str] = []
    for i in load_catalog().instances.values():
        if i.gpu != gpu:
            continue
        if i.nvme_disks == 0 or i.nvme_gb * 1e9 >= checkpoint_gib * GIB:
            ok.add(i.gpu_count)
        else:
            too_small.append(i.name)
    return sorted(ok) or [8], too_small


def compare(
    model: str,
    quantization: str | None = None,
    max_model_len: int | Literal["auto"] = "auto",
    concurrency: int = 64,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    input_len: int = DEFAULT_INPUT_LEN,
    output_len: int = DEFAULT_OUTPUT_LEN,
    engine: str = perf.DEFAULT_ENGINE,
    target_concurrency: int = DEFAULT_TARGET_CONCURRENCY,
) -> list[CompareRow]:
    """One row per catalog GPU: its smallest fitting layout (fewest GPUs, then the cheaper),
    what it costs on AWS and how fast it serves `model`, sorted by USD per million output
    tokens (as SkyPilot's optimizer sorts by cost). GPUs without an AWS instance type come
    after, with hardware figures only; GPUs that cannot hold the model come last."""
    cat = load_catalog()
    if model not in cat.models:
        raise PlanInputError(f"--model: {model!r} is not a known model; allowed: {', '.join(cat.models)}")
    rows: list[CompareRow] = []
    for gpu in cat.gpus:
        candidates, too_small = _layout_candidates(gpu, cat.models[model].checkpoint_gib)
        plans = [
            plan(
                model,
                gpu,
                gpus_per_node=n,
                quantization=quantization,
                max_model_len=max_model_len,
                concurrency=concurrency,
                gpu_memory_utilization=gpu_memory_utilization,
                input_len=input_len,
                output_len=output_len,
                engine=engine,
                target_concurrency=target_concurrency,
            )
            for n in candidates
        ]
        fitting = [p for p in plans if p.fits]
        if fitting:
            best = min(fitting, key=lambda p: (p.total_gpus, p.usd_per_hour or 0.0))
            note = ""
            if not best.instance_type:
                note = f"hardware only: no AWS instance type with {best.gpus_per_node}x {gpu} in the catalog"
                if too_small:
                    note += f" ({', '.join(too_small)}: local disk smaller than the checkpoint)"
        else:
            best = plans[-1]
            note = best.reasons[0] if best.reasons else "does not fit"
        rows.append(CompareRow.of(best, note))

    def order(r: CompareRow) -> tuple[int, float, str]:
        if not r.fits:
            return (2, 0.0, r.gpu)
        if r.usd_per_million_output_tokens is None:
            return (1, -r.decode_tokens_per_s_expected, r.gpu)
        return (0, r.usd_per_million_output_tokens, r.gpu)

    return sorted(rows, key=order)
