"""Reading CrossGuard props safely.

CrossGuard hands policies read-only proxies that raise `UnknownValueError` on any value that is
unknown during a preview (an id of a resource not created yet, a JSON document built from ARNs).
`plain()` turns such a proxy into ordinary dicts/lists with the `UNKNOWN` marker in place of the
unknown values, so a policy can decide per value whether it can check it, instead of the whole
policy being skipped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pulumi_policy import proxy as _proxy

from infra.stack.config_rules import subnet_of

_SENTINELS = frozenset(
    {
        _proxy.UNKNOWN_BOOLEAN_VALUE,
        _proxy.UNKNOWN_NUMBER_VALUE,
        _proxy.UNKNOWN_STRING_VALUE,
        _proxy.UNKNOWN_ARRAY_VALUE,
        _proxy.UNKNOWN_ASSET_VALUE,
        _proxy.UNKNOWN_ARCHIVE_VALUE,
        _proxy.UNKNOWN_OBJECT_VALUE,
    }
)


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"

    def __bool__(self) -> bool:  # an unknown value is never "set" for a check
        return False


UNKNOWN: Any = _Unknown()


def is_unknown(value: Any) -> bool:
    return value is UNKNOWN or (isinstance(value, str) and value in _SENTINELS)


def plain(value: Any) -> Any:
    """A proxy (or plain data) as dicts/lists, with UNKNOWN for values unknown during preview."""
    if is_unknown(value):
        return UNKNOWN
    if isinstance(value, Mapping):
        out = {}
        for key in list(value):
            try:
                out[key] = plain(value[key])
            except _proxy.UnknownValueError:
                out[key] = UNKNOWN
        return out
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        items = []
        for i in range(len(value)):
            try:
                items.append(plain(value[i]))
            except _proxy.UnknownValueError:
                items.append(UNKNOWN)
        return items
    return value


def get(obj: Any, *path: Any, default: Any = None) -> Any:
    """obj[path0][path1]...; `default` when a key is missing, UNKNOWN when any step is unknown."""
    cur = obj
    for key in path:
        if is_unknown(cur):
            return UNKNOWN
        if isinstance(cur, Mapping):
            if key not in cur:
                return default
            cur = cur[key]
        elif isinstance(cur, list) and isinstance(key, int):
            if not -len(cur) <= key < len(cur):
                return default
            cur = cur[key]
        else:
            return default
    return UNKNOWN if is_unknown(cur) else cur


def as_list(value: Any) -> list[Any]:
    """A list-valued prop: [] when unset; [UNKNOWN] when the whole list is unknown."""
    if is_unknown(value):
        return [UNKNOWN]
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def tags_of(props: Mapping[str, Any]) -> dict[str, Any] | Any:
    """Merged `tagsAll` + `tags` (tags win); UNKNOWN when neither is known."""
    merged: dict[str, Any] = {}
    known = False
    for key in ("tagsAll", "tags"):
        value = props.get(key)
        if isinstance(value, list) and all(isinstance(t, Mapping) and "key" in t for t in value):
            value = {t["key"]: t.get("value") for t in value}  # an Auto Scaling group's tag list
        if isinstance(value, Mapping):
            merged.update(value)
            known = True
    if not known and any(is_unknown(props.get(k)) for k in ("tags", "tagsAll")):
        return UNKNOWN
    return merged


def to_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def network(cidr: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(str(cidr), strict=False)
    except ValueError:
        return None


def is_world(cidr: Any) -> bool:
    net = network(cidr)
    return net is not None and net.prefixlen == 0


def within_any(cidr: Any, allowed: Iterable[Any]) -> bool:
    net = network(cidr)
    if net is None:
        return False
    for candidate in allowed:
        other = network(candidate)
        if other is not None and subnet_of(net, other):
            return True
    return False
