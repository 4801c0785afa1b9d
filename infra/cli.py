"""The `llmfleet` command: a typer app whose sub-commands live in infra/commands/*.

Each module in COMMANDS exposes `register(app: typer.Typer) -> None`. Command modules import
only typer and rich at module level; what a command needs (the config model, Pulumi, boto3,
Ray) is imported inside it, so `--help` and the offline commands start fast.
"""

from __future__ import annotations

import gc
import importlib
import os
from typing import Annotated

import typer
from typer.core import TyperOption

# vLLM logs to stdout by default, from the moment it is imported (ray.serve.llm imports it to
# validate an LLMConfig). stdout carries documents (`render serve-config`, --json): logs go to
# stderr. Set before any command can import vLLM.
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")


def _type_column(self: TyperOption, ctx):
    """typer's rich help shows `<bool>` beside every flag (--json, --help), which reads as if
    the flag took a value (`--json true` fails). A flag takes none: show no placeholder."""
    if self.is_flag and not self.count:
        return None
    return _typer_type_column(self, ctx)


_typer_type_column = TyperOption.display_type_rich
TyperOption.display_type_rich = _type_column  # type: ignore[method-assign]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("llmfleet")
        except PackageNotFoundError:  # a checkout run without installing it
            v = "unknown (not installed)"
        typer.echo(f"llmfleet {v}")
        raise typer.Exit()


app = typer.Typer(
    name="llmfleet",
    help="Deploy and serve DeepSeek-R1 class models on multi-host GPU clusters (Pulumi + Docker + Ray).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Deploy and serve DeepSeek-R1 class models on multi-host GPU clusters (Pulumi + Docker + Ray)."""


# One line per command module; keep the order the README documents them in.
COMMANDS = (
    "plan",
    "preview",
    "policy",
    "cost",
    "preflight",
    "weights",
    "deploy",
    "status",
    "wake",
    "logs",
    "endpoint",
    "hosts",
    "render",
    "preflight_cluster",
    "local",
    "dashboards",
    "bench",
    "batch",
)

for _name in COMMANDS:
    importlib.import_module(f"infra.commands.{_name}").register(app)


def main() -> None:
    try:
        app()
    finally:
        # The process ends here. Interpreter shutdown runs the cyclic collector over every object
        # still alive, and after an offline capture (~500k: pulumi_aws's classes, the run's
        # Outputs) that took 0.3-0.4 s of each `llmfleet cost`; frozen objects are skipped, and
        # the OS reclaims the memory either way. (CliRunner calls `app`, not this.)
        gc.freeze()


if __name__ == "__main__":  # `python -m infra.cli ...` runs this checkout's code
    main()
