"""The `llmfleet` command: a typer app whose sub-commands live in infra/commands/*.

Each module in COMMANDS exposes `register(app: typer.Typer) -> None`. Command modules import
only typer and rich at module level; what a command needs (the config model, Pulumi, boto3,
Ray) is imported inside it, so `--help` and the offline commands start fast.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from typing import Annotated

import typer

# Since 0.26 typer vendors click (typer/_click) and no longer depends on it: the usage errors
# its parser raises are typer._click's classes, not the `click` package's (which Ray and others
# still install: catching those would catch nothing, and each usage error would end in a
# traceback). typer exports only TyperException and BadParameter of them, not NoSuchOption,
# MissingParameter or NoArgsIsHelpError, so the module is imported by its private name and the
# floor is pinned (pyproject: typer>=0.26); tests/test_cli.py fails if the classes move.
from typer._click import exceptions as click
from typer.core import TyperGroup, TyperOption

from infra.commands import _common

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


def usage_error_parts(e: click.ClickException, argv: list[str]) -> dict[str, object]:
    """click's usage error in the project's terms: the option or argument it is about, what was
    given, what is allowed, and one line that says so."""
    ctx = getattr(e, "ctx", None)
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    key: str | None = None
    value: str | None = None
    allowed: str | None = None
    if isinstance(e, click.NoSuchOption):
        key = value = e.option_name
        opts: list[str] = []
        if ctx is not None:  # every visible option of the command, not only click's near misses
            opts = [p.opts[0] for p in ctx.command.params if p.opts and not getattr(p, "hidden", False)]
            opts = [o for o in opts if o.startswith("-")]
            allowed = ", ".join(opts) or None
        from infra.stack.suggest import closest  # a hidden (deprecated) name is never suggested

        names = {
            o.lstrip("-"): o
            for p in (ctx.command.params if ctx is not None else [])
            if not getattr(p, "hidden", False)
            for o in p.opts
            if o.startswith("--")
        }  # long names, vLLM's aliases included, compared without their dashes
        hit = closest(e.option_name.lstrip("-"), list(names)) if names else None
        near = names[hit] if hit else None
        why = "no such option" + (f"; did you mean {near}?" if near else "")
    elif isinstance(e, click.BadParameter):  # MissingParameter included
        param = e.param
        hint = (
            e.param_hint
            if e.param_hint is None or isinstance(e.param_hint, str)
            else " / ".join(e.param_hint)
        )
        key = (
            (param.opts[0] if param.opts else str(getattr(param, "human_readable_name", param.name)))
            if param
            else hint
        )
        choices = getattr(getattr(param, "type", None), "choices", None)
        allowed = ", ".join(map(str, choices)) if choices else None
        why = "missing" if isinstance(e, click.MissingParameter) else e.message
        value = _given(argv, param.opts if param else [])
        if value is not None and why.startswith("Input should be "):  # typer's pydantic coercion
            allowed = why.removeprefix("Input should be ")
            why = f"{value!r} is not allowed"
    else:
        key = getattr(e, "option_name", None)  # BadOptionUsage: "requires an argument"
        why = e.format_message()
        if key and why.startswith(f"Option '{key}' "):
            why = why.removeprefix(f"Option '{key}' ").rstrip(".")
    why = " ".join(str(why).split())  # one line, whatever click's message carried
    if key:
        line = f"{key}: {why[:1].lower()}{why[1:]}" + (f"; allowed: {allowed}" if allowed else "") + where
    else:
        line = f"{why[:1].lower()}{why[1:]}{where}"
    return {"key": key, "value": value, "allowed": allowed, "message": line}


def _given(argv: list[str], opts: list[str]) -> str | None:
    """The value the command line gave one of `opts` (the last, as click takes it)."""
    found = None
    for i, a in enumerate(argv):
        name, eq, v = a.partition("=")
        if name in opts:
            found = v if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    return found


class RootGroup(TyperGroup):
    """The root command. Two things happen here and nowhere else: `--json` anywhere on the line
    turns every error into one JSON object on stdout (infra.commands._common.emit_error), and
    click's usage errors (a missing option, no such option, a bad value) come out as the
    project's one line - click's own exit code (2) kept - instead of typer's boxed panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        token = _common.JSON_ERRORS.set(_common.wants_json(argv))
        doc_token = _common.DOCUMENT_OUT.set(False)
        try:
            if not standalone_mode:
                return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
            try:
                rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
            except click.NoArgsIsHelpError as e:
                from typer import rich_utils

                rich_utils.rich_format_error(e)
                sys.exit(e.exit_code)
            except click.ClickException as e:
                parts = usage_error_parts(e, argv)
                _common.emit_error(str(parts["message"]), parts)
                sys.exit(e.exit_code)
            except typer.Abort:
                _common.emit_error("aborted")
                sys.exit(1)
            # non-standalone, typer returns an Exit's code instead of raising it; commands return None
            sys.exit(rv if isinstance(rv, int) else 0)
        finally:
            _common.JSON_ERRORS.reset(token)
            _common.DOCUMENT_OUT.reset(doc_token)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("llmfleet-iac")
        except PackageNotFoundError:  # a checkout run without installing it
            v = "unknown (not installed)"
        typer.echo(f"llmfleet {v}")
        raise typer.Exit()


app = typer.Typer(
    name="llmfleet",
    help="Deploy and serve DeepSeek-R1 class models on multi-host GPU clusters (Pulumi + Docker + Ray).",
    cls=RootGroup,
    no_args_is_help=True,
    # --install-completion / --show-completion; --stack, --gpu and --model complete from the
    # project's stacks and the catalog (infra.commands._common.complete_*)
    add_completion=True,
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
    "init",
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
    "finetune",
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
