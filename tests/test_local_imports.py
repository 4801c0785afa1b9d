"""Issue #31 item 3: the project's own imports sit at the top of each module.

A function-level import of a project module hides the dependency from import-linter and from a
reader. What stays inside a function does so for a measured start-up cost or an optional
dependency, and says which in a comment (scripts/count_local_imports.py lists them).
"""

from __future__ import annotations

import subprocess
import sys

from scripts.count_local_imports import ROOT, all_local_imports, reason

LIMIT = 40


def test_function_level_project_imports_are_few_and_each_has_its_reason():
    found = all_local_imports()
    assert len(found) < LIMIT, f"{len(found)} function-level imports of project modules (limit {LIMIT})"
    missing = [f"{i.path}:{i.line} {i.module}" for i in found if reason(i) is None]
    assert not missing, "no `# start-up:` / `# optional dependency:` comment: " + ", ".join(missing)


def test_the_counter_sees_a_hidden_import_and_its_reason(tmp_path, monkeypatch):
    pkg = tmp_path / "infra"
    pkg.mkdir()
    (pkg / "mod.py").write_text(
        "import infra.catalog\n"  # module level: not counted
        "def f():\n"
        "    from infra.stack import config\n"  # counted, no reason
        "    # start-up: loads Pulumi\n"
        "    from infra.program import offline\n"  # counted, with its reason
        "    import json\n"  # not the project's: not counted
        "    from . import sibling\n"  # relative: from the package infra, counted
    )
    import scripts.count_local_imports as c

    monkeypatch.setattr(c, "ROOT", tmp_path)
    found = c.all_local_imports(tmp_path)
    assert [(i.line, i.module) for i in found] == [
        (3, "infra.stack"),
        (5, "infra.program"),
        (7, "infra"),
    ]
    assert [c.reason(i) for i in found] == [None, "start-up: loads Pulumi", None]


def test_the_script_fails_above_the_limit():
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "count_local_imports.py"), "--max", "0"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and "above the limit of 0" in run.stderr
