"""The node image's tag: a content hash of its build context (images/ + ray_cluster/).

Pure (hashlib and the file tree): the Pulumi component that builds the image
(infra.components.image) and local mode's `make image` (infra.local.image_build) tag the same
tree the same way, and the latter loads no Pulumi to do it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

# What the Dockerfile copies: images/ and ray_cluster/ (the host side) only, so operator edits
# (infra/: renderers, local cluster, CLI) never change the tag. .dockerignore admits the same set.
CONTEXT_PATHS = ("images", "ray_cluster")
SKIP_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
# Distinct tag prefixes: the registry's lifecycle rules count node images and build caches
# apart (infra/components/registry.py).
NODE_TAG_PREFIX = "ctx-"
CACHE_TAG_PREFIX = "cache-"


def _files(root: Path, paths: Iterable[str]) -> list[Path]:
    out = []
    for p in paths:
        base = root / p
        items = [base] if base.is_file() else sorted(base.rglob("*"))
        out += [
            f for f in items if f.is_file() and not SKIP_PARTS.intersection(f.parts) and f.suffix != ".pyc"
        ]
    return sorted(out)


def context_hash(
    root: Path, paths: Iterable[str] = CONTEXT_PATHS, extra: dict[str, str] | None = None
) -> str:
    """sha256 over the relative paths and bytes of the build context (and build args)."""
    h = hashlib.sha256()
    for f in _files(root, paths):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    for k, v in sorted((extra or {}).items()):
        h.update(f"{k}={v}\0".encode())
    return h.hexdigest()


def image_tag(root: Path, build_args: dict[str, str]) -> str:
    return NODE_TAG_PREFIX + context_hash(root, extra=build_args)[:16]


def cache_tag(root: Path, build_args: dict[str, str]) -> str:
    return CACHE_TAG_PREFIX + context_hash(root, ("images/Dockerfile",), build_args)[:16]
