"""What `llmfleet up` shows before it asks: the preview's change per resource, read from the
Automation API's engine events; the hosts it replaces and the changes that restart serving;
the policy pack's verdict; and the resource states on both sides, which `cost --from-preview`'s
pricing reads (infra/cost/preview.py).

Pure: engine events in (`pulumi.automation.events.EngineEvent`, which is what
`stack.preview(on_event=...)` hands over and what `EngineEvent.from_json` makes of a recorded
`--event-log` line), plain data out. Which change replaces a host is infra/components/
host_updates.py's table; what a node-script change restarts is infra/boot/rollout_effects.py
on the scripts before and after. Rendering is infra/commands/_up_preview.py.
"""

from __future__ import annotations

import binascii
import gzip
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from infra.boot import rollout_effects
from infra.boot.node_apply import unpack_script
from infra.components.host_updates import GROUP_FIELDS, LAUNCH_TEMPLATE_FIELDS, REPLACE
from infra.cost.model import is_known
from infra.deploy import CHANGE_KINDS, PolicyEvents, PolicyViolation
from infra.worker_groups import GROUP, INSTANCE, LAUNCH_TEMPLATE, group_tags

PARAMETER = "aws:ssm/parameter:Parameter"
STACK_TYPE = "pulumi:pulumi:Stack"
# The engine's steps of one replacement (create-before-delete or delete-before-replace): one change.
_REPLACE_STEPS = ("replace", "create-replacement", "delete-replaced")
# Steps that change nothing (or only Pulumi's view of it): not shown, but their states are priced.
_NO_CHANGE = (
    "same",
    "read",
    "refresh",
    "read-replacement",
    "discard",
    "discard-replaced",
    "remove-pending-replace",
)
# What a rollout may touch on a host and still leave serving up: the metrics agents only. A new
# node container, new weights, a new serve.yaml or deploy watcher, or a dockerd restart each
# restart the engine replicas (infra/components/host_updates.py's CHANGE_EFFECTS).
_KEEPS_SERVING = {rollout_effects.AGENTS}
HOST_WORDS = {"worker": "GPU host", "head": "head host"}


@dataclass(frozen=True)
class Change:
    """One resource's change, as the preview reports it (a replacement's steps are one change)."""

    op: str  # create / update / replace / delete / import
    urn: str
    type: str
    name: str
    parent: str  # the parent's URN ("" for the stack's own children)
    diffs: tuple[str, ...] = ()
    replace_keys: tuple[str, ...] = ()  # the properties that force the replacement
    detailed: Mapping[str, str] = field(default_factory=dict)  # property path -> diff kind

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "urn": self.urn,
            "type": self.type,
            "name": self.name,
            "diffs": list(self.diffs),
            "replaceKeys": list(self.replace_keys),
            "detailedDiff": dict(self.detailed),
        }


@dataclass(frozen=True)
class Callout:
    """A change worth its own line: a host replaced / added / removed, serving restarted."""

    kind: str  # replaces-host / adds-host / removes-host / restarts-serving / rollout
    resource: str  # the group's or the node-script parameter's logical name
    line: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "resource": self.resource, "line": self.line}


def _name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def _op(step: Any) -> str:
    return str(getattr(step.op, "value", step.op))


def _state(s: Any) -> dict[str, Any] | None:
    """A StepEventStateMetadata as the resource shape `cost --from-preview` reads."""
    if s is None:
        return None
    return {
        "type": s.type,
        "urn": s.urn,
        "parent": s.parent or None,
        "custom": bool(s.custom) if s.custom is not None else True,
        "inputs": dict(s.inputs or {}),
        "outputs": dict(s.outputs or {}),
    }


@dataclass
class PreviewEvents:
    """An `on_event` callback for `stack.preview`: keeps every step's metadata, the policy
    pack's verdicts and the engine's summary."""

    steps: list[Any] = field(default_factory=list)  # StepEventMetadata, in the engine's order
    policy: PolicyEvents = field(default_factory=PolicyEvents)
    summary: dict[str, int] | None = None
    errors: list[str] = field(default_factory=list)

    def __call__(self, event: Any) -> None:
        self.policy(event)
        pre = getattr(event, "resource_pre_event", None)
        if pre is not None:
            self.steps.append(pre.metadata)
        summary = getattr(event, "summary_event", None)
        if summary is not None:
            self.summary = {str(getattr(k, "value", k)): int(n) for k, n in summary.resource_changes.items()}
        diag = getattr(event, "diagnostic_event", None)
        if diag is not None and diag.severity == "error" and diag.message.strip():
            self.errors.append(diag.message.strip().splitlines()[-1])


