"""Write tests/data/up_preview_events_prod.jsonl: the engine events of `pulumi preview --refresh
--policy-pack policy/` on prod when its workers move from g6e.48xlarge to p5.48xlarge.

There is no Pulumi CLI or AWS account here, so the stream is built from two offline captures of
the real program (the deployed config and the new one), one JSON object per line in the engine's
own event format (sdk/go/common/apitype/events.go, what `pulumi preview --event-log` writes and
the Automation API parses with `EngineEvent.from_json`): a preludeEvent, a resourcePreEvent and a
resOutputsEvent per step (`planning: true`; metadata op/urn/type/provider/old/new/keys/diffs/
detailedDiff with diffKind/inputDiff), a policyEvent per violation the real policy pack finds on
the new capture, a summaryEvent and the closing cancelEvent. Steps, ops and states follow
tests/data/make_preview_update.py (the same provider rules: a launch template change is a new
version, a group follows it with an unknown version and is replaced only when it moves subnet).

What the update does: the worker launch template gets a new version (instanceType,
networkInterfaces: EFA cards per type), so each remaining worker group's instance is replaced by
instance refresh; the plan needs 2 H100 hosts instead of 3 L40S ones, so worker slot 2 and its
alarm go; the node scripts change (the head's Serve config: TP/PP). maxMonthlyUsd is raised to
90000 so the pack's budget check passes (its advisory findings stay).

    PYTHONPATH=. python tests/data/make_up_preview_events.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from infra.program.offline import capture, redacted_config  # noqa: E402
from policy.runner import run_policies, stack_policy_config  # noqa: E402
from tests.data.make_preview_update import (  # noqa: E402
    PROVIDERS,
    REPLACE_KEYS_BY_TYPE,
    TEMPLATE,
    UNKNOWN,
    detailed,
    provider_ref,
    state,
    unknowns,
    urn,
)

STACK, PROJECT = "prod", "llmfleet"
OLD: list[str] = []
NEW = ["llmfleet:gpuInstanceType=p5.48xlarge", "llmfleet:maxMonthlyUsd=90000"]
OUT = ROOT / "tests" / "data" / "up_preview_events_prod.jsonl"
T0 = 1796594400  # 2026-12-06T21:20:00Z
PACK = ("llmfleet", "0.1.0")


def event_state(s: dict[str, Any] | None) -> dict[str, Any] | None:
    """apitype.StepEventStateMetadata from a ResourceV3-like state."""
    if s is None:
        return None
    out = {
        "type": s["type"],
        "urn": s["urn"],
        "custom": s.get("custom", False),
        "id": s.get("id", ""),
        "parent": s.get("parent", ""),
        "provider": s.get("provider", ""),
        "inputs": s.get("inputs") or {},
        "outputs": s.get("outputs") or {},
    }
    return out


def event_diff(d: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
    # the display's PropertyDiff says "kind"; the engine event's says "diffKind"
    return {k: {"diffKind": v["kind"], "inputDiff": True} for k, v in d.items()} if d else None


def steps(old, new) -> list[dict[str, Any]]:
    parents: dict[str, str] = {}
    for cap in (old, new):
        by_name = {r["name"]: r["urn"] for r in cap.resources if not r["custom"]}
        for r in cap.resources:
            if r["parent"]:
                parents[r["urn"]] = by_name.get(r["parent"], "")
    old_by = {r["urn"]: r for r in old.resources}
    new_by = {r["urn"]: r for r in new.resources}
    stack_urn = urn(f"pulumi:pulumi:Stack::{PROJECT}-{STACK}")

    def stack_state(outputs):
        return {
            "urn": stack_urn,
            "custom": False,
            "type": "pulumi:pulumi:Stack",
            "outputs": unknowns(outputs),
        }

    out: list[dict[str, Any]] = [
        {"op": "same", "urn": stack_urn, "type": "pulumi:pulumi:Stack",
         "old": stack_state(old.outputs), "new": stack_state(new.outputs)}
    ]  # fmt: skip
    for pkg, (pname, pid, version) in PROVIDERS.items():
        purn = urn(f"pulumi:providers:{pkg}::{pname}")
        inputs = {"region": "us-east-1", "version": version} if pkg == "aws" else {"version": version}
        ps = {"urn": purn, "custom": True, "id": pid, "type": f"pulumi:providers:{pkg}", "inputs": inputs,
              "outputs": inputs, "parent": stack_urn}  # fmt: skip
        out.append({"op": "same", "urn": purn, "type": ps["type"], "old": ps, "new": ps})
    changed_templates = {  # by the template's name, which the groups' launchTemplate carries
        r["inputs"].get("name")
        for u, r in new_by.items()
        if r["type"] == TEMPLATE and u in old_by and old_by[u]["inputs"] != r["inputs"]
    }
    for u, rec in new_by.items():
        before = old_by.get(u)
        base = {"urn": u, "type": rec["type"], "provider": provider_ref(rec["type"]) if rec["custom"] else ""}
        if before is None:
            new_state = state(rec, parents, outputs={**rec["inputs"], "id": UNKNOWN}, rid="")
            out.append({**base, "op": "create", "new": new_state})
            continue
        changed = sorted(
            k
            for k in set(before["inputs"]) | set(rec["inputs"])
            if before["inputs"].get(k) != rec["inputs"].get(k)
        )
        if (
            rec["type"] == "aws:autoscaling/group:Group"
            and rec["inputs"]["launchTemplate"].get("name") in changed_templates
        ):
            lt = {**rec["inputs"]["launchTemplate"], "version": UNKNOWN}  # the new latestVersion: computed
            rec = {**rec, "inputs": {**rec["inputs"], "launchTemplate": lt}}
            changed = sorted({*changed, "launchTemplate"})
        replace_keys = sorted(set(changed) & REPLACE_KEYS_BY_TYPE.get(rec["type"], set()))
        old_state = state(before, parents)
        if not changed:
            out.append({**base, "op": "same", "old": old_state, "new": old_state})
        elif replace_keys:
            computed = {k: UNKNOWN for k in before["outputs"] if k not in rec["inputs"]}
            new_state = state(rec, parents, outputs={**rec["inputs"], **computed}, rid="")
            diff = detailed(before["inputs"], rec["inputs"], "", False) | {
                k: {"kind": "update-replace"} for k in replace_keys
            }
            rep = {"old": old_state, "new": new_state, "keys": replace_keys, "diffs": changed,
                   "detailedDiff": event_diff(diff)}  # fmt: skip
            # the groups are delete-before-replace (fixed names): delete-replaced, replace, create-replacement
            for op in ("delete-replaced", "replace", "create-replacement"):
                out.append({**base, "op": op, **rep})
        else:
            new_state = state(rec, parents, outputs={**before["outputs"], **rec["inputs"]})
            diff = detailed(before["inputs"], rec["inputs"], "", False)
            out.append({**base, "op": "update", "old": old_state, "new": new_state, "diffs": changed,
                        "detailedDiff": event_diff(diff)})  # fmt: skip
    for u in reversed(list(old_by)):  # deletes run last, dependents first
        if u not in new_by:
            rec = old_by[u]
            out.append({"op": "delete", "urn": u, "type": rec["type"], "provider": provider_ref(rec["type"]),
                        "old": state(rec, parents)})  # fmt: skip
    for s in out:
        s["old"], s["new"] = event_state(s.get("old")), event_state(s.get("new"))
        for k in ("old", "new", "keys", "diffs", "detailedDiff"):
            if s.get(k) is None:
                s.pop(k, None)
    return out


def main() -> None:
    old = capture(STACK, OLD)
    new = capture(STACK, NEW)
    events: list[dict[str, Any]] = []

    def emit(**kind: Any) -> None:
        events.append({"sequence": len(events), "timestamp": T0 + len(events) // 8, **kind})

    secret_keys = {k for k in new.raw_config if k == "llmfleet:sshPrivateKey"}
    emit(preludeEvent={"config": redacted_config(new.raw_config, secret_keys)})
    counts: dict[str, int] = {}
    for s in steps(old, new):
        emit(resourcePreEvent={"metadata": s, "planning": True})
        emit(resOutputsEvent={"metadata": s, "planning": True})
        if s["op"] not in ("delete-replaced", "create-replacement"):
            counts[s["op"]] = counts.get(s["op"], 0) + 1
    report = run_policies(new.resources, stack_policy_config(new.config), stack=new.config)
    by_name = {r["name"]: r["urn"] for r in new.resources}
    for v in report.violations:
        emit(policyEvent={
            "resourceUrn": by_name.get(v.resource, "") if v.resource else "",
            "message": v.message, "color": "never", "policyName": v.policy,
            "policyPackName": PACK[0], "policyPackVersion": PACK[1], "policyPackVersionTag": PACK[1],
            "enforcementLevel": v.enforcement,
        })  # fmt: skip
    emit(summaryEvent={"maybeCorrupt": False, "durationSeconds": 23, "resourceChanges": counts,
                       "PolicyPacks": {PACK[0]: f"v{PACK[1]}"}})  # fmt: skip
    emit(cancelEvent={})
    OUT.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in events))
    print(OUT, counts, f"{report.mandatory} mandatory, {report.advisory} advisory")


if __name__ == "__main__":
    main()
