"""The typed stack config: a pydantic model per provider over the flat Pulumi config map.

`load_stack_config(raw, stack)` takes what Pulumi holds ("aws:region" -> "us-east-1",
"llmfleet:workerCount" -> "auto", structured values as JSON text) and returns a
validated `StackConfig`, or raises `ConfigError` whose message is one line that names
the key, the bad value and what is allowed.

StackConfig declares the keys every provider has, AwsStackConfig and OwnedStackConfig their own
(PROVIDERS, picked by llmfleet:provider); each key's allowed values are in `config_values`, the
rules across keys in `config_rules`, an owned host's entry in `host_spec`.
Pulumi.yaml's `config:` block declares the same keys (a test keeps them in step).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo

from infra.catalog import Quantization, load_catalog
from infra.catalog.images import image_ref
from infra.stack import engine_options, suggest
from infra.stack import lora as lora_key
from infra.stack.config_rules import CrossKeyError, check_all, check_aws, check_owned, fmt_value

if TYPE_CHECKING:
    from infra.stack.planner import Plan
from infra.stack.config_values import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    AvailabilityZone,
    CapacityBlockId,
    CertificateArn,
    Cidrs,
    ContextLen,
    DnsName,
    EndpointPort,
    GpuInstanceType,
    GpuMemoryUtilization,
    HostedZoneId,
    HourlyUsd,
    IdleStopMinutes,
    ImageByDigest,
    InstanceType,
    LogRetentionDays,
    ModelId,
    Region,
    Repository,
    ReservationId,
    ScheduleText,
    Tags,
    TopicArn,
    Unset,
    Usd,
    VpcCidr,
    WeightsPath,
    WeightsUri,
    WorkerCount,
    ZeroUnset,
)
from infra.stack.context import DEFAULT_TARGET_CONCURRENCY
from infra.stack.host_spec import HostSpec
from infra.stack.lora import LoraSettings
from infra.stack.names import STACK_NAME_ALLOWED, STACK_NAME_RE
from infra.validation import first_error
from ray_cluster.schedule import Schedule, parse_schedule

NS = "llmfleet"
# vLLM engine arguments and Serve deployment options: keys and plain-typed values checked here.
EngineArgs = Annotated[dict[str, Any], AfterValidator(engine_options.check_engine_args)]
ServeOptions = Annotated[dict[str, Any], AfterValidator(engine_options.check_serve_options)]
SECRET_PLACEHOLDER = "[secret]"
ProviderName = Literal["aws", "existing"]


class ConfigError(ValueError):
    """A bad stack config; str() is one line."""


# Every key: attribute name -> Pulumi key. Structured ones are JSON in the raw map.
class StackConfig(BaseModel):
    """The keys every provider has: the model, the layout, serving, the weights, cost limits.

    A stack's model is one of the providers' subclasses (PROVIDERS: AwsStackConfig,
    OwnedStackConfig), picked by llmfleet:provider; code that serves every provider (the
    planner, the Serve config, the node contract, the cost model) takes this base and sees no
    provider's keys. A key of another provider is refused in one line (load_stack_config).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    provider: ProviderName = Field(default="aws", alias="llmfleet:provider")
    # Where the hosts pull the node image from instead of the stack's ECR repository.
    image_registry: Repository = Field(default=None, alias="llmfleet:imageRegistry")
    stack: str = "dev"
    region: Region = Field(default="us-east-1", alias="aws:region")
    model: ModelId = Field(default="deepseek-r1", alias="llmfleet:model")
    quantization: Annotated[Quantization | None, Unset] = Field(default=None, alias="llmfleet:quantization")
    # 'auto' = the planner's longest clean context at which targetConcurrency full-length
    # sequences fit in the KV cache (infra/stack/context.py); an integer is honoured as set.
    max_model_len: ContextLen = Field(default="auto", alias="llmfleet:maxModelLen")
    concurrency: Annotated[int, Field(ge=1, le=4096)] = Field(default=64, alias="llmfleet:concurrency")
    target_concurrency: Annotated[int, Field(ge=1, le=4096)] = Field(
        default=DEFAULT_TARGET_CONCURRENCY, alias="llmfleet:targetConcurrency"
    )
    gpu_memory_utilization: GpuMemoryUtilization = Field(
        default=DEFAULT_GPU_MEMORY_UTILIZATION, alias="llmfleet:gpuMemoryUtilization"
    )
    gpu_instance_type: GpuInstanceType = Field(default="g6e.48xlarge", alias="llmfleet:gpuInstanceType")
    worker_count: WorkerCount = Field(default="auto", alias="llmfleet:workerCount")
    # Engine replicas; each spans the plan's nodes (PP), so workerCount = replicas x nodes.
    replicas: Annotated[int, Field(ge=1, le=64)] = Field(default=1, alias="llmfleet:replicas")
    # How the Serve router picks a replica: pow2 (Serve's power of two choices) or prefix (Ray
    # Serve LLM's prefix-cache affinity: requests sharing a prefix go where its KV cache is).
    routing: Literal["pow2", "prefix"] = Field(default="pow2", alias="llmfleet:routing")
    weights_uri: WeightsUri = Field(default=None, alias="llmfleet:weightsUri")
    weights_path: WeightsPath = Field(default="/opt/llmfleet/models", alias="llmfleet:weightsPath")
    endpoint_port: EndpointPort = Field(default=8000, alias="llmfleet:endpointPort")
    spot: bool = Field(default=False, alias="llmfleet:spot")
    max_monthly_usd: Annotated[Usd | None, ZeroUnset] = Field(default=None, alias="llmfleet:maxMonthlyUsd")
    tags: Tags = Field(default_factory=dict, alias="llmfleet:tags")
    ecr_keep_images: Annotated[int, Field(ge=2, le=1000)] = Field(default=10, alias="llmfleet:ecrKeepImages")
    # CloudWatch Logs accepts only these values (policy/logs.py checks the same list).
    log_retention_days: LogRetentionDays = Field(default=30, alias="llmfleet:logRetentionDays")
    base_image: ImageByDigest = Field(default=image_ref("vllm-openai"), alias="llmfleet:baseImage")
    # vLLM's trust_remote_code: the engine then runs Python from the checkpoint (auto_map), with
    # the host network and the Ray token in reach. Off unless a model needs it.
    trust_remote_code: bool = Field(default=False, alias="llmfleet:trustRemoteCode")
    # How instance-hours are priced; None = spot when llmfleet:spot, else on-demand.
    pricing_model: Annotated[
        Literal["on-demand", "spot", "savings-plan-1y", "savings-plan-3y"] | None, Unset
    ] = Field(default=None, alias="llmfleet:pricingModel")
    # Any other vLLM engine argument / Ray Serve deployment option, over the planner's values
    # (infra/stack/engine_options.py checks them against vLLM's and Ray's own schemas).
    engine_args: EngineArgs = Field(default_factory=dict, alias="llmfleet:engineArgs")
    serve_options: ServeOptions = Field(default_factory=dict, alias="llmfleet:serveOptions")
    # LoRA adapters served beside the model (Ray Serve LLM multi-LoRA; infra/stack/lora.py),
    # only on a model whose catalog entry says it takes them. Unset: no adapters.
    lora: LoraSettings | None = Field(default=None, alias=lora_key.KEY)
    # The weekly windows the stack serves in (ray_cluster/schedule.py's syntax); outside them the
    # worker slots scale to zero, the head, endpoint and bucket stay. Unset: around the clock.
    schedule: ScheduleText = Field(default=None, alias="llmfleet:schedule")
    # No request for this many minutes scales the worker slots to zero (`llmfleet wake` or the
    # next window brings them back). Unset or 0: never.
    idle_stop_minutes: IdleStopMinutes = Field(default=None, alias="llmfleet:idleStopMinutes")

    @model_validator(mode="after")
    def _cross_key_rules(self) -> Self:
        self._provider_rules()
        check_all(self)
        engine_options.check_config(self)
        return self

    def _provider_rules(self) -> None:
        """The rules over a provider's own keys (its model overrides this), before the shared ones."""

    # ---- derived facts ------------------------------------------------------
    @property
    def effective_pricing_model(self) -> str:
        return self.pricing_model or ("spot" if self.spot else "on-demand")

    @property
    def serving_schedule(self) -> Schedule | None:
        return parse_schedule(self.schedule) if self.schedule else None

    @property
    def scales_to_zero(self) -> bool:
        """Whether something other than a person may take the workers to zero (min size 0)."""
        return bool(self.schedule or self.idle_stop_minutes)

    @property
    def gpu_model(self) -> str:
        gpu, where = load_catalog().instances[self.gpu_instance_type].gpu, "llmfleet:gpuInstanceType"
        if gpu is None:  # the key validators admit GPU hosts only; said in one line if one slips by
            raise ConfigError(
                f"{where}: no GPU model; allowed: a GPU host (catalog/instances.yaml, gpus.yaml)"
            )
        return gpu

    @property
    def gpus_per_worker(self) -> int:
        return load_catalog().instances[self.gpu_instance_type].gpu_count

    @property
    def effective_trust_remote_code(self) -> bool:
        """Whether vLLM may run the checkpoint's own Python: the stack's key, or a catalog model
        that cannot load without it (models.yaml says why). The policy pack warns either way."""
        model = load_catalog().models.get(self.model)
        return self.trust_remote_code or bool(model and model.trust_remote_code)

    @property
    def effective_quantization(self) -> str:
        return self.quantization or load_catalog().models[self.model].native_dtype

    @property
    def model_path(self) -> str:
        """Where the weights sit on every host (the same path on each)."""
        return f"{self.weights_path}/{self.model}"

    @property
    def common_tags(self) -> dict[str, str]:
        return {**self.tags, "Project": "llmfleet", "llmfleet:stack": self.stack}

    def nodes_per_replica(self) -> int | None:
        """Hosts one engine replica spans (its PP), or None for the planner's choice ('auto')."""
        return None if self.worker_count == "auto" else self.worker_count // self.replicas

    def resolved_workers(self, plan: Plan) -> int:
        """The worker count: replicas x the configured or the planner's nodes per replica
        (`plan`: this stack's plan; `infra.stack.resolve` computes both once)."""
        if self.worker_count != "auto":
            return self.worker_count
        return self.replicas * plan.nodes


