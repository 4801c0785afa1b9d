"""The calibration fit of the speed model: the published rows of catalog/calibration.yaml
reduced to step shapes, and the efficiencies fitted to them.

Calibration: eta = exp(a0 + a_engine + a_quant) (at most 1), k = exp(b0 + b_engine + b_quant),
fitted in log space by Levenberg-Marquardt (pure Python) on catalog/calibration.yaml, with a
small ridge penalty on the engine and quantization terms: an engine or quantization without
data gets the pooled value, and the plan says so.

The fit is computed once per content of its inputs, not on every `plan` or `pulumi up`:
catalog/calibration_fit.json holds it with the sha256 of what it was fitted from (the catalog
files it reads and this code: `fit_key()`). A checkout whose key differs (an edited
calibration.yaml) fits in-process; `python -m infra.stack.perf_fit --export` rewrites the file
and tests/test_planner.py fails until the committed one matches.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

from infra.catalog import HERE as CATALOG_DIR
from infra.catalog import Calibration, load_catalog
from infra.stack.perf_roofline import Layout, StepShape, decode_shape, prefill_shape

RIDGE = 0.1  # penalty on the engine / quantization log-terms (pulls data-poor groups to the pool)
# Prefill efficiency when no calibration row publishes a one-stream TTFT [U].
DEFAULT_PREFILL_EFFICIENCY = 0.3


def prompts_per_step(batch: int, output_len: int, own: bool) -> float:
    """Prefill passes per decode step in steady state (continuous arrivals): each stream
    starts a new request every output_len tokens. `own=False` leaves out a stream's own
    prompt, which its TTFT, not its TPOT, pays for."""
    streams = batch if own else batch - 1
    return streams / output_len


@dataclass(frozen=True)
class Point:
    """A calibration row reduced to what the fit needs."""

    id: str
    engine: str
    quantization: str
    shape: StepShape
    measured_tokens_per_s: float
    ttft_shape: StepShape | None
    measured_ttft_s: float | None


def _layout_of(cal: Calibration) -> Layout:
    return Layout(
        model=cal.model,
        gpu=cal.gpu,
        quantization=cal.quantization,
        tensor_parallel=cal.tensor_parallel,
        pipeline_parallel=cal.pipeline_parallel,
        gpus_per_node=cal.gpus_per_node,
        fabric=cal.fabric,
    )


def calibration_point(cal: Calibration) -> Point:
    lay = _layout_of(cal)
    # Requests arriving as others finish put prefill passes between decode steps; a batch
    # started at once does not. A published TPOT excludes a stream's own prompt; an output
    # throughput includes it.
    pre = 0.0
    if cal.arrivals == "continuous":
        pre = prompts_per_step(cal.concurrency, cal.output_len, own=cal.tpot_ms is None)
    elif cal.tpot_ms is not None:
        # All started at once: the engine admits their prompts one after another, so a stream's
        # TPOT window (after its own first token) holds the prefills of the streams admitted
        # after it, (B - 1) / 2 of them on average. An output rate of a batch run is left as
        # published (the sources do not say whether it counts the prompts' time).
        pre = (cal.concurrency - 1) / 2 / cal.output_len
    shape = decode_shape(
        lay, cal.concurrency, cal.input_len + cal.output_len / 2, pre, cal.input_len, cal.chunked_prefill
    )
    one_stream_ttft = cal.ttft_ms is not None and cal.concurrency == 1
    return Point(
        cal.id,
        cal.engine,
        cal.quantization,
        shape,
        cal.decode_tokens_per_s,
        prefill_shape(lay, cal.input_len) if one_stream_ttft else None,
        cal.ttft_ms / 1000 if one_stream_ttft and cal.ttft_ms else None,
    )


@cache
def calibration_points() -> tuple[Point, ...]:
    return tuple(calibration_point(c) for c in load_catalog().calibrations.values())


@dataclass(frozen=True)
class Fit:
    """Fitted log-terms: eta = min(1, exp(a0 + a[engine] + a[quant])), k = exp(b0 + b[...]),
    prefill efficiency = min(1, exp(c0))."""

    a0: float
    b0: float
    c0: float
    a: dict[str, float]
    b: dict[str, float]
    engines: tuple[str, ...]
    quantizations: tuple[str, ...]
    points: int
    ttft_points: int

    def eta(self, engine: str, quant: str) -> float:
        return min(1.0, math.exp(self.a0 + self.a.get("e:" + engine, 0.0) + self.a.get("q:" + quant, 0.0)))

    def layer_s(self, engine: str, quant: str) -> float:
        return math.exp(self.b0 + self.b.get("e:" + engine, 0.0) + self.b.get("q:" + quant, 0.0))

    @property
    def eta_prefill(self) -> float:
        return min(1.0, math.exp(self.c0))

    def predict(self, p: Point) -> float:
        eta, k = self.eta(p.engine, p.quantization), self.layer_s(p.engine, p.quantization)
        return p.shape.batch / p.shape.period(eta, k, self.eta_prefill)

    def predict_ttft(self, p: Point) -> float | None:
        if p.ttft_shape is None:
            return None
        return p.ttft_shape.period(self.eta_prefill, self.layer_s(p.engine, p.quantization))


def _solve(a: list[list[float]], y: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (the systems here are ~10 x 10)."""
    n = len(y)
    mat = [row[:] + [y[i]] for i, row in enumerate(a)]
    for c in range(n):
        piv = max(range(c, n), key=lambda r: abs(mat[r][c]))
        mat[c], mat[piv] = mat[piv], mat[c]
        if abs(mat[c][c]) < 1e-300:
            continue
        for r in range(c + 1, n):
            f = mat[r][c] / mat[c][c]
            for j in range(c, n + 1):
                mat[r][j] -= f * mat[c][j]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        s = mat[r][n] - sum(mat[r][j] * x[j] for j in range(r + 1, n))
        x[r] = s / mat[r][r] if abs(mat[r][r]) > 1e-300 else 0.0
    return x


