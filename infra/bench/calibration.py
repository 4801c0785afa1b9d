"""The planner beside a measurement, and the user's calibration file that `llmfleet plan` reads.

Prediction: for each sweep step, infra.stack.planner.plan() at the layout of the stack (model,
GPU, quantization, TP, PP), with the step's concurrency split over the stack's replicas (Serve
routes across them), the sweep's input and output lengths; the cluster figure is replicas x one
replica's.

Calibration file ($LLMFLEET_CALIBRATION_FILE, default ~/.config/llmfleet/calibration.json):
{"version": 1, "entries": [{"layout": {model, gpu, quantization, tensor_parallel_size,
pipeline_parallel_size, engine}, "measured_at", "source", "input_len", "output_len", "points":
[{"concurrency" (per replica), "measured_tokens_per_s" / "predicted_tokens_per_s" (per
replica), "measured_tpot_ms", "predicted_tpot_ms"}]}]}. `llmfleet plan` for the same layout
scales its expected figures by the geometric mean of measured / predicted over the points
(infra.stack.planner.calibrate), and says so; a file that is absent changes nothing.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from infra.bench.sweep import BenchError, StepStats
from infra.errors import OfflineError
from infra.stack.config import ConfigError
from infra.stack.files import load_config
from infra.stack.planner import PlanInputError, calibrate, plan, plan_for_stack

if TYPE_CHECKING:
    from infra.stack.planner import Plan

CALIBRATION_ENV = "LLMFLEET_CALIBRATION_FILE"
VERSION = 1
LAYOUT_KEYS = ("model", "gpu", "quantization", "tensor_parallel_size", "pipeline_parallel_size", "engine")


def calibration_path() -> Path:
    return Path(os.environ.get(CALIBRATION_ENV) or Path.home() / ".config" / "llmfleet" / "calibration.json")


@dataclass(frozen=True)
class PlanLayout:
    """What the planner needs to predict a deployed stack."""

    model: str
    gpu: str
    quantization: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    replicas: int
    max_model_len: int
    gpu_memory_utilization: float
    engine: str
    stack: str

    def key(self) -> dict:
        return {k: getattr(self, k) for k in LAYOUT_KEYS}

    @classmethod
    def of(cls, p: Plan, replicas: int, stack: str) -> PlanLayout:
        """A stack's layout: the plan's own fields, plus what the plan does not hold."""
        own = {"replicas": replicas, "stack": stack}
        return cls(**{f.name: own[f.name] if f.name in own else getattr(p, f.name) for f in fields(cls)})


def layout_for_stack(stack: str, overrides: list[str] | None = None) -> PlanLayout:

    try:
        cfg = load_config(stack, overrides or [])
        p = plan_for_stack(cfg)
    except (ConfigError, OfflineError, PlanInputError) as e:
        raise BenchError(str(e)) from None
    return PlanLayout.of(p, cfg.replicas, stack)


def predict(lay: PlanLayout, concurrency: int, input_len: int, output_len: int) -> dict:
    """The planner's cluster figures at one sweep step."""

    per_replica = max(1, math.ceil(concurrency / lay.replicas))
    p = plan(
        model=lay.model,
        gpu=lay.gpu,
        gpus_per_node=lay.tensor_parallel_size,
        nodes=lay.pipeline_parallel_size,
        quantization=lay.quantization,
        max_model_len=max(lay.max_model_len, input_len + output_len),
        concurrency=per_replica,
        gpu_memory_utilization=lay.gpu_memory_utilization,
        input_len=input_len,
        output_len=output_len,
        engine=lay.engine,
    )
    busy = min(lay.replicas, concurrency)  # replicas with at least one stream
    return {
        "output_tokens_per_s": round(p.decode_tokens_per_s_expected * busy, 2),
        "tpot_ms": p.tpot_ms,
        "ttft_ms": p.ttft_ms,
        "per_replica_concurrency": p.effective_concurrency,
        "fits": p.fits,
    }


def attach_predictions(
    steps: list[StepStats], lay: PlanLayout | None, input_len: int, output_len: int
) -> None:
    for s in steps:
        s.predicted = predict(lay, s.concurrency, input_len, output_len) if lay else None


# --- the file -------------------------------------------------------------------------------------


def entry_from_sweep(
    lay: PlanLayout, steps: list[StepStats], source: str, input_len: int, output_len: int
) -> dict:
    """One calibration entry: the steps that succeeded whole, per replica."""
    points = []
    for s in steps:
        if not s.predicted or not s.predicted["fits"] or s.errors or not s.output_tokens_per_s:
            continue
        busy = min(lay.replicas, s.concurrency)
        points.append(
            {
                "concurrency": max(1, math.ceil(s.concurrency / lay.replicas)),
                "measured_tokens_per_s": round(s.output_tokens_per_s / busy, 3),
                "predicted_tokens_per_s": round(s.predicted["output_tokens_per_s"] / busy, 3),
                "measured_tpot_ms": s.tpot_ms_p50,
                "predicted_tpot_ms": s.predicted["tpot_ms"],
            }
        )
    if not points:
        raise BenchError("no step succeeded without errors: nothing to calibrate with")
    return {
        "layout": lay.key(),
        "stack": lay.stack,
        "source": source,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input_len": input_len,
        "output_len": output_len,
        "points": points,
    }


def read_calibration(path: Path | None = None) -> dict:
    path = path or calibration_path()
    if not path.exists():
        return {"version": VERSION, "entries": []}
    try:
        doc = json.loads(path.read_text())
    except ValueError as e:
        raise BenchError(f"calibration file {path}: not JSON ({e}); fix or delete it") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("entries"), list):
        raise BenchError(f"calibration file {path}: allowed: {{'version': {VERSION}, 'entries': [...]}}")
    return doc


def append_entry(entry: dict, path: Path | None = None) -> Path:
    path = path or calibration_path()
    doc = read_calibration(path)
    doc["entries"].append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    return path


def ratios_for(doc: dict, key: dict) -> tuple[float, float, int] | None:
    """(measured / predicted tokens/s, measured / predicted TPOT, points) as geometric means over
    every point of the entries for this layout; None when the file has none."""
    tok, tpot = [], []
    for e in doc["entries"]:
        if {k: e.get("layout", {}).get(k) for k in LAYOUT_KEYS} != key:
            continue
        for p in e.get("points", []):
            if p.get("predicted_tokens_per_s") and p.get("measured_tokens_per_s"):
                tok.append(math.log(p["measured_tokens_per_s"] / p["predicted_tokens_per_s"]))
            if p.get("predicted_tpot_ms") and p.get("measured_tpot_ms"):
                tpot.append(math.log(p["measured_tpot_ms"] / p["predicted_tpot_ms"]))
    if not tok:
        return None
    return math.exp(sum(tok) / len(tok)), math.exp(sum(tpot) / len(tpot)) if tpot else 1.0, len(tok)


def calibrate_plan(p: Plan, path: Path | None = None) -> Plan:
    """The plan with the user's calibration applied when the file has its layout, else as is."""

    path = path or calibration_path()
    if not p.fits or not path.exists():
        return p
    key = {
        "model": p.model,
        "gpu": p.gpu,
        "quantization": p.quantization,
        "tensor_parallel_size": p.tensor_parallel_size,
        "pipeline_parallel_size": p.pipeline_parallel_size,
        "engine": p.engine,
    }
    found = ratios_for(read_calibration(path), key)
    if found is None:
        return p
    tok, tpot, n = found
    return calibrate(p, tok, tpot, n, str(path))


def layout_dict(lay: PlanLayout | None) -> dict | None:
    return asdict(lay) if lay else None
