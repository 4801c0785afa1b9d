"""`llmfleet init DIR`: a new project (Pulumi.yaml, __main__.py, one stack file) from the
packaged template, for a catalog model on an AWS GPU type; asks for what is not given when
stdin is a terminal."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from infra import templates
from infra.catalog import load_catalog
from infra.commands._common import console, err_console, fail, resolve_id
from infra.stack import suggest
from infra.stack.config import ConfigError
from infra.stack.files import load_config
from infra.stack.names import STACK_NAME_ALLOWED, STACK_NAME_RE
from infra.stack.resolve import resolve

DEFAULT_STACK = "dev"
DEFAULT_REGION = "us-east-1"


def aws_gpu_types() -> dict[str, tuple[str, int]]:
    """GPU id -> (the catalog's EC2 type with the most of them, that count), for every GPU an
    AWS type in the catalog carries; several types with as many: the cheapest per hour."""

    out: dict[str, tuple[str, int]] = {}
    best: dict[str, tuple[int, float]] = {}
    for inst in load_catalog().instances.values():
        if not inst.gpu or not inst.gpu_count:
            continue
        key = (-inst.gpu_count, inst.on_demand_usd_per_hour)
        if inst.gpu not in best or key < best[inst.gpu]:
            best[inst.gpu] = key
            out[inst.gpu] = (inst.name, inst.gpu_count)
    return out


def interactive() -> bool:
    return sys.stdin.isatty()


def _ask_or_fail(option: str, allowed: list[str], default: str) -> str:
    """A value the user did not give: a prompt on a terminal (again until it is one of
    `allowed`, matched case-insensitively), else a one-line error."""

    if not interactive():
        fail(f"{option}: required when stdin is not a terminal; allowed: {', '.join(allowed)}")
    while True:
        value = typer.prompt(f"{option.removeprefix('--')} ({', '.join(allowed)})", default=default)
        hit = suggest.canonical(value.strip(), allowed)
        if hit:
            return hit
        err_console.print(
            f"{value!r}: {suggest.did_you_mean(value, allowed)}allowed: {', '.join(allowed)}", markup=False
        )


def _virtualenv() -> str | None:
    """The virtualenv this llmfleet runs in, for Pulumi's language host (it must import infra)."""
    return sys.prefix if sys.prefix != sys.base_prefix else None


def init_cmd(
    directory: Annotated[Path, typer.Argument(help="The new project's directory (created if missing).")],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Catalog model id, e.g. deepseek-r1 (asked if omitted)."),
    ] = None,
    gpu: Annotated[
        str | None,
        typer.Option("--gpu", "-g", help="GPU id of the workers, e.g. L40S, H100 (asked if omitted)."),
    ] = None,
    stack: Annotated[
        str, typer.Option("--stack", "-s", help="The stack to write: stacks/Pulumi.<NAME>.yaml.")
    ] = DEFAULT_STACK,
    region: Annotated[str, typer.Option("--region", help="AWS region (aws:region).")] = DEFAULT_REGION,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite the project's files if they exist.")
    ] = False,
) -> None:
    """Write a new llmfleet project: Pulumi.yaml, __main__.py and stacks/Pulumi.<stack>.yaml."""

    if not STACK_NAME_RE.fullmatch(stack):  # before the name becomes stacks/Pulumi.<name>.yaml
        fail(f"--stack {stack!r}: not a stack name; allowed: {STACK_NAME_ALLOWED}")
    gpus = aws_gpu_types()
    cat = load_catalog()  # ids in the files' order: the first model is the default
    gpu_ids, model_ids = tuple(cat.gpus), tuple(cat.models)
    model = resolve_id("--model", model, model_ids, "model") if model else None
    model = model or _ask_or_fail("--model", list(model_ids), model_ids[0])
    if gpu:
        gpu = resolve_id("--gpu", gpu, gpu_ids, "GPU")
        if gpu not in gpus:
            fail(
                f"--gpu {gpu!r}: no AWS instance type in the catalog has it; allowed: {', '.join(gpus)} "
                "(hosts you own: provider existing, see stacks/Pulumi.onprem-l20.yaml in the repository)"
            )
    gpu = gpu or _ask_or_fail("--gpu", list(gpus), "L40S" if "L40S" in gpus else next(iter(gpus)))
    gpu = resolve_id("--gpu", gpu, list(gpus), "GPU")
    instance_type, count = gpus[gpu]
    choice = templates.ProjectChoice(stack, model, gpu, count, instance_type, region)
    files = templates.render(choice, _virtualenv())

    target = directory.expanduser().resolve()
    if target.exists() and not target.is_dir():
        fail(f"DIR {str(directory)!r}: not a directory; allowed: a new or existing directory")
    clash = [rel for rel in files if (target / rel).exists()]
    if clash and not force:
        fail(f"DIR {str(directory)!r}: {clash[0]} exists; allowed: a directory without it, or --force")

    # The files are checked as the commands will read them (config model + planner) before
    # anything is written: a stack that cannot be deployed is never left behind.
    with tempfile.TemporaryDirectory(prefix="llmfleet-init-") as tmp:
        for rel, text in files.items():
            (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / rel).write_text(text)
        try:
            st = resolve(load_config(stack, project_dir=Path(tmp)))
        except ConfigError as e:
            fail(str(e).replace(tmp, str(target)))
    if not st.plan.fits:
        fail(
            f"--gpu {gpu!r}: {model} does not fit on {instance_type} workers ({st.plan.reason}); "
            f"allowed: a GPU it fits on (`llmfleet plan --compare --model {model}` ranks them)"
        )
    for rel, text in files.items():
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        (target / rel).write_text(text)

    p = st.plan
    console.print(
        f"wrote {target}: Pulumi.yaml, __main__.py, stacks/Pulumi.{stack}.yaml\n"
        f"stack {stack}: {model} on {st.workers} x {instance_type} ({count}x {gpu}), "
        f"tensor x pipeline parallel {p.tensor_parallel_size} x {p.pipeline_parallel_size}, {region}\n"
        f"next: cd {target} && llmfleet preview --stack {stack} && llmfleet cost --stack {stack}",
        highlight=False,
        soft_wrap=True,
        markup=False,  # a path is text, not rich markup
    )


def register(app: typer.Typer) -> None:
    app.command("init")(init_cmd)
