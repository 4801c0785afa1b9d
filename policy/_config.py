"""Policy config: what `--policy-pack-config` passes, with the schema's defaults as fallback.

Pulumi passes each policy only its own config block. Keys a user may leave out fall back to the
stack's own config (`llmfleet:*`, which recent Pulumi CLIs hand to policy packs through
PULUMI_CONFIG) and then to the schema default, so `pulumi preview --policy-pack policy/` works with
no config file. The offline runner always passes every key explicitly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from typing import Any

import pulumi.runtime


@cache
def catalog_instance_types() -> tuple[str, ...]:
    from infra.catalog import load_catalog

    return tuple(sorted(load_catalog().instances))


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
