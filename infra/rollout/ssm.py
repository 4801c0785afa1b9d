"""Run a rollout plan (infra/rollout/plan.py) against SSM: the thin side-effect layer.

Versions. `pulumi up` writes each role's node script as a new version of its parameter
(`/llmfleet/<stack>/node/head|worker`, infra/components/node_config.py); that newest version is
the rollout's *target*. The label `llmfleet-good` marks the version every host of the role runs
and passed its gates with; it moves to the target only after the whole rollout succeeded. Each
host is told exactly which version to apply (`llmfleet-apply NAME:VERSION rollout`: GetParameter
takes the `name:version` selector), so a rollback re-applies the good version by number.

Why the label is not what hosts read at boot: the boot path (user data -> `llmfleet-apply NAME
boot`) reads the newest version, and changing it to `NAME:llmfleet-good` would change every
host's user data, which replaces every host (a cold start, weights downloaded again). So on a
failure the rollback also puts the good script back as the newest version (`put_parameter`,
labelled good): a host that boots or is replaced after a failed rollout applies the good
script, not the one that failed. The next `llmfleet up` refreshes Pulumi's view of the
parameters (`pulumi up --refresh`), sees the restored value and writes the target again.

The gates (a real completion through the app; the head's deployed Serve-config fingerprint)
are injected: `check(gate, host) -> (ok, detail)`, infra/deploy.py's readiness over SSM in real
use, a fake in tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from infra.boot.node_apply import APPLY_TIMEOUT_S, rollout_command
from infra.rollout import plan as p

GOOD_LABEL = "llmfleet-good"


class RolloutBusy(p.PlanError):
    """Another rollout of this stack holds the lock."""


ROLLBACK_MARK = "llmfleet rollback:"


def rollback_description(v: RoleVersions) -> str:
    return f"{ROLLBACK_MARK} version {v.target} failed its rollout; this restores version {v.good}"


def lock_name(stack: str) -> str:
    return f"/llmfleet/{stack}/rollout-lock"


@contextmanager
def rollout_lock(ssm: Any, stack: str, owner: str, now: Callable[[], float] = time.time) -> Iterator[None]:
    """One rollout per stack at a time (Pulumi's own lock ends with `pulumi up`; two operators'
    rollouts would interleave hosts): an SSM parameter created only if absent, deleted at the end.
    A rollout that died leaves it behind; the error says how to clear it."""
    name = lock_name(stack)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now()))
    try:
        ssm.put_parameter(Name=name, Value=f"{owner} since {started}", Type="String", Overwrite=False)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") != "ParameterAlreadyExists":
            raise
        held = ssm.get_parameter(Name=name)["Parameter"]["Value"]
        raise RolloutBusy(
            f"stack {stack}: another rollout holds {name} ({held}); if it died, "
            f"`aws ssm delete-parameter --name {name}` and retry"
        ) from None
    try:
        yield
    finally:
        ssm.delete_parameter(Name=name)


TERMINAL = {"Success", "Failed", "Cancelled", "TimedOut", "Cancelling", "Undeliverable", "Terminated"}


@dataclass(frozen=True)
class RoleVersions:
    role: str
    name: str  # the parameter
    target: int  # the newest version (what `pulumi up` wrote)
    good: int | None  # the version the hosts run (labelled), or None: nothing to roll back to
    changed: bool  # the target's script differs from the good one
    tier: str = "Advanced"


def _history(ssm: Any, name: str) -> list[dict]:
    out: list[dict] = []
    for page in ssm.get_paginator("get_parameter_history").paginate(Name=name):
        out.extend(page.get("Parameters", []))
    return sorted(out, key=lambda h: h["Version"])


def role_versions(ssm: Any, role: str, name: str) -> RoleVersions:
    """Target and good version of one role's parameter, from its history and labels.

    No label yet (a stack that predates the label, or its first rollout): the newest earlier
    version with another script is taken as what the hosts run; a parameter with one version
    has nothing to roll (every host booted from it)."""
    hist = _history(ssm, name)
    if not hist:
        raise p.PlanError(f"parameter {name}: no versions (has `pulumi up` run?)")
    newest = hist[-1]
    good = next((h for h in reversed(hist) if GOOD_LABEL in (h.get("Labels") or [])), None)
    if good is None:
        good = next((h for h in reversed(hist[:-1]) if h["Value"] != newest["Value"]), None)
    changed = good is not None and good["Value"] != newest["Value"]
    return RoleVersions(
        role,
        name,
        newest["Version"],
        good["Version"] if good else None,
        changed,
        newest.get("Tier") or "Advanced",
    )


@dataclass(frozen=True)
class RolloutResult:
    outcome: str  # done | rolled-back | rollback-incomplete
    steps: tuple[p.Step, ...]
    failure: p.Failure | None
    rollback_errors: tuple[str, ...]
    log: tuple[str, ...]
    after_rollback: str = ""  # whether the previous deployment answers again

    @property
    def ok(self) -> bool:
        return self.outcome == "done"

    def line(self) -> str:
        if self.ok:
            return (
                f"rollout done: {len(self.steps)} host(s) in order"
                if self.steps
                else "rollout: nothing to roll"
            )
        msg = f"rollout stopped at {self.failure.line()}" if self.failure else "rollout stopped"
        after = f" ({self.after_rollback})" if self.after_rollback else ""
        if self.outcome == "rolled-back":
            return f"{msg}; rolled back to the previous node scripts{after}"
        return f"{msg}; rollback incomplete: {'; '.join(self.rollback_errors)}{after}"


def _aws_error(e: Exception) -> str:
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return f"{err.get('Code')}: {err.get('Message', '')}".strip()
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class SsmRunner:
    """Runs one host's apply (send_command + get_command_invocation polling) and the parameter
    writes of a rollback. Every wait takes the injected clock and sleeper."""

    def __init__(
        self,
        ssm: Any,
        *,
        apply_timeout_s: float = APPLY_TIMEOUT_S,
        poll_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.ssm = ssm
        self.apply_timeout_s = apply_timeout_s
        self.poll_s = poll_s
        self.clock = clock
        self.sleep = sleep

    def run(
        self, instance_id: str, commands: list[str], comment: str, timeout_s: float
    ) -> tuple[bool, str, str]:
        """Run shell lines on one instance and wait for the end: (ok, one-line why not, stdout)."""
        try:
            cmd = self.ssm.send_command(
                InstanceIds=[instance_id],
                DocumentName="AWS-RunShellScript",
                Comment=comment[:100],
                Parameters={"commands": commands, "executionTimeout": [str(int(timeout_s))]},
                TimeoutSeconds=600,  # to be delivered; the run itself has executionTimeout
            )["Command"]
        except (ClientError, BotoCoreError) as e:
            return False, f"send_command: {_aws_error(e)}", ""
        deadline = self.clock() + timeout_s
        while True:
            try:
                inv = self.ssm.get_command_invocation(CommandId=cmd["CommandId"], InstanceId=instance_id)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") != "InvocationDoesNotExist":
                    # A failed step, not a crash: the rollout must still roll back.
                    return False, f"get_command_invocation: {_aws_error(e)}", ""
                inv = {"Status": "Pending"}  # eventual consistency right after send_command
            except BotoCoreError as e:
                return False, f"get_command_invocation: {_aws_error(e)}", ""
            status = inv.get("Status", "")
            stdout = inv.get("StandardOutputContent", "") or ""
            if status == "Success":
                return True, "", stdout
            if status in TERMINAL:
                tail = p.tail_line(inv.get("StandardErrorContent", "")) or p.tail_line(stdout)
                code = inv.get("ResponseCode")
                return False, f"{status} (exit {code}): {tail}" if tail else f"{status} (exit {code})", stdout
            if self.clock() >= deadline:
                return False, f"still {status or 'pending'} after {timeout_s:.0f} s", stdout
            self.sleep(self.poll_s)

    def apply(self, host: p.Host, parameter: str, version: int) -> tuple[bool, str]:
        """Run `llmfleet-apply NAME:VERSION rollout` on one instance; (ok, one-line why not)."""
        ok, detail, _ = self.run(
            host.instance_id,
            [rollout_command(parameter, version)],
            f"llmfleet rollout {parameter}:{version}",
            self.apply_timeout_s,
        )
        return ok, detail

    def restore(self, v: RoleVersions) -> int:
        """Put the good version's script back as the newest version, labelled good; its number."""
        value = self.ssm.get_parameter(Name=f"{v.name}:{v.good}")["Parameter"]["Value"]
        # The description records the rollback in the parameter's history: `llmfleet status`
        # reads the last rollout's result from it (a promoted target looks the same otherwise).
        new = self.ssm.put_parameter(
            Name=v.name, Value=value, Overwrite=True, Tier=v.tier, Description=rollback_description(v)
        )["Version"]
        self.ssm.label_parameter_version(Name=v.name, ParameterVersion=new, Labels=[GOOD_LABEL])
        return new

    def promote(self, v: RoleVersions) -> None:
        self.ssm.label_parameter_version(Name=v.name, ParameterVersion=v.target, Labels=[GOOD_LABEL])


