"""infra/commands/_fit.py: the widths a fitted table gives its columns, and what it drops."""

from __future__ import annotations

from rich.console import Console

from infra.commands._fit import Col, dropped, fitted_table, min_width, widths


def _console(width: int) -> Console:
    return Console(width=width, record=True, color_system=None, file=open("/dev/null", "w"))  # noqa: SIM115


def test_widths_start_at_the_minimums_and_share_the_rest_toward_each_maximum():
    assert widths([5, 3], [5, 3], 20) == [5, 3]  # nobody grows past what it holds
    assert widths([5, 3], [9, 30], 20) == [5, 15]  # the one furthest from its maximum first
    assert sum(widths([4, 4, 4], [40, 40, 40], 30)) == 30


def test_identifier_columns_hold_their_longest_cell_and_text_its_longest_word():
    console = _console(70)
    cols = [Col("type", whole=True), Col("why")]
    rows = [["aws:s3:BucketServerSideEncryptionConfiguration", "a b c extraordinarily"]]
    t = fitted_table(console, cols, rows)
    assert [c.width for c in t.columns][0] == len(rows[0][0])
    assert t.columns[1].width >= len("extraordinarily")
    assert min_width(console, cols, rows) == len(rows[0][0]) + len("extraordinarily") + 7
    # narrower than that: the identifier keeps its width, the text's one long word folds
    squeezed = fitted_table(_console(60), cols, rows)
    assert squeezed.columns[0].width == len(rows[0][0]) and squeezed.columns[1].width == 60 - 46 - 7


def test_optional_columns_go_highest_drop_first_until_the_rest_fits():
    cols = [Col("id", whole=True), Col("a", whole=True, drop=1), Col("b", whole=True, drop=2), Col("note")]
    rows = [["x" * 30, "y" * 20, "z" * 20, "some words"]]
    wide, mid, narrow = (fitted_table(_console(w), cols, rows) for w in (100, 70, 50))
    assert dropped(wide, cols) == []
    assert dropped(mid, cols) == ["b"]
    assert dropped(narrow, cols) == ["a", "b"]
    console = _console(50)
    console.print(narrow)
    assert "x" * 30 in console.export_text()
