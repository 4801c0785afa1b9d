"""Typed reads of untyped JSON (Ray's node table, placement group table and REST documents, an
OpenAI response): a missing or mistyped value reads as the default, never as an exception, so a
caller's one-line error or status still comes out of a record it did not expect."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

Json = Mapping[str, object]


def obj(v: object) -> Json:
    return cast(Json, v) if isinstance(v, Mapping) else {}


def items(v: object) -> list[tuple[str, Json]]:
    return sorted((str(k), obj(x)) for k, x in obj(v).items())


def seq(v: object) -> list[object]:
    return cast(list[object], v) if isinstance(v, list) else []


def text(v: object) -> str:
    return v if isinstance(v, str) else ""


def num(v: object) -> float:
    return float(v) if isinstance(v, int | float) else 0.0
