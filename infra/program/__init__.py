"""The Pulumi program: typed config -> one resolved stack -> components -> StackOutputs.

One module per provider (aws: EC2 + VPC + NLB; existing: hosts you own over SSH), picked from
PROGRAMS by llmfleet:provider; both build on the registry + image pair in `shared`. Kept out of __main__.py so tests can import it;
__main__.py only exports what `build` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pulumi

from infra.rayconf.serve_config import ServeConfigError
from infra.runtime_config import runtime_stack_config
from infra.stack.config import AwsStackConfig, ConfigError, OwnedStackConfig, StackConfig
from infra.stack.outputs import OutputsError, StackOutputs

C = TypeVar("C", bound=StackConfig)


def read_config() -> StackConfig:
    """The validated StackConfig of the running stack (config comes from Pulumi)."""
    try:
        return runtime_stack_config(pulumi.get_stack())
    except ConfigError as e:
        # One line, no traceback: pulumi shows the message as the program's error.
        raise pulumi.RunError(str(e)) from None


def _aws(cfg: StackConfig) -> dict[str, Any]:
    # start-up: a provider's program and its components load only the pulumi_aws modules it
    # reads (the offline engine loads them lazily: provider_modules.py), not the other's
    from infra.program.aws import build_aws

    return build_aws(_as(cfg, AwsStackConfig))


def _existing(cfg: StackConfig) -> dict[str, Any]:
    from infra.program.existing import build_existing  # start-up: as in _aws

    return build_existing(_as(cfg, OwnedStackConfig))


def _as(cfg: StackConfig, model: type[C]) -> C:
    if not isinstance(cfg, model):  # load_stack_config picks the model by llmfleet:provider
        raise ConfigError(f"llmfleet:provider = {cfg.provider!r}: its config is not a {model.__name__}")
    return cfg


# llmfleet:provider -> its program function (its config model is infra.stack.config.PROVIDERS,
# its account checks infra.account_check.CHECKS).
PROGRAMS: dict[str, Callable[[StackConfig], dict[str, Any]]] = {"aws": _aws, "existing": _existing}


def build() -> dict[str, Any]:
    cfg = read_config()
    try:
        outputs = PROGRAMS[cfg.provider](cfg)
        StackOutputs.check_keys(outputs)  # the outputs contract every consumer parses
        return outputs
    except (ServeConfigError, OutputsError, ConfigError) as e:
        # One line, no traceback: the Serve config the head would deploy is invalid, or a rule
        # only the plan decides (infra.stack.resolve: the workers 'auto' makes) is broken.
        raise pulumi.RunError(str(e)) from None
