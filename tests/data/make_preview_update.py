"""Write tests/data/preview_update_prod.json: `pulumi preview --json --show-sames` of an update.

There is no Pulumi CLI or AWS account here, so the document is built from two offline captures
of the real program, in the shape Pulumi's JSON display writes (pkg/display/json.go: a
PreviewDigest of config, steps with op/urn/provider/oldState/newState/diffReasons/
replaceReasons/detailedDiff, diagnostics, duration in ns, changeSummary; states are
apitype.ResourceV3; secrets blinded as "[secret]", computed values of the new state as the
unknown sentinel 04da6b54-...).

The update: prod was deployed with spot workers and a NAT gateway; the new config runs the
workers on-demand with 300 GB roots and drops the NAT. The workers' launch template gets a new
version (market options and root volume) and each worker group follows it (its instance is then
replaced by instance refresh, which a preview does not show), so does the head's (its root
volume grows), the NAT gateway, its EIP, the internet gateway, public subnet and routes are
deleted, the rest is the same.

    PYTHONPATH=. python tests/data/make_preview_update.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from infra.program.offline import capture, redacted_config  # noqa: E402

UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
STACK, PROJECT = "prod", "llmfleet"
OLD = ["llmfleet:spot=true", "llmfleet:natGateway=true"]
NEW = ["llmfleet:rootVolumeGb=300"]
# package -> (default provider name, its id in the stack, version)
PROVIDERS = {
    "aws": ("default_7_51_1", "6b1e6c3f-8b3f-4f4c-9d59-3a8b0a3c5e21", "7.51.1"),
    "random": ("default_4_18_3", "0c5a2c8e-1c7e-4a52-8d34-2e3f1b6a7d90", "4.18.3"),
    "docker-build": ("default_0_0_12", "9f3e2d1c-5b4a-4c3d-8e2f-1a0b9c8d7e6f", "0.0.12"),
}
# What the provider replaces a resource on, per type (others: every change is an update). A
# launch template change is a new version; a worker group is replaced only when it moves subnet.
REPLACE_KEYS_BY_TYPE = {
    "aws:ec2/instance:Instance": {
        "instanceMarketOptions",
        "instanceType",
        "availabilityZone",
        "subnetId",
        "userData",
    },
    "aws:autoscaling/group:Group": {"vpcZoneIdentifiers"},
}
TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"


def urn(rest: str) -> str:
    return f"urn:pulumi:{STACK}::{PROJECT}::{rest}"


def provider_ref(rtype: str) -> str:
    pkg = rtype.split(":", 1)[0]
    pkg = pkg if pkg in PROVIDERS else "aws"
    name, pid, _ = PROVIDERS[pkg]
    return urn(f"pulumi:providers:{pkg}::{name}") + f"::{pid}"


def unknowns(v: Any) -> Any:
    if v == "[unknown]":
        return UNKNOWN
    if isinstance(v, dict):
        return {k: unknowns(x) for k, x in v.items()}
    if isinstance(v, list):
        return [unknowns(x) for x in v]
    return v


def state(
    rec: dict[str, Any],
    parents: dict[str, str],
    *,
    outputs: dict[str, Any] | None = None,
    rid: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"urn": rec["urn"], "custom": rec["custom"]}
    rid = rec.get("id") if rid is None else rid  # "" = not created yet: no id in the state
    if rec["custom"] and rid:
        out["id"] = rid
    out["type"] = rec["type"]
    out["inputs"] = unknowns(rec["inputs"])
    out["outputs"] = unknowns(rec["outputs"] if outputs is None else outputs)
    out["parent"] = parents.get(rec["urn"]) or urn(f"pulumi:pulumi:Stack::{PROJECT}-{STACK}")
    if rec.get("dependencies"):
        out["dependencies"] = rec["dependencies"]
    if rec["custom"]:
        out["provider"] = provider_ref(rec["type"])
    return out


def detailed(old: Any, new: Any, path: str, replace: bool) -> dict[str, dict[str, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, dict[str, Any]] = {}
        for k in sorted(set(old) | set(new)):
            out.update(detailed(old.get(k), new.get(k), f"{path}.{k}" if path else k, replace))
        return out
    if old == new:
        return {}
    kind = "add" if old is None else "delete" if new is None else "update"
    return {path: {"kind": kind + ("-replace" if replace else ""), "inputDiff": False}}


def main() -> None:
    old = capture(STACK, OLD)
    new = capture(STACK, NEW)
    parents: dict[str, str] = {}
    for cap in (old, new):
        by_name = {(r["name"]): r["urn"] for r in cap.resources if not r["custom"]}
        for r in cap.resources:
            if r["parent"]:
                parents[r["urn"]] = by_name.get(r["parent"], "")
    old_by = {r["urn"]: r for r in old.resources}
    new_by = {r["urn"]: r for r in new.resources}
    stack_urn = urn(f"pulumi:pulumi:Stack::{PROJECT}-{STACK}")
    stack_state = {"urn": stack_urn, "custom": False, "type": "pulumi:pulumi:Stack"}
    steps: list[dict[str, Any]] = [
        {
            "op": "same",
            "urn": stack_urn,
            "oldState": stack_state,
            "newState": stack_state,
            "detailedDiff": None,
        }
    ]
    for pkg, (pname, pid, version) in PROVIDERS.items():
        purn = urn(f"pulumi:providers:{pkg}::{pname}")
        inputs = {"region": "us-east-1", "version": version} if pkg == "aws" else {"version": version}
        pstate = {
            "urn": purn,
            "custom": True,
            "id": pid,
            "type": f"pulumi:providers:{pkg}",
            "inputs": inputs,
            "outputs": inputs,
        }
        steps.append(
            {"op": "same", "urn": purn, "oldState": pstate, "newState": pstate, "detailedDiff": None}
        )
    template_changed = any(
        r["type"] == TEMPLATE and u in old_by and old_by[u]["inputs"] != r["inputs"]
        for u, r in new_by.items()
    )
    for u, rec in new_by.items():
        before = old_by.get(u)
        if before is None:
            steps.append(
                {
                    "op": "create",
                    "urn": u,
                    "provider": provider_ref(rec["type"]) if rec["custom"] else None,
                    "newState": state(rec, parents, outputs={**rec["inputs"], "id": UNKNOWN}, rid=""),
                    "detailedDiff": None,
                }
            )
            continue
        changed = sorted(
            k
            for k in set(before["inputs"]) | set(rec["inputs"])
            if before["inputs"].get(k) != rec["inputs"].get(k)
        )
        REPLACE_KEYS = REPLACE_KEYS_BY_TYPE.get(rec["type"], set())
        if rec["type"] == "aws:autoscaling/group:Group" and template_changed:
            # the template's new latestVersion is computed: unknown in the preview
            rec = {
                **rec,
                "inputs": {
                    **rec["inputs"],
                    "launchTemplate": {**rec["inputs"]["launchTemplate"], "version": UNKNOWN},
                },
            }
            changed = sorted({*changed, "launchTemplate"})
        step: dict[str, Any] = {"op": "same", "urn": u}
        if rec["custom"]:
            step["provider"] = provider_ref(rec["type"])
        step["oldState"] = state(before, parents)
        if not changed:
            step["newState"] = state(before, parents)
            step["detailedDiff"] = None
        elif set(changed) & REPLACE_KEYS:
            # a replacement: the new instance's computed outputs are unknown during preview
            computed = {k: UNKNOWN for k in before["outputs"] if k not in rec["inputs"]}
            step.update(
                op="replace",
                newState=state(rec, parents, outputs={**rec["inputs"], **computed}, rid=""),
                diffReasons=changed,
                replaceReasons=sorted(set(changed) & REPLACE_KEYS),
                detailedDiff=detailed(before["inputs"], rec["inputs"], "", False)
                | {
                    k: {
                        "kind": "delete-replace" if k not in rec["inputs"] else "update-replace",
                        "inputDiff": False,
                    }
                    for k in set(changed) & REPLACE_KEYS
                },
            )
        else:
            step.update(
                op="update",
                newState=state(rec, parents, outputs={**before["outputs"], **rec["inputs"]}),
                diffReasons=changed,
                detailedDiff=detailed(before["inputs"], rec["inputs"], "", False),
            )
        if step.get("provider") is None:
            step.pop("provider", None)
        steps.append(step)
    for u in reversed(list(old_by)):  # deletes run last, dependents first
        if u not in new_by:
            rec = old_by[u]
            steps.append(
                {
                    "op": "delete",
                    "urn": u,
                    "provider": provider_ref(rec["type"]),
                    "oldState": state(rec, parents),
                    "detailedDiff": None,
                }
            )
    summary: dict[str, int] = {}
    for s in steps:
        summary[s["op"]] = summary.get(s["op"], 0) + 1
    secret_keys = {k for k in new.raw_config if k == "llmfleet:sshPrivateKey"}
    doc = {
        "config": redacted_config(new.raw_config, secret_keys),
        "steps": steps,
        "duration": 21_734_910_332,
        "changeSummary": summary,
    }
    out = ROOT / "tests" / "data" / "preview_update_prod.json"
    out.write_text(json.dumps(doc, indent=4) + "\n")
    print(out, summary)


if __name__ == "__main__":
    main()
