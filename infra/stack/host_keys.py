"""Write hosts' SSH keys into a stack file, leaving every other byte of it as it was.

`llmfleet hosts trust` records each host's `hostKey` in stacks/Pulumi.<stack>.yaml. Stack files
are hand-written and commented, and a YAML dump would drop the comments and reflow the rest, so
this edits the text: PyYAML's composer gives each node's position, the value of an existing
`hostKey:` is replaced and a missing one is inserted as a new line after its entry's last line
(or before the `}` of a flow-style entry). The result is parsed again and must equal the file's
data with exactly those keys set; otherwise nothing is returned to write.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import yaml

from infra import yaml_files

HOSTS_KEYS = ("llmfleet:hosts", "hosts")  # the namespaced key, or the project-local short form


class HostKeysEditError(ValueError):
    """The stack file's hosts cannot be edited safely; str() is one line."""


def _pair(mapping: yaml.MappingNode, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    return next(((k, v) for k, v in mapping.value if getattr(k, "value", None) == key), None)


def hosts_node(text: str) -> tuple[str, yaml.SequenceNode]:
    """(the key used, the node of the hosts list) of a stack file's text."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    config = _pair(root, "config") if isinstance(root, yaml.MappingNode) else None
    if config is None or not isinstance(config[1], yaml.MappingNode):
        raise HostKeysEditError("the stack file has no config: mapping")
    for key in HOSTS_KEYS:
        pair = _pair(config[1], key)
        if pair is not None:
            if not isinstance(pair[1], yaml.SequenceNode) or not all(
                isinstance(e, yaml.MappingNode) for e in pair[1].value
            ):
                raise HostKeysEditError(f"{key} is not a list of mappings")
            return key, pair[1]
    raise HostKeysEditError("the stack file has no llmfleet:hosts list")


def set_host_keys(text: str, keys: Mapping[int, str]) -> str:
    """`text` with hosts[i].hostKey = keys[i] for each i (the keys already checked)."""
    hosts_key, seq = hosts_node(text)
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement), applied from the end
    for i, key in keys.items():
        if not 0 <= i < len(seq.value):
            raise HostKeysEditError(f"no hosts entry {i}")
        entry: yaml.MappingNode = seq.value[i]
        value = json.dumps(key)  # a double-quoted YAML scalar (YAML reads JSON strings)
        existing = _pair(entry, "hostKey")
        if existing is not None:
            edits.append((existing[1].start_mark.index, existing[1].end_mark.index, value))
        elif entry.flow_style:
            close = entry.end_mark.index - 1  # the entry's closing brace
            sep = ", " if entry.value else ""
            edits.append((close, close, f"{sep}hostKey: {value}"))
        else:
            first_key = entry.value[0][0]
            end = entry.value[-1][1].end_mark.index
            # after the line the entry's last value ends on (a comment there stays on it)
            nl = text.find("\n", end - 1 if text[end - 1 : end] == "\n" else end)
            at = len(text) if nl < 0 else nl
            edits.append((at, at, "\n" + " " * first_key.start_mark.column + f"hostKey: {value}"))
    out = text
    for start, end, replacement in sorted(edits, reverse=True):
        out = out[:start] + replacement + out[end:]
    _check(text, out, hosts_key, keys)
    return out


def _check(before: str, after: str, hosts_key: str, keys: Mapping[int, str]) -> None:
    want: Any = copy.deepcopy(yaml_files.safe_load(before))
    for i, key in keys.items():
        want["config"][hosts_key][i]["hostKey"] = key
    try:
        got = yaml_files.safe_load(after)
    except yaml.YAMLError:
        got = None
    if got != want:
        raise HostKeysEditError(
            "writing the keys would change more than hosts[*].hostKey (an unusual layout of the "
            "hosts list); set hostKey by hand from the keys shown"
        )
