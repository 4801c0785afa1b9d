"""The rollout plan and its state machine: pure functions over data (no AWS, no clock).

`plan_rollout(hosts, changed)` orders the hosts of a stack into steps; `next_action(state)` says
what to do next and `advance(state, ok, detail)` records how it went. infra/rollout/ssm.py runs
the actions against SSM; tests drive the same machine with plain booleans.

Order, and why:
- Workers before the head, one replica at a time: every host of replica 0 in pipeline-stage
  order, then replica 1, ... A replica is one pipeline (pipeline parallel = its hosts), so while
  its hosts roll only that replica is down and Serve routes to the others; after its last host,
  a real completion through the app gates the next replica, so a broken image or model stops
  after one replica instead of taking them all.
- The head last. Its node script carries the Serve config, and the Serve config names what the
  workers must already have: a new model's weights on their NVMe, engine options the new
  image's vLLM understands. Applied last, the deploy it triggers finds every worker ready;
  applied first, it deploys onto workers that cannot serve it yet and takes every replica down
  at once. (A Serve-config-only change rolls the head alone, where the order is moot; an image
  change restarts the head's container, which restarts the Ray cluster: once, at the end, rather
  than before every worker rejoins it and is then restarted again.)
- Never two hosts at once, so never the head and workers at once.

A host counts as done when its apply exits 0 (a worker's apply returns only when its node is
alive in the Ray cluster again: infra/boot/node_apply.py), and, for the last host of a replica
or the head, when its gate passes: `replica` (a real completion through the app) or
`deployment` (a real completion, and the head reports the new Serve config's fingerprint as
deployed).

On the first failure: stop (the remaining hosts, the other replicas, are never touched), put
every changed role's previous script back into its parameter (a host that boots now applies
the good script), and re-apply the previous script to the hosts already rolled, the failed
host first (newest first, as an undo stack). A failed re-apply does not stop the others.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace

ROLES = ("head", "worker")
GATE_REPLICA = "replica"
GATE_DEPLOYMENT = "deployment"


class PlanError(ValueError):
    """One line: why these hosts cannot be rolled out."""


@dataclass(frozen=True)
class Host:
    role: str  # head | worker
    instance_id: str
    name: str  # the slot: "head", "worker-3"
    replica: int | None = None  # worker: the replica whose pipeline it belongs to
    stage: int = 0  # worker: its pipeline stage within that replica

    def describe(self) -> str:
        """`worker-3 i-0abc replica 1` / `head i-0def`: how every message names a host."""
        where = f" replica {self.replica}" if self.replica is not None else ""
        return f"{self.name} {self.instance_id}{where}"


def workers_by_slot(slots: Iterable[tuple[int, str]], hosts_per_replica: int) -> list[Host]:
    """Worker hosts from (slot index, instance id): slot i is stage i % PP of replica i // PP.

    This is the nominal layout (slots 0..PP-1 make replica 0): Ray's placement group picks
    the hosts of each replica at deploy time, and the stack does not pin it."""
    if hosts_per_replica < 1:
        raise PlanError(f"hosts per replica {hosts_per_replica}: allowed >= 1")
    return [
        Host("worker", iid, f"worker-{slot}", slot // hosts_per_replica, slot % hosts_per_replica)
        for slot, iid in sorted(slots)
    ]


@dataclass(frozen=True)
class Step:
    host: Host
    gate: str | None = None  # after the apply: None, GATE_REPLICA or GATE_DEPLOYMENT


def _check_hosts(hosts: Sequence[Host]) -> None:
    seen: dict[str, Host] = {}
    for h in hosts:
        if h.role not in ROLES:
            raise PlanError(f"host {h.name} {h.instance_id}: role {h.role!r}; allowed head, worker")
        if h.role == "worker" and h.replica is None:
            raise PlanError(f"host {h.name} {h.instance_id}: a worker needs its replica index")
        if h.instance_id in seen:
            raise PlanError(f"instance {h.instance_id} listed twice ({seen[h.instance_id].name}, {h.name})")
        seen[h.instance_id] = h
    heads = [h for h in hosts if h.role == "head"]
    if len(heads) > 1:
        raise PlanError(f"{len(heads)} heads ({', '.join(h.instance_id for h in heads)}); a stack has one")
    stages: dict[tuple[int | None, int], Host] = {}
    for h in hosts:
        if h.role == "worker":
            key = (h.replica, h.stage)
            if key in stages:
                raise PlanError(
                    f"hosts {stages[key].name} and {h.name} both claim replica {h.replica} stage {h.stage}"
                )
            stages[key] = h


def plan_rollout(hosts: Sequence[Host], changed: Collection[str]) -> list[Step]:
    """The ordered steps for the roles whose node script changed (see the module docstring)."""
    _check_hosts(hosts)
    bad = sorted(set(changed) - set(ROLES))
    if bad:
        raise PlanError(f"changed role {bad[0]!r}: allowed head, worker")
    steps: list[Step] = []
    if "worker" in changed:
        workers = sorted((h for h in hosts if h.role == "worker"), key=lambda h: (h.replica, h.stage))
        for i, h in enumerate(workers):
            last_of_replica = i + 1 == len(workers) or workers[i + 1].replica != h.replica
            steps.append(Step(h, GATE_REPLICA if last_of_replica else None))
    if "head" in changed:
        head = [h for h in hosts if h.role == "head"]
        if not head:
            raise PlanError("the head's node script changed but the stack has no head instance")
        steps.append(Step(head[0], GATE_DEPLOYMENT))
    elif steps:
        # Workers only: the last gate is the whole deployment's (same fingerprint, every replica).
        steps[-1] = replace(steps[-1], gate=GATE_DEPLOYMENT)
    return steps


def describe_plan(steps: Sequence[Step]) -> list[str]:
    """One line per step, for people: `1. worker-0 i-0a replica 0 -> check replica`."""
    out = []
    for n, s in enumerate(steps, 1):
        gate = f" -> check {s.gate}" if s.gate else ""
        out.append(f"{n}. {s.host.describe()}{gate}")
    return out


# ---------------------------------------------------------------- the state machine


@dataclass(frozen=True)
class Apply:
    host: Host
    version: str  # "target" (the new script) or "previous" (the rollback)


@dataclass(frozen=True)
class Check:
    gate: str
    host: Host


@dataclass(frozen=True)
class Restore:
    role: str  # put the previous script back as the parameter's newest version


@dataclass(frozen=True)
class Promote:
    roles: tuple[str, ...]  # move the good label to the target versions


@dataclass(frozen=True)
class Finished:
    outcome: str  # done | rolled-back | rollback-incomplete


Action = Apply | Check | Restore | Promote | Finished


def tail_line(text: str, limit: int = 300) -> str:
    """The end of a command's stderr as one line: its last non-empty lines joined by ` | `."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    out = ""
    for ln in reversed(lines):
        cand = f"{ln} | {out}" if out else ln
        if len(cand) > limit:
            break
        out = cand
    return out or (lines[-1][-limit:] if lines else "")