def run_rollout(
    runner: SsmRunner,
    hosts: Sequence[p.Host],
    versions: Mapping[str, RoleVersions],
    check: Callable[[str, p.Host], tuple[bool, str]],
    log: Callable[[str], None] = lambda line: None,
) -> RolloutResult:
    """Plan the changed roles' hosts, then drive the state machine to its end."""
    changed = [r for r, v in versions.items() if v.changed]
    steps = p.plan_rollout(hosts, changed)
    for line in p.describe_plan(steps):
        log(f"plan: {line}")
    st = p.start(steps)
    while True:
        action = p.next_action(st)
        if isinstance(action, p.Finished):
            break
        if isinstance(action, p.Apply):
            v = versions[action.host.role]
            version = v.target if action.version == "target" else v.good
            assert version is not None  # a changed role has a good version
            log(
                f"{'apply' if action.version == 'target' else 'rollback'}: {action.host.describe()} <- {v.name}:{version}"
            )
            ok, detail = runner.apply(action.host, v.name, version)
        elif isinstance(action, p.Check):
            log(f"check {action.gate}: after {action.host.describe()}")
            ok, detail = check(action.gate, action.host)
        elif isinstance(action, p.Restore):
            try:
                new = runner.restore(versions[action.role])
                ok, detail = True, ""
                log(f"restored {versions[action.role].name} as version {new}")
            except (ClientError, BotoCoreError) as e:
                ok, detail = False, _aws_error(e)
        else:  # Promote: every changed role moves its good label to the target
            try:
                for role in action.roles:
                    runner.promote(versions[role])
                ok, detail = True, ""
            except (ClientError, BotoCoreError) as e:
                ok, detail = False, _aws_error(e)
        failed_before = st.failure
        st = p.advance(st, ok, detail)
        if st.failure and not failed_before:
            # Say it now: the rollback that follows may take as long as the rollout did.
            log(f"stopped: {st.failure.line()}; rolling back")
    result = RolloutResult(st.outcome or "done", st.steps, st.failure, st.rollback_errors, st.log)
    if st.failure:
        # Does the previous deployment answer again? (The same gate, without the new fingerprint.)
        ok, detail = check(p.GATE_REPLICA, st.failure.host)
        after = (
            "the previous deployment answers again"
            if ok
            else f"the previous deployment does not answer: {detail}"
        )
        log(f"after the rollback: {after}")
        result = replace(result, after_rollback=after)
    return result
