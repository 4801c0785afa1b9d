"""The CPU node image for tests/test_image_build.py, built in a process of its own while the
suite runs the tests before that module.

From nothing the image takes ~8 min on 2 cores (a Debian root from the mirror, the venv,
`docker import`, the node build, a 3 GB push that docker gzips on one core), and the ~730 tests
without the `ray` marker (~3 min) are single-threaded Python: conftest.py starts this when the
module is collected and runs those tests first, so both cores work. A process, not a thread:
other tests monkeypatch os.environ, PATH and the cwd, which a thread's subprocesses would inherit
mid-build.
LLMFLEET_IMAGE_PREBUILD=0 builds in the fixture instead.

  python -m tests.image_prebuild RESULT_JSON WORKDIR

writes RESULT_JSON ({"built": {...}, "registry": "127.0.0.1:PORT"} or {"error": "..."}) once the
image is pushed, keeps dockerd (if it started it) and the registry up until its stdin closes,
then stops them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from infra.constants import REPO_ROOT
from infra.local import docker as dk
from infra.local import image_build as ib

ENV = "LLMFLEET_IMAGE_PREBUILD"


@contextlib.contextmanager
def built_and_pushed(workdir: Path, log=print) -> Iterator[tuple[ib.Built, str]]:
    """dockerd (started if none runs) and a registry for the block, with the image pushed to it."""
    with dk.daemon(workdir / "dockerd.log"), dk.registry(workdir / "registry") as registry:
        yield ib.build_and_push(registry, log=log), registry


def cannot_build() -> str | None:
    """Why the image cannot be built here (the fixture skips with it), or None."""
    missing = dk.missing_tools()
    if missing:
        return f"missing Debian packages {missing} (scripts/system-deps.sh installs them as root)"
    if os.geteuid() != 0 and not dk.daemon_up():
        return "no docker daemon, and starting one needs root"
    return None


class _Background:
    proc: subprocess.Popen | None = None
    workdir: Path | None = None


_bg = _Background()


def wanted(collect_only: bool, nodeids: list[str], module: str) -> bool:
    """Whether this session runs tests of the image's module: only then is the build started.
    `--collect-only` runs nothing, and a build started there outlived the session: its stdin
    closed mid-build, it was killed after 120 s, and the registry it had started stayed up."""
    return not collect_only and any(n.startswith(module) for n in nodeids)


def start() -> None:
    """Start the build in the background (once), unless disabled or it could not run here."""
    if _bg.proc is not None or os.environ.get(ENV, "1") != "1" or cannot_build():
        return
    _bg.workdir = Path(tempfile.mkdtemp(prefix="llmfleet-prebuild-"))
    log = open(_bg.workdir / "prebuild.log", "wb")
    _bg.proc = subprocess.Popen(
        [sys.executable, "-m", "tests.image_prebuild", str(_bg.workdir / "result.json"), str(_bg.workdir)],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()


def _log_tail() -> str:
    assert _bg.workdir is not None
    return (_bg.workdir / "prebuild.log").read_text(errors="replace")[-4000:]


def wait(timeout: float = 1800.0) -> tuple[ib.Built, str]:
    """The background build's image and registry; raises with its log's tail if it failed."""
    assert _bg.proc is not None and _bg.workdir is not None
    result = _bg.workdir / "result.json"
    deadline = time.monotonic() + timeout
    while not result.exists():
        if _bg.proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(1)
    doc = (
        json.loads(result.read_text()) if result.exists() else {"error": f"exit {_bg.proc.poll()}, no result"}
    )
    if "error" in doc:
        raise RuntimeError(f"building the image in the background failed: {doc['error']}\n{_log_tail()}")
    return ib.Built(**doc["built"]), doc["registry"]


def finish() -> None:
    """Let the background process stop what it started, then remove its registry and logs."""
    proc, workdir = _bg.proc, _bg.workdir
    _bg.proc = _bg.workdir = None
    if proc is None:
        return
    assert proc.stdin is not None and workdir is not None
    proc.stdin.close()
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)
    shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def image(workdir: Path) -> Iterator[tuple[ib.Built, str]]:
    """The pushed image for the block: the background build's when one was started, else built now."""
    if _bg.proc is None:
        with built_and_pushed(workdir) as got:
            yield got
        return
    try:
        yield wait()
    finally:
        finish()


def _write(path: Path, doc: dict) -> None:
    part = path.with_suffix(".part")
    part.write_text(json.dumps(doc))
    part.rename(path)


def main(argv: list[str]) -> int:
    result, workdir = Path(argv[0]), Path(argv[1])
    t0 = time.monotonic()
    try:
        with built_and_pushed(workdir, log=lambda m: print(m, flush=True)) as (built, registry):
            print(f"image built and pushed in {time.monotonic() - t0:.0f} s: {built.ref}", flush=True)
            _write(result, {"built": asdict(built), "registry": registry})
            sys.stdin.read()  # until the suite is done with the daemon and the registry
    except Exception as e:  # noqa: BLE001 - every failure goes to the fixture, which reports it
        if not result.exists():
            _write(result, {"error": f"{type(e).__name__}: {e}"})
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
