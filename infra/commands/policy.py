"""`llmfleet policy`: the CrossGuard pack's real policies on the offline capture of a stack."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from infra.commands._common import (
    ConfigOpt,
    JsonOpt,
    StackOpt,
    capture_or_fail,
    console,
    print_json,
    require_policy_sdk,
)

if TYPE_CHECKING:
    from policy.runner import Report


def violations_table(stack: str, report: Report) -> Table:
    """Policy and resource names stay whole (they are what you grep for): one cell holds both,
    on two lines, so the message keeps the width at 80 columns and folds instead."""
    t = Table(title=f"llmfleet-{stack}: policy violations")
    t.add_column("policy / resource", no_wrap=True)
    t.add_column("enforcement", no_wrap=True)
    t.add_column("message", overflow="fold", ratio=1)
    for v in report.violations:
        style = "red" if v.enforcement == "mandatory" else "yellow"
        t.add_row(f"{v.policy}\n  {v.resource or '(stack)'}", f"[{style}]{v.enforcement}[/]", v.message)
    return t


def policy_cmd(stack: StackOpt, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Run the policy pack (policy/) offline, as `pulumi preview --policy-pack policy/` would.

    Exit 1 when any mandatory policy is violated, 0 otherwise.
    """
    require_policy_sdk()
    from policy.runner import run_policies, stack_policy_config

    cap = capture_or_fail(stack, config)
    report = run_policies(cap.resources, stack_policy_config(cap.config), stack=cap.config)
    if as_json:
        print_json(report.to_dict())
    else:
        if report.violations:
            console.print(violations_table(stack, report))
        console.print(
            f"{len(cap.resources)} resources checked: {report.mandatory} mandatory, {report.advisory} advisory",
            highlight=False,
        )
    if report.mandatory:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("policy")(policy_cmd)
