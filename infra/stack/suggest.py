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


def canonical(value: str, allowed: Iterable[str]) -> str | None:
    """The allowed id that equals `value` ignoring case (ids are matched case-insensitively)."""
    low = value.lower()
    return next((a for a in allowed if a.lower() == low), None)


def closest(value: str, allowed: Iterable[str]) -> str | None:
    """The single best near miss of `value` among `allowed`, or None when nothing is close."""
    options = list(allowed)
    # a namespace every id shares ("llmfleet:") says nothing about which one was meant
    shared = os.path.commonprefix([a.lower() for a in options]) if len(options) > 1 else ""
    shared = shared[: shared.rfind(":") + 1]
    by_lower = {a.lower().removeprefix(shared): a for a in options}
    low = value.lower().removeprefix(shared)
    if not low:
        return None
    hits = difflib.get_close_matches(low, list(by_lower), n=1, cutoff=CUTOFF)
    if hits:
        return by_lower[hits[0]]
    # a short form of one id only ("r1" for "deepseek-r1"): one id that ends or starts with it
    partial = [a for k, a in by_lower.items() if k.endswith(f"-{low}") or k.startswith(f"{low}-")]
    return partial[0] if len(partial) == 1 else None


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """'did you mean X? ' (with the trailing space) or '' : put in front of 'allowed: ...'."""
    hit = closest(value, allowed)
    return f"did you mean {hit}? " if hit else ""
