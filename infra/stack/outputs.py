"""StackOutputs: the one contract between the programs and everything that reads a stack back.

Both programs (AWS and existing hosts) write exactly these keys (`check_keys`, run before
export); `llmfleet render`, `llmfleet up` and its readiness wait parse `pulumi stack output
--json` into this model instead of reading string keys one by one. A key a consumer needs and a
program forgot is then a one-line error at the program, not a silent default later.
(infra.rayconf.cluster_yaml validates the subset cluster.yaml needs with its own model: that
module runs without infra.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infra.validation import first_error


class OutputsError(ValueError):
    """One line: which output key is missing or wrong, and what is allowed."""


RETIRED = frozenset({"plan_fits"})  # outputs older programs exported, read by nothing now


class StackOutputs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # ---- both programs
    cluster_name: str
    endpoint_url: str
    endpoint_port: int = Field(ge=1, le=65535)
    head_private_ip: str
    head_container: str
    worker_private_ips: list[str]
    image_ref: str
    ssh_user: str
    # serving: what the renderers and readiness need (infra.rayconf.serving.serving_outputs)
    model: str
    served_model: str  # the id the Serve app serves; clients and readiness send it as "model"
    model_path: str
    quantization: str
    max_model_len: int = Field(ge=1)
    gpu_model: str
    gpus_per_worker: int = Field(ge=1)
    workers: int = Field(ge=1)
    replicas: int = Field(ge=1)
    tensor_parallel_size: int = Field(ge=1)
    pipeline_parallel_size: int = Field(ge=1)
    weights_uri: str | None = None
    # ---- AWS
    region: str | None = None
    availability_zone: str | None = None
    # The head is an Auto Scaling group of one (infra/components/head.py): the stack names the
    # group; its instance id is looked up by the group's tag (infra/worker_lookup.py) and filled
    # into head_instance_id by the consumers that need it.
    head_group: str | None = None
    head_instance_id: str | None = None
    worker_instance_ids: list[str] | None = None
    # GPU workers are Auto Scaling groups (one per slot): their instances are looked up by the
    # groups' `aws:autoscaling:groupName` tag when needed; worker_private_ips is then empty.
    worker_groups: list[str] | None = None
    token_parameter: str | None = None
    ray_token_parameter: str | None = None
    dashboard_port_forward_command: str | None = None
    # metrics and logs (infra/components/observability.py): where they are, how to open them
    metrics_workspace_id: str | None = None
    metrics_query_url: str | None = None
    grafana_command: str | None = None
    log_groups: list[str] | None = None
    logs_tail_command: str | None = None
    # ---- existing hosts
    provider: Literal["aws", "existing"] = "aws"
    head_address: str | None = None
    worker_addresses: list[str] | None = None
    api_token: str | None = None  # a Pulumi secret; only with --show-secrets
    ray_auth_token: str | None = None
    host_hourly_usd: float | None = None

    @classmethod
    def check_keys(cls, outputs: Mapping[str, Any]) -> None:
        """What a program is about to export: every key declared, every required key there.
        (The values are still Pulumi Outputs; they are checked when a consumer parses them.)"""
        fields = cls.model_fields
        unknown = sorted(set(outputs) - set(fields))
        if unknown:
            raise OutputsError(
                f"stack output {unknown[0]!r} is not in StackOutputs; declare it in infra/stack/outputs.py"
            )
        missing = sorted(k for k, f in fields.items() if f.is_required() and k not in outputs)
        if missing:
            raise OutputsError(f"stack output {missing[0]!r} is missing: the program must export it")

    @classmethod
    def parse(cls, outputs: Mapping[str, Any]) -> StackOutputs:
        """`pulumi stack output --json` (or the offline capture) -> StackOutputs; one-line error."""
        # plan_fits: exported by stacks deployed before it was dropped (nothing read it); such a
        # stack's outputs still parse until its next `pulumi up`.
        raw = {k: v for k, v in outputs.items() if v is not None and k not in RETIRED}
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            err = first_error(e)
            key = err.path or "(outputs)"
            value = raw.get(str(err.loc[0])) if err.loc else None
            if err.type == "missing":
                raise OutputsError(
                    f"stack output {key!r} is missing: run `pulumi up` with this version"
                ) from None
            if err.type == "extra_forbidden":
                raise OutputsError(
                    f"stack output {key!r} is not one llmfleet knows (older or newer program?)"
                ) from None
            raise OutputsError(f"stack output {key} = {value!r}: {err.msg}") from None
