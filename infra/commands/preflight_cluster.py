"""`llmfleet preflight-cluster`: gang-place the engine's TP x PP bundles on a running cluster and all-reduce."""

from __future__ import annotations

from typing import Annotated

import typer

from infra.commands._common import JsonOpt, console, fail, print_json
from infra.commands._fit import Col, fitted_table
from ray_cluster.nic import NicError
from ray_cluster.node import NodeError
from ray_cluster.placement import PreflightError, run_preflight

EXIT_PREFLIGHT_FAILED = 1


def preflight_cluster_cmd(
    address: Annotated[str, typer.Option("--address", help="Ray GCS address HOST:6379 (or auto).")],
    tp: Annotated[
        int,
        typer.Option("--tp", "--tensor-parallel-size", min=1, help="Tensor parallel size (GPUs per host)."),
    ],
    pp: Annotated[
        int, typer.Option("--pp", "--pipeline-parallel-size", min=1, help="Pipeline parallel size (hosts).")
    ],
    gpu_model: Annotated[
        str | None, typer.Option("--gpu-model", help="Require custom resource gpu_model:<X> per bundle.")
    ] = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=1, help="Seconds to wait for the placement group and actors."),
    ] = 120.0,
    collective_timeout: Annotated[
        float, typer.Option("--collective-timeout", min=1, help="Seconds for the all-reduce.")
    ] = 60.0,
    tensor_mb: Annotated[
        float, typer.Option("--tensor-mb", min=0.001, help="All-reduce tensor size in MiB.")
    ] = 4.0,
    as_json: JsonOpt = False,
) -> None:
    """Reserve TP x PP GPU bundles (PACK), check each TP group is on one host, all-reduce across all ranks.

    Exit 0 = ok, 1 = the cluster failed the check, 2 = bad input or unreachable cluster.
    """

    try:
        r = run_preflight(
            address,
            tp,
            pp,
            gpu_model=gpu_model,
            timeout=timeout,
            collective_timeout=collective_timeout,
            tensor_bytes=int(tensor_mb * 1024 * 1024),
        )
    except PreflightError as e:
        fail(str(e), code=EXIT_PREFLIGHT_FAILED)
    except (NodeError, NicError, ConnectionError) as e:
        fail(f"--address {address}: {str(e).splitlines()[0]}")
    if as_json:
        print_json(r.to_json())
    else:
        cols = [Col(h, whole=True) for h in ("rank", "pp stage", "tp rank", "node ip")] + [Col("GPU")]
        rows = [
            [str(k.rank), str(k.pp_stage), str(k.tp_rank), k.node_ip, ", ".join(k.gpu_ids)] for k in r.ranks
        ]
        title = f"preflight TP={r.tp} x PP={r.pp}" + (f" gpu_model:{r.gpu_model}" if r.gpu_model else "")
        console.print(fitted_table(console, cols, rows, title=title))
        console.print(
            f"TP groups within one host: {'[green]yes[/]' if r.tp_groups_within_host else '[red]no[/]'}; "
            f"all-reduce ({r.backend}): sum {r.observed_sum:g} of {r.expected_sum:g} "
            f"{'[green]ok[/]' if r.allreduce_ok else '[red]WRONG[/]'}, "
            f"{r.tensor_bytes / 2**20:g} MiB in {r.seconds * 1e3:.1f} ms, busbw {r.busbw_gbps:.3f} GB/s",
            highlight=False,
        )
        for p in r.problems:
            console.print(f"[red]problem:[/] {p}", highlight=False)
    if not r.ok:
        raise typer.Exit(EXIT_PREFLIGHT_FAILED)


def register(app: typer.Typer) -> None:
    app.command("preflight-cluster")(preflight_cluster_cmd)
