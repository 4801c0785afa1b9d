"""The suite's own plumbing (conftest.py, tests/image_prebuild.py, the Makefile's test target)."""

from __future__ import annotations

import re

from infra.constants import REPO_ROOT
from tests import image_prebuild
from tests.conftest import IMAGE_MODULE


def test_collecting_never_starts_the_image_build():
    # `pytest --collect-only` started the ~8 min build and left its registry up (issue #30)
    ids = [f"{IMAGE_MODULE}::test_x", "tests/test_cli.py::test_y"]
    assert image_prebuild.wanted(False, ids, IMAGE_MODULE) is True
    assert image_prebuild.wanted(True, ids, IMAGE_MODULE) is False
    assert image_prebuild.wanted(False, ["tests/test_cli.py::test_y"], IMAGE_MODULE) is False


def test_make_test_prints_skip_reasons():
    # a skipped test says why in `make test`'s summary (pytest -rs), as CI runs it (.ci/run)
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", (REPO_ROOT / "Makefile").read_text(), re.M)
    assert recipe is not None
    pytest_line = next(ln for ln in recipe.group(1).splitlines() if "/pytest" in ln)
    assert re.search(r"\s-r\w*s", pytest_line), pytest_line
