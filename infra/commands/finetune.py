"""`llmfleet finetune --local|--stack S --data FILE.jsonl --name NAME`: a LoRA fine-tune whose
adapter the cluster then serves as `<model>:NAME` (issue #33), and `finetune status|logs|stop JOB`.

First the checks that come before any job, each a one-line refusal: the model takes LoRA adapters
(the catalog's `lora`, infra/stack/lora.py), NAME is one safe path component (the adapter lands at
`<adapters>/NAME/`), every line of the JSONL is one training example. Then the job
(ray_cluster/finetune.py) goes to the cluster through Ray's JobSubmissionClient
(infra/finetune_job.py): the local cluster's dashboard, or a stack's through `--dashboard` (the
SSM port forward's local end: Ray's ports are reachable only inside the cluster's network).
Without --detach the command follows the job's progress lines until it ends.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from infra import finetune_job
from infra.commands._common import (
    ConfigOpt,
    JsonOpt,
    complete_stack,
    config_or_fail,
    console,
    err_console,
    fail,
    print_json,
)
from infra.commands._stack_outputs import OutputsFileOpt, aws_clients_or_fail, stack_outputs_or_fail
from infra.finetune_job import FinetuneJobError, Target, client, local_target
from infra.local.layout import LocalError
from infra.stack import lora
from infra.validation import first_error
from ray_cluster.finetune import FinetuneError, TrainSpec

# A JSONL larger than this is not a LoRA data set this command should read into memory to check.
MAX_DATA_BYTES = 1 << 30
EXAMPLE_ALLOWED = (
    'one JSON object per line: {"prompt": TEXT, "completion": TEXT} or '
    '{"messages": [{"role": "system"|"user"|"assistant", "content": TEXT}, ...]} with an assistant turn'
)


class _Prompt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)
    completion: str = Field(min_length=1)


class _Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class _Chat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[_Turn] = Field(min_length=1)

    @model_validator(mode="after")
    def _assistant(self) -> _Chat:
        # the loss is on the assistant's tokens: a conversation without one teaches nothing
        if not any(t.role == "assistant" for t in self.messages):
            raise ValueError("no assistant turn")
        return self


def _example(obj: object) -> None:
    # the shape is chosen by its key, so the error is about the shape the line meant
    kind = _Chat if isinstance(obj, dict) and "messages" in obj else _Prompt
    kind.model_validate(obj)


def check_data(path: Path) -> int:
    """The number of examples in `path`; ValueError with the one line when a line is not one."""
    where = f"--data {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where}: not a file; allowed: {EXAMPLE_ALLOWED}")
    if path.stat().st_size > MAX_DATA_BYTES:
        raise ValueError(f"{where}: larger than {MAX_DATA_BYTES >> 20} MiB; allowed: a smaller JSONL")
    n = 0
    with path.open("rb") as f:
        for i, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                _example(json.loads(raw))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ValueError(f"{where} line {i}: not JSON; allowed: {EXAMPLE_ALLOWED}") from None
            except ValidationError as e:
                err = first_error(e)
                raise ValueError(
                    f"{where} line {i}: {err.path + ': ' if err.path else ''}{err.msg}; allowed: {EXAMPLE_ALLOWED}"
                ) from None
            n += 1
    if n == 0:
        raise ValueError(f"{where}: no examples; allowed: {EXAMPLE_ALLOWED}")
    return n


# The tiny models of the local cluster (infra/local/tiny_model.py) are not catalog models: the
# DeepSeek-V3 one stands in for R1, which the catalog refuses; the Llama twin is dense.
LOCAL_LORA_MODELS = ("llmfleet/tiny-llama",)

StackOpt = Annotated[
    str | None,
    typer.Option(
        "--stack", "-s", envvar="PULUMI_STACK", autocompletion=complete_stack, help="A deployed stack."
    ),
]
LocalOpt = Annotated[bool, typer.Option("--local", help="The local cluster (llmfleet local up).")]
LocalNameOpt = Annotated[str, typer.Option("--cluster", help="--local: the local cluster's name.")]
DashboardOpt = Annotated[
    str | None,
    typer.Option(
        "--dashboard",
        help="--stack: Ray's dashboard URL (the local end of the stack's dashboard_port_forward_command).",
    ),
]
JobArg = Annotated[str, typer.Argument(help="The job id `finetune --detach` printed.")]


def _target_or_fail(local: bool, stack: str | None) -> None:
    if local == bool(stack):
        fail("target: " + ("--local and --stack together" if local else "missing")
             + "; allowed: one of --local, --stack NAME")  # fmt: skip


def _dashboard_or_fail(stack: str, dashboard: str | None) -> str:
    if not dashboard:
        fail(
            f"stack {stack}: Ray's dashboard (the Jobs API) is reachable only inside the cluster's network; "
            "allowed: run the stack's dashboard_port_forward_command (pulumi stack output) and pass "
            "--dashboard http://127.0.0.1:8265",
            1,
        )
    if not dashboard.startswith(("http://127.0.0.1:", "http://localhost:", "http://[::1]:")):
        fail(f"--dashboard {dashboard!r}: allowed: http://127.0.0.1:PORT (the SSM port forward's local end)")
    return dashboard


def _local_target(cluster: str):

    try:
        target = local_target(cluster)
    except (FinetuneJobError, LocalError) as e:
        fail(str(e), 1)
    if target.served_model not in LOCAL_LORA_MODELS:
        fail(
            f"local cluster {cluster!r} serves {target.served_model!r}: it stands in for deepseek-r1, which "
            f"cannot take LoRA adapters; allowed: {', '.join(LOCAL_LORA_MODELS)} (local up --model)",
            2,
        )
    return target


def _ray_token_or_fail(outputs) -> str:
    """The stack's Ray cluster token: its dashboard runs Ray's token auth (RAY_AUTH_MODE=token)."""
    ssm = aws_clients_or_fail(outputs, "ssm")["ssm"] if outputs.provider == "aws" else None
    try:
        return finetune_job.ray_token(outputs, ssm)
    except FinetuneJobError as e:
        fail(str(e), 1)


def _stack_target(stack: str, cfg, dashboard: str | None, outputs_file: Path | None):

    if cfg.lora is None:
        fail(
            f"llmfleet:lora: not set on stack {stack}: the Serve app loads adapters from nowhere; "
            "allowed: llmfleet:lora: {adapters: s3://BUCKET/PREFIX/} (README, LoRA adapters)",
            1,
        )
    url = _dashboard_or_fail(stack, dashboard)
    out = stack_outputs_or_fail(stack, outputs_file)
    if out.model != cfg.model:
        fail(
            f"stack {stack}: deployed with {out.model!r}, configured for {cfg.model!r}; allowed: `llmfleet up` first",
            1,
        )
    return Target(
        where=f"stack {stack}",
        dashboard=url,
        base_path=out.model_path,
        served_model=out.served_model,
        adapters=cfg.lora.adapters,
        python="python3",  # the node image's interpreter
        token=_ray_token_or_fail(out),
    )


def _jobs_or_fail(
    local: bool, stack: str | None, cluster: str, dashboard: str | None, outputs_file: Path | None
):

    _target_or_fail(local, stack)
    if local:
        url, token = _local_target(cluster).dashboard, None
    else:
        url = _dashboard_or_fail(stack or "", dashboard)
        token = _ray_token_or_fail(stack_outputs_or_fail(stack or "", outputs_file))
    try:
        return client(url, token)
    except FinetuneJobError as e:
        fail(str(e), 1)


def finetune_cmd(
    ctx: typer.Context,
    data: Annotated[
        Path | None, typer.Option("--data", help="Training examples, one JSON object per line.")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="The adapter's name: served as <model>:NAME.")
    ] = None,
    stack: StackOpt = None,
    local: LocalOpt = False,
    cluster: LocalNameOpt = "local",
    dashboard: DashboardOpt = None,
    outputs_file: OutputsFileOpt = None,
    config: ConfigOpt = None,
    steps: Annotated[int, typer.Option("--steps", min=1, max=100_000, help="Optimizer steps.")] = 30,
    rank: Annotated[int, typer.Option("--rank", min=1, max=512, help="LoRA rank (r).")] = 8,
    learning_rate: Annotated[float, typer.Option("--learning-rate", help="AdamW's learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=1024, help="Examples per step.")] = 4,
    detach: Annotated[bool, typer.Option("--detach", help="Print the job id and return.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune a LoRA adapter on the cluster (a Ray Train job); served as <model>:NAME when it ends."""
    if ctx.invoked_subcommand is not None:
        return

    _target_or_fail(local, stack)
    if local and config:
        fail(f"--config {config[0]!r}: a stack override; allowed: with --stack, not --local")
    if data is None or name is None:
        fail(
            f"{'--data' if data is None else '--name'}: missing; allowed: finetune --data FILE.jsonl --name NAME"
        )
    if not lora.ADAPTER_NAME_RE.fullmatch(name):
        fail(f"--name {name!r}: allowed: {lora.ADAPTER_NAME_ALLOWED}")
    cfg = None
    if stack:
        cfg = config_or_fail(stack, config)
        why = lora.refusal(cfg.model)
        if why:
            fail(why, 2)
    try:
        check_data(data)
    except ValueError as e:
        fail(str(e))
    target = _local_target(cluster) if local else _stack_target(stack or "", cfg, dashboard, outputs_file)
    spec = TrainSpec(
        base=target.base_path, data=finetune_job.DATA_FILE, name=name, out=target.adapters,
        base_model_id=target.served_model, rank=rank, alpha=2 * rank, steps=steps, batch_size=batch_size,
        learning_rate=learning_rate, llmfleet_version=finetune_job.llmfleet_version(),
        use_gpu=not local,  # a stack's hosts are GPU hosts (NCCL); the local cluster's are CPU (gloo)
    )  # fmt: skip
    try:
        spec.check()
        jobs = finetune_job.client(target.dashboard, target.token)
        job_id = finetune_job.submit(target, spec, data, jobs)
    except (FinetuneError, finetune_job.FinetuneJobError) as e:
        fail(str(e), 2 if isinstance(e, FinetuneError) else 1)
    model = f"{target.served_model}:{name}"
    if detach:
        print_json({"job_id": job_id, "model": model}) if as_json else console.print(job_id, highlight=False)
        return
    err_console.print(
        f"submitted {job_id} to {target.where}; the adapter will be served as {model}", highlight=False
    )
    last: list[str] = []
    once = finetune_job.Once()

    def on_line(line: str) -> None:
        p = finetune_job.progress(line)
        if p is not None and not as_json:
            if once.fresh(p):
                console.print(finetune_job.fmt_progress(p), highlight=False)
        elif p is None and line.strip():
            last[:] = [*last[-19:], line]

    status = finetune_job.follow(jobs, job_id, on_line)
    if as_json:
        print_json(finetune_job.status(jobs, job_id) | {"model": model})
    if status != "SUCCEEDED":
        why = next((ln for ln in reversed(last) if ln.startswith("error:") or "Error" in ln), "")
        fail(
            f"job {job_id}: {status}{': ' + why.strip() if why else ''}; full log: llmfleet finetune logs {job_id}",
            1,
        )
    if not as_json:
        console.print(f"done: request model={model!r} at the endpoint", highlight=False)


