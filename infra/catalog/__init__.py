"""The data catalog: GPUs, AWS instance types, models, links, calibration points and
cold-start figures.

The numbers live in the YAML files beside this module, each row with its source;
this module only loads and validates them (pydantic), so a bad edit fails on load
with the file, the row and the field.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal, NamedTuple, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from infra import yaml_files
from infra.validation import first_error

HERE = Path(__file__).parent


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str = Field(min_length=3)


class Gpu(_Row):
    id: str
    memory_gb: float = Field(gt=0)
    usable_mib: int = Field(gt=0)
    bandwidth_gbs: float = Field(gt=0)
    bf16_tflops: float = Field(gt=0)
    fp8_tflops: float | None = Field(default=None, gt=0)
    int8_tops: float = Field(gt=0)  # W8A8 int8 tensor-core throughput, dense
    nvlink: bool
    interconnect_gbs: float = Field(gt=0)  # GPU-to-GPU bandwidth inside a host, per direction
    native_fp8: bool

    @property
    def usable_gib(self) -> float:
        return self.usable_mib / 1024

    @model_validator(mode="after")
    def _fp8(self) -> Gpu:
        if self.native_fp8 and self.fp8_tflops is None:
            raise ValueError("native_fp8 GPUs need fp8_tflops")
        return self


class InstanceType(_Row):
    name: str
    gpu: str | None
    gpu_count: int = Field(ge=0)
    vcpus: int = Field(gt=0)
    memory_gib: float = Field(gt=0)
    network_gbps: float = Field(gt=0)
    nvme_gb: int = Field(ge=0)
    nvme_disks: int = Field(ge=0)
    efa: bool
    efa_max_interfaces: int = Field(ge=0)
    on_demand_usd_per_hour: float = Field(gt=0)
    quota_family: Literal["G and VT", "P", "Standard"]

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]


class Moe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    routed_experts: int = Field(gt=0)
    experts_per_token: int = Field(gt=0)
    shared_experts: int = Field(ge=0)
    expert_intermediate: int = Field(gt=0)
    first_k_dense: int = Field(ge=0)


class Sampling(BaseModel):
    """A model card's recommended sampling, served as vLLM's default generation settings
    (override_generation_config): a request that sets a value still wins."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)

    def as_generation_config(self) -> dict[str, float | int]:
        return self.model_dump(exclude_none=True)


class ServingDefaults(_Row):
    """How vLLM should serve a model, from its model card and vLLM's recipe: applied to every
    stack of the model unless the stack overrides them. Parser names are vLLM's registered ones
    (a test checks them against the installed vLLM)."""

    # vLLM's --reasoning-parser: splits the model's thinking into the response's `reasoning`
    reasoning_parser: str | None = None
    # vLLM's --tool-call-parser (with --enable-auto-tool-choice); only where the model card says
    # the checkpoint calls tools, and its reason beside it
    tool_call_parser: str | None = None
    tool_call_parser_reason: str | None = None
    sampling: Sampling = Sampling()

    @model_validator(mode="after")
    def _tool_reason(self) -> ServingDefaults:
        if self.tool_call_parser and not self.tool_call_parser_reason:
            raise ValueError(
                "tool_call_parser needs tool_call_parser_reason (where the card says it calls tools)"
            )
        return self


class MlaDims(NamedTuple):
    """A multi-head latent attention model's dimensions (config.json's names)."""

    q_lora_rank: int
    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int


class LoraSupport(_Row):
    """Whether llmfleet lets vLLM serve LoRA adapters on a model (`llmfleet:lora`, `finetune`).

    `serving: true` only where the installed vLLM's model class implements SupportsLoRA (a test
    checks it against vLLM's registry) and nothing about the model leaves it unproven; false needs
    `reason`, the one clause the refusal prints."""

    serving: bool
    reason: str | None = Field(default=None, min_length=3)

    @model_validator(mode="after")
    def _reason(self) -> LoraSupport:
        if not self.serving and not self.reason:
            raise ValueError("lora.serving: false needs lora.reason (the clause the refusal prints)")
        return self


