"""Near-miss handling for ids a user types: GPU and model ids, stack names, config keys.

Pure (difflib only), so every error path that names "allowed: ..." can also say "did you mean".
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable

# difflib's default cutoff (0.6) rejects short typos such as "r1" -> "deepseek-r1"; a lower one
# still refuses unrelated words, and a suffix/prefix match below catches the short forms.
CUTOFF = 0.5
# what may follow a family prefix in an id (A100 -> A100-40GB, deepseek -> deepseek-r1)
SEPARATORS = {"-", "_", ".", ":", "/"}


def canonical(value: str, allowed: Iterable[str]) -> str | None:
    """The allowed id that equals `value` ignoring case (ids are matched case-insensitively)."""
    low = value.lower()
    return next((a for a in allowed if a.lower() == low), None)


def candidates(value: str, allowed: Iterable[str]) -> list[str]:
    """Every allowed id `value` may have meant, best first: all the ids it is a whole-word
    prefix of ("A100" -> A100-40GB and A100-80GB: difflib alone would pick H100, one letter
    away, over the two ids the user actually named the family of), else difflib's single best
    near miss, else the one id it is a short form of ("r1" -> deepseek-r1)."""
    options = list(allowed)
    # a namespace every id shares ("llmfleet:") says nothing about which one was meant
    shared = os.path.commonprefix([a.lower() for a in options]) if len(options) > 1 else ""
    shared = shared[: shared.rfind(":") + 1]
    by_lower = {a.lower().removeprefix(shared): a for a in options}
    low = value.lower().removeprefix(shared)
    if not low:
        return []
    # whole-word prefix: the id goes on with a separator, so "L4" does not stand for "L40S"
    family = [
        a for k, a in by_lower.items() if k.startswith(low) and k[len(low) : len(low) + 1] in SEPARATORS
    ]
    if family:
        return family
    hits = difflib.get_close_matches(low, list(by_lower), n=1, cutoff=CUTOFF)
    if hits:
        return [by_lower[hits[0]]]
    # a short form of one id only ("r1" for "deepseek-r1"): one id that ends or starts with it
    partial = [a for k, a in by_lower.items() if k.endswith(f"-{low}") or k.startswith(f"{low}-")]
    return partial if len(partial) == 1 else []


def closest(value: str, allowed: Iterable[str]) -> str | None:
    """The single best near miss of `value` among `allowed`, or None when nothing (or more
    than one id equally) is close."""
    hits = candidates(value, allowed)
    return hits[0] if len(hits) == 1 else None


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """'did you mean X? ' / 'did you mean X or Y? ' (with the trailing space) or '' : put in
    front of 'allowed: ...'."""
    hits = candidates(value, allowed)
    if not hits:
        return ""
    names = hits[0] if len(hits) == 1 else f"{', '.join(hits[:-1])} or {hits[-1]}"
    return f"did you mean {names}? "
