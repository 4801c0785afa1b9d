"""The Pulumi program: typed config -> one resolved stack -> components -> StackOutputs.

One module per provider (aws: EC2 + VPC + NLB; existing: hosts you own over SSH), both built
on the registry + image pair in `shared`. Kept out of __main__.py so tests can import it;
__main__.py only exports what `build` returns.
"""

from __future__ import annotations

from typing import Any

import pulumi

from infra.rayconf.serve_config import ServeConfigError
from infra.runtime_config import runtime_stack_config
from infra.stack.config import ConfigError, StackConfig
from infra.stack.outputs import OutputsError, StackOutputs


def read_config() -> StackConfig:
    """The validated StackConfig of the running stack (config comes from Pulumi)."""
    try:
        return runtime_stack_config(pulumi.get_stack())
    except ConfigError as e:
        # One line, no traceback: pulumi shows the message as the program's error.
        raise pulumi.RunError(str(e)) from None


def build() -> dict[str, Any]:
    cfg = read_config()
    try:
        if cfg.provider == "existing":
            # start-up: a provider's program and its components load only the pulumi_aws modules
            # it reads (the offline engine loads them lazily: provider_modules.py), not the other's
            from infra.program.existing import build_existing

            outputs = build_existing(cfg)
        else:
            from infra.program.aws import build_aws  # start-up: as above

            outputs = build_aws(cfg)
        StackOutputs.check_keys(outputs)  # the outputs contract every consumer parses
        return outputs
    except (ServeConfigError, OutputsError, ConfigError) as e:
        # One line, no traceback: the Serve config the head would deploy is invalid, or a rule
        # only the plan decides (infra.stack.resolve: the workers 'auto' makes) is broken.
        raise pulumi.RunError(str(e)) from None
