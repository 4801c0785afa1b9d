"""Snapshot comparison shared by every snapshot test (files under tests/snapshots/).

A missing snapshot fails its test: writing it would make the first run pass whatever the
output is. Create or update snapshots on purpose, and read the diff before committing:

    LLMFLEET_UPDATE_SNAPSHOTS=1 pytest tests/test_cloud_init.py tests/test_cli.py
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

SNAP = Path(__file__).parent / "snapshots"
UPDATE_ENV = "LLMFLEET_UPDATE_SNAPSHOTS"


def assert_snapshot(name: str, text: str) -> None:
    path = SNAP / name
    if os.environ.get(UPDATE_ENV) == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"snapshot {path.name} is missing; create it with {UPDATE_ENV}=1 and review it")
    want = path.read_text()
    if text != want:
        diff = "".join(
            difflib.unified_diff(want.splitlines(True), text.splitlines(True), path.name, "now", n=1)
        )
        pytest.fail(f"{path.name} changed; re-run with {UPDATE_ENV}=1 if intended:\n{diff}")
