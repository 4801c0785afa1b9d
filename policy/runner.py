"""Run the CrossGuard pack offline: the real policy objects on the offline engine's capture.

The runner does what the Pulumi engine does for a policy pack, without the CLI: it builds
`ResourceValidationArgs` for every (resource policy, resource) and one `StackValidationArgs` per
stack policy, with props wrapped in CrossGuard's unknown-checking proxy, passes each policy its
config block, respects enforcement levels and collects what the policies report.

Resource policies see a resource's inputs (CrossGuard's Analyze); stack policies see its state,
inputs plus the mocked outputs such as `id` (CrossGuard's AnalyzeStack). The offline engine's
"[unknown]" placeholder becomes Pulumi's unknown sentinel, so policies meet unknowns as they
would during a real preview.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.policy import _NotApplicableError
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError, unknown_checking_proxy

from infra.catalog import load_catalog
from infra.stack.config import AwsStackConfig, StackConfig
from infra.stack.resolve import resolve
from policy import _config
from policy.policies import PACK_ENFORCEMENT, POLICIES

OFFLINE_UNKNOWN = "[unknown]"  # infra.program.offline's placeholder for a value unknown at registration


@dataclass(frozen=True)
class Violation:
    policy: str
    resource: str | None  # logical name; None for the stack as a whole
    message: str
    enforcement: str  # "mandatory" | "advisory"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Report:
    violations: tuple[Violation, ...]

    @property
    def mandatory(self) -> int:
        return sum(v.enforcement == "mandatory" for v in self.violations)

    @property
    def advisory(self) -> int:
        return sum(v.enforcement == "advisory" for v in self.violations)

    def to_dict(self) -> dict[str, Any]:
        return {
            "violations": [v.to_dict() for v in self.violations],
            "mandatory": self.mandatory,
            "advisory": self.advisory,
        }


# --- config --------------------------------------------------------------------------------------


def schema_defaults(policies: Iterable[Policy]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for p in policies:
        if p.config_schema is None:
            continue
        defaults = {k: v["default"] for k, v in p.config_schema.properties.items() if "default" in v}
        if defaults:
            out[p.name] = defaults
    return out


def stack_policy_config(cfg: StackConfig) -> dict[str, dict[str, Any]]:
    """The policy config a stack implies: what a user would put in --policy-pack-config."""

    gpu_fit: dict[str, Any] = {
        "model": cfg.model,
        "quantization": cfg.quantization,
        # the context the hosts get: maxModelLen as set, or what 'auto' picked
        "maxModelLen": resolve(cfg).plan.max_model_len,
        "concurrency": cfg.concurrency,
        "targetConcurrency": cfg.target_concurrency,
        "gpuMemoryUtilization": cfg.gpu_memory_utilization,
    }
    # Used only when the capture holds no GPU worker instances (provider: existing).
    gpu_fit.update(gpu=cfg.gpu_model, gpusPerNode=cfg.gpus_per_worker, workers=resolve(cfg).workers)
    return {
        "ec2-instance-type-allowed": {"allowedInstanceTypes": sorted(load_catalog().instances)},
        "security-group-ingress": {
            # hosts you own have no security group: the keys' defaults (no CIDR, internal)
            "allowedIngressCidrs": list(cfg.endpoint_allowed_cidrs)
            if isinstance(cfg, AwsStackConfig)
            else [],
            "endpointPublic": cfg.endpoint_public if isinstance(cfg, AwsStackConfig) else False,
            "endpointPort": cfg.endpoint_port,
        },
        "gpu-fit": gpu_fit,
        "monthly-budget": {"maxMonthlyUsd": cfg.max_monthly_usd, "region": cfg.region, "model": cfg.model},
    }


def merge_config(*layers: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for name, block in layer.items():
            out.setdefault(name, {}).update(block)
    return out


def enforcement_of(
    policy: Policy, config: Mapping[str, Mapping[str, Any]], default: EnforcementLevel
) -> EnforcementLevel:
    level = (config.get(policy.name) or {}).get("enforcementLevel")
    if level is not None:
        return level if isinstance(level, EnforcementLevel) else EnforcementLevel(level)
    return policy.enforcement_level or default


# --- building CrossGuard's argument objects ------------------------------------------------------


def _unknowns_as_sentinels(value: Any) -> Any:
    if value == OFFLINE_UNKNOWN:
        return UNKNOWN_STRING_VALUE
    if isinstance(value, dict):
        return {k: _unknowns_as_sentinels(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unknowns_as_sentinels(v) for v in value]
    return value


def _opts(parent_urn: str | None) -> PolicyResourceOptions:
    return PolicyResourceOptions(
        protect=False,
        ignore_changes=[],
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
        parent=parent_urn,
    )


def _parent_urns(resources: Sequence[Mapping[str, Any]]) -> dict[str, str | None]:
    """Child URN -> parent URN. The capture names the parent; its type is in the child's URN."""
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for r in resources:
        by_name.setdefault(r["name"], []).append(r)
    out: dict[str, str | None] = {}
    for r in resources:
        parent = None
        if r.get("parent"):
            chain = r["urn"].split("::")[2].split("$")[:-1]
            cands = [c for c in by_name.get(r["parent"], []) if c["type"] in chain] or by_name.get(
                r["parent"], []
            )
            parent = cands[-1]["urn"] if cands else None
        out[r["urn"]] = parent
    return out


