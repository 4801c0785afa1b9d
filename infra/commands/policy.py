"""`llmfleet policy`: the CrossGuard pack's real policies on the offline capture of a stack."""

from __future__ import annotations

import typer
from rich.table import Table

from infra.commands._common import ConfigOpt, JsonOpt, StackOpt, capture_or_fail, console, print_json


def register(app: typer.Typer) -> None:
    @app.command("policy")
    def policy_cmd(stack: StackOpt, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Run the policy pack (policy/) offline, as `pulumi preview --policy-pack policy/` would.

        Exit 1 when any mandatory policy is violated, 0 otherwise.
        """
        from policy.runner import run_policies, stack_policy_config

        cap = capture_or_fail(stack, config)
        report = run_policies(cap.resources, stack_policy_config(cap.config))
        if as_json:
            print_json(report.to_dict())
        else:
            if report.violations:
                t = Table(title=f"llmfleet-{stack}: policy violations")
                for col in ("policy", "resource", "enforcement", "message"):
                    t.add_column(col, overflow="fold")
                for v in report.violations:
                    style = "red" if v.enforcement == "mandatory" else "yellow"
                    t.add_row(v.policy, v.resource or "(stack)", f"[{style}]{v.enforcement}[/]", v.message)
                console.print(t)
            console.print(
                f"{len(cap.resources)} resources checked: {report.mandatory} mandatory, {report.advisory} advisory",
                highlight=False,
            )
        if report.mandatory:
            raise typer.Exit(1)