class AwsStackConfig(StackConfig):
    """llmfleet:provider aws: EC2 workers and head in a VPC, an NLB endpoint (TLS from ACM, a
    Route 53 alias), CloudWatch alarms to an SNS topic, Capacity Blocks and reservations."""

    provider: Literal["aws"] = Field(default="aws", alias="llmfleet:provider")  # pyright: ignore[reportIncompatibleVariableOverride]
    availability_zone: AvailabilityZone = Field(default=None, alias="llmfleet:availabilityZone")
    head_instance_type: InstanceType = Field(default="m7i.2xlarge", alias="llmfleet:headInstanceType")
    endpoint_public: bool = Field(default=False, alias="llmfleet:endpointPublic")
    endpoint_allowed_cidrs: Cidrs = Field(default_factory=list, alias="llmfleet:endpointAllowedCidrs")
    # An internal endpoint admits private CIDRs only (RFC 1918, CGNAT, the VPC) unless this is true.
    endpoint_allow_public_cidrs: bool = Field(default=False, alias="llmfleet:endpointAllowPublicCidrs")
    vpc_cidr: VpcCidr = Field(default="10.42.0.0/16", alias="llmfleet:vpcCidr")
    nat_gateway: bool = Field(default=False, alias="llmfleet:natGateway")
    # Ray GCS fault tolerance with an external Redis (infra/components/gcs_redis.py)
    gcs_redis: bool = Field(default=False, alias="llmfleet:gcsRedis")
    capacity_reservation_id: ReservationId = Field(default=None, alias="llmfleet:capacityReservationId")
    root_volume_gb: Annotated[Annotated[int, Field(ge=64, le=16384)] | None, ZeroUnset] = Field(
        default=None, alias="llmfleet:rootVolumeGb"
    )
    # Workers launch into this EC2 Capacity Block (its capacity reservation id, cr-...).
    capacity_block_id: CapacityBlockId = Field(default=None, alias="llmfleet:capacityBlockId")
    # TLS on the NLB listener (an ACM certificate in aws:region); unset = plain TCP.
    endpoint_certificate_arn: CertificateArn = Field(default=None, alias="llmfleet:endpointCertificateArn")
    # A Route 53 alias record NAME -> the NLB, in the hosted zone; the endpoint URL then uses NAME.
    endpoint_dns_name: DnsName = Field(default=None, alias="llmfleet:endpointDnsName")
    endpoint_hosted_zone_id: HostedZoneId = Field(default=None, alias="llmfleet:endpointHostedZoneId")
    # Every CloudWatch alarm of the stack notifies this existing SNS topic (in aws:region) on
    # ALARM and on OK; users subscribe to the topic themselves. Unset = the alarms notify nobody.
    alarm_topic_arn: TopicArn = Field(default=None, alias="llmfleet:alarmTopicArn")

    def _provider_rules(self) -> None:
        check_aws(self)


