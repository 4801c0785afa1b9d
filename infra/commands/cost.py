"""`llmfleet cost`: price a stack before it exists (Infracost-style), diff, gate on budget.

    llmfleet cost --stack prod                          # table per resource, with a total
    llmfleet cost --stack prod --json                   # Infracost JSON (schema version 0.2)
    llmfleet cost --stack prod --usage-file usage.yml   # Infracost usage file: data, requests, hours
    llmfleet cost --stack prod --usage-file usage.yml --sync-usage-file   # write every usage key
    llmfleet cost --stack prod --compare-to past.json   # past vs now of this stack, per component
    llmfleet cost --stack prod --from-preview p.json    # `pulumi preview --json`: oldState -> newState
    llmfleet cost --stack prod --diff dev               # a different question: prod minus stack dev
    llmfleet cost --stack prod --live                   # instance prices (and block quotes) from AWS

Exit 4 when the total monthly cost exceeds llmfleet:maxMonthlyUsd (for CI gates).
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from infra.commands import _common
from infra.commands._cost_stack import (  # noqa: F401 - live_blocks, usage_template: the command's API
    Priced,
    live_blocks,
    load_usage,
    price_stack,
    read_file,
    usage_template,
    user_errors,
)
from infra.commands._cost_tables import budget_message, render_diff, render_table
from infra.cost import infracost, infracost_diff
from infra.cost import usage as usage_mod
from infra.stack import suggest
from infra.stack.config import ConfigError
from infra.stack.files import available_stacks, project_root, stack_name

if TYPE_CHECKING:  # imported where used: `llmfleet --help` and `plan` need none of them
    from infra.cost import infracost
    from infra.cost import usage as usage_mod

EXIT_OVER_BUDGET = 4

JsonOpt = Annotated[bool, typer.Option("--json", help="Infracost JSON (version 0.2) on stdout.")]
LiveOpt = Annotated[
    bool, typer.Option("--live", help="EC2 prices from the AWS Price List API / spot history; block quotes.")
]
UsageFileOpt = Annotated[
    Path | None,
    typer.Option("--usage-file", metavar="FILE", help="Usage estimates, Infracost's usage-file format."),
]
SyncUsageOpt = Annotated[
    bool,
    typer.Option(
        "--sync-usage-file", help="Write every usage key of the stack into --usage-file (keeps set values)."
    ),
]
CompareToOpt = Annotated[
    Path | None,
    typer.Option(
        "--compare-to",
        metavar="PAST",
        help="Diff against an earlier `llmfleet cost --json` (or Infracost JSON) of this stack.",
    ),
]
DiffOpt = Annotated[
    str | None,
    typer.Option(
        "--diff",
        metavar="OTHER",
        autocompletion=_common.complete_stack,
        help="This stack's cost minus stack OTHER's (two stacks, not two states; -c applies to --stack only).",
    ),
]
FromPreviewOpt = Annotated[
    Path | None,
    typer.Option(
        "--from-preview",
        metavar="FILE",
        help="Price a `pulumi preview --json` file: past from oldState, new from newState.",
    ),
]


# --- JSON --------------------------------------------------------------------------------------


def _git(*args: str) -> str:
    """git in the project's repository (the project holds the stacks being priced)."""

    try:
        where = project_root()
    except ConfigError:
        return ""
    try:
        out = subprocess.run(
            ["git", "-C", str(where), *args], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def vcs_metadata(command: str, usage_path: str = "") -> infracost.RunMetadata:
    """The commit the estimate was made on, as Infracost's VCS fields (empty outside git)."""

    fields = _git("log", "-1", "--format=%H%x00%an%x00%ae%x00%cI%x00%s").split("\x00")
    sha, name, email, stamp, subject = (fields + [""] * 5)[:5]
    if stamp:
        stamp = dt.datetime.fromisoformat(stamp).astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return infracost.RunMetadata(
        command=command,
        branch=_git("rev-parse", "--abbrev-ref", "HEAD"),
        commit_sha=sha,
        author_name=name,
        author_email=email,
        commit_timestamp=stamp or infracost.ZERO_TIME,
        commit_message=subject,
        usage_file_path=usage_path,
    )


def build_json(
    p: Priced,
    past: dict[str, Any] | None,
    name_key: Callable[[dict[str, Any]], Any] | None,
    run: infracost.RunMetadata,
    now: dt.datetime,
) -> dict[str, Any]:

    est = p.estimate
    info = infracost.ProjectInfo(est.project, p.source_path, p.source_type, est.project, est.warnings)
    proj = infracost.project(
        info, infracost.breakdown(est, p.tokens_per_s), infracost.summary(est), past, name_key
    )
    return infracost.document([proj], run, now)


# --- the command -------------------------------------------------------------------------------


def _price_other(diff: str, live: bool) -> Priced:
    """Stack OTHER of --diff; its failures name --diff, not --stack."""

    stacks = available_stacks()
    try:
        short = stack_name(diff)
    except ConfigError as e:
        _common.fail(str(e).replace("--stack", "--diff", 1))
    if short not in stacks:
        _common.fail(
            f"--diff: {diff!r} is not a stack (no stacks/Pulumi.{diff}.yaml); "
            f"{suggest.did_you_mean(diff, stacks)}allowed: {', '.join(stacks)}"
        )
    try:
        return price_stack(diff, [], live=live)
    except user_errors() as err:
        _common.fail(f"--diff {diff}: {err}")


@dataclass(frozen=True)
class _Past:
    """What the estimate is compared with: a breakdown, how its names match, the table's title."""

    breakdown: dict[str, Any] | None = None
    name_key: Callable[[dict[str, Any]], Any] | None = None
    label: str = ""


def _with_past(
    priced: Priced, stack: str, diff: str | None, compare_to: Path | None, live: bool
) -> tuple[Priced, _Past]:
    """--diff (another stack), --compare-to (an earlier JSON), or the preview file's old state."""

    if diff:
        other = _price_other(diff, live)
        warnings = priced.estimate.warnings + other.estimate.warnings
        return replace(priced, estimate=replace(priced.estimate, warnings=warnings)), _Past(
            infracost.breakdown(other.estimate, other.tokens_per_s),
            infracost_diff.other_stack_key(diff, stack),
            f"minus stack {diff}",
        )
    if compare_to is not None:
        bd, from_name = infracost.past_breakdown_from(
            read_file(compare_to, "--compare-to"), stack, str(compare_to)
        )
        return priced, _Past(bd, None, f"past: {compare_to.name} ({from_name})")
    if priced.past is not None:
        return priced, _Past(infracost.breakdown(priced.past, priced.tokens_per_s), None, priced.note)
    return priced, _Past()


def _sync_usage(priced: Priced, usage: usage_mod.Usage, usage_file: Path) -> None:

    entries = usage_template(priced.estimate)
    try:
        usage_file.write_text(usage_mod.sync_text(entries, usage))
    except OSError as err:
        _common.fail(f"--usage-file: cannot write {str(usage_file)!r}: {err.strerror}", 2)
    _common.err_console.print(
        f"synced {usage_file}: {len(entries)} resources with usage keys", highlight=False
    )


def _report(priced: Priced, past: _Past, as_json: bool, usage_file: Path | None) -> None:
    """Warnings on stderr; the JSON document, the diff or the table on stdout; exit 4 over budget."""
    for w in priced.estimate.warnings:
        _common.err_console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    command = "diff" if past.breakdown is not None else "breakdown"
    run = vcs_metadata(command, str(usage_file or ""))
    doc = build_json(priced, past.breakdown, past.name_key, run, dt.datetime.now(dt.UTC))
    if as_json:
        _common.print_json(doc)
    elif past.breakdown is not None:
        render_diff(priced, doc, past.label, _common.console)
    else:
        render_table(priced, _common.console)
    _gate_on_budget(priced)


def _gate_on_budget(priced: Priced) -> None:
    """Exit 4 with the one-line message when the estimate is over llmfleet:maxMonthlyUsd."""
    over = budget_message(priced.estimate.total_monthly, priced.max_monthly_usd)
    if over:
        _common.fail(over, EXIT_OVER_BUDGET)


def cost_cmd(
    stack: _common.StackOpt,
    config: _common.ConfigOpt = None,
    as_json: JsonOpt = False,
    live: LiveOpt = False,
    usage_file: UsageFileOpt = None,
    sync_usage_file: SyncUsageOpt = False,
    compare_to: CompareToOpt = None,
    diff: DiffOpt = None,
    from_preview: FromPreviewOpt = None,
) -> None:
    """Price every resource of a stack before it exists; exit 4 over llmfleet:maxMonthlyUsd."""
    # start-up: the offline engine loads Pulumi (~0.5 s); `cost --help` and completion need none of it
    from infra.program.offline import collect_rarely

    if sync_usage_file and usage_file is None:
        _common.fail("--sync-usage-file: needs --usage-file FILE (the file to write)", 2)
    if compare_to is not None and diff is not None:
        _common.fail("--compare-to and --diff: allowed: one of them (a past state, or another stack)", 2)
    # the whole command, not only the capture: the collector's one pass over the capture's
    # heap then comes after the output instead of in the middle of pricing (offline.py)
    with collect_rarely():
        try:
            usage = load_usage(usage_file, sync_usage_file)
            priced = price_stack(stack, list(config or []), live=live, from_preview=from_preview, usage=usage)
            priced, past = _with_past(priced, stack, diff, compare_to, live)
        except user_errors() as err:
            _common.fail(str(err), 2)
        if sync_usage_file:
            assert usage_file is not None
            _sync_usage(priced, usage, usage_file)
        _report(priced, past, as_json, usage_file)


def register(app: typer.Typer) -> None:
    app.command("cost")(cost_cmd)