def changes(steps: Iterable[Any]) -> list[Change]:
    """One Change per changed URN, in the engine's order; sames, reads and refreshes left out."""
    out: dict[str, Change] = {}
    for m in steps:
        op = _op(m)
        if op in _NO_CHANGE:
            continue
        if op in _REPLACE_STEPS:
            op = "replace"
        prev = out.get(m.urn)
        state = m.new or m.old
        keys = tuple(m.keys or ()) if op == "replace" else ()
        change = Change(
            op=op,
            urn=m.urn,
            type=m.type or (state.type if state else ""),
            name=_name(m.urn),
            parent=(state.parent if state else "") or "",
            diffs=tuple(m.diffs or ()),
            replace_keys=keys,
            detailed={
                k: str(getattr(v.diff_kind, "value", v.diff_kind)) for k, v in (m.detailed_diff or {}).items()
            },
        )
        if prev is None:
            out[m.urn] = change
        elif op == "replace":  # the replacement's other steps: keep what any of them says
            out[m.urn] = Change(
                "replace",
                m.urn,
                prev.type,
                prev.name,
                prev.parent or change.parent,
                prev.diffs or change.diffs,
                prev.replace_keys or change.replace_keys,
                prev.detailed or change.detailed,
            )
    return list(out.values())


def counts(found: Iterable[Change]) -> dict[str, int]:
    """create / update / replace / delete counts, in `pulumi up`'s order."""
    out: dict[str, int] = dict.fromkeys(CHANGE_KINDS, 0)
    for c in found:
        if c.op in out:
            out[c.op] += 1
    return out


