"""manifest.json: the checkpoint's files with their sizes and sha256, written beside the shards.

The format is the one the hosts' staging verifies after the download (infra/boot/cloud_init.py's
_VERIFY_PY: `{"files": [{"path", "size", "sha256"}]}`) and the preflight reads (sizes). The
hosts also name a staged checkpoint by the sha256 of this file's bytes (the ready marker), so
the bytes are deterministic: sorted entries, no timestamp. Uploading the same checkpoint again
writes the same manifest, and no host re-stages for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from infra.validation import first_error
from infra.weights.checkpoint import LocalFile

HASH_BLOCK = 8 * 1024 * 1024


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$")
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _inside_the_model_directory(cls, v: str) -> str:
        # The hosts' verify joins it under the model directory (boot/cloud_init.py's _VERIFY_PY):
        # a '..' part would point it at a file outside, which the pattern alone lets through.
        if any(part in ("", ".", "..") for part in v.split("/")):
            raise ValueError("allowed: a relative path of names (no empty, '.' or '..' part)")
        return v


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    files: list[ManifestEntry]

    def to_bytes(self) -> bytes:
        entries = sorted(self.files, key=lambda e: e.path)
        return (json.dumps({"files": [e.model_dump() for e in entries]}, indent=1) + "\n").encode()

    def by_path(self) -> dict[str, ManifestEntry]:
        return {e.path: e for e in self.files}


class ManifestError(ValueError):
    pass


def parse(data: bytes, where: str) -> Manifest:
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as e:
        err = first_error(e)
        at = f"{err.path} = {err.input!r}" if err.path else "the document"
        raise ManifestError(
            f"{where}: {at}: {err.allowed()} (format: {{files: [{{path, size, sha256}}]}})"
        ) from None


def sha256_file(f: LocalFile, on_bytes: Callable[[int], None] = lambda n: None) -> str:
    h = hashlib.sha256()
    with open(f.path, "rb") as fh:
        while block := fh.read(HASH_BLOCK):
            h.update(block)
            on_bytes(len(block))
    return h.hexdigest()


def hash_files(
    files: Iterable[LocalFile], workers: int, on_bytes: Callable[[int], None] = lambda n: None
) -> dict[str, str]:
    """rel -> sha256, files hashed in parallel (hashlib releases the GIL on large blocks)."""
    files = list(files)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        sums = ex.map(lambda f: sha256_file(f, on_bytes), files)
        return {f.rel: s for f, s in zip(files, sums, strict=True)}


def build(files: Iterable[LocalFile], sums: dict[str, str]) -> Manifest:
    return Manifest(files=[ManifestEntry(path=f.rel, size=f.size, sha256=sums[f.rel]) for f in files])
