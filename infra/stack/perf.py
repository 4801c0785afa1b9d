"""Speed model: decode step time, per-user and cluster decode rates, time to first token, and
the calibration fit behind them. Pure functions over the catalog.

Decode step of one pipeline stage on one GPU, for a microbatch of b sequences:

    t_stage = roofline(b) / eta + layers x (k + 2 x allreduce latency) + all-reduce bytes / link bandwidth

- roofline(b): max(bytes read / peak bandwidth, FLOPs / peak compute) for the stage's dense
  weights, the experts the b tokens touch and the KV at the average context. It is the same
  roofline as the ceiling, so the ceiling stays an upper bound of every expected figure.
- eta: the fraction of that peak the engine's kernels reach at this quantization (fitted).
- k: a fixed cost per layer per step whatever the batch: kernel launches, norms, the MoE
  router and its dispatch (fitted per engine and quantization). This is why one stream runs
  an order of magnitude below what bandwidth alone allows.
- all-reduce latency: tensor parallelism reduces twice per layer (after attention, after the
  FFN); each pays the link's small-message latency (links.yaml: NVLink, PCIe, or the node
  fabric when TP spans nodes). TP 1 pays nothing.

Pipeline: B sequences run as n = min(B, PP) microbatches of ceil(B / n). A sequence's next
token comes after max(sum of stage times + (PP - 1) hops, n x slowest stage): its microbatch
passes every stage, and the slowest stage serves every microbatch in turn. With B < PP,
stages idle (the pipeline bubble: 1 - B / PP of their time). Per user: TPOT = that period,
tokens/s = 1 / period; cluster: B / period.

Prefill (TTFT): one prompt passes every stage; all experts are touched, so at 1k tokens and
more it is compute-bound at the GPU's FLOPS for the quantization (fp8: FP8; int8: INT8;
bf16 and int4 (W4A16 kernels): BF16), plus the attention's quadratic FLOPs.

Calibration: eta = exp(a0 + a_engine + a_quant) (at most 1), k = exp(b0 + b_engine + b_quant),
fitted in log space by Levenberg-Marquardt (pure Python) on catalog/calibration.yaml, with a
small ridge penalty on the engine and quantization terms: an engine or quantization without
data gets the pooled value, and the plan says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from infra.catalog import Calibration, Gpu, Model, load_catalog
from infra.stack.arch import (
    BYTES_PER_PARAM,
    SCALE_BYTES_PER_PARAM,
    UNQUANTIZED_BYTES,
    Architecture,
    Stage,
    architecture,
    expected_distinct_experts,
    kv_bytes_per_token_layer_per_gpu,
    stages,
)

DEFAULT_ENGINE = "vllm"  # what llmfleet deploys (Ray Serve LLM + vLLM)
RIDGE = 0.1  # penalty on the engine / quantization log-terms (pulls data-poor groups to the pool)
# Prefill efficiency when no calibration row publishes a one-stream TTFT [U].
DEFAULT_PREFILL_EFFICIENCY = 0.3


# --- hardware figures ---------------------------------------------------------------------------


def compute_tflops(g: Gpu, quant: str) -> float:
    """Peak dense tensor throughput for the quantization's matmuls. W4A16 (AWQ/GPTQ int4)
    dequantizes to 16-bit and runs BF16 matmuls; W8A8 int8 uses INT8 tensor cores."""
    if quant == "fp8" and g.native_fp8 and g.fp8_tflops:
        return g.fp8_tflops
    if quant == "int8":
        return g.int8_tops
    return g.bf16_tflops


def intra_node_link(g: Gpu) -> str:
    return "nvlink" if g.nvlink else "pcie"


def tp_link(g: Gpu, tp: int, gpus_per_node: int, fabric: str | None) -> str | None:
    """The link tensor parallelism reduces over: none at TP 1, the GPUs' own link inside a
    node, the node fabric when TP spans nodes."""
    if tp == 1:
        return None
    if tp <= gpus_per_node or fabric is None:
        return intra_node_link(g)
    return fabric


def _link_figures(g: Gpu, link: str | None) -> tuple[float, float]:
    """(small-message all-reduce latency in s, bandwidth in bytes/s) of a link."""
    if link is None:
        return 0.0, math.inf
    row = load_catalog().links[link]
    bw = row.bandwidth_gbs if row.bandwidth_gbs is not None else g.interconnect_gbs
    return row.allreduce_latency_us * 1e-6, min(bw, g.interconnect_gbs) * 1e9


# --- rooflines (peak hardware, no efficiency) -----------------------------------------------------


def decode_roofline_seconds(
    m: Model,
    g: Gpu,
    arch: Architecture,
    stage: Stage,
    quant: str,
    tp: int,
    batch: int,
    avg_context: float,
    kv_layer: float,
) -> float:
    """Roofline time of one decode step of `batch` sequences on one GPU of `stage`."""
    qbytes = BYTES_PER_PARAM[quant] + SCALE_BYTES_PER_PARAM[quant]
    k = m.moe.experts_per_token if m.moe else 0
    read = 0.0
    flops = 0.0
    for lyr in stage.layers:
        dense = lyr.sharded - lyr.experts * lyr.expert_params
        touched = expected_distinct_experts(lyr.experts, k, batch) if lyr.experts else 0.0
        read += (dense + touched * lyr.expert_params) * qbytes / tp + lyr.replicated * UNQUANTIZED_BYTES
        read += batch * avg_context * kv_layer
        flops += 2 * lyr.active * batch / tp
    if stage.last:
        read += arch.head * UNQUANTIZED_BYTES / tp
        flops += 2 * arch.head * batch / tp
    return max(read / (g.bandwidth_gbs * 1e9), flops / (compute_tflops(g, quant) * 1e12))


def _attention_flops_per_token_layer(m: Model, context: float) -> float:
    """Prefill attention FLOPs of one token against `context` earlier tokens, one layer, all
    heads (MLA prefill runs as multi-head attention over the up-projected K and V)."""
    if m.attention == "mla":
        qk, v = m.qk_nope_head_dim + m.qk_rope_head_dim, m.v_head_dim
    else:
        qk = v = m.head_dim
    return 2 * m.heads * (qk + v) * context


def prefill_roofline_seconds(
    m: Model, g: Gpu, arch: Architecture, stage: Stage, quant: str, tp: int, tokens: int, kv_layer: float
) -> float:
    """Roofline time of prefilling one prompt of `tokens` on one GPU of `stage`."""
    qbytes = BYTES_PER_PARAM[quant] + SCALE_BYTES_PER_PARAM[quant]
    k = m.moe.experts_per_token if m.moe else 0
    read = flops = 0.0
    for lyr in stage.layers:
        dense = lyr.sharded - lyr.experts * lyr.expert_params
        touched = expected_distinct_experts(lyr.experts, k, tokens) if lyr.experts else 0.0
        read += (dense + touched * lyr.expert_params) * qbytes / tp + lyr.replicated * UNQUANTIZED_BYTES
        read += tokens * kv_layer  # the KV it writes
        flops += 2 * lyr.active * tokens / tp
        flops += tokens * _attention_flops_per_token_layer(m, tokens / 2) / tp  # causal: half on average
    if stage.last:
        read += arch.head * UNQUANTIZED_BYTES / tp
        flops += 2 * arch.head / tp  # only the last position's logits
    return max(read / (g.bandwidth_gbs * 1e9), flops / (compute_tflops(g, quant) * 1e12))


# --- the deployment's per-step pieces, independent of the fitted efficiencies -----------------------


@dataclass(frozen=True)
class StepShape:
    """A deployment's decode (or prefill) pass cut into what the efficiencies multiply:
    per stage, the roofline seconds, the layer count and the fixed link seconds; plus, for a
    decode step in steady state, the share of a prompt's prefill pass it carries."""

    batch: int
    microbatches: int
    roofline_s: tuple[float, ...]
    layers: tuple[int, ...]
    link_s: tuple[float, ...]  # all-reduce latency + bytes per stage
    hop_s: float  # all pipeline hops of one pass
    prompts_per_step: float = 0.0  # prefill passes per decode step (other streams' prompts)
    prefill: StepShape | None = None  # one prompt's prefill pass

    def stage_seconds(self, eta: float, layer_s: float) -> list[float]:
        return [
            r / eta + n * layer_s + c
            for r, n, c in zip(self.roofline_s, self.layers, self.link_s, strict=True)
        ]

    def decode_period(self, eta: float, layer_s: float) -> float:
        t = self.stage_seconds(eta, layer_s)
        return max(sum(t) + self.hop_s, self.microbatches * max(t))

    def period(self, eta: float, layer_s: float, eta_prefill: float = 1.0) -> float:
        """Seconds between two tokens of one stream: the decode pass, plus the prefill passes
        of prompts that arrive meanwhile (the engine stops decoding, or shares the step,
        while they run)."""
        own = self.decode_period(eta, layer_s)
        if self.prefill is None or self.prompts_per_step == 0:
            return own
        return own + self.prompts_per_step * self.prefill.decode_period(eta_prefill, layer_s)

    def bubble(self, eta: float, layer_s: float) -> float:
        """Fraction of decode stage time idle: 1 - mean stage busy time / decode period."""
        t = self.stage_seconds(eta, layer_s)
        busy = self.microbatches * sum(t) / len(t)
        return max(0.0, 1.0 - busy / self.decode_period(eta, layer_s))


