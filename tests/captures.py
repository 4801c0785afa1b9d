"""The policy tests' offline captures, one per (stack, overrides) per process.

Most policy tests check the pack on the real program's capture, and many capture the same stack
(prod, unchanged) again: 0.2-1 s each, the bulk of those tests' time. `capture` below runs the real
`infra.program.offline.capture` once per (stack, overrides) of the project and hands out deep copies
(a test may edit its resources), and the `shared_captures` fixture puts it in place of the real one
for the code under test that captures on its own (`llmfleet policy` through `run_for_stack`).

`make mutation` forks one process per mutant from the process that ran the clean tests, so a policy
mutant finds every capture made already. That is sound for mutants of policy/ only: the program
never runs policy code, so a mutant there cannot change a capture. A mutant anywhere else (the
config modules run inside every capture) and mutmut's coverage run ("stats", which must see every
test reach the config modules) capture afresh, as without this module.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from infra.program import offline
from infra.program.offline import Capture

_real_capture = offline.capture
_CACHE: dict[tuple[str, tuple[str, ...]], Capture] = {}


def _reusable() -> bool:
    # mutmut's MUTANT_UNDER_TEST: unset outside mutmut, "" for its clean run, the mutant's name
    # (module.function__mutmut_N) in a mutant's process, "stats"/"fail" for its own runs.
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    return mutant == "" or mutant.startswith("policy.")


def capture(
    stack: str, overrides: Sequence[str] = (), project_dir: Path | None = None, program: Path | None = None
) -> Capture:
    """`infra.program.offline.capture`, reused for the project's own stacks (see the module doc)."""
    if project_dir is not None or program is not None or not _reusable():
        return _real_capture(stack, overrides, project_dir, program)
    key = (stack, tuple(overrides))
    if key not in _CACHE:
        _CACHE[key] = _real_capture(stack, overrides)
    return copy.deepcopy(_CACHE[key])


@pytest.fixture
def shared_captures(monkeypatch: pytest.MonkeyPatch) -> None:
    """The code under test captures through `capture` above (it imports offline.capture at call time)."""
    monkeypatch.setattr(offline, "capture", capture)
