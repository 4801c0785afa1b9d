"""`llmfleet policy`: the CrossGuard pack's real policies on the offline capture of a stack."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from infra.commands._common import (
    ConfigOpt,
    JsonOpt,
    StackOpt,
    capture_or_fail,
    console,
    print_json,
    require_policy_sdk,
)
from infra.commands._fit import Col, fitted_table, min_width

if TYPE_CHECKING:
    from policy.runner import Report


def violations_table(stack: str, report: Report, console: Console = console) -> Table:
    """Policy and resource names stay whole (they are what you grep for): one cell holds both,
    on two lines; the message wraps between words, so the config keys it names stay whole too.
    Where the enforcement column would squeeze the message below its longest word (80 columns),
    the enforcement moves into the first cell, as a third line."""

    cols = [Col("policy / resource", whole=True), Col("enforcement", whole=True), Col("message")]

    def cells(v, inline: bool) -> list:
        style = "red" if v.enforcement == "mandatory" else "yellow"
        head = Text(f"{v.policy}\n  {v.resource or '(stack)'}")
        if inline:
            head.append(f"\n  {v.enforcement}", style=style)
            return [head, Text(v.message)]
        return [head, Text(v.enforcement, style=style), Text(v.message)]

    title = f"llmfleet-{stack}: policy violations"
    rows = [cells(v, False) for v in report.violations]
    if min_width(console, cols, rows) <= console.width:
        return fitted_table(console, cols, rows, title=title)
    rows = [cells(v, True) for v in report.violations]
    return fitted_table(console, [Col("policy / resource", whole=True), Col("message")], rows, title=title)


def policy_cmd(stack: StackOpt, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Run the policy pack (policy/) offline, as `pulumi preview --policy-pack policy/` would.

    Exit 1 when any mandatory policy is violated, 0 otherwise.
    """
    require_policy_sdk()
    # optional dependency: the `policy` extra (pulumi-policy), checked by require_policy_sdk() above
    from policy.runner import run_policies, stack_policy_config

    cap = capture_or_fail(stack, config)
    report = run_policies(cap.resources, stack_policy_config(cap.config), stack=cap.config)
    if as_json:
        print_json(report.to_dict())
    else:
        if report.violations:
            console.print(violations_table(cap.config.stack, report))
        console.print(
            f"{len(cap.resources)} resources checked: {report.mandatory} mandatory, {report.advisory} advisory",
            highlight=False,
        )
    if report.mandatory:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("policy")(policy_cmd)