@dataclass(frozen=True)
class Layout:
    model: str
    gpu: str
    quantization: str
    tensor_parallel: int
    pipeline_parallel: int
    gpus_per_node: int
    fabric: str | None  # the link between nodes (pipeline hops; TP when it spans nodes)


def _allreduce_seconds(m: Model, g: Gpu, link: str | None, layers: int, tp: int, tokens: int) -> float:
    if tp == 1 or link is None:
        return 0.0
    latency, bw = _link_figures(g, link)
    message = tokens * m.hidden * 2  # bf16 activations
    return layers * 2 * (latency + 2 * (tp - 1) / tp * message / bw)


def _hop_seconds(m: Model, g: Gpu, fabric: str | None, pp: int, tokens: int) -> float:
    if pp == 1:
        return 0.0
    latency, bw = _link_figures(g, fabric or intra_node_link(g))
    return (pp - 1) * (latency + tokens * m.hidden * 2 / bw)


def decode_shape(
    lay: Layout, batch: int, avg_context: float, prompts_per_step: float = 0.0, prompt_len: int = 0
) -> StepShape:
    """One decode step of `batch` sequences, carrying `prompts_per_step` prefill passes of
    `prompt_len` tokens (steady-state arrivals)."""
    cat = load_catalog()
    m, g = cat.models[lay.model], cat.gpus[lay.gpu]
    arch = architecture(lay.model)
    tp, pp = lay.tensor_parallel, lay.pipeline_parallel
    n_mb = max(1, min(batch, pp))
    b = math.ceil(batch / n_mb)
    kv_layer = kv_bytes_per_token_layer_per_gpu(m, arch, tp)
    link = tp_link(g, tp, lay.gpus_per_node, lay.fabric)
    st = stages(arch, pp)
    return StepShape(
        batch=batch,
        microbatches=n_mb,
        roofline_s=tuple(
            decode_roofline_seconds(m, g, arch, s, lay.quantization, tp, b, avg_context, kv_layer) for s in st
        ),
        layers=tuple(len(s.layers) for s in st),
        link_s=tuple(_allreduce_seconds(m, g, link, len(s.layers), tp, b) for s in st),
        hop_s=_hop_seconds(m, g, lay.fabric, pp, b),
        prompts_per_step=prompts_per_step,
        prefill=prefill_shape(lay, prompt_len) if prompts_per_step and prompt_len else None,
    )


