"""`llmfleet finetune --stack S --data FILE.jsonl --name NAME` (or `--local`): a LoRA fine-tune
whose adapter the stack then serves (issue #33).

What is built: the checks that come before any job, each a one-line refusal: the stack's model
takes LoRA adapters (the catalog's `lora`, infra/stack/lora.py), NAME is one safe path component
(the adapter lands at `<llmfleet:lora.adapters>/NAME/` and is requested as `<model>:NAME`), and
every line of the JSONL is one training example. What is not built: the Ray Train job itself;
the command says so and exits 1 instead of pretending to submit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from infra.commands._common import ConfigOpt, complete_stack, config_or_fail, fail
from infra.stack import lora
from infra.validation import first_error

# A JSONL larger than this is not a LoRA data set this command should read into memory to check.
MAX_DATA_BYTES = 1 << 30
EXAMPLE_ALLOWED = (
    'one JSON object per line: {"prompt": TEXT, "completion": TEXT} or '
    '{"messages": [{"role": "system"|"user"|"assistant", "content": TEXT}, ...]} with an assistant turn'
)
NOT_BUILT = (
    "finetune: submitting the Ray Train job is not built yet (issue #33: the inputs were checked, "
    "nothing was submitted); allowed today: serving adapters you trained elsewhere through llmfleet:lora"
)


class _Prompt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)
    completion: str = Field(min_length=1)


class _Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class _Chat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[_Turn] = Field(min_length=1)

    @model_validator(mode="after")
    def _assistant(self) -> _Chat:
        # the loss is on the assistant's tokens: a conversation without one teaches nothing
        if not any(t.role == "assistant" for t in self.messages):
            raise ValueError("no assistant turn")
        return self


def _example(obj: object) -> None:
    # the shape is chosen by its key, so the error is about the shape the line meant
    kind = _Chat if isinstance(obj, dict) and "messages" in obj else _Prompt
    kind.model_validate(obj)


def check_data(path: Path) -> int:
    """The number of examples in `path`; ValueError with the one line when a line is not one."""
    where = f"--data {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where}: not a file; allowed: {EXAMPLE_ALLOWED}")
    if path.stat().st_size > MAX_DATA_BYTES:
        raise ValueError(f"{where}: larger than {MAX_DATA_BYTES >> 20} MiB; allowed: a smaller JSONL")
    n = 0
    with path.open("rb") as f:
        for i, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                _example(json.loads(raw))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ValueError(f"{where} line {i}: not JSON; allowed: {EXAMPLE_ALLOWED}") from None
            except ValidationError as e:
                err = first_error(e)
                raise ValueError(
                    f"{where} line {i}: {err.path + ': ' if err.path else ''}{err.msg}; allowed: {EXAMPLE_ALLOWED}"
                ) from None
            n += 1
    if n == 0:
        raise ValueError(f"{where}: no examples; allowed: {EXAMPLE_ALLOWED}")
    return n


def finetune_cmd(
    data: Annotated[Path, typer.Option("--data", help="Training examples, one JSON object per line.")],
    name: Annotated[str, typer.Option("--name", help="The adapter's name: served as <model>:NAME.")],
    stack: Annotated[
        str | None,
        typer.Option(
            "--stack",
            "-s",
            envvar="PULUMI_STACK",
            autocompletion=complete_stack,
            help="The stack to train on.",
        ),
    ] = None,
    local: Annotated[bool, typer.Option("--local", help="The local cluster.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Fine-tune a LoRA adapter for the stack's model (inputs checked; job submission not built yet)."""

    if local == bool(stack):
        fail("target: " + ("--local and --stack together" if local else "missing")
             + "; allowed: one of --local, --stack NAME")  # fmt: skip
    if local and config:
        fail(f"--config {config[0]!r}: a stack override; allowed: with --stack, not --local")
    if not lora.ADAPTER_NAME_RE.fullmatch(name):
        fail(f"--name {name!r}: allowed: {lora.ADAPTER_NAME_ALLOWED}")
    if stack:
        cfg = config_or_fail(stack, config)
        why = lora.refusal(cfg.model)
        if why:
            fail(why, 2)
    try:
        check_data(data)
    except ValueError as e:
        fail(str(e))
    # The local cluster's tiny models are not catalog models: their LoRA support is the job's
    # to prove when it is built.
    fail(NOT_BUILT, 1)


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune_cmd)
