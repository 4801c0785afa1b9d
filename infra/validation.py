"""One pydantic ValidationError -> the parts of a one-line message (key path, bad value, what
is allowed). Every operator-side model (stack config, catalog rows, stack outputs, cluster.yaml
outputs, Serve config) reports its first error through here, so the wording is one decision.
(ray_cluster/node.py keeps its own three lines: the host side never imports infra.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

# pydantic error type -> the "allowed: ..." phrase (ctx holds the bound).
_ALLOWED = {
    "greater_than_equal": lambda c: f"allowed: a number >= {_num(c.get('ge'))}",
    "greater_than": lambda c: f"allowed: a number > {_num(c.get('gt'))}",
    "less_than_equal": lambda c: f"allowed: a number <= {_num(c.get('le'))}",
    "less_than": lambda c: f"allowed: a number < {_num(c.get('lt'))}",
    "int_parsing": lambda c: "allowed: an integer",
    "int_from_float": lambda c: "allowed: an integer",
    "float_parsing": lambda c: "allowed: a number",
    "finite_number": lambda c: "allowed: a finite number",
    "bool_parsing": lambda c: "allowed: true or false",
    "string_too_short": lambda c: "allowed: a non-empty string",
    "enum": lambda c: f"allowed: {c.get('expected')}",
}


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class FirstError:
    loc: tuple[str | int, ...]
    path: str  # key[0].sub form ("" when the error is about the whole object)
    type: str
    msg: str  # pydantic's message, "Value error, " stripped
    input: Any
    ctx: dict[str, Any]

    def allowed(self) -> str:
        """The message as "allowed: ..." wherever pydantic's type says what would be."""
        if self.type == "literal_error":
            return "allowed: " + self.msg.removeprefix("Input should be ")
        if self.type == "missing":
            return "required and missing"
        if self.type in _ALLOWED:
            return _ALLOWED[self.type](self.ctx)
        if self.type == "value_error":
            return self.msg
        return "allowed: " + self.msg[:1].lower() + self.msg[1:]


def first_error(e: ValidationError) -> FirstError:
    err = e.errors(include_url=False)[0]
    loc = tuple(err.get("loc", ()))
    path = str(loc[0]) if loc else ""
    for part in loc[1:]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return FirstError(
        loc=loc,
        path=path,
        type=err.get("type", ""),
        msg=str(err.get("msg", "")).removeprefix("Value error, "),
        input=err.get("input"),
        ctx=dict(err.get("ctx") or {}),
    )