def prefill_shape(lay: Layout, tokens: int) -> StepShape:
    cat = load_catalog()
    m, g = cat.models[lay.model], cat.gpus[lay.gpu]
    arch = architecture(lay.model)
    tp, pp = lay.tensor_parallel, lay.pipeline_parallel
    kv_layer = kv_bytes_per_token_layer_per_gpu(m, arch, tp)
    link = tp_link(g, tp, lay.gpus_per_node, lay.fabric)
    st = stages(arch, pp)
    return StepShape(
        batch=1,
        microbatches=1,
        roofline_s=tuple(
            prefill_roofline_seconds(m, g, arch, s, lay.quantization, tp, tokens, kv_layer) for s in st
        ),
        layers=tuple(len(s.layers) for s in st),
        link_s=tuple(_allreduce_seconds(m, g, link, len(s.layers), tp, tokens) for s in st),
        hop_s=_hop_seconds(m, g, lay.fabric, pp, tokens),
    )


# --- calibration ----------------------------------------------------------------------------------


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
    shape = decode_shape(lay, cal.concurrency, cal.input_len + cal.output_len / 2, pre, cal.input_len)
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
        jac = []  # d r / d x, by forward differences
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


@cache
def calibrated_fit() -> Fit:
    return fit(calibration_points())


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
    out = []
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