class OwnedStackConfig(StackConfig):
    """llmfleet:provider existing: hosts you own, bootstrapped over SSH. No AWS network, ACM,
    Route 53 or SNS key exists here: the endpoint is the head's port."""

    provider: Literal["existing"] = Field(default="existing", alias="llmfleet:provider")  # pyright: ignore[reportIncompatibleVariableOverride]
    hosts: list[HostSpec] = Field(default_factory=list, alias="llmfleet:hosts")
    ssh_private_key: Annotated[str | None, Unset] = Field(default=None, alias="llmfleet:sshPrivateKey")
    host_hourly_usd: Annotated[HourlyUsd | None, Unset] = Field(default=None, alias="llmfleet:hostHourlyUsd")

    def _provider_rules(self) -> None:
        check_owned(self)

    @property
    def worker_hosts(self) -> list[HostSpec]:
        return [h for h in self.hosts if h.role == "worker"]

    @property
    def head_host(self) -> HostSpec | None:
        return next((h for h in self.hosts if h.role == "head"), None)

    @property
    def gpu_model(self) -> str:
        if not self.worker_hosts:
            return super().gpu_model
        gpu = self.worker_hosts[0].gpu_model
        if gpu is None:  # check_hosts admits GPU workers only; said in one line if one slips by
            raise ConfigError(
                "llmfleet:hosts[worker].gpuModel: no GPU model; allowed: a GPU host (catalog/gpus.yaml)"
            )
        return gpu

    @property
    def gpus_per_worker(self) -> int:
        return self.worker_hosts[0].gpu_count if self.worker_hosts else super().gpus_per_worker

    def nodes_per_replica(self) -> int | None:
        return len(self.worker_hosts) // self.replicas

    def resolved_workers(self, plan: Plan) -> int:
        return len(self.worker_hosts)


