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