def fit(points: Sequence[Point]) -> Fit:
    """Least squares of log(predicted / measured) over `points` (decode rates, and the
    one-stream TTFTs where published), plus RIDGE x the squared engine and quantization
    terms (not the base terms), by Levenberg-Marquardt."""
    engines = tuple(sorted({p.engine for p in points}))
    quants = tuple(sorted({p.quantization for p in points}))
    groups = [f"e:{e}" for e in engines] + [f"q:{q}" for q in quants]
    n_g = len(groups)
    x = [math.log(0.5), math.log(100e-6), math.log(DEFAULT_PREFILL_EFFICIENCY)] + [0.0] * (2 * n_g)
    ttft_points = [p for p in points if p.ttft_shape is not None]

    def unpack(v: list[float]) -> Fit:
        a = {g: v[3 + i] for i, g in enumerate(groups)}
        b = {g: v[3 + n_g + i] for i, g in enumerate(groups)}
        return Fit(v[0], v[1], v[2], a, b, engines, quants, len(points), len(ttft_points))

    def residuals(v: list[float]) -> list[float]:
        f = unpack(v)
        r = [math.log(f.predict(p) / p.measured_tokens_per_s) for p in points]
        r += [math.log(f.predict_ttft(p) / p.measured_ttft_s) for p in ttft_points]  # type: ignore[operator]
        if not ttft_points:  # nothing to learn the prefill term from: hold it at its prior
            r.append(v[2] - math.log(DEFAULT_PREFILL_EFFICIENCY))
        return r + [math.sqrt(RIDGE) * t for t in v[3:]]

    lam = 1e-2
    r = residuals(x)
    cost = sum(t * t for t in r)
    n = len(x)
    for _ in range(200):
        jac: list[list[float]] = []  # d r / d x, by forward differences
        for j in range(n):
            xs = x[:]
            xs[j] += 1e-6
            jac.append([(a - b) / 1e-6 for a, b in zip(residuals(xs), r, strict=True)])
        jtj = [[sum(a * b for a, b in zip(jac[i], jac[j], strict=True)) for j in range(n)] for i in range(n)]
        jtr = [sum(a * b for a, b in zip(jac[i], r, strict=True)) for i in range(n)]
        improved = False
        while lam < 1e8:
            damped = [
                [jtj[i][j] + (lam * jtj[i][i] + 1e-12 if i == j else 0.0) for j in range(n)] for i in range(n)
            ]
            step = _solve(damped, [-t for t in jtr])
            cand = [xi + si for xi, si in zip(x, step, strict=True)]
            rc = residuals(cand)
            cc = sum(t * t for t in rc)
            if cc < cost:
                improved = cost - cc > 1e-12
                x, r, cost, lam = cand, rc, cc, max(lam / 3, 1e-9)
                break
            lam *= 4
        if not improved:
            break
    return unpack(x)


