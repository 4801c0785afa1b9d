"""The `llmfleet` command: a typer app whose sub-commands live in infra/commands/*.

Each module in COMMANDS exposes `register(app: typer.Typer) -> None`.
"""

from __future__ import annotations

import importlib
import os

import typer

# vLLM logs to stdout by default, from the moment it is imported (ray.serve.llm imports it to
# validate an LLMConfig). stdout carries documents (`render serve-config`, --json): logs go to
# stderr. Set before any command can import vLLM.
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")

app = typer.Typer(
    name="llmfleet",
    help="Deploy and serve DeepSeek-R1 class models on multi-host GPU clusters (Pulumi + Docker + Ray).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# One line per command module; keep the order the README documents them in.
COMMANDS = (
    "plan",
    "preview",
    "policy",
    "cost",
    "preflight",
    "deploy",
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
    app()


if __name__ == "__main__":  # `python -m infra.cli ...` runs this checkout's code
    main()
