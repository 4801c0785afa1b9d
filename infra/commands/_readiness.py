"""The readiness wait as `up`, `rollout` and `wake` show it: infra.deploy.wait_stack_ready
behind a progress bar, then one line (ready, or not ready as an error)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from infra.commands._common import console, emit_error, fail


def wait_ready(cfg, outputs: dict, timeout: float, out: Console = console) -> bool:
    """True once the deployment answers a real completion; False (after one error line) when it
    did not within `timeout`; exit 1 when the outputs cannot say where to ask."""
    # start-up: botocore and the Automation API; up, rollout and wake import this module at the top
    from infra.deploy import DeployError, wait_stack_ready

    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]readiness"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=out,
        transient=False,
    ) as bar:
        where = "the endpoint" if cfg.provider == "existing" else "the head"
        task = bar.add_task(f"waiting for a real completion from {where}", total=timeout)

        def on_progress(elapsed: float, total: float, why: str) -> None:
            bar.update(task, completed=min(elapsed, total), description=why[:80])

        try:
            r = wait_stack_ready(cfg, outputs, timeout, on_progress=on_progress)
        except DeployError as e:
            fail(str(e), 1)
    if not r.ready:
        emit_error(f"not ready: {r.reason}")
        return False
    out.print(f"[green]ready:[/] {r.reason}", highlight=False)
    return True
