"""`llmfleet logs`: a deployed stack's container and boot logs from CloudWatch Logs (infra/status/logs.py)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from infra import aws_credentials
from infra.commands._common import StackOpt, console, fail
from infra.commands._stack_outputs import OutputsFileOpt, aws_clients_or_fail, stack_outputs_or_fail
from infra.status.logs import (
    LogsError,
    log_groups,
    node_stream_name,
    parse_since,
    read_events,
)
from infra.status.logs import (
    follow as follow_events,
)


def logs_cmd(
    stack: StackOpt,
    node: Annotated[
        str | None, typer.Option("--node", help="head or worker-N (worker slot N); default: every node.")
    ] = None,
    since: Annotated[str, typer.Option("--since", help="How far back: 30s, 10m, 2h, 1d.")] = "10m",
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events (Ctrl-C stops).")
    ] = False,
    source: Annotated[
        str,
        typer.Option("--source", help="all, containers (every container's output) or boot (the boot log)."),
    ] = "all",
    outputs: OutputsFileOpt = None,
) -> None:
    """Print the stack's logs from CloudWatch Logs, oldest first, each line with its stream (`<role>-<ip>`, or `<role>-<ip>/<container>` for a container's output)."""
    from botocore.exceptions import BotoCoreError, ClientError

    # start-up: botocore, imported where the command runs (as botocore's own errors above)
    from infra.status.aws import aws_error

    try:
        seconds = parse_since(since)
    except LogsError as e:
        fail(str(e))
    o = stack_outputs_or_fail(stack, outputs)
    try:
        groups = log_groups(o, source)
    except LogsError as e:
        fail(str(e))
    c = aws_clients_or_fail(o, "logs", "ec2")
    start_ms = int((time.time() - seconds) * 1000)
    try:
        stream = node_stream_name(o, node, c["ec2"]) if node else None
        events = (
            follow_events(c["logs"], groups, stream, start_ms)
            if follow
            else iter(read_events(c["logs"], groups, stream, start_ms))
        )
        for e in events:
            console.print(e.line(), highlight=False, markup=False, soft_wrap=True)
    except LogsError as e:
        fail(str(e))
    except (BotoCoreError, ClientError) as e:
        fail(aws_credentials.MESSAGE if aws_credentials.missing(e) else aws_error(e), 1)
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    app.command("logs")(logs_cmd)
