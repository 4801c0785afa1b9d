"""`llmfleet dashboards`: Grafana provisioning files generated from the installed Ray package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from infra.commands._common import JsonOpt, console, print_json
from infra.rayconf.dashboards import Datasource, grafana_command, write


def dashboards_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the provisioning tree.")],
    prometheus_url: Annotated[
        str,
        typer.Option(
            "--prometheus-url",
            help="Datasource URL: the local cluster's Prometheus, or `pulumi stack output metrics_query_url`.",
        ),
    ] = "http://localhost:9090",
    sigv4_region: Annotated[
        str | None,
        typer.Option(
            "--sigv4-region", help="Sign queries with AWS SigV4 in this region (Amazon Managed Prometheus)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write Ray's Serve LLM, Serve, Serve deployment and core dashboards (from the installed Ray's own generator) plus a GPU (DCGM) dashboard, with Grafana provisioning files."""

    written = write(out, Datasource(prometheus_url, sigv4_region))
    if as_json:
        print_json({"out": str(out), "files": [str(p) for p in written]})
        return
    console.print(f"wrote {len(written)} files under {out}", highlight=False)
    console.print(f"open:  {grafana_command(str(out), sigv4_region)}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("dashboards")(dashboards_cmd)