def resource_args(resources: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], dict[str, Any]]]:
    """(capture record, kwargs for ResourceValidationArgs minus config) per resource."""
    parents = _parent_urns(resources)
    out = []
    for r in resources:
        props = unknown_checking_proxy(_unknowns_as_sentinels(dict(r.get("inputs") or {})))
        out.append(
            (
                r,
                dict(
                    resource_type=r["type"],
                    props=props,
                    urn=r["urn"],
                    name=r["name"],
                    opts=_opts(parents[r["urn"]]),
                    provider=None,
                ),
            )
        )
    return out


def policy_resources(resources: Sequence[Mapping[str, Any]]) -> list[PolicyResource]:
    """PolicyResource per captured resource (state = inputs + mocked outputs + id), parents linked."""
    parents = _parent_urns(resources)
    built: dict[str, PolicyResource] = {}
    for r in resources:
        state = {**(r.get("inputs") or {}), **(r.get("outputs") or {})}
        if r.get("id"):
            state.setdefault("id", r["id"])
        props = unknown_checking_proxy(_unknowns_as_sentinels(state))
        built[r["urn"]] = PolicyResource(
            r["type"], props, r["urn"], r["name"], _opts(parents[r["urn"]]), None, None, [], {}
        )
    for urn, res in built.items():
        parent = parents.get(urn)
        if parent in built:
            res.parent = built[parent]
    return list(built.values())


# --- running -------------------------------------------------------------------------------------


def _await(result: Any) -> None:
    if inspect.isawaitable(result):
        # A private loop, as CrossGuard does: asyncio.run() would clear the thread's current loop,
        # which Pulumi's own synchronous helpers (used by the offline engine) rely on.
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(_as_coroutine(result))
        finally:
            loop.close()


async def _as_coroutine(awaitable: Any) -> None:
    await awaitable


def _invoke(
    policy: ResourceValidationPolicy | StackValidationPolicy,
    args: Any,
    level: EnforcementLevel,
    names: Mapping[str, str],
    default_urn: str | None,
    out: list[Violation],
) -> None:
    label = level.value

    def report_violation(message: str, urn: str | None = None) -> None:
        # CrossGuard ties a resource policy's violation to the resource itself, whatever urn is given.
        target = default_urn if default_urn is not None else urn
        out.append(
            Violation(
                policy.name, names.get(target) if target else None, message or policy.description, label
            )
        )

    try:
        _await(policy.validate(args, report_violation))
    except UnknownValueError as err:
        # What the engine does too: the policy cannot run on an unknown value, advisory note.
        out.append(
            Violation(
                policy.name,
                names.get(default_urn) if default_urn else None,
                f"can't run policy during preview: {err.message}",
                "advisory",
            )
        )
    except _NotApplicableError:
        pass
    except Exception as err:  # noqa: BLE001 - a crashing policy must block, not pass silently
        out.append(
            Violation(
                policy.name,
                names.get(default_urn) if default_urn else None,
                f"policy raised {type(err).__name__}: {err}",
                "mandatory",
            )
        )


def run_policies(
    resources: Sequence[Mapping[str, Any]],
    config: Mapping[str, Mapping[str, Any]],
    policies: Sequence[Policy] | None = None,
    pack_enforcement: EnforcementLevel | None = None,
    *,
    stack: StackConfig | None = None,
) -> Report:
    """Every enabled policy on the resources; config maps policy name -> its config block.

    `stack` is the StackConfig the resources come from (a capture's `config`): the policies that
    price the stack (pricing model, owned hosts) read it where, under the Pulumi CLI, they read
    the stack config the CLI hands over. Without it they see only that runtime config.
    """
    policies = list(POLICIES if policies is None else policies)
    default = pack_enforcement or PACK_ENFORCEMENT
    config = merge_config(schema_defaults(policies), config)
    names = {r["urn"]: r["name"] for r in resources}
    violations: list[Violation] = []
    res_args = resource_args(resources)
    stack_resources = policy_resources(resources)
    with _config.runner_stack(stack):
        for policy in policies:
            level = enforcement_of(policy, config, default)
            if level == EnforcementLevel.DISABLED:
                continue
            if level == EnforcementLevel.REMEDIATE:
                level = EnforcementLevel.MANDATORY  # as the engine: a violation that survives remediation
            block = {k: v for k, v in (config.get(policy.name) or {}).items() if k != "enforcementLevel"}
            if isinstance(policy, ResourceValidationPolicy):
                for record, kwargs in res_args:
                    args = ResourceValidationArgs(**kwargs, config=dict(block))
                    _invoke(policy, args, level, names, record["urn"], violations)
            elif isinstance(policy, StackValidationPolicy):
                _invoke(
                    policy, StackValidationArgs(stack_resources, dict(block)), level, names, None, violations
                )
    return Report(tuple(violations))


def run_for_stack(
    stack: str, overrides: Sequence[str] = (), extra_config: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[Any, Report]:
    """Capture the stack with the offline engine and run the pack on it."""
    # start-up: the offline engine (Pulumi's mocks, the program) is only for this; `llmfleet up`
    # reads the pack's schema (stack_policy_config) without it
    from infra.program.offline import capture

    cap = capture(stack, overrides)
    config = merge_config(stack_policy_config(cap.config), extra_config or {})
    return cap, run_policies(cap.resources, config, stack=cap.config)
