"""The data catalog: GPUs, AWS instance types, models and calibration points.

The numbers live in the YAML files beside this module, each row with its source;
this module only loads and validates them (pydantic), so a bad edit fails on load
with the file, the row and the field.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

HERE = Path(__file__).parent

GPU_IDS = ("L20", "L40S", "L4", "A10G", "H20", "A100-40GB", "A100-80GB", "H100", "H200", "B200")
MODEL_IDS = (
    "deepseek-r1",
    "deepseek-r1-distill-qwen-7b",
    "deepseek-r1-distill-qwen-32b",
    "deepseek-r1-distill-llama-70b",
)


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


class Model(_Row):
    id: str
    hf_repo: str
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

    @model_validator(mode="after")
    def _mla(self) -> Model:
        mla = (
            self.q_lora_rank,
            self.kv_lora_rank,
            self.qk_rope_head_dim,
            self.qk_nope_head_dim,
            self.v_head_dim,
        )
        if self.attention == "mla" and None in mla:
            raise ValueError(
                "mla models need q_lora_rank, kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim"
            )
        return self


class Calibration(_Row):
    id: str
    model: str
    gpu: str
    quantization: str
    nodes: int
    gpus_per_node: int
    concurrency: int
    input_len: int
    output_len: int
    output_tokens_per_s_per_node: float
    tpot_ms: float


class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True)
    gpus: dict[str, Gpu]
    instances: dict[str, InstanceType]
    models: dict[str, Model]
    calibrations: dict[str, Calibration]

    def gpu_of(self, instance_type: str) -> Gpu | None:
        inst = self.instances.get(instance_type)
        return self.gpus[inst.gpu] if inst and inst.gpu else None


class CatalogError(ValueError):
    pass


def _load_rows(path: Path, row_type: type[_Row], key: str) -> dict:
    rows = yaml.safe_load(path.read_text())
    out: dict = {}
    for i, row in enumerate(rows or []):
        try:
            item = row_type.model_validate(row)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise CatalogError(f"{path.name} row {i} ({row.get(key, '?')}): {loc}: {err['msg']}") from None
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
    for inst in instances.values():
        if inst.gpu is not None and inst.gpu not in gpus:
            raise CatalogError(f"instances.yaml ({inst.name}): gpu {inst.gpu!r} is not in gpus.yaml")
        if (inst.gpu is None) != (inst.gpu_count == 0):
            raise CatalogError(f"instances.yaml ({inst.name}): gpu and gpu_count disagree")
    for cal in calibrations.values():
        if cal.model not in models or cal.gpu not in gpus:
            raise CatalogError(f"calibration.yaml ({cal.id}): unknown model or gpu")
    return Catalog(gpus=gpus, instances=instances, models=models, calibrations=calibrations)


@cache
def load_catalog() -> Catalog:
    return load_catalog_from(HERE)
