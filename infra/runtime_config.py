"""The StackConfig of the stack Pulumi is running, from the config the Pulumi CLI hands over.

The program (infra.program) and the policy pack (policy/) both read the running stack's config
this way; the pack imports this one function, not the program (which reaches every component).
"""

from __future__ import annotations

from pulumi.runtime.config import CONFIG, get_config_env

from infra.stack.config import StackConfig, load_stack_config


def runtime_stack_config(stack: str) -> StackConfig:
    """The StackConfig of the stack Pulumi is running (program or policy pack): the config the
    CLI hands over (PULUMI_CONFIG, or set_all_config under mocks)."""
    return load_stack_config({**get_config_env(), **CONFIG.get()}, stack)
