"""A copy of the checkout's Pulumi project (Pulumi.yaml, __main__.py, stacks/) in a directory of
a test's own: the commands find the project from the working directory, as Pulumi does."""

from __future__ import annotations

import shutil
from pathlib import Path

from infra.constants import REPO_ROOT


def copy_project(dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("Pulumi.yaml", "__main__.py"):
        shutil.copy(REPO_ROOT / name, dst / name)
    shutil.copytree(REPO_ROOT / "stacks", dst / "stacks", dirs_exist_ok=True)
    return dst
