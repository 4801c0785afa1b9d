"""`llmfleet status`: a deployed stack's hosts, Ray nodes, Serve replicas, last rollout, endpoint and
live figures (infra/status/aws.py), rendered as `llmfleet local status` renders the local one."""

from __future__ import annotations

from typing import Annotated

import typer

from infra import aws_credentials
from infra.commands._common import JsonOpt, StackOpt, complete_stack, console, fail, print_json
from infra.commands._stack_outputs import OutputsFileOpt, aws_clients_or_fail, stack_outputs_or_fail
from infra.commands._status_view import render
from infra.status.amp import sigv4_fetch
from infra.status.model import StatusError


def status_cmd(
    stack: StackOpt,
    outputs: OutputsFileOpt = None,
    price_stack: Annotated[
        str | None,
        typer.Option(
            "--price-stack",
            autocompletion=complete_stack,
            help="Stack file that prices the measured tokens/s (default: --stack).",
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=10, help="Seconds for the head's report over SSM.")
    ] = 120.0,
    as_json: JsonOpt = False,
) -> None:
    """Hosts (Auto Scaling: instance, lifecycle, health), Ray nodes and GPUs, Serve replicas and their nodes, weights fingerprints, the last rollout, the endpoint, and live tokens/s and USD per 1M tokens from the metrics workspace. Everything through AWS APIs and SSM: no open port."""  # noqa: E501
    from botocore.exceptions import BotoCoreError, ClientError

    # start-up: botocore, imported where the command runs (as botocore's own errors above)
    from infra.status.aws import AwsClients, aws_error, deployed_status

    o = stack_outputs_or_fail(stack, outputs)
    c = aws_clients_or_fail(o, "ec2", "autoscaling", "ssm")
    try:
        rep = deployed_status(
            stack,
            o,
            AwsClients(c["ec2"], c["autoscaling"], c["ssm"]),
            metrics_fetch=sigv4_fetch(c["session"].get_credentials(), o.region or ""),
            price_stack=price_stack or stack,
            timeout_s=timeout,
        )
    except StatusError as e:
        fail(str(e), 1)
    except (BotoCoreError, ClientError) as e:
        fail(aws_credentials.MESSAGE if aws_credentials.missing(e) else aws_error(e), 1)
    if as_json:
        print_json(rep.to_json())
        return

    render(rep, console)


def register(app: typer.Typer) -> None:
    app.command("status")(status_cmd)