def _states(steps: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Every resource's state after the update where it has one, else before (each URN once)."""
    out: dict[str, dict[str, Any]] = {}
    for m in steps:
        s = _state(m.new) or _state(m.old)
        if s is not None and (m.urn not in out or m.new is not None):
            out[m.urn] = s
    return out


def _role(group_inputs: Mapping[str, Any]) -> str:
    return str(group_tags(group_inputs).get("llmfleet:role", ""))


def _host(role: str) -> str:
    return HOST_WORDS.get(role, "host")


def _aws_name(state: Mapping[str, Any]) -> str:
    name = (state.get("inputs") or {}).get("name")
    return f" ({name})" if is_known(name) and name else ""


def host_callouts(found: list[Change], steps: list[Any]) -> list[Callout]:
    """The hosts the update replaces, adds or removes, and the property behind each replacement
    (host_updates.py: every launch-template field replaces the instances that launch from it)."""
    states = _states(steps)
    by_urn = {c.urn: c for c in found}
    groups = {u: s for u, s in states.items() if s["type"] == GROUP}
    out: list[Callout] = []
    seen: set[str] = set()

    def replaced(group_urn: str, why: str) -> None:
        if group_urn in seen:
            return
        seen.add(group_urn)
        s = groups[group_urn]
        host = _host(_role(s["inputs"]))
        out.append(
            Callout(
                "replaces-host", _name(group_urn), f"replaces {host} {_name(group_urn)}{_aws_name(s)}: {why}"
            )
        )

    for c in found:
        if c.type == LAUNCH_TEMPLATE and c.op in ("update", "replace"):
            fields = [
                k
                for k in (c.diffs or tuple(c.detailed))
                if k.split(".")[0].split("[")[0] in LAUNCH_TEMPLATE_FIELDS
            ]
            if not fields:
                continue
            top = fields[0].split(".")[0].split("[")[0]
            template = (states.get(c.urn, {}).get("inputs") or {}).get("name")
            why = (
                f"launch template {c.name} changes {', '.join(fields)} ({LAUNCH_TEMPLATE_FIELDS[top]}); "
                "instance refresh replaces the instance"
            )
            for u, s in groups.items():
                lt = (
                    (s["inputs"].get("launchTemplate") or {})
                    if isinstance(s["inputs"].get("launchTemplate"), Mapping)
                    else {}
                )
                g = by_urn.get(u)
                if lt.get("name") == template and (g is None or g.op in ("update", "replace")):
                    replaced(u, why)
    for c in found:
        if c.type == GROUP:
            role = _role(states.get(c.urn, {}).get("inputs") or {})
            if c.op == "replace":
                keys = list(c.replace_keys) or list(c.diffs)
                reason = "; ".join(GROUP_FIELDS[k][1] for k in keys if k in GROUP_FIELDS)
                replaced(
                    c.urn,
                    f"the group is replaced on {', '.join(keys) or 'a provider rule'}"
                    + (f" ({reason})" if reason else ""),
                )
            elif c.op == "update" and any(GROUP_FIELDS.get(k, ("", ""))[0] == REPLACE for k in c.diffs):
                keys = [k for k in c.diffs if GROUP_FIELDS.get(k, ("", ""))[0] == REPLACE]
                replaced(c.urn, f"the group changes {', '.join(keys)} ({GROUP_FIELDS[keys[0]][1]})")
            elif c.op == "create":
                out.append(
                    Callout(
                        "adds-host", c.name, f"adds {_host(role)} {c.name}{_aws_name(states.get(c.urn, {}))}"
                    )
                )
            elif c.op == "delete":
                out.append(
                    Callout(
                        "removes-host",
                        c.name,
                        f"removes {_host(role)} {c.name}{_aws_name(states.get(c.urn, {}))}",
                    )
                )
        elif c.type == INSTANCE and c.op == "replace":
            keys = ", ".join(c.replace_keys or c.diffs) or "a provider rule"
            out.append(
                Callout(
                    "replaces-host", c.name, f"replaces host {c.name}: the instance is replaced on {keys}"
                )
            )
    return out


def _script(value: Any) -> str | None:
    if not is_known(value) or not isinstance(value, str):
        return None
    try:
        return unpack_script(value)
    except (binascii.Error, gzip.BadGzipFile, EOFError, OSError, UnicodeDecodeError):
        return None


def serving_callouts(steps: list[Any]) -> list[Callout]:
    """A node script (one SSM parameter per role) that changes: what the rollout after `up`
    restarts on that role's hosts, from the scripts before and after (rollout_effects.py)."""
    out: list[Callout] = []
    for m in steps:
        if _op(m) != "update" or m.type != PARAMETER or not m.old or not m.new:
            continue
        role = str(((m.new.inputs or {}).get("tags") or {}).get("llmfleet:role", ""))
        if role not in HOST_WORDS or "insecureValue" not in (m.diffs or ()):
            continue
        name = _name(m.urn)
        before, after = (
            _script((m.old.inputs or {}).get("insecureValue")),
            _script((m.new.inputs or {}).get("insecureValue")),
        )
        if before is None or after is None:
            out.append(
                Callout(
                    "restarts-serving",
                    name,
                    f"may restart serving: the {role} node script ({name}) changes and part of it is known "
                    "only during up; the rollout restarts what differs",
                )
            )
            continue
        touched = rollout_effects.rollout_touches(before, after, role)
        if not touched:
            continue
        what = ", ".join(sorted(touched))
        if touched - _KEEPS_SERVING:
            line = f"restarts serving: the rollout changes the {role} node script ({name}): {role}: {what}"
            out.append(Callout("restarts-serving", name, line))
        else:
            out.append(
                Callout(
                    "rollout", name, f"the rollout restarts {what} on the {role} hosts; serving keeps running"
                )
            )
    return out


def preview_document(steps: Iterable[Any]) -> dict[str, Any]:
    """The steps as a `pulumi preview --json` document's (op, urn, oldState, newState), the shape
    `cost --from-preview` prices: past from oldState, new from newState. Refresh steps only
    re-read what the update's own steps carry again."""
    return {
        "steps": [
            {"op": _op(m), "urn": m.urn, "oldState": _state(m.old), "newState": _state(m.new)}
            for m in steps
            if _op(m) != "refresh"
        ]
    }


def stack_outputs_before(steps: Iterable[Any]) -> dict[str, Any]:
    """The stack's outputs as deployed: the root stack resource's old state."""
    for m in steps:
        if m.type == STACK_TYPE and m.old is not None:
            return dict(m.old.outputs or {})
    return {}


def worker_type_before(steps: Iterable[Any]) -> str | None:
    """The deployed GPU workers' instance type: the old state of the template the workers' groups
    launch from."""
    steps = list(steps)
    old = {m.urn: _state(m.old) for m in steps if m.old is not None}
    worker_templates = {
        (
            (s["inputs"].get("launchTemplate") or {})
            if isinstance(s["inputs"].get("launchTemplate"), Mapping)
            else {}
        ).get("name")
        for s in old.values()
        if s and s["type"] == GROUP and _role(s["inputs"]) == "worker"
    }
    for s in old.values():
        if s and s["type"] == LAUNCH_TEMPLATE and s["inputs"].get("name") in worker_templates:
            t = s["inputs"].get("instanceType")
            return t if is_known(t) else None
    return None


@dataclass(frozen=True)
class Verdict:
    violations: tuple[PolicyViolation, ...]

    @property
    def mandatory(self) -> list[PolicyViolation]:
        return [v for v in self.violations if v.enforcement == "mandatory"]

    @property
    def advisory(self) -> list[PolicyViolation]:
        return [v for v in self.violations if v.enforcement != "mandatory"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mandatory": len(self.mandatory),
            "advisory": len(self.advisory),
            "violations": [
                {
                    "policy": v.policy,
                    "resource": v.resource,
                    "enforcement": v.enforcement,
                    "message": v.message,
                }
                for v in self.violations
            ],
        }


@dataclass(frozen=True)
class UpPreview:
    """Everything `up` shows before it asks, minus the price (priced by the command layer)."""

    stack: str
    changes: list[Change]
    callouts: list[Callout]
    verdict: Verdict
    counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "counts": self.counts,
            "changes": [c.to_dict() for c in self.changes],
            "callouts": [c.to_dict() for c in self.callouts],
            "policy": self.verdict.to_dict(),
        }


def build(stack: str, events: PreviewEvents, summary: Mapping[str, int] | None = None) -> UpPreview:
    """The report; the counts are the engine's own summary of the preview when it gave one
    (`summary`: the preview result's change summary), else counted from the steps."""
    found = changes(events.steps)
    return UpPreview(
        stack=stack,
        changes=found,
        callouts=host_callouts(found, events.steps) + serving_callouts(events.steps),
        verdict=Verdict(tuple(events.policy.violations)),
        counts={k: int(summary.get(k, 0)) for k in CHANGE_KINDS} if summary else counts(found),
    )
