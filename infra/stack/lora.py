"""LoRA adapters on a stack: which models may take them, `llmfleet:lora`, and the refusal.

Ray Serve LLM serves adapters beside the base model (multi-LoRA): a request whose model is
`<served model>:<NAME>` gets the adapter stored at `<adapters>/<NAME>/`, downloaded on first use
(LLMConfig.lora_config.dynamic_lora_loading_path; Ray 2.60 accepts only s3://, gs://, abfss://,
azure:// there). vLLM needs `enable_lora` and room for them: `max_loras` adapters resident per
batch, `max_lora_rank` the highest rank it will load (vllm/config/lora.py MaxLoRARanks).

Whether a model may take adapters is the catalog's word (models.yaml `lora`), never guessed from
the architecture here: the refusal prints the catalog's reason.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from infra.catalog import load_catalog
from infra.stack.config_values import s3_uri

KEY = "llmfleet:lora"
# vLLM 0.29's MaxLoRARanks (vllm/config/lora.py): any other max_lora_rank fails at engine start.
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# An adapter's NAME is a path component under the adapters location and the suffix of the model
# id clients send ("<model>:<NAME>"): no '/', no ':', no leading '.' (so never '.' or '..').
ADAPTER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
ADAPTER_NAME_ALLOWED = "1-64 letters, digits, '_' or '-', starting with a letter or digit"


def supported_models() -> list[str]:
    return [m.id for m in load_catalog().models.values() if m.lora.serving]


def refusal(model: str, key: str = "llmfleet:model", asked_by: str = "") -> str | None:
    """Why `model` cannot take LoRA adapters (one line naming `key`, and `asked_by`: the option
    or key that wants them), or None when it can."""
    cat = load_catalog()
    allowed = ", ".join(supported_models())
    if model not in cat.models:
        return f"{key} = {model!r}: not a catalog model that takes LoRA adapters; allowed: {allowed}"
    lora = cat.models[model].lora
    if lora.serving:
        return None
    by = f" ({asked_by})" if asked_by else ""
    return f"{key} = {model!r}: cannot take LoRA adapters{by}: {lora.reason}; allowed: {allowed}"


def _adapters_uri(v: str) -> str:
    if not v.startswith("s3://"):
        # Ray Serve LLM downloads adapters with its cloud filesystem; llmfleet's hosts reach S3.
        raise ValueError(
            "allowed: an s3://BUCKET/PREFIX/ URI (Ray Serve LLM loads adapters from object storage)"
        )
    return s3_uri(v)


def _rank(v: int) -> int:
    if v not in MAX_LORA_RANKS:
        raise ValueError(f"allowed: one of {', '.join(map(str, MAX_LORA_RANKS))} (vLLM's max_lora_rank)")
    return v


class LoraSettings(BaseModel):
    """llmfleet:lora: serve LoRA adapters from `adapters` beside the stack's model."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    adapters: Annotated[str, AfterValidator(_adapters_uri)]
    # Adapters resident on a replica at once: Ray's LRU of downloaded adapters and vLLM's GPU
    # slots are the same number, so a request never waits for a slot Ray thinks is free.
    max_adapters: Annotated[int, Field(ge=1, le=64)] = Field(default=4, alias="maxAdapters")
    max_rank: Annotated[int, AfterValidator(_rank)] = Field(default=16, alias="maxRank")
    # Adapter downloads: Ray's per-adapter timeout (s) and tries.
    download_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(default=30.0, alias="downloadTimeoutS")
    download_tries: Literal[1, 2, 3, 4, 5] = Field(default=3, alias="downloadTries")

    def lora_config(self) -> dict[str, Any]:
        """Ray Serve LLM's LLMConfig.lora_config (validated by Ray's LoraConfig at render)."""
        return {
            "dynamic_lora_loading_path": self.adapters.rstrip("/"),
            "max_num_adapters_per_replica": self.max_adapters,
            "download_timeout_s": self.download_timeout_s,
            "max_download_tries": self.download_tries,
        }

    def engine_kwargs(self) -> dict[str, Any]:
        """vLLM's LoRA engine arguments (validated by vLLM's EngineArgs at render)."""
        return {"enable_lora": True, "max_loras": self.max_adapters, "max_lora_rank": self.max_rank}


def inside_weights(adapters: str, weights_uri: str | None) -> bool:
    """The hosts stage the whole weights prefix (`aws s3 sync`) and verify it as one checkpoint:
    adapters under it would be staged and then fail the checkpoint's verify."""
    if not weights_uri or not weights_uri.startswith("s3://"):
        return False
    w = weights_uri.rstrip("/") + "/"
    return (adapters.rstrip("/") + "/").startswith(w)
