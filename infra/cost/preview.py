"""Resource states from a `pulumi preview --json` file: new from `newState`, past from
`oldState`, so a preview prices both sides of a change."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infra.cost.model import is_known
from infra.cost.pricing import PriceError


def _name_of(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


# Steps whose resource does not exist after the update (newState) or did not before (oldState).
_NOT_AFTER = ("read", "delete", "delete-replaced", "discard", "discard-replaced", "remove-pending-replace")


_NOT_BEFORE = ("read", "create", "create-replacement", "import", "import-replacement")


@dataclass(frozen=True)
class PreviewStates:
    new: list[dict[str, Any]]
    past: list[dict[str, Any]]
    region: str | None
    ops: Mapping[str, int]
    has_sames: bool  # `pulumi preview --json --show-sames`: unchanged resources are in the file

    @property
    def has_past(self) -> bool:
        return bool(self.past)


def _resource_of(state: Mapping[str, Any], urn: str) -> dict[str, Any]:
    return {
        "type": state.get("type", ""),
        "name": _name_of(state.get("urn", urn)),
        "parent": _name_of(state["parent"]) if state.get("parent") else None,
        "urn": state.get("urn", urn),
        "custom": bool(state.get("custom", True)),
        "inputs": state.get("inputs") or {},
        "outputs": state.get("outputs") or {},
    }


def states_from_preview(doc: Mapping[str, Any]) -> PreviewStates:
    """The resources after the update (`newState`) and before it (`oldState`) of a
    `pulumi preview --json` document, each URN once; reads (data sources) are neither."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("steps"), list):
        raise PriceError("preview file: expected a `pulumi preview --json` document with a `steps` list")
    new: dict[str, dict[str, Any]] = {}
    past: dict[str, dict[str, Any]] = {}
    region: str | None = None
    ops: dict[str, int] = {}
    sames = 0  # unchanged resources; the root stack's step is always there, --show-sames or not
    for step in doc["steps"]:
        if not isinstance(step, Mapping):
            raise PriceError("preview file: every entry of `steps` must be an object")
        op = str(step.get("op", ""))
        urn = str(step.get("urn", ""))
        ops[op] = ops.get(op, 0) + 1
        after, before = step.get("newState"), step.get("oldState")
        state_type = (after or before or {}).get("type", "")
        if op == "same" and state_type != "pulumi:pulumi:Stack":
            sames += 1
        if after and op not in _NOT_AFTER:
            if after.get("type") == "pulumi:providers:aws" and is_known(
                (after.get("inputs") or {}).get("region")
            ):
                region = after["inputs"]["region"]
            new.setdefault(after.get("urn", urn), _resource_of(after, urn))
        if before and op not in _NOT_BEFORE:
            past.setdefault(before.get("urn", urn), _resource_of(before, urn))
    return PreviewStates(list(new.values()), list(past.values()), region, ops, sames > 0)


def parse_preview(text: str) -> PreviewStates:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise PriceError(f"preview file: not JSON ({err.msg} at line {err.lineno})") from None
    return states_from_preview(doc)


def load_preview_file(text: str) -> tuple[list[dict[str, Any]], str | None]:
    states = parse_preview(text)
    return states.new, states.region
