"""The `llmfleet` command: a typer app whose sub-commands live in infra/commands/*.

Each module named in COMMANDS exposes `register(app: typer.Typer) -> None`. The root group
imports a command's module only when that command runs (or its own --help or completion is
asked): `llmfleet --help` lists the commands from the COMMANDS table without importing any.
So a command module imports the project modules it uses at the top, where import-linter and a
reader see them; only what pulls Pulumi, boto3 or Ray stays inside the command that needs it.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from difflib import get_close_matches
from typing import Annotated

import typer
import typer.main

# Since 0.26 typer vendors click (typer/_click) and no longer depends on it: the usage errors
# its parser raises are typer._click's classes, not the `click` package's (which Ray and others
# still install: catching those would catch nothing, and each usage error would end in a
# traceback). typer exports only TyperException and BadParameter of them, not NoSuchOption,
# MissingParameter or NoArgsIsHelpError, so the module is imported by its private name and the
# floor is pinned (pyproject: typer>=0.26); tests/test_cli.py fails if the classes move.
from typer._click import exceptions as click
from typer._click.core import Command, Context
from typer._click.formatting import HelpFormatter
from typer._click.shell_completion import CompletionItem
from typer.core import TyperCommand, TyperGroup, TyperOption

from infra.commands import _common
from infra.stack.suggest import closest

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

    # While the root's help or its command-name completion is drawn, commands not loaded yet are
    # listed from COMMANDS (name and first help paragraph) instead of importing their modules.
    _listing = False

    def list_commands(self, ctx: Context) -> list[str]:
        return [*COMMANDS, *(n for n in self.commands if n not in COMMANDS)]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            if self._listing:
                return TyperCommand(cmd_name, help=COMMANDS[cmd_name][1])
            self.load(COMMANDS[cmd_name][0])
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: Context, args: list[str]) -> tuple[str | None, Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            # typer suggests from the commands loaded so far; suggest from every command
            if self.suggest_commands and args and "Did you mean" not in e.message:
                if near := get_close_matches(args[0], self.list_commands(ctx)):
                    e.message = f"{e.message.rstrip('.')}. Did you mean {', '.join(map(repr, near))}?"
            raise

    def load(self, module: str) -> None:
        """Import infra.commands.<module> and add what its register() declares."""
        sub = typer.Typer()
        importlib.import_module(f"infra.commands.{module}").register(sub)
        for name, cmd in typer.main.get_group(sub).commands.items():
            self.add_command(cmd, name)

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def shell_complete(self, ctx: Context, incomplete: str) -> list[CompletionItem]:
        self._listing = True
        try:
            return super().shell_complete(ctx, incomplete)
        finally:
            self._listing = False

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


# The root's commands, in the order `llmfleet --help` lists them (the README's): name -> (the
# module under infra/commands that registers it, the first paragraph of its help). The help is
# here so that listing the commands imports none of them; tests/test_cli.py checks every entry
# against what the module registers.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": (
        "init",
        "Write a new llmfleet project: Pulumi.yaml, __main__.py and stacks/Pulumi.<stack>.yaml.",
    ),
    "plan": (
        "plan",
        "Fit a model on GPUs: layout, memory per GPU, KV cache, per-user and cluster decode speed, time to first token, cold start, and what it costs on AWS.",
    ),
    "preview": (
        "preview",
        "Run the real Pulumi program offline (mocked cloud) and list what `pulumi up` would create.",
    ),
    "policy": (
        "policy",
        "Run the policy pack (policy/) offline, as `pulumi preview --policy-pack policy/` would.",
    ),
    "cost": ("cost", "Price every resource of a stack before it exists; exit 4 over llmfleet:maxMonthlyUsd."),
    "preflight": ("preflight", "Check the AWS account can hold the stack before anything is created."),
    "up": (
        "deploy",
        "Preflight, preview with the policy pack (Automation API) shown before asking (the changes as a tree, the hosts replaced and the changes that restart serving, the pack's verdict, the cost before -> after), `pulumi up --refresh` with the pack, render cluster.yaml + Serve config, roll the node scripts out in order (rolled back on a failure), wait until the new deployment answers.",
    ),
    "rollout": (
        "deploy",
        "Roll out the node scripts the last `pulumi up` wrote: replica by replica, the head last, each host gated on its health; on a failure stop, restore the previous scripts and re-apply them. Run it after a plain `pulumi up --refresh` (llmfleet up runs it itself).",
    ),
    "down": ("deploy", "Destroy every resource of the stack (`pulumi destroy` through the Automation API)."),
    "status": (
        "status",
        "Hosts (Auto Scaling: instance, lifecycle, health), Ray nodes and GPUs, Serve replicas and their nodes, weights fingerprints, the last rollout, the endpoint, and live tokens/s and USD per 1M tokens from the metrics workspace. Everything through AWS APIs and SSM: no open port.",
    ),
    "wake": (
        "wake",
        "Start the worker slots a schedule or idle stop scaled to zero and wait until a real completion answers.",
    ),
    "logs": (
        "logs",
        "Print the stack's logs from CloudWatch Logs, oldest first, each line with its stream (`<role>-<ip>`, or `<role>-<ip>/<container>` for a container's output).",
    ),
    "endpoint": (
        "endpoint",
        "The stack's OpenAI-compatible endpoint URL and served model; the token only with --show-token.",
    ),
    "chat": (
        "endpoint",
        "Ask the stack's endpoint one question (openai client, the token from SSM, never printed).",
    ),
    "preflight-cluster": (
        "preflight_cluster",
        "Reserve TP x PP GPU bundles (PACK), check each TP group is on one host, all-reduce across all ranks.",
    ),
    "dashboards": (
        "dashboards",
        "Write Ray's Serve LLM, Serve, Serve deployment and core dashboards (from the installed Ray's own generator) plus a GPU (DCGM) dashboard, with Grafana provisioning files.",
    ),
    "bench": (
        "bench",
        "Measure a running endpoint: a load sweep through the OpenAI API (streaming completions, prompts of exactly --input-len tokens of the served tokenizer, --output-len tokens out), one step per concurrency, each bounded by a request count or duration and a time limit. Per step: requests/s, output tok/s, TTFT and TPOT p50/p95, errors, beside the planner's figures for the stack's layout. Load goes only to the target endpoint.",
    ),
    "batch": (
        "batch",
        "Offline batch inference: rows {id, prompt[, max_tokens]} from --input (JSONL or Parquet) through ray.data.llm's vLLM engine processor into Parquet results at --output (id, prompt, generated_text, token counts, error). Resumable: ids already in --output are skipped. Ray Data shows the progress; the summary gives tokens/s and failed rows (exit 1 when any row failed).",
    ),
    "finetune": (
        "finetune",
        "Fine-tune a LoRA adapter on the cluster (a Ray Train job); served as <model>:NAME when it ends.",
    ),
    "weights": (
        "weights",
        "Upload a checkpoint to the stack's weights location (checked, resumable) and verify it.",
    ),
    "hosts": ("hosts", "Hosts you own (llmfleet:provider existing)."),
    "render": ("render", "Render Ray's cluster.yaml and the Serve config from stack outputs."),
    "local": (
        "local",
        "A multi-host Ray cluster on this machine serving a tiny DeepSeek-V3 model (OpenAI API).",
    ),
}


def full_group() -> RootGroup:
    """The root group with every command module loaded (tests walk every command through it)."""
    group = typer.main.get_command(app)
    assert isinstance(group, RootGroup)
    for module in dict.fromkeys(module for module, _ in COMMANDS.values()):
        group.load(module)
    return group


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
