"""`llmfleet preflight`: boto3 checks of the AWS account before `up` (quotas, AZ offerings, AMI, weights)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.text import Text

from infra import aws_credentials
from infra.commands._common import ConfigOpt, JsonOpt, StackOpt, config_or_fail, console, fail, print_json
from infra.commands._fit import Col, fitted_table

STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def credentials_or_fail() -> None:
    """Without credentials every check fails with the same botocore error: say it once, with
    the fix, before any check runs (exit 2: nothing was checked)."""
    import boto3

    if boto3.Session().get_credentials() is None:
        fail(aws_credentials.MESSAGE)


def run_for_stack(cfg, clients=None):
    """The checks for one validated StackConfig (clients default to plain boto3 clients in its region)."""

    # start-up: the account checks load boto3 (~0.7 s); `preflight --help` needs none of it
    from infra.account_check import run as ac_run

    checks = ac_run.CHECKS[cfg.provider]
    if checks is None:
        having = ", ".join(p for p, c in ac_run.CHECKS.items() if c is not None)
        fail(f"llmfleet:provider = {cfg.provider!r}: preflight checks a cloud account; allowed: {having}")
    if clients is None:
        credentials_or_fail()
    return checks(cfg, clients)


def show(checks, title: str, out: Console | None = None) -> None:
    """Check names whole; the message wraps between words (the ids it names stay whole)."""

    out = out or console
    rows = [
        [Text(c.name, style="bold"), f"[{STYLE[c.status]}]{c.status}[/]", Text(c.message)] for c in checks
    ]
    out.print(
        fitted_table(
            out, [Col("check", whole=True), Col("status", whole=True), Col("message")], rows, title=title
        )
    )


def preflight_cmd(stack: StackOpt, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Check the AWS account can hold the stack before anything is created.

    GPU type offered in the AZ, GPU facts vs the catalog, vCPU quotas, the AMI, the weights upload and an optional capacity reservation. Exit 0 = all pass (warnings never fail), 1 = a check failed, 2 = bad input or no AWS credentials.
    """

    # start-up: the account checks load boto3 (~0.7 s); `preflight --help` needs none of it
    from infra.account_check import run as ac_run

    cfg = config_or_fail(stack, config)
    checks = run_for_stack(cfg)
    if as_json:
        print_json(ac_run.to_json(checks))
    else:
        show(checks, f"preflight: stack {stack} in {cfg.region}")
    raise typer.Exit(ac_run.exit_code(checks))


def register(app: typer.Typer) -> None:
    app.command("preflight")(preflight_cmd)
