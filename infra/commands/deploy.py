"""`llmfleet up` / `llmfleet rollout` / `llmfleet down`: the Pulumi Automation API, the ordered
rollout of the node scripts (infra/rollout/), then a readiness wait on the head."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from infra import deploy
from infra.commands import _up_preview as view
from infra.commands._common import (
    ConfigOpt,
    StackOpt,
    config_or_fail,
    console,
    emit_error,
    err_console,
    fail,
    print_json,
    require_policy_sdk,
)
from infra.commands._cost_stack import user_errors
from infra.commands._readiness import wait_ready
from infra.commands.policy import violations_table
from infra.commands.preflight import run_for_stack, show
from infra.rollout import stack as rollout
from infra.rollout.plan import PlanError
from infra.stack.outputs import OutputsError, StackOutputs
from infra.up_preview import PreviewEvents, build

TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout", help="Seconds to wait for a real completion: at each rollout gate, and after up."
    ),
]


def _cli_or_fail() -> None:
    try:
        deploy.require_pulumi_cli()
    except deploy.PulumiMissing as e:
        fail(str(e), 2)


def _args_or_fail(stack: str, config: list[str] | None):
    try:
        return deploy.build_stack_args(stack, config or [], env=os.environ)
    except deploy.DeployError as e:
        fail(str(e), 2)


def _output(outputs: dict, key: str) -> str:
    if not outputs.get(key):
        fail(
            f"stack output {key!r} is missing: the program must export it (have: {', '.join(sorted(outputs))})",
            1,
        )
    return str(outputs[key])


def _one_line(e: Exception) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def _rollout(cfg, stack: str, outputs: dict, timeout: float, out: Console = console) -> bool:
    """Apply the node scripts `pulumi up` wrote, host by host (infra/rollout/): print the plan,
    each step and the result; False (after one error line) when it stopped and rolled back."""
    if cfg.provider == "existing":
        return True  # hosts you own are bootstrapped over SSH by the program itself
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        o = StackOutputs.parse(outputs)
    except OutputsError as e:
        fail(str(e), 1)
    session = boto3.Session()
    try:
        result = rollout.rollout_stack(
            session.client("ssm", region_name=cfg.region),
            session.client("ec2", region_name=cfg.region),
            stack,
            outputs,
            container=o.head_container,
            port=cfg.endpoint_port,
            model=o.served_model,
            token_parameter=_output(outputs, "token_parameter"),
            region=cfg.region,
            fingerprint=deploy.expected_fingerprint(cfg),
            timeout_s=timeout,
            log=lambda line: out.print(f"rollout: {line}", highlight=False, markup=False),
        )
    except PlanError as e:
        fail(f"rollout: {e}", 1)
    except (BotoCoreError, ClientError) as e:
        fail(f"rollout: {_one_line(e)}", 1)
    if not result.ok:
        emit_error(result.line())
        return False
    out.print(f"[green]{result.line()}[/]", highlight=False)
    return True


def _policy_stop(stack: str, violations) -> None:
    """Print the mandatory violations as `llmfleet policy` does, then exit 1 with the first one's line."""
    # optional dependency: the `policy` extra (pulumi-policy); require_policy_sdk() checked it
    from policy.runner import Report

    err_console.print(violations_table(stack, Report(violations=tuple(violations)), err_console))
    first = violations[0]
    where = f" ({first.resource})" if first.resource else ""
    fail(f"policy {first.policy}{where}: {first.message}", 1)


def _preview_and_confirm(stack: str, overrides: list[str], pstack, packs, yes: bool, as_json: bool) -> None:
    """Preview with the policy pack, then show what it will do before asking: each resource's
    change as a tree, the hosts it replaces and the changes that restart serving, the pack's
    verdict, the cost before and after (from the same preview). A mandatory violation stops
    here (exit 1); `--json` prints it all as one document on stdout and asks on stderr."""
    events = PreviewEvents()
    quiet: list[str] = []
    failed: str | None = None
    summary: dict[str, int] | None = None
    try:
        summary = deploy.stack_preview(pstack, on_output=quiet.append, on_event=events, packs=packs)
    except Exception as e:  # noqa: BLE001 - the CLI fails a preview with mandatory violations
        failed = _one_line(e)
    report = build(stack, events, summary or events.summary)
    if failed and not report.verdict.mandatory:
        fail(f"pulumi preview failed: {events.errors[-1] if events.errors else failed}", 1)
    cost, cost_error = None, None
    try:
        cost = view.price(stack, overrides, events)
    except user_errors() as e:  # a price the preview cannot give is shown, not a reason to stop
        cost_error = str(e)
    if as_json:
        print_json(view.document(report, cost, cost_error))
    else:
        view.render(report, events.steps, cost, cost_error, console)
    if report.verdict.mandatory:
        first = report.verdict.mandatory[0]
        where = f" ({first.resource})" if first.resource else ""
        fail(f"policy {first.policy}{where}: {first.message}", 1)
    if not yes and not typer.confirm(f"Apply these changes to stack {stack}?", err=as_json):
        raise typer.Exit(1)


def _preflight_or_fail(stack: str, cfg, out: Console = console) -> None:
    # start-up: the account checks load boto3 (~0.7 s), skipped with --skip-preflight
    from infra.account_check import run as ac_run

    checks = run_for_stack(cfg)
    show(checks, f"preflight: stack {stack} in {cfg.region}", out)
    if ac_run.exit_code(checks):
        fail("preflight failed: fix the lines marked fail above (or --skip-preflight)", 1)


