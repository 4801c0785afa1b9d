"""`llmfleet weights upload | verify`: a checkpoint into the stack's weights location, checked
against the stack's model before any byte moves, with the manifest.json the hosts verify."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from infra.catalog import load_catalog
from infra.commands._common import (
    ConfigOpt,
    JsonOpt,
    StackOpt,
    config_or_fail,
    console,
    err_console,
    fail,
    print_json,
)
from infra.commands.preflight import credentials_or_fail
from infra.commands.render import read_outputs_file
from infra.stack.config_values import s3_uri
from infra.weights import checkpoint as ck
from infra.weights import hub
from infra.weights import manifest as mf

if TYPE_CHECKING:
    from botocore.client import BaseClient

    from infra.stack.config import StackConfig
    from infra.weights.s3 import Location

FromOpt = Annotated[
    str,
    typer.Option(
        "--from",
        metavar="DIR|hf:ORG/NAME[@REV]",
        help="The checkpoint: a local directory, or a Hugging Face repository (downloaded into the hub's cache).",
    ),
]
OutputsOpt = Annotated[
    Path | None,
    typer.Option(
        "--outputs",
        help="JSON of `pulumi stack output --json`: its weights_uri (the bucket `pulumi up` created) is the target.",
    ),
]
ConcurrencyOpt = Annotated[
    int,
    typer.Option(
        "--concurrency",
        min=1,
        max=512,
        help="Parts in flight at once, across files (boto3's max_concurrency).",
    ),
]


def _location(cfg: StackConfig, outputs: Path | None) -> Location:
    """Where the stack's hosts stage from: `--outputs`' weights_uri when given (the deployed
    truth, also for the bucket `pulumi up` created), else llmfleet:weightsUri."""
    # start-up: boto3 and its transfer manager (~1 s here), only where the S3 location is read
    from infra.weights.s3 import Location

    if outputs is not None:
        uri, where = read_outputs_file(outputs).get("weights_uri"), f"--outputs {str(outputs)!r}: weights_uri"
        if not isinstance(uri, str):
            fail(
                f"{where} = {uri!r}: allowed: s3://BUCKET/PREFIX/ (the output of `pulumi up` on an AWS stack)"
            )
    else:
        uri, where = cfg.weights_uri, "llmfleet:weightsUri"
        if uri is None:
            fail(
                "llmfleet:weightsUri is unset: `pulumi up` creates the stack's weights bucket; allowed: "
                "--outputs <(pulumi stack output --json) to upload there, or -c llmfleet:weightsUri=s3://BUCKET/PREFIX/"
            )
    if not uri.startswith("s3://"):
        fail(f"{where} = {uri!r}: weights upload writes to S3; allowed: s3://BUCKET/PREFIX/")
    try:
        return Location.from_uri(s3_uri(uri))
    except ValueError as e:
        fail(f"{where} = {uri!r}: {e}")


def _s3_client(cfg: StackConfig, concurrency: int) -> BaseClient:
    import boto3
    from botocore.config import Config

    credentials_or_fail()
    # One pooled connection per part in flight, plus the listing's and the HEADs' own.
    return boto3.Session().client(
        "s3", region_name=cfg.region, config=Config(max_pool_connections=concurrency + 16)
    )


def _progress():
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        # Bars are for a person at a terminal; a log or a pipe gets the one-line result only.
        disable=not err_console.is_terminal,
    )


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def _checked(source: str, model_id: str, skip_check: bool):
    """The local checkpoint directory and its facts; refused here, before any byte moves, when it
    is not the stack's model."""

    model = load_catalog().models[model_id]
    refuse = (
        "{what} is not {mid}'s checkpoint: {why}; the stack serves {repo} (llmfleet:model = {mid}); "
        "allowed: that checkpoint, or --skip-model-check to upload this one anyway"
    )
    if source.startswith(hub.PREFIX):
        try:
            src = hub.parse_source(source)
            if not skip_check and (bad := ck.config_mismatches(hub.fetch_config(src), model)):
                fail(refuse.format(what=src.label, mid=model_id, why="; ".join(bad), repo=model.hf_repo))
            directory = hub.fetch_snapshot(src)
        except hub.HubError as e:
            fail(str(e))
    else:
        directory = Path(source)
    try:
        facts = ck.read_checkpoint(directory)
    except ck.CheckpointError as e:
        fail(str(e))
    if not skip_check and (bad := ck.mismatches(facts, model)):
        fail(refuse.format(what=str(directory), mid=model_id, why="; ".join(bad), repo=model.hf_repo))
    return directory, facts


