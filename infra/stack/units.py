"""One formatter for sizes people compare across commands (pure).

The checkpoint read "642 GiB" in the cold-start table, "642 GB" in `cost` and (as the loaded
weights) "627.8 GiB" in `plan`. Sizes here are binary (GiB = 2**30 bytes): the catalog's
checkpoint_gib, the planner's bytes / GIB, and AWS's storage "GB", which AWS bills as 2**30 bytes.
"""

from __future__ import annotations

GIB = 2**30


def fmt_gib(gib: float) -> str:
    """'642.0 GiB', '1,256.4 GiB': one decimal, thousands separated, always the unit."""
    return f"{gib:,.1f} GiB"
