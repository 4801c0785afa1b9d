"""Rendered shell scripts are real bash: syntax (bash -n) and shellcheck, one helper for every test."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def assert_bash_and_shellcheck(script: Path) -> None:
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    sc = shutil.which("shellcheck")
    assert sc, "shellcheck missing: apt-get install -y shellcheck"
    proc = subprocess.run([sc, "--shell=bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