def upload_cmd(
    stack: StackOpt,
    source: FromOpt,
    config: ConfigOpt = None,
    outputs: OutputsOpt = None,
    concurrency: ConcurrencyOpt = 64,
    delete: Annotated[
        bool,
        typer.Option("--delete", help="Delete objects under the location that are not in this checkpoint."),
    ] = False,
    skip_model_check: Annotated[
        bool,
        typer.Option(
            "--skip-model-check",
            help="Upload a checkpoint that differs from the stack's model (its files and headers are still checked).",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check the checkpoint and the location, upload nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Upload a checkpoint to the stack's weights location, with manifest.json (sizes, sha256).

    First, from config.json and the safetensors headers only (no tensor data), the checkpoint must be the stack's model: architecture, layers, hidden size, experts, precision and total size within 5% of the catalog's. Then every file is hashed and uploaded with boto3's transfer manager (multipart, parallel), each object carrying its sha256; a file already in the bucket with the same size and sha256 is skipped, so running the same command again after an interruption uploads only what is missing. manifest.json is written last. Exit 0 = uploaded, 1 = an upload failed (run again), 2 = bad input or the checkpoint does not fit the stack.
    """

    # start-up: boto3's transfer manager (~0.7 s); `weights --help` needs none of it
    from infra.weights import s3 as ws3

    cfg = config_or_fail(stack, config)
    loc = _location(cfg, outputs)
    directory, facts = _checked(source, cfg.model, skip_model_check)
    s3 = _s3_client(cfg, concurrency)
    try:
        held = ws3.listing(s3, loc)
    except ws3.WeightsUploadError as e:
        fail(str(e))
    extra = sorted(set(held) - {f.rel for f in facts.files} - {ck.MANIFEST_NAME})
    if extra and not delete:
        more = f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""
        fail(
            f"{loc.uri} holds {extra[0]}{more}, which is not in {directory}: the hosts stage the whole "
            "location, so it would sit beside this checkpoint; allowed: --delete to remove it, or another weightsUri"
        )
    summary: dict[str, Any] = {
        "uri": loc.uri,
        "source": str(directory),
        "files": len(facts.files),
        "bytes": facts.total_bytes,
        "model_checked": not skip_model_check,
        "extra_objects": extra,  # not in the checkpoint: refused, or deleted with --delete
        "deleted": bool(extra) and not dry_run,
    }
    if dry_run:
        summary.update(
            dry_run=True, already_there=sorted(r for r in held if r in {f.rel for f in facts.files})
        )
        _report(
            summary,
            as_json,
            f"dry run: {len(facts.files)} files ({_gib(facts.total_bytes)}) would go to {loc.uri}",
        )
        return
    start = time.monotonic()
    with _progress() as bar:
        hashing = bar.add_task("sha256", total=facts.total_bytes)
        sums = mf.hash_files(
            facts.files, workers=min(8, os.cpu_count() or 4), on_bytes=lambda n: bar.advance(hashing, n)
        )
        try:
            plan = ws3.plan_upload(s3, loc, facts.files, sums, held)
            ws3.abort_stale_multipart(s3, loc, {f.rel for f in plan.send})
        except ws3.WeightsUploadError as e:
            fail(str(e))
        sending = bar.add_task("upload", total=plan.send_bytes)
        result = ws3.send(s3, loc, plan.send, sums, concurrency, on_bytes=lambda n: bar.advance(sending, n))
    if result.failed:
        rel, why = result.failed[0]
        more = f" (+{len(result.failed) - 1} more)" if len(result.failed) > 1 else ""
        fail(
            f"upload of {rel}{more} to {loc.uri} failed: {why}; {len(plan.present) + len(result.sent)} of "
            f"{len(facts.files)} files are in; run the same command again to upload the rest",
            code=1,
        )
    body = mf.build(facts.files, sums).to_bytes()
    try:
        if extra:
            ws3.delete_keys(s3, loc, extra)
        written = ws3.put_manifest(s3, loc, body)
    except ws3.WeightsUploadError as e:
        fail(str(e), code=1)
    summary.update(
        uploaded=result.sent,
        already_there=[f.rel for f in plan.present],
        uploaded_bytes=plan.send_bytes,
        seconds=round(time.monotonic() - start, 1),
        manifest_sha256=hashlib.sha256(body).hexdigest(),
        manifest_written=written,
    )
    _report(
        summary,
        as_json,
        f"uploaded {len(result.sent)} files ({_gib(plan.send_bytes)}) to {loc.uri}, "
        f"{len(plan.present)} already there; manifest.json sha256 {summary['manifest_sha256'][:12]}"
        + ("" if written else " (unchanged)"),
    )


def _report(summary: dict[str, Any], as_json: bool, line: str) -> None:
    if as_json:
        print_json(summary)
    else:
        console.print(line, highlight=False, soft_wrap=True)


def verify_cmd(
    stack: StackOpt,
    config: ConfigOpt = None,
    outputs: OutputsOpt = None,
    download: Annotated[
        bool,
        typer.Option("--download", help="Hash every object's bytes (reads the whole checkpoint from S3)."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check the stack's weights location against its manifest.json.

    Every file listed must be there with its size and sha256 (the object's sha256 metadata, or its bytes with --download), and nothing else may sit under the location (the hosts stage all of it). Exit 0 = it matches, 1 = a problem, 2 = bad input.
    """

    # start-up: boto3's transfer manager (~0.7 s); `weights --help` needs none of it
    from infra.weights import s3 as ws3

    cfg = config_or_fail(stack, config)
    loc = _location(cfg, outputs)
    s3 = _s3_client(cfg, 16)
    try:
        if download:
            with _progress() as bar:
                task = bar.add_task("sha256 (download)", total=None)
                res = ws3.verify(s3, loc, download=True, on_bytes=lambda n: bar.advance(task, n))
        else:
            res = ws3.verify(s3, loc)
    except ws3.WeightsUploadError as e:
        fail(str(e))
    if as_json:
        print_json(res.to_json())
    elif res.ok:
        console.print(
            f"{loc.uri}: {res.files} files ({_gib(res.bytes)}) match manifest.json "
            f"({res.by_content} by sha256, {res.files - res.by_content} by size only)",
            highlight=False,
            soft_wrap=True,
        )
    else:
        for p in res.problems[:20]:
            err_console.print(f"[bold red]problem:[/] {p}", highlight=False, soft_wrap=True)
        more = " (first 20 shown)" if len(res.problems) > 20 else ""
        err_console.print(f"{loc.uri}: {len(res.problems)} problems{more}", highlight=False)
    raise typer.Exit(0 if res.ok else 1)


def register(app: typer.Typer) -> None:
    weights = typer.Typer(
        name="weights",
        help="Upload a checkpoint to the stack's weights location (checked, resumable) and verify it.",
        no_args_is_help=True,
    )
    weights.command("upload")(upload_cmd)
    weights.command("verify")(verify_cmd)
    app.add_typer(weights, name="weights")
