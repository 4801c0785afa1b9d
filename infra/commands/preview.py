"""`llmfleet preview`: the stack's resources and outputs, from the offline engine."""

from __future__ import annotations

import typer
from rich.table import Table

from infra.commands._common import ConfigOpt, JsonOpt, StackOpt, capture_or_fail, console, print_json
from infra.stack.resolve import resolve


def register(app: typer.Typer) -> None:
    @app.command("preview")
    def preview_cmd(stack: StackOpt, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Run the real Pulumi program offline (mocked cloud) and list what `pulumi up` would create."""
        cap = capture_or_fail(stack, config)
        plan = resolve(cap.config).plan
        if as_json:
            print_json(cap.to_dict())
            return
        t = Table(title=f"llmfleet-{stack}: {len(cap.resources)} resources")
        for col in ("type", "name", "parent"):
            t.add_column(col)
        for r in cap.resources:
            t.add_row(r["type"], r["name"], r["parent"] or "")
        console.print(t)
        o = Table(title="outputs", show_header=False)
        o.add_column(style="bold")
        o.add_column()
        for k, v in cap.outputs.items():
            o.add_row(k, str(v))
        console.print(o)
        if not plan.fits:
            console.print(f"[yellow]warning:[/] gpu-fit: {plan.reason}", highlight=False, soft_wrap=True)