# The providers: llmfleet:provider -> its config model (its own keys over StackConfig's). Each
# also has a program function (infra.program.PROGRAMS) and its account checks
# (infra.account_check.run.CHECKS); tests/test_providers.py keeps the three tables on one set.
PROVIDERS: dict[str, type[StackConfig]] = {"aws": AwsStackConfig, "existing": OwnedStackConfig}
# The same table as pydantic's tagged union, for a model that holds a stack's config (a field
# typed AnyStackConfig validates into the provider's model). load_stack_config picks from
# PROVIDERS itself: its errors then name the key alone, not the union's tag before it.
AnyStackConfig = Annotated[AwsStackConfig | OwnedStackConfig, Field(discriminator="provider")]


STRUCTURED = {
    "llmfleet:endpointAllowedCidrs",
    "llmfleet:tags",
    "llmfleet:hosts",
    engine_options.ENGINE_KEY,
    engine_options.SERVE_KEY,
    lora_key.KEY,
}
MAPPINGS = {"llmfleet:tags", engine_options.ENGINE_KEY, engine_options.SERVE_KEY, lora_key.KEY}
SECRET_KEYS = {"llmfleet:sshPrivateKey"}


def declared_keys(provider: str | None = None) -> dict[str, FieldInfo]:
    """Pulumi key -> pydantic field, for every key one provider's model accepts (None: any)."""
    models = [PROVIDERS[provider]] if provider else list(PROVIDERS.values())
    out: dict[str, FieldInfo] = {}
    for m in models:  # a shared key once, as the first provider (aws, the default) declares it
        for f in m.model_fields.values():
            if f.alias:
                out.setdefault(f.alias, f)
    return out


# Why a key of one provider means nothing to the other (the rest: "a key of provider X").
OTHER_PROVIDER_WHY = {
    "llmfleet:alarmTopicArn": "the alarms watch the EC2 head and worker groups",
    "llmfleet:capacityBlockId": "a Capacity Block holds EC2 workers",
    "llmfleet:capacityReservationId": "a capacity reservation holds EC2 workers",
    "llmfleet:endpointCertificateArn": "TLS from ACM is on the AWS load balancer",
    "llmfleet:endpointDnsName": "the Route 53 alias points at the AWS load balancer",
    "llmfleet:endpointHostedZoneId": "the Route 53 alias points at the AWS load balancer",
    "llmfleet:vpcCidr": "the address range of the stack's AWS VPC",
    "llmfleet:hosts": "hosts are only used with llmfleet:provider=existing",
    # One way as the other (issue #31): an aws stack holds no owned-host key, not even unused.
    "llmfleet:sshPrivateKey": "the SSH key reaches hosts you own; EC2 hosts are reached over SSM",
    "llmfleet:hostHourlyUsd": "the price of hosts you own; EC2 hosts are priced from the catalog",
}