def status_cmd(
    job_id: JobArg, stack: StackOpt = None, local: LocalOpt = False, cluster: LocalNameOpt = "local",
    dashboard: DashboardOpt = None, outputs_file: OutputsFileOpt = None, as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """The job's state and its last progress line."""

    jobs = _jobs_or_fail(local, stack, cluster, dashboard, outputs_file)
    try:
        doc = finetune_job.status(jobs, job_id)
    except finetune_job.FinetuneJobError as e:
        fail(str(e))
    except RuntimeError as e:  # the Jobs API's "job does not exist"
        fail(f"JOB {job_id!r}: {str(e).splitlines()[0]}", 1)
    if as_json:
        print_json(doc)
        return
    p = doc["done"] or doc["progress"]
    console.print(
        f"{job_id}: {doc['status']}" + (f"  {finetune_job.fmt_progress(p)}" if p else ""), highlight=False
    )


def logs_cmd(
    job_id: JobArg, stack: StackOpt = None, local: LocalOpt = False, cluster: LocalNameOpt = "local",
    dashboard: DashboardOpt = None, outputs_file: OutputsFileOpt = None,
) -> None:  # fmt: skip
    """The job's whole log (Ray's driver log, with its workers' lines)."""

    jobs = _jobs_or_fail(local, stack, cluster, dashboard, outputs_file)
    try:
        sys.stdout.write(jobs.get_job_logs(finetune_job.check_job_id(job_id)))
    except finetune_job.FinetuneJobError as e:
        fail(str(e))
    except RuntimeError as e:
        fail(f"JOB {job_id!r}: {str(e).splitlines()[0]}", 1)


def stop_cmd(
    job_id: JobArg, stack: StackOpt = None, local: LocalOpt = False, cluster: LocalNameOpt = "local",
    dashboard: DashboardOpt = None, outputs_file: OutputsFileOpt = None,
) -> None:  # fmt: skip
    """Stop the job (Ray's stop_job: SIGTERM, then SIGKILL); no adapter is written."""

    jobs = _jobs_or_fail(local, stack, cluster, dashboard, outputs_file)
    try:
        stopped = jobs.stop_job(finetune_job.check_job_id(job_id))
    except finetune_job.FinetuneJobError as e:
        fail(str(e))
    except RuntimeError as e:
        fail(f"JOB {job_id!r}: {str(e).splitlines()[0]}", 1)
    console.print(f"{job_id}: {'stopping' if stopped else 'already ended'}", highlight=False)


def register(app: typer.Typer) -> None:
    group = typer.Typer(invoke_without_command=True, no_args_is_help=False)
    group.callback()(finetune_cmd)
    group.command("status")(status_cmd)
    group.command("logs")(logs_cmd)
    group.command("stop")(stop_cmd)
    app.add_typer(group, name="finetune")
