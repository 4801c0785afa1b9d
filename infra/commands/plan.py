"""`llmfleet plan`: the capacity planner for a model on a GPU."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from infra.commands._common import JsonOpt, console, fail, print_json

EXIT_DOES_NOT_FIT = 3


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan_cmd(
        model: Annotated[str, typer.Option("--model", "-m", help="Catalog model id, e.g. deepseek-r1.")],
        gpu: Annotated[str, typer.Option("--gpu", "-g", help="GPU id, e.g. L20, L40S, H200.")],
        gpus_per_node: Annotated[
            int, typer.Option("--gpus-per-node", help="GPUs per node = tensor parallel size.")
        ] = 8,
        nodes: Annotated[
            int | None, typer.Option("--nodes", help="Nodes = pipeline parallel size; omit for auto.")
        ] = None,
        quantization: Annotated[
            str | None, typer.Option("--quantization", "-q", help="fp8, bf16, int8 or int4.")
        ] = None,
        max_model_len: Annotated[
            int, typer.Option("--max-model-len", help="Longest sequence in tokens.")
        ] = 8192,
        concurrency: Annotated[int, typer.Option("--concurrency", help="Concurrent sequences.")] = 64,
        as_json: JsonOpt = False,
    ) -> None:
        """Fit a model on GPUs: layout, memory per GPU, KV cache, concurrency and decode throughput.

        Exit 0 = fits, 3 = does not fit (the plan is still printed), 2 = bad input.
        """
        from infra.planner import PlanInputError, plan

        try:
            p = plan(
                model=model,
                gpu=gpu,
                gpus_per_node=gpus_per_node,
                nodes=nodes,
                quantization=quantization,
                max_model_len=max_model_len,
                concurrency=concurrency,
            )
        except PlanInputError as e:
            fail(str(e))
        if as_json:
            print_json(p.to_dict())
        else:
            t = Table(title=f"{p.model} on {p.gpu} ({p.quantization})", show_header=False)
            t.add_column(style="bold")
            t.add_column(justify="right")
            rows = [
                ("fits", "[green]yes[/]" if p.fits else "[red]no[/]"),
                ("nodes x GPUs per node", f"{p.nodes} x {p.gpus_per_node}"),
                ("tensor x pipeline parallel", f"{p.tensor_parallel_size} x {p.pipeline_parallel_size}"),
                ("layers per stage", ", ".join(map(str, p.stage_layers))),
                ("weights total", f"{p.weights_gib_total:.1f} GiB"),
                ("weights per GPU", f"{p.weights_gib_per_gpu:.1f} GiB"),
                ("usable per GPU", f"{p.usable_gib_per_gpu:.1f} GiB"),
                ("KV cache per GPU", f"{p.kv_cache_gib_per_gpu:.1f} GiB"),
                ("KV bytes per token per GPU", f"{p.kv_bytes_per_token_per_gpu:,}"),
                ("max model len", f"{p.max_model_len:,}"),
                ("full-length sequences in KV", f"{p.max_concurrent_sequences:,}"),
                ("decode tok/s ceiling (roofline)", f"{p.decode_tokens_per_s_ceiling:,.0f}"),
                (
                    f"decode tok/s expected (x{p.efficiency:.2f} + all-reduce)",
                    f"{p.decode_tokens_per_s_expected:,.0f}",
                ),
            ]
            for k, v in rows:
                t.add_row(k, v)
            console.print(t)
            for r in p.reasons:
                console.print(f"[red]does not fit:[/] {r}", highlight=False, soft_wrap=True)
        if not p.fits:
            raise typer.Exit(EXIT_DOES_NOT_FIT)
