"""Tables that never split an identifier, at any terminal width from 80 columns up.

rich shrinks the widest wrappable columns until a table fits, below the longest word if it has
to, and then every column evenly: `p5en.48│xlarge`. Here each column's width is set before
rich lays the table out. A column of identifiers (`whole`) is as wide as its longest cell; a
text column is at least as wide as its longest word and wraps between words; what is left goes
to the columns that want it. When even the minimums do not fit, the optional columns are
dropped, least important first, as `sky show-gpus` does; the caller says which (`drop`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class Col:
    header: str
    whole: bool = False  # identifiers (type, name, GPU id, instance type): one line, never wrapped
    justify: Literal["left", "right", "center"] = "left"
    drop: int = 0  # 0: always shown; otherwise dropped when narrow, the highest first
    style: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def _measure(console: Console, cell: RenderableType) -> Measurement:
    return Measurement.get(console, console.options, cell)


def _span(console: Console, col: Col, cells: Sequence[RenderableType]) -> tuple[int, int]:
    """(min, max) content width: min = the longest cell for `whole`, else the longest word."""
    ms = [_measure(console, "" if c is None else c) for c in [col.header, *cells]]
    hi = max((m.maximum for m in ms), default=1)
    if col.whole:
        # the header wraps between its words (it is a Text with no_wrap=False, below); cells never
        lo = max([ms[0].minimum] + [m.maximum for m in ms[1:]])
    else:  # a cell that is a Text with no_wrap (a resource name in a tree of components) is whole
        lo = max(
            [m.minimum for m in ms]
            + [m.maximum for c, m in zip(cells, ms[1:], strict=False) if isinstance(c, Text) and c.no_wrap]
        )
    return max(lo, 1), max(hi, lo, 1)


def _overhead(n: int, table_kwargs: dict[str, Any]) -> int:
    """Borders and padding of `n` columns as rich draws them (padding (0, 1), one rule each)."""
    box = table_kwargs.get("box", Table().box)
    show_edge = table_kwargs.get("show_edge", True)
    pad_edge = table_kwargs.get("pad_edge", True)
    rules = ((2 if show_edge else 0) + (n - 1)) if box else 0
    return rules + 2 * n - (0 if pad_edge else 2)


def widths(mins: list[int], maxs: list[int], room: int) -> list[int]:
    """Each column at its minimum, then the room left shared out, one cell at a time to the
    column furthest from its maximum (a column never grows past what it holds)."""
    w = list(mins)
    left = room - sum(w)
    while left > 0:
        want = [mx - x for x, mx in zip(w, maxs, strict=True)]
        i = max(range(len(w)), key=lambda j: want[j])
        if want[i] <= 0:
            break
        w[i] += 1
        left -= 1
    return w


def min_width(
    console: Console, cols: Sequence[Col], rows: Sequence[Sequence[RenderableType]], **table_kwargs: Any
) -> int:
    """The narrowest the table can be with every column shown and nothing split."""
    spans = [_span(console, c, [r[i] for r in rows]) for i, c in enumerate(cols)]
    return sum(lo for lo, _ in spans) + _overhead(len(cols), table_kwargs)


def fitted_table(
    console: Console,
    cols: Sequence[Col],
    rows: Sequence[Sequence[RenderableType]],
    width: int | None = None,
    end_sections: Collection[int] = (),
    **table_kwargs: Any,
) -> Table:
    """A rich Table of `rows` whose identifiers stay whole within `width` (the console's); a
    rule under each row index in `end_sections`. A short row is padded with empty cells."""
    rows = [list(r) + [""] * (len(cols) - len(r)) for r in rows]
    width = width or console.width
    keep = list(range(len(cols)))
    spans = {i: _span(console, cols[i], [r[i] for r in rows]) for i in keep}
    while True:
        need = sum(spans[i][0] for i in keep) + _overhead(len(keep), table_kwargs)
        optional = [i for i in keep if cols[i].drop]
        if need <= width or not optional:
            break
        keep.remove(max(optional, key=lambda i: (cols[i].drop, i)))
    room = width - _overhead(len(keep), table_kwargs)
    mins = [spans[i][0] for i in keep]
    # A word longer than what is left beside the identifiers (a URL, an image digest) cannot be
    # whole: its text column gives way, widest first, and that word folds. Identifiers never do.
    text = [k for k, i in enumerate(keep) if not cols[i].whole]
    while sum(mins) > room and text:
        k = max(text, key=lambda j: mins[j])
        if mins[k] <= 1:  # below that, nothing helps: the identifiers alone are too wide
            break
        mins[k] -= 1
    ws = widths(mins, [spans[i][1] for i in keep], room)
    t = Table(**table_kwargs)
    for i, w in zip(keep, ws, strict=True):
        c = cols[i]
        t.add_column(
            Text(c.header, no_wrap=False) if c.whole else c.header,
            width=w,
            no_wrap=c.whole,
            overflow="fold",  # only a word longer than the terminal itself ever folds
            justify=c.justify,
            style=c.style,
            **c.kwargs,
        )
    for n, r in enumerate(rows):
        t.add_row(*[r[i] for i in keep], end_section=n in end_sections)
    return t


def dropped(table: Table, cols: Sequence[Col]) -> list[str]:
    """The headers of `cols` the fitted table left out (a caller may say so under the table)."""
    shown = {str(c.header) for c in table.columns}
    return [c.header for c in cols if c.header not in shown]