class Model(_Row):
    id: str
    hf_repo: str
    # config.json's architectures[0]: what `weights upload` checks a checkpoint against
    architecture: str = Field(pattern=r"^[A-Za-z0-9]+ForCausalLM$")
    attention: Literal["mla", "gqa"]
    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    qk_nope_head_dim: int | None = None
    v_head_dim: int | None = None
    intermediate: int = Field(gt=0)
    moe: Moe | None
    vocab: int = Field(gt=0)
    tie_embeddings: bool
    max_position_embeddings: int = Field(gt=0)
    native_dtype: Literal["fp8", "bf16"]
    params_total_b: float = Field(gt=0)
    params_active_b: float = Field(gt=0)
    checkpoint_gib: float = Field(gt=0)
    checkpoint_shards: int = Field(gt=0)
    # The checkpoint runs its own Python in vLLM (its config.json's auto_map names modeling code
    # vLLM has no native implementation of). Needs the reason beside it when true.
    trust_remote_code: bool = False
    trust_remote_code_reason: str | None = None
    # A reasoning model thinks before it answers (R1 and its distills): `maxModelLen: auto`
    # prefers >= 32k for it and the policy pack flags < 16k (infra/stack/context.py).
    reasoning: bool = False
    serving_defaults: ServingDefaults | None = None
    # Every model says whether it takes LoRA adapters (no default: a new row must decide).
    lora: LoraSupport

    @model_validator(mode="after")
    def _reasoning_parser(self) -> Model:
        # a reasoning parser splits a thought the model writes: only a reasoning model has one
        if self.serving_defaults and self.serving_defaults.reasoning_parser and not self.reasoning:
            raise ValueError(
                "serving_defaults.reasoning_parser is for a reasoning model: set reasoning: true"
            )
        return self

    @model_validator(mode="after")
    def _remote_code(self) -> Model:
        if self.trust_remote_code and not self.trust_remote_code_reason:
            raise ValueError(
                "trust_remote_code: true needs trust_remote_code_reason (why vLLM cannot load it natively)"
            )
        return self

    @model_validator(mode="after")
    def _mla(self) -> Model:
        if self.attention == "mla":
            self.mla  # noqa: B018 - raises when one of the dimensions is missing
        return self

    @property
    def mla(self) -> MlaDims:
        """The MLA dimensions, all set (what the arithmetic of an `mla` model reads)."""
        q, kv, rope, nope, v = (
            self.q_lora_rank,
            self.kv_lora_rank,
            self.qk_rope_head_dim,
            self.qk_nope_head_dim,
            self.v_head_dim,
        )
        if q is None or kv is None or rope is None or nope is None or v is None:
            raise ValueError(
                "mla models need q_lora_rank, kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim"
            )
        return MlaDims(q, kv, rope, nope, v)


class Link(_Row):
    """A GPU-to-GPU link as the step-time model sees it (links.yaml)."""

    id: str
    allreduce_latency_us: float = Field(gt=0)
    # One small send/receive between two GPUs over the link (a pipeline hop); None = the
    # all-reduce latency (inside a host, where no hop of llmfleet's layouts goes).
    hop_latency_us: float | None = Field(default=None, gt=0)
    bandwidth_gbs: float | None = Field(gt=0)  # per GPU per direction; None = the GPU's interconnect


# The weight precisions the project models (bytes per parameter: infra/stack/arch.py): the one
# list the stack key, the planner, the calibration rows and the policy pack's schema use.
Quantization = Literal["fp8", "bf16", "int8", "int4"]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)


