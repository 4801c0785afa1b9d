"""`llmfleet endpoint` and `llmfleet chat` for a deployed stack: its URL (the token only with
--show-token, read from SSM), and one chat completion through it (infra/status/endpoint.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from infra.commands._common import JsonOpt, StackOpt, console, fail, print_json
from infra.commands._stack_outputs import OutputsFileOpt, aws_clients_or_fail, stack_outputs_or_fail
from infra.commands.local import ThinkingBudgetOpt, print_reply


def _token_or_fail(o) -> str:
    # start-up: botocore (SSM); `endpoint --help` and completion need none of it
    from infra.status.endpoint import EndpointError, api_token

    ssm = aws_clients_or_fail(o, "ssm")["ssm"] if o.provider == "aws" else None
    try:
        return api_token(o, ssm)
    except EndpointError as e:
        fail(str(e), 1)


def endpoint_cmd(
    stack: StackOpt,
    show_token: Annotated[
        bool,
        typer.Option("--show-token", help="Also print the bearer token (read from SSM Parameter Store)."),
    ] = False,
    outputs: OutputsFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The stack's OpenAI-compatible endpoint URL and served model; the token only with --show-token."""
    o = stack_outputs_or_fail(stack, outputs)
    doc = {"endpoint": o.endpoint_url, "model": o.served_model, "token_parameter": o.token_parameter}
    if show_token:
        doc["token"] = _token_or_fail(o)
    if as_json:
        print_json(doc)
        return
    console.print(f"endpoint: {o.endpoint_url}", highlight=False)
    console.print(f"model:    {o.served_model}", highlight=False)
    if show_token:
        console.print(f"token:    {doc['token']}", highlight=False, markup=False)
    elif o.token_parameter:
        console.print(f"token:    in SSM {o.token_parameter} (--show-token prints it)", highlight=False)


def chat_cmd(
    message: Annotated[str, typer.Argument(help="The user message.")],
    stack: StackOpt,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=1, max=4096, help="Most tokens the reply may have.")
    ] = 256,
    temperature: Annotated[
        float, typer.Option("--temperature", min=0.0, max=2.0, help="Sampling temperature (0 = greedy).")
    ] = 0.6,
    thinking_budget: ThinkingBudgetOpt = None,
    outputs: OutputsFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask the stack's endpoint one question (openai client, the token from SSM, never printed)."""
    # start-up: botocore (SSM) and the openai client; `chat --help` needs none of it
    from infra.status.endpoint import EndpointError, chat

    o = stack_outputs_or_fail(stack, outputs)
    try:
        r = chat(o, _token_or_fail(o), message, max_tokens, temperature, thinking_budget)
    except EndpointError as e:
        fail(str(e), 1)
    if as_json:
        print_json(r)
        return
    print_reply(r)


def register(app: typer.Typer) -> None:
    app.command("endpoint")(endpoint_cmd)
    app.command("chat")(chat_cmd)