# --- what the planner asks ---------------------------------------------------------------------


@dataclass(frozen=True)
class Efficiency:
    engine: str
    quantization: str
    bandwidth: float  # eta
    layer_us: float  # k, microseconds per layer per step
    prefill: float
    calibrated: bool  # the fit saw this engine and this quantization
    note: str


def efficiency(engine: str, quant: str) -> Efficiency:
    f = calibrated_fit()
    pre, pre_rows = f.eta_prefill, f.ttft_points
    missing = [
        w
        for w, have in (("engine " + engine, engine in f.engines), (quant, quant in f.quantizations))
        if not have
    ]
    note = f"fitted on {f.points} published points"
    if missing:
        note += f"; no calibration point for {' or '.join(missing)}: pooled value"
    note += f"; prefill from {pre_rows} TTFT rows" if pre_rows else "; prefill efficiency assumed [U]"
    return Efficiency(
        engine=engine,
        quantization=quant,
        bandwidth=f.eta(engine, quant),
        layer_us=f.layer_s(engine, quant) * 1e6,
        prefill=pre,
        calibrated=not missing,
        note=note,
    )


@dataclass(frozen=True)
class Speed:
    batch: int
    tpot_s: float  # time per output token of one stream = the period
    per_user_tokens_per_s: float
    cluster_tokens_per_s: float
    roofline_part_s: float  # what bandwidth / compute (at the fitted efficiency) takes of the period
    fixed_part_s: float  # per-layer cost, all-reduce latency, hops: what no bandwidth removes
    bubble: float
    ttft_s: float


def speed(lay: Layout, engine: str, batch: int, input_len: int, output_len: int) -> Speed:
    eff = efficiency(engine, lay.quantization)
    k = eff.layer_us * 1e-6
    ctx = input_len + output_len / 2
    # Steady state: a stream's TPOT carries the other streams' prompts; the cluster's output
    # rate carries all of them.
    per_user = decode_shape(lay, batch, ctx, prompts_per_step(batch, output_len, own=False), input_len)
    cluster = decode_shape(lay, batch, ctx, prompts_per_step(batch, output_len, own=True), input_len)
    period = per_user.period(eff.bandwidth, k, eff.prefill)
    fixed = per_user.period(math.inf, k, math.inf)  # infinitely fast memory and compute
    ttft = prefill_shape(lay, input_len).period(eff.prefill, k)
    return Speed(
        batch=batch,
        tpot_s=period,
        per_user_tokens_per_s=1 / period,
        cluster_tokens_per_s=batch / cluster.period(eff.bandwidth, k, eff.prefill),
        roofline_part_s=period - fixed,
        fixed_part_s=fixed,
        bubble=per_user.bubble(eff.bandwidth, k),
        ttft_s=ttft,
    )
