"""A deployed stack's outputs for the day-2 commands (status, logs, endpoint, chat): from
`--outputs FILE` (the JSON of `pulumi stack output --json --show-secrets`) or through the Pulumi
Automation API (needs the pulumi CLI: without it, one line saying so), parsed by StackOutputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from infra.commands._common import fail
from infra.commands.render import read_outputs_file
from infra.stack.outputs import OutputsError, StackOutputs

OutputsFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--outputs",
        help="JSON of `pulumi stack output --json --show-secrets` (default: read through the Pulumi Automation API).",
    ),
]


def stack_outputs_or_fail(stack: str, outputs_file: Path | None):
    # start-up: botocore and the Automation API, not needed with --outputs FILE
    from infra.deploy import DeployError, PulumiMissing, build_stack_args, open_stack, require_pulumi_cli

    if outputs_file is not None:
        raw, where = read_outputs_file(outputs_file), f"--outputs {str(outputs_file)!r}"
    else:
        try:
            require_pulumi_cli()
            args = build_stack_args(stack, [], env=os.environ)
        except (PulumiMissing, DeployError) as e:
            fail(f"{e} (or pass --outputs FILE from `pulumi stack output --json --show-secrets`)", 2)
        try:
            raw = {k: v.value for k, v in open_stack(args, create=False).outputs().items()}
        except Exception as e:  # noqa: BLE001 - automation errors carry the CLI's stderr; show its last line
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            fail(f"reading the outputs of stack {stack}: {lines[-1] if lines else type(e).__name__}", 1)
        where = f"stack {stack}"
    try:
        return StackOutputs.parse(raw)
    except OutputsError as e:
        fail(f"{where}: {e}", 2)


def aws_clients_or_fail(outputs, *services: str) -> dict[str, Any]:
    """boto3 clients in the stack's region, from a fresh session (this process's credentials now)."""
    import boto3

    if not outputs.region:
        fail("stack output 'region' is missing: the day-2 commands read AWS stacks (provider aws)", 2)
    session = boto3.Session(region_name=outputs.region)
    return {s: session.client(s) for s in services} | {"session": session}