class Calibration(_Row):
    """One published serving measurement (calibration.yaml)."""

    id: str
    model: str
    engine: str = Field(min_length=1)
    engine_version: str = Field(min_length=1)
    gpu: str
    quantization: Quantization
    nodes: int = Field(ge=1)
    gpus_per_node: int = Field(ge=1)
    tensor_parallel: int = Field(ge=1)
    pipeline_parallel: int = Field(ge=1)
    fabric: str | None  # the link between nodes, when the layout spans them
    concurrency: int = Field(ge=1)
    # continuous: a new request starts as one finishes (prefill passes interleave with decode);
    # batch: all requests start at once (the decode runs undisturbed)
    arrivals: Literal["continuous", "batch"]
    input_len: int = Field(ge=1)
    output_len: int = Field(ge=1)
    output_tokens_per_s: float = Field(gt=0)  # the whole deployment
    # The engine ran prompts inside the decode steps (chunked prefill: vLLM V1 always, V0 above
    # a 32k max_model_len) rather than as prefill passes of their own; the source says why.
    chunked_prefill: bool = False
    tpot_ms: float | None = Field(gt=0)
    ttft_ms: float | None = Field(gt=0)

    @property
    def decode_tokens_per_s(self) -> float:
        """What the step-time model predicts: decode only. A published TPOT excludes the
        time to first token, so concurrency / TPOT is the purer figure where there is one."""
        if self.tpot_ms is not None:
            return self.concurrency * 1000.0 / self.tpot_ms
        return self.output_tokens_per_s

    @model_validator(mode="after")
    def _layout(self) -> Calibration:
        if self.tensor_parallel * self.pipeline_parallel != self.nodes * self.gpus_per_node:
            raise ValueError("tensor_parallel x pipeline_parallel must equal nodes x gpus_per_node")
        if self.nodes > 1 and self.fabric is None:
            raise ValueError("a layout over several nodes needs its fabric")
        return self


class ColdStartFigure(_Row):
    """One figure of the cold-start estimate (coldstart.yaml)."""

    id: str
    value: float = Field(gt=0)
    unit: str = Field(min_length=1)


class ServingPathFigure(ColdStartFigure):
    """One figure of what the serving path adds to a request (serving_path.yaml)."""


class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True)
    gpus: dict[str, Gpu]
    instances: dict[str, InstanceType]
    models: dict[str, Model]
    calibrations: dict[str, Calibration]
    links: dict[str, Link]
    coldstart: dict[str, ColdStartFigure]
    serving_path: dict[str, ServingPathFigure]


class CatalogError(ValueError):
    pass


def _load_rows(path: Path, row_type: type[_Row], key: str) -> dict:
    rows = yaml_files.safe_load(path.read_text())
    out: dict = {}
    for i, row in enumerate(rows or []):
        try:
            item = row_type.model_validate(row)
        except ValidationError as e:
            err = first_error(e)
            raise CatalogError(f"{path.name} row {i} ({row.get(key, '?')}): {err.path}: {err.msg}") from None
        name = getattr(item, key)
        if name in out:
            raise CatalogError(f"{path.name}: duplicate {key} {name!r}")
        out[name] = item
    return out


def load_catalog_from(directory: Path) -> Catalog:
    gpus = _load_rows(directory / "gpus.yaml", Gpu, "id")
    instances = _load_rows(directory / "instances.yaml", InstanceType, "name")
    models = _load_rows(directory / "models.yaml", Model, "id")
    calibrations = _load_rows(directory / "calibration.yaml", Calibration, "id")
    links = _load_rows(directory / "links.yaml", Link, "id")
    coldstart = _load_rows(directory / "coldstart.yaml", ColdStartFigure, "id")
    serving_path = _load_rows(directory / "serving_path.yaml", ServingPathFigure, "id")
    for required in ("nvlink", "pcie"):
        if required not in links:
            raise CatalogError(f"links.yaml: missing the {required!r} link")
    for inst in instances.values():
        if inst.gpu is not None and inst.gpu not in gpus:
            raise CatalogError(f"instances.yaml ({inst.name}): gpu {inst.gpu!r} is not in gpus.yaml")
        if (inst.gpu is None) != (inst.gpu_count == 0):
            raise CatalogError(f"instances.yaml ({inst.name}): gpu and gpu_count disagree")
    for cal in calibrations.values():
        if cal.model not in models or cal.gpu not in gpus:
            raise CatalogError(f"calibration.yaml ({cal.id}): unknown model or gpu")
        if cal.fabric is not None and cal.fabric not in links:
            raise CatalogError(f"calibration.yaml ({cal.id}): fabric {cal.fabric!r} is not in links.yaml")
    return Catalog(
        gpus=gpus,
        instances=instances,
        models=models,
        calibrations=calibrations,
        links=links,
        coldstart=coldstart,
        serving_path=serving_path,
    )


@cache
def load_catalog() -> Catalog:
    return load_catalog_from(HERE)