FIT_FILE = CATALOG_DIR / "calibration_fit.json"
# What the fit is a function of: the catalog rows calibration_point() reads, and the code that
# turns them into step shapes and fits them.
_FIT_INPUTS = (
    *(CATALOG_DIR / f for f in ("calibration.yaml", "gpus.yaml", "links.yaml", "models.yaml")),
    *(Path(__file__).with_name(f) for f in ("perf_fit.py", "perf_roofline.py", "arch.py")),
)


def fit_key() -> str:
    """sha256 over the fit's inputs (file name and bytes, in a fixed order)."""
    h = hashlib.sha256()
    for path in _FIT_INPUTS:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _fit_document(f: Fit) -> dict[str, Any]:
    return {"key": fit_key(), "fit": asdict(f)}


def stored_fit(path: Path | None = None) -> Fit | None:
    """The committed fit (FIT_FILE) when its key is the current inputs' (else None: refit)."""
    try:
        doc = json.loads((path or FIT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or cast(dict[str, Any], doc).get("key") != fit_key():
        return None
    v = cast(dict[str, Any], doc["fit"])
    # JSON keeps a float's repr, so the stored numbers are the fitted ones, bit for bit.
    fields: dict[str, Any] = {**v, "engines": tuple(v["engines"]), "quantizations": tuple(v["quantizations"])}
    return Fit(**fields)


@cache
def calibrated_fit() -> Fit:
    return stored_fit() or fit(calibration_points())


def export_fit(path: Path = FIT_FILE) -> Path:
    path.write_text(json.dumps(_fit_document(fit(calibration_points())), indent=2, sort_keys=True) + "\n")
    return path


@dataclass(frozen=True)
class Residual:
    id: str
    measured: float
    predicted: float
    what: str = "decode tok/s"

    @property
    def ratio(self) -> float:
        """measured / predicted: 1 is exact, 2 means the model is 2x pessimistic."""
        return self.measured / self.predicted


def leave_one_out() -> list[Residual]:
    """Each calibration row's decode rate predicted by a fit on all the other rows."""
    pts = calibration_points()
    out: list[Residual] = []
    for i, p in enumerate(pts):
        f = fit(pts[:i] + pts[i + 1 :])
        out.append(Residual(p.id, p.measured_tokens_per_s, f.predict(p)))
    return out


def ttft_residuals() -> list[Residual]:
    """The one-stream TTFT rows against the full fit (too few for a leave-one-out)."""
    f = calibrated_fit()
    return [
        Residual(p.id, p.measured_ttft_s, f.predict_ttft(p), "TTFT s")  # type: ignore[arg-type]
        for p in calibration_points()
        if p.ttft_shape is not None
    ]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m infra.stack.perf_fit", description="The calibration fit.")
    ap.add_argument("--export", action="store_true", help=f"write {FIT_FILE.name} (the fit and its key)")
    args = ap.parse_args(argv)
    if args.export:
        print(f"wrote {export_fit()}")
    else:
        print(json.dumps(_fit_document(calibrated_fit()), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
