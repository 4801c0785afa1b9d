"""`llmfleet batch`: offline batch inference with ray.data.llm and vLLM (infra.bench.batch)."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Annotated

import typer

from infra.bench import batch
from infra.bench.sweep import BenchError
from infra.bench.targets import local_target
from infra.commands._common import (
    ConfigOpt,
    JsonOpt,
    complete_stack,
    console,
    err_console,
    fail,
    print_json,
    require_local_engine,
)

HELP = (
    "Offline batch inference: rows {id, prompt[, max_tokens]} from --input (JSONL or Parquet) through "
    "ray.data.llm's vLLM engine processor into Parquet results at --output (id, prompt, generated_text, "
    "token counts, error). Resumable: ids already in --output are skipped. Ray Data shows the progress; "
    "the summary gives tokens/s and failed rows (exit 1 when any row failed).\n\n"
    "--local: the local cluster's model in a short-lived Ray on this machine (the cluster's own slots "
    "are its replicas'). --stack NAME: `ray job submit` to the stack's cluster (the dashboard through "
    "the SSM port forward: --dashboard); the command prints what it runs."
)


def batch_cmd(
    input_path: Annotated[str, typer.Option("--input", help="prompts.jsonl or prompts.parquet.")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="Results: a Parquet directory (or s3:// URI).")
    ],
    local: Annotated[bool, typer.Option("--local", help="The local cluster's model.")] = False,
    name: Annotated[str, typer.Option("--name", help="Local cluster name.")] = "local",
    stack: Annotated[
        str | None,
        typer.Option(
            "--stack", "-s", autocompletion=complete_stack, help="A deployed stack (ray job submit)."
        ),
    ] = None,
    overrides: ConfigOpt = None,
    dashboard: Annotated[
        str,
        typer.Option("--dashboard", help="--stack: the Ray dashboard (the SSM port forward's local end)."),
    ] = "http://127.0.0.1:8265",
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=1, help="Output tokens per row (default).")
    ] = 32,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Rows per engine batch.")] = 16,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="--stack: print the command, do not run it.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:

    if local == bool(stack):
        fail("target: " + ("--local and --stack together" if local else "missing")
             + "; allowed: one of --local, --stack NAME")  # fmt: skip
    try:
        if local:
            require_local_engine()

            model_dir = local_target(name).model_dir
            summary = batch.run_local(model_dir, input_path, output, max_tokens, batch_size)  # type: ignore[arg-type]
        else:
            argv, work = batch.prepare_submit(stack, overrides, dashboard, input_path, output, max_tokens,  # type: ignore[arg-type]  # --stack is set here (checked above)
                                              batch_size)  # fmt: skip
            if dry_run:  # the command alone, on stdout: nothing runs, so nothing says "running"
                print_json({"command": argv, "working_dir": work}) if as_json else console.print(
                    batch.shell_line(argv), highlight=False, soft_wrap=True)  # fmt: skip
                return
            err_console.print(f"running: {batch.shell_line(argv)}", highlight=False, soft_wrap=True)
            try:
                summary = _submit(argv)
            finally:
                shutil.rmtree(work, ignore_errors=True)  # the job has its own copy by now
    except BenchError as e:
        fail(str(e), code=1)
    if as_json:
        print_json(summary)
    else:
        console.print(
            f"{summary['processed']} rows processed ({summary['skipped_done']} already done), "
            f"{summary['failed']} failed, {summary['output_tokens']} output tokens in {summary['seconds']} s "
            f"= {summary['output_tokens_per_s']} tok/s -> {summary['output']}",
            highlight=False,
        )
    if summary["failed"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("batch", help=HELP)(batch_cmd)


def _submit(argv: list[str]) -> dict:
    """Run `ray job submit` (it waits for the job and streams its logs); the job's summary line."""
    import sys

    lines: list[str] = []
    try:
        with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
            for line in proc.stdout:  # type: ignore[union-attr]
                sys.stderr.write(line)  # the job's logs and Ray Data's progress, as they come
                if line.startswith("{") and '"processed"' in line:
                    lines.append(line)
    except FileNotFoundError:
        raise BenchError("`ray` is not on PATH; run from the project venv") from None
    if proc.returncode not in (0, 1) or not lines:
        raise BenchError(f"ray job submit exited {proc.returncode} without a summary; see its output above")
    return json.loads(lines[-1])
