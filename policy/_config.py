"""Policy config: what `--policy-pack-config` passes, with the schema's defaults as fallback.

Pulumi passes each policy only its own config block. Keys a user may leave out fall back to the
stack's own config (`llmfleet:*`, which recent Pulumi CLIs hand to policy packs through
PULUMI_CONFIG) and then to the schema default, so `pulumi preview --policy-pack policy/` works with
no config file. The offline runner always passes every key explicitly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from typing import TYPE_CHECKING, Any

import pulumi.runtime

from infra.catalog import load_catalog
from infra.runtime_config import runtime_stack_config
from infra.stack.config import ConfigError

if TYPE_CHECKING:
    from infra.stack.config import StackConfig

# The StackConfig the offline runner checks (run_policies(stack=...)); unset under the Pulumi CLI.
_RUNNER_STACK: ContextVar[StackConfig | None] = ContextVar("llmfleet_policy_stack", default=None)


@cache
def catalog_instance_types() -> tuple[str, ...]:

    return tuple(sorted(load_catalog().instances))


def string_list(description: str, default: list[str] | None = None) -> dict[str, Any]:
    """A config-schema property that holds a list of strings (CIDRs, instance types, tag keys)."""
    prop: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
    if default is not None:
        prop["default"] = default
    return {**prop, "description": description}


def stack_config(key: str) -> Any:
    """`llmfleet:<key>` from the stack config the CLI passes to the pack, parsed when JSON."""
    try:
        value = pulumi.runtime.get_config(f"llmfleet:{key}")
    except Exception:  # noqa: BLE001 - no runtime config at all is a normal case
        return None
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def value(config: Mapping[str, Any], key: str, default: Any = None, stack_key: str | None = None) -> Any:
    """config[key] when present (None included: the runner uses None for 'off'), else stack config, else default."""
    if key in config:
        return config[key]
    if stack_key is not None:
        found = stack_config(stack_key)
        if found is not None:
            return found
    return default


def stack_config_raw(key: str) -> Any:
    """A full config key (e.g. aws:region) from the stack config the CLI passes to the pack."""
    try:
        return pulumi.runtime.get_config(key)
    except Exception:  # noqa: BLE001
        return None


@contextmanager
def runner_stack(cfg: StackConfig | None) -> Iterator[None]:
    """For one offline run: the policies read this StackConfig instead of Pulumi's runtime config."""
    token = _RUNNER_STACK.set(cfg)
    try:
        yield
    finally:
        _RUNNER_STACK.reset(token)


def stack_model() -> StackConfig | None:
    """The StackConfig of the stack under check: the offline runner's, else the one the Pulumi CLI
    hands to the pack (PULUMI_CONFIG); None when that is not a valid config (the program itself
    stops on a bad config, with the one-line reason)."""
    cfg = _RUNNER_STACK.get()
    if cfg is not None:
        return cfg
    try:
        return runtime_stack_config(pulumi.get_stack())
    except ConfigError:
        return None
