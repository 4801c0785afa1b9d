"""`llmfleet render cluster-yaml | serve-config`: Ray configs from a stack's outputs.

Outputs come from `--outputs FILE` (the JSON of `pulumi stack output --json`) or, only when
`--offline` says so, from the offline engine, whose IPs, instance ids, account and image digest
are placeholders (stderr says so). Without either the command refuses (exit 2): a cluster.yaml
of fake IPs must never be mistaken for the real one. Both documents are validated by Ray's own code before anything is
written; a rejection is one line on stderr (Ray's message included), exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from infra import aws_credentials
from infra.commands._common import (
    ConfigOpt,
    StackOpt,
    capture_or_fail,
    config_or_fail,
    err_console,
    fail,
)
from infra.rayconf.cluster_yaml import RenderError, render_validated
from infra.rayconf.serve_config import ServeConfigError, to_yaml
from infra.rayconf.serving import render_for_outputs
from infra.stack.config import ConfigError
from infra.stack.outputs import OutputsError, StackOutputs
from infra.stack.planner import PlanInputError
from infra.stack.resolve import resolve
from infra.worker_lookup import with_running_workers

OutputsOpt = Annotated[
    Path | None,
    typer.Option("--outputs", help="JSON of `pulumi stack output --json` (required unless --offline)."),
]
OfflineOpt = Annotated[
    bool,
    typer.Option(
        "--offline", help="Render from the offline engine's placeholder outputs (fake IPs, ids, account)."
    ),
]
OFFLINE_NOTE = (
    "offline placeholders: the IPs, instance ids, account and image digest come from the offline "
    "engine, not from a deployed stack; use --outputs <(pulumi stack output --json) for the real ones"
)
OutOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")]


def read_outputs_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        fail(f"--outputs {str(path)!r}: {e.strerror}")
    except json.JSONDecodeError as e:
        fail(
            f"--outputs {str(path)!r}: not JSON ({e.msg} at line {e.lineno}); allowed: `pulumi stack output --json`"
        )
    if not isinstance(data, dict):
        fail(f"--outputs {str(path)!r}: a JSON {type(data).__name__}; allowed: an object of stack outputs")
    return data


def _outputs_and_config(stack: str, outputs: Path | None, overrides: list[str] | None, offline: bool = False):
    if outputs is not None and offline:
        fail("--outputs and --offline: choose one; allowed: --outputs FILE (a deployed stack) or --offline")
    if outputs is None and not offline:
        fail(
            "--outputs is missing: allowed: --outputs FILE (`pulumi stack output --json` of a deployed stack), "
            "or --offline for the offline engine's placeholder values"
        )
    if outputs is not None:
        data = read_outputs_file(outputs)
        try:
            StackOutputs.parse(data)  # the one outputs contract: a stale or foreign file fails here
        except OutputsError as e:
            fail(f"--outputs {str(outputs)!r}: {e}")
        return data, config_or_fail(stack, overrides)
    cap = capture_or_fail(stack, overrides)
    err_console.print(f"note: {OFFLINE_NOTE}", highlight=False, soft_wrap=True)
    return cap.outputs, cap.config


def _running_workers(outs: dict[str, Any]) -> dict[str, Any]:
    """AWS: the workers are Auto Scaling groups; their running instances come from EC2 now."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    # a fresh session: credentials are resolved from this process's environment now, not
    # taken from whatever boto3's module-wide default session resolved first
    try:
        filled = with_running_workers(outs, boto3.Session().client("ec2", region_name=outs.get("region")))
    except (BotoCoreError, ClientError) as e:
        why = aws_credentials.MESSAGE if aws_credentials.missing(e) else str(e)
        fail(f"looking up the running workers of {', '.join(outs['worker_groups'])}: {why}")
    if not filled["worker_private_ips"]:
        err_console.print(
            "note: no running worker instances in the worker groups; cluster.yaml lists the head only",
            highlight=False,
            soft_wrap=True,
        )
    return filled


def _emit(doc: dict[str, Any], out: Path | None, what: str) -> None:

    text = to_yaml(doc)
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        out.write_text(text)
    except OSError as e:
        fail(f"--output {str(out)!r}: {e.strerror}")
    err_console.print(f"wrote {what} to {out}", highlight=False)


def cluster_yaml_cmd(
    stack: StackOpt,
    outputs: OutputsOpt = None,
    offline: OfflineOpt = False,
    output: OutOpt = None,
    config: ConfigOpt = None,
    ssh_private_key: Annotated[
        str | None,
        typer.Option("--ssh-private-key", help="Path of the SSH key for auth.ssh_private_key."),
    ] = None,
) -> None:
    """Ray cluster-launcher config (local provider, SSM ssh proxy), validated by Ray."""

    outs, _cfg = _outputs_and_config(stack, outputs, config, offline)
    if outputs is not None and outs.get("worker_groups"):
        outs = _running_workers(outs)
    try:
        doc = render_validated(outs, ssh_private_key=ssh_private_key)
    except RenderError as e:
        fail(str(e))
    _emit(doc, output, "cluster.yaml")


def serve_config_cmd(
    stack: StackOpt,
    outputs: OutputsOpt = None,
    offline: OfflineOpt = False,
    output: OutOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Ray Serve deploy config (Ray Serve LLM + vLLM, bearer token), validated by Ray's schema."""

    outs, cfg = _outputs_and_config(stack, outputs, config, offline)
    try:
        plan = resolve(cfg).plan
        if not plan.fits:
            fail(f"the plan for stack {stack} does not fit: {plan.reason}")
        doc, notes = render_for_outputs(outs, cfg, plan)
    except (ServeConfigError, PlanInputError, ConfigError) as e:  # ConfigError: the plan's rules
        fail(str(e))
    for note in notes:
        err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
    _emit(doc, output, "Serve config")


def register(app: typer.Typer) -> None:
    render = typer.Typer(
        name="render",
        help="Render Ray's cluster.yaml and the Serve config from stack outputs.",
        no_args_is_help=True,
    )
    render.command("cluster-yaml")(cluster_yaml_cmd)
    render.command("serve-config")(serve_config_cmd)
    app.add_typer(render)
