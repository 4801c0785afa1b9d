"""Composition of the stack: typed config -> plan -> components -> stack outputs.

Kept out of __main__.py so tests can import it; __main__.py only exports what this returns.
"""

from __future__ import annotations

from typing import Any

import pulumi

from infra.config import ConfigError, load_stack_config


def read_config() -> Any:
    """The validated StackConfig of the running stack (config comes from Pulumi)."""
    from pulumi.runtime.config import CONFIG, get_config_env

    raw = {**get_config_env(), **CONFIG.get()}
    try:
        return load_stack_config(raw, pulumi.get_stack())
    except ConfigError as e:
        # One line, no traceback: pulumi shows the message as the program's error.
        raise pulumi.RunError(str(e)) from None


def build() -> dict[str, Any]:
    cfg = read_config()
    plan = cfg.plan()
    outputs: dict[str, Any] = {
        "model": cfg.model,
        "tensor_parallel_size": plan.tensor_parallel_size,
        "pipeline_parallel_size": plan.pipeline_parallel_size,
        "plan_fits": plan.fits,
    }
    return outputs