def _show_endpoint(cfg, outputs: dict, out: Console = console) -> None:
    """Where to call the cluster, and how to read its token."""
    endpoint = outputs.get("endpoint_url")
    if endpoint:
        out.print(f"endpoint: {endpoint}", highlight=False)
    if outputs.get("token_parameter"):
        out.print(
            f"token:    aws ssm get-parameter --region {cfg.region} --name {outputs['token_parameter']} "
            "--with-decryption --query Parameter.Value --output text",
            highlight=False,
            soft_wrap=True,
        )


def up_cmd(
    stack: StackOpt,
    config: ConfigOpt = None,
    skip_preflight: Annotated[
        bool, typer.Option("--skip-preflight", help="Do not check the account first.")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for a real completion.")] = True,
    timeout: TimeoutOpt = 1800.0,
    out: Annotated[Path | None, typer.Option("--out", help="Where cluster.yaml and serve.yaml go.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="The preview (changes, call-outs, policy, cost) as one JSON document on stdout."
        ),
    ] = False,
) -> None:
    """Preflight, preview with the policy pack (Automation API) shown before asking (the changes as a tree, the hosts replaced and the changes that restart serving, the pack's verdict, the cost before -> after), `pulumi up --refresh` with the pack, render cluster.yaml + Serve config, roll the node scripts out in order (rolled back on a failure), wait until the new deployment answers.

    Exit 0 = up and answering with the new Serve config, 1 = preflight failed / a mandatory policy violation / update failed / not confirmed / rollout stopped and rolled back / not ready in time, 2 = bad input or no pulumi CLI.
    """  # noqa: E501  (one line per paragraph: rich folds help text itself)
    _cli_or_fail()
    require_policy_sdk()
    args = _args_or_fail(stack, config)
    cfg = config_or_fail(stack, config)
    # --json: stdout holds the one document; everything else (and the question) goes to stderr
    say = err_console if as_json else console
    if not skip_preflight:
        _preflight_or_fail(stack, cfg, say)

    # optional dependency: the `policy` extra (pulumi-policy), checked by require_policy_sdk() above
    from policy.runner import stack_policy_config

    out_dir = out or Path(".llmfleet") / stack
    packs = deploy.policy_packs(stack_policy_config(cfg), out_dir)
    pstack = deploy.open_stack(args)
    _preview_and_confirm(stack, list(config or []), pstack, packs, yes, as_json)
    events = deploy.PolicyEvents()
    try:
        outputs = deploy.stack_up(
            pstack,
            on_output=lambda line: say.print(line, highlight=False, markup=False),
            on_event=events,
            packs=packs,
        )
    except Exception as e:  # noqa: BLE001 - automation errors carry the CLI's stderr; show its last line
        if events.mandatory:
            _policy_stop(stack, events.mandatory)
        fail(f"pulumi up failed: {_one_line(e)}", 1)
    try:
        written = deploy.render_artifacts(outputs, cfg, out_dir)
    except ValueError as e:  # RenderError / ServeConfigError: Ray rejected what the outputs give
        fail(f"rendering cluster.yaml / serve.yaml from the stack outputs: {e}", 1)
    for path in written:
        say.print(f"wrote {path}")
    if not _rollout(cfg, stack, outputs, timeout, say):
        raise typer.Exit(1)
    if wait and not wait_ready(cfg, outputs, timeout, say):
        raise typer.Exit(1)
    _show_endpoint(cfg, outputs, say)


def rollout_cmd(
    stack: StackOpt,
    config: ConfigOpt = None,
    timeout: TimeoutOpt = 1800.0,
) -> None:
    """Roll out the node scripts the last `pulumi up` wrote: replica by replica, the head last, each host gated on its health; on a failure stop, restore the previous scripts and re-apply them. Run it after a plain `pulumi up --refresh` (llmfleet up runs it itself).

    Exit 0 = every host runs the new scripts and the deployment answers with the new Serve config, 1 = stopped and rolled back (the failing host in one line) / not ready, 2 = bad input or no pulumi CLI.
    """  # noqa: E501
    _cli_or_fail()
    args = _args_or_fail(stack, config)
    cfg = config_or_fail(stack, config)
    try:
        outputs = {k: v.value for k, v in deploy.open_stack(args, create=False).outputs().items()}
    except Exception as e:  # noqa: BLE001 - automation errors carry the CLI's stderr; show its last line
        fail(f"reading the outputs of stack {stack}: {_one_line(e)}", 1)
    if not _rollout(cfg, stack, outputs, timeout):
        raise typer.Exit(1)
    if not wait_ready(cfg, outputs, timeout):
        raise typer.Exit(1)


def down_cmd(
    stack: StackOpt,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Destroy every resource of the stack (`pulumi destroy` through the Automation API)."""
    _cli_or_fail()
    args = _args_or_fail(stack, [])
    if not yes and not typer.confirm(f"Destroy every resource of stack {stack}?"):
        raise typer.Exit(1)
    try:
        result = deploy.stack_down(
            deploy.open_stack(args, create=False),
            on_output=lambda line: console.print(line, highlight=False, markup=False),
        )
    except Exception as e:  # noqa: BLE001
        fail(f"pulumi destroy failed: {_one_line(e)}", 1)
    console.print(f"destroy: {result}")


def register(app: typer.Typer) -> None:
    app.command("up")(up_cmd)
    app.command("rollout")(rollout_cmd)
    app.command("down")(down_cmd)
