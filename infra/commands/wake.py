"""`llmfleet wake --stack S`: the worker slots back from zero, then the readiness wait (infra/wake.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from infra import aws_credentials
from infra.commands._common import StackOpt, console, fail
from infra.commands._readiness import wait_ready
from infra.commands._stack_outputs import OutputsFileOpt, aws_clients_or_fail, stack_outputs_or_fail
from infra.stack.files import load_config
from infra.wake import WakeError, wake_groups


def wake_cmd(
    stack: StackOpt,
    outputs: OutputsFileOpt = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=60, help="Seconds to wait for a real completion.")
    ] = 1800.0,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Start the workers and return.")] = False,
) -> None:
    """Start the worker slots a schedule or idle stop scaled to zero and wait until a real completion answers."""
    from botocore.exceptions import BotoCoreError, ClientError

    # start-up: botocore, imported where the command runs (as botocore's own errors above)
    from infra.status.aws import aws_error

    o = stack_outputs_or_fail(stack, outputs)
    if o.provider != "aws":
        fail(f"stack {stack} runs on hosts you own (provider existing): start them yourself", 1)
    c = aws_clients_or_fail(o, "autoscaling")
    try:
        woken = wake_groups(c["autoscaling"], o.worker_groups or [])
    except WakeError as e:
        fail(str(e), 1)
    except (BotoCoreError, ClientError) as e:
        fail(aws_credentials.MESSAGE if aws_credentials.missing(e) else aws_error(e), 1)
    n = len(o.worker_groups or [])
    console.print(
        f"woke {len(woken)} of {n} worker slots" + (f": {', '.join(woken)}" if woken else " (all were up)"),
        highlight=False,
    )
    if no_wait:
        return
    if not wait_ready(load_config(stack, []), o.model_dump(), timeout):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("wake")(wake_cmd)