@dataclass(frozen=True)
class Failure:
    host: Host
    step: str  # apply | replica check | deployment check
    detail: str

    def line(self) -> str:
        return f"{self.host.describe()}: {self.step} failed: {self.detail or 'no output'}"


@dataclass(frozen=True)
class State:
    steps: tuple[Step, ...]
    roles: tuple[str, ...]  # the changed roles
    phase: str = "roll"  # roll | promote | restore | undo | finished
    pos: int = 0
    checking: bool = False  # the current host's apply passed; its gate is next
    rolled: tuple[Host, ...] = ()  # hosts sent the target script, in order
    failure: Failure | None = None
    restore: tuple[str, ...] = ()
    undo: tuple[Host, ...] = ()
    rollback_errors: tuple[str, ...] = ()
    outcome: str | None = None
    log: tuple[str, ...] = field(default=())  # what happened, one line per action


def start(steps: Sequence[Step]) -> State:
    roles = tuple(r for r in ROLES if any(s.host.role == r for s in steps))
    st = State(tuple(steps), roles)
    return st if steps else replace(st, phase="finished", outcome="done")


def next_action(st: State) -> Action:
    if st.phase == "roll":
        if st.pos >= len(st.steps):
            return Promote(st.roles)
        step = st.steps[st.pos]
        if st.checking and step.gate:
            return Check(step.gate, step.host)
        return Apply(step.host, "target")
    if st.phase == "promote":
        return Promote(st.roles)
    if st.phase == "restore":
        return Restore(st.restore[0])
    if st.phase == "undo":
        return Apply(st.undo[0], "previous")
    return Finished(st.outcome or "done")


def _rollback(st: State, failure: Failure) -> State:
    # Every changed role's parameter goes back, touched or not: a head that reboots now would
    # otherwise apply a Serve config for workers that were rolled back.
    return replace(
        st,
        phase="restore" if st.roles else "undo",
        failure=failure,
        restore=st.roles,
        undo=tuple(reversed(st.rolled)),
        log=(*st.log, f"failed: {failure.line()}"),
    )


def _next_rollback_phase(st: State) -> State:
    if st.restore:
        return replace(st, phase="restore")
    if st.undo:
        return replace(st, phase="undo")
    return replace(
        st, phase="finished", outcome="rollback-incomplete" if st.rollback_errors else "rolled-back"
    )


def advance(st: State, ok: bool, detail: str = "") -> State:
    """The state after the action `next_action(st)` ran: ok, or failed with `detail` (one line)."""
    action = next_action(st)
    if isinstance(action, Finished):
        return st
    if isinstance(action, Apply) and action.version == "target":
        step = st.steps[st.pos]
        st = replace(st, rolled=(*st.rolled, step.host))  # even a failed apply may have changed it
        if not ok:
            return _rollback(st, Failure(step.host, "apply", detail))
        st = replace(st, log=(*st.log, f"applied: {step.host.describe()}"))
        return replace(st, checking=True) if step.gate else replace(st, pos=st.pos + 1)
    if isinstance(action, Check):
        if not ok:
            return _rollback(st, Failure(action.host, f"{action.gate} check", detail))
        st = replace(st, log=(*st.log, f"{action.gate} check passed after {action.host.describe()}"))
        return replace(st, checking=False, pos=st.pos + 1)
    if isinstance(action, Promote):
        if not ok:
            # Every host runs the new scripts and passed its gate; only the record failed.
            return replace(st, phase="finished", outcome="done", log=(*st.log, f"label not moved: {detail}"))
        return replace(
            st, phase="finished", outcome="done", log=(*st.log, "promoted: " + ", ".join(st.roles))
        )
    if isinstance(action, Restore):
        errors = (
            st.rollback_errors if ok else (*st.rollback_errors, f"restore {action.role} parameter: {detail}")
        )
        st = replace(
            st, restore=st.restore[1:], rollback_errors=errors, log=(*st.log, f"restored: {action.role}")
        )
        return _next_rollback_phase(st)
    # Apply previous (the rollback)
    host = st.undo[0]
    errors = st.rollback_errors if ok else (*st.rollback_errors, f"re-apply on {host.describe()}: {detail}")
    st = replace(
        st, undo=st.undo[1:], rollback_errors=errors, log=(*st.log, f"re-applied previous: {host.describe()}")
    )
    return _next_rollback_phase(st)