@cache
def _field_adapter(key: str) -> TypeAdapter[Any]:
    field = declared_keys()[key]
    annotated: Any = Annotated  # subscripted with the field's own metadata (its validators)
    kind: Any = annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return TypeAdapter[Any](kind)


def _is_default(key: str, value: Any) -> bool:
    """Whether `value` is what the key's model holds when it is not set (Pulumi.yaml declares
    every key with that default, so the Pulumi CLI hands each stack all of them)."""
    field = declared_keys()[key]
    try:
        return _field_adapter(key).validate_python(value) == field.get_default(call_default_factory=True)
    except ValidationError:
        return False


def _other_providers_key(key: str, value: Any, provider: str) -> ConfigError:
    owner = next(name for name in PROVIDERS if key in declared_keys(name))
    shown = fmt_value(SECRET_PLACEHOLDER if key in SECRET_KEYS else value)  # as _one_line shows it
    why = OTHER_PROVIDER_WHY.get(key, f"a key of llmfleet:provider {owner}")
    if key == "llmfleet:hosts":
        return ConfigError(f"{key} = '[...]': {why}")
    return ConfigError(f"{key} = {shown}: {why}; allowed with provider {owner}")


def _parse_raw(key: str, value: Any) -> Any:
    if key in STRUCTURED and isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(
                f"{key} = {value!r}: not valid JSON; allowed: a YAML/JSON "
                f"{'mapping' if key in MAPPINGS else 'list'}"
            ) from None
    return value


def load_stack_config(raw: Mapping[str, Any], stack: str = "dev") -> StackConfig:
    """Validate the flat Pulumi config map of one stack. Keys of other namespaces
    (other than aws:region) are ignored; unknown llmfleet: keys are errors."""
    if not STACK_NAME_RE.fullmatch(stack):
        # The name lands in resource names, SSM paths and the hosts' scripts.
        raise ConfigError(f"--stack {stack!r}: allowed: {STACK_NAME_ALLOWED}")
    known = declared_keys()
    data: dict[str, Any] = {"stack": stack}
    for key, value in raw.items():
        if key == "aws:region" or key.startswith(f"{NS}:"):
            if key not in known:
                ours = [k for k in known if k.startswith(f"{NS}:")]
                close = suggest.closest(key, ours)
                hint = f"did you mean {close}?" if close else "allowed keys: " + ", ".join(ours)
                raise ConfigError(f"{key} = {fmt_value(value)}: unknown key; {hint}")
            data[key] = _parse_raw(key, value)
    # llmfleet:provider picks the model (PROVIDERS); another provider's key is refused when set,
    # dropped when it holds that key's default (as Pulumi.yaml's declared defaults do).
    provider = data.setdefault("llmfleet:provider", "aws")
    if provider not in PROVIDERS:
        raise ConfigError(f"llmfleet:provider = {fmt_value(provider)}: allowed: {', '.join(PROVIDERS)}")
    own = declared_keys(provider)
    for key in [k for k in data if k != "stack" and k not in own]:
        if not _is_default(key, data[key]):
            raise _other_providers_key(key, data[key], provider)
        del data[key]
    try:
        return PROVIDERS[provider].model_validate(data)
    except ValidationError as e:
        raise ConfigError(_one_line(e, data)) from None


def _one_line(e: ValidationError, data: Mapping[str, Any]) -> str:
    err = first_error(e)
    if isinstance(err.ctx.get("error"), (CrossKeyError, engine_options.OptionError)):
        return str(err.ctx["error"])
    key = str(err.loc[0]) if err.loc else "config"
    # A nested error (a host's field) shows that field's value, a top-level one the raw value.
    value: Any = err.input if len(err.loc) > 1 else data.get(key, err.input)
    if err.type == "extra_forbidden" and key == lora_key.KEY:
        msg = "unknown field; allowed: " + ", ".join(
            f.alias or n for n, f in LoraSettings.model_fields.items()
        )
    elif err.type == "extra_forbidden":
        msg = "unknown field; allowed: " + ", ".join(f.alias or n for n, f in HostSpec.model_fields.items())
    else:
        msg = err.allowed()
    if key in SECRET_KEYS:
        value = SECRET_PLACEHOLDER
    return f"{err.path or key} = {fmt_value(value)}: {msg}"
