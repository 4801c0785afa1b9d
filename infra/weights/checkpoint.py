"""A local checkpoint directory read without its tensor data, and checked against a catalog model.

What is read: the file list (names and sizes), config.json, and each safetensors file's header
(8-byte little-endian length + a JSON table of dtype, shape and data offsets per tensor). The
header is read by hand rather than through `safetensors.safe_open`: safe_open maps the file and
hides the data offsets, and the offsets against the file's size are what tell a truncated shard
(an interrupted download) before it is uploaded. No tensor byte is read, so checking R1's
~640 GiB costs one small read per shard.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.constants import GIB, WEIGHTS_TOLERANCE

MANIFEST_NAME = "manifest.json"
INDEX_NAME = "model.safetensors.index.json"
# The safetensors format caps the header at 100 MB (its own reader refuses a larger one).
MAX_HEADER_BYTES = 100_000_000
# A name becomes an S3 key, a path on every host and a line in the manifest the hosts' verify
# joins to the model directory: only plain names, no '..', no leading dot.
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
ITEMSIZE = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
# safetensors dtype -> the catalog's name for a checkpoint's precision (models.yaml native_dtype)
PRECISION = {
    "F8_E4M3": "fp8",
    "F8_E5M2": "fp8",
    "BF16": "bf16",
    "F16": "fp16",
    "F32": "fp32",
    "F64": "fp64",
    "I8": "int8",
    "U8": "uint8 (packed)",
    "I32": "int32 (packed)",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the stack: one line, no traceback."""


@dataclass(frozen=True)
class LocalFile:
    rel: str  # POSIX path under the checkpoint directory: the S3 key's suffix, the manifest's path
    path: Path
    size: int


@dataclass(frozen=True)
class Header:
    """One safetensors file's header: tensor name -> (dtype, shape, (begin, end))."""

    file: str
    tensors: dict[str, tuple[str, tuple[int, ...], tuple[int, int]]]
    data_bytes: int  # what the file holds after the header


@dataclass(frozen=True)
class CheckpointFacts:
    files: tuple[LocalFile, ...]
    config: dict[str, Any]
    headers: tuple[Header, ...] = field(default=())

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def weights_bytes(self) -> int:
        return sum(f.size for f in self.files if f.rel.endswith(".safetensors"))

    def precision(self) -> str | None:
        """The precision holding most of the matrices' bytes. Vectors (norms, biases) are left
        out; FP8's F32 block scales are matrices but 128x128 times smaller than their weights."""
        by_dtype: Counter[str] = Counter()
        for h in self.headers:
            for dtype, shape, (begin, end) in h.tensors.values():
                if len(shape) >= 2:
                    by_dtype[dtype] += end - begin
        if not by_dtype:
            return None
        dtype = by_dtype.most_common(1)[0][0]
        return PRECISION.get(dtype, dtype)

    def header_layers(self) -> int:
        """Distinct `model.layers.N.` indices across the shards (R1's MTP layer included)."""
        seen = {int(m.group(1)) for h in self.headers for name in h.tensors if (m := _LAYER.match(name))}
        return len(seen)


def scan(directory: Path) -> tuple[LocalFile, ...]:
    """Every regular file under `directory` (following the symlinks of a Hugging Face snapshot),
    except hidden ones (`.cache/`, `.gitattributes`) and a manifest.json the upload writes itself."""
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(f"--from {str(directory)!r}: not a directory; allowed: a checkpoint directory")
    out: list[LocalFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel == MANIFEST_NAME:
                continue
            bad = [p for p in rel.split("/") if not _PART.fullmatch(p)]
            if bad:
                raise CheckpointError(
                    f"{str(path)!r}: the name {bad[0]!r} would become an S3 key and a path on every host; "
                    "allowed: letters, digits, '.', '_', '-' (rename or remove it)"
                )
            if not path.is_file():  # a dangling symlink (an incomplete snapshot), a socket
                raise CheckpointError(f"{str(path)!r}: not a regular file (a broken symlink?)")
            out.append(LocalFile(rel=rel, path=path, size=path.stat().st_size))
    if not out:
        raise CheckpointError(f"--from {str(directory)!r}: no files to upload")
    return tuple(out)


def read_header(f: LocalFile) -> Header:
    """The header of one safetensors file; its data extents must fill the file exactly."""
    with open(f.path, "rb") as fh:
        raw_len = fh.read(8)
        if len(raw_len) < 8:
            raise CheckpointError(f"{f.rel}: {f.size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", raw_len)
        if n > MAX_HEADER_BYTES or 8 + n > f.size:
            raise CheckpointError(f"{f.rel}: header length {n} does not fit the file ({f.size} bytes)")
        try:
            doc = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{f.rel}: the safetensors header is not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{f.rel}: the safetensors header is not a JSON object")
    data_bytes = f.size - 8 - n
    tensors: dict[str, tuple[str, tuple[int, ...], tuple[int, int]]] = {}
    end_max = 0
    for name, t in doc.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = str(t["dtype"]), tuple(int(d) for d in t["shape"]), t["data_offsets"]
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{f.rel}: tensor {name!r} has no dtype/shape/data_offsets") from None
        size = ITEMSIZE.get(dtype)
        if size is not None and end - begin != math.prod(shape) * size:
            raise CheckpointError(
                f"{f.rel}: tensor {name!r} is {dtype} {list(shape)} but spans {end - begin} bytes"
            )
        tensors[name] = (dtype, shape, (begin, end))
        end_max = max(end_max, end)
    if end_max != data_bytes:
        raise CheckpointError(
            f"{f.rel}: the header describes {end_max} bytes of tensors, the file holds {data_bytes}"
            + (" (truncated: an interrupted download?)" if data_bytes < end_max else "")
        )
    return Header(file=f.rel, tensors=tensors, data_bytes=data_bytes)


def read_config(files: tuple[LocalFile, ...]) -> dict[str, Any]:
    cfg = next((f for f in files if f.rel == "config.json"), None)
    if cfg is None:
        raise CheckpointError(
            "config.json is missing: a Hugging Face checkpoint carries one beside its shards"
        )
    try:
        doc = json.loads(cfg.path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"config.json is not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise CheckpointError("config.json is not a JSON object")
    return doc


def read_checkpoint(directory: Path) -> CheckpointFacts:
    """The files, config.json and every safetensors header; the index's shards must all be there."""
    files = scan(directory)
    config = read_config(files)
    shards = [f for f in files if f.rel.endswith(".safetensors")]
    if not shards:
        raise CheckpointError(f"--from {str(directory)!r}: no .safetensors files (vLLM loads safetensors)")
    headers = tuple(read_header(f) for f in shards)
    index = next((f for f in files if f.rel == INDEX_NAME), None)
    if index is not None:
        try:
            weight_map = json.loads(index.path.read_bytes()).get("weight_map") or {}
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            raise CheckpointError(f"{INDEX_NAME} is not a JSON object with a weight_map ({e})") from None
        have = {f.rel for f in shards}
        missing = sorted({str(s) for s in weight_map.values()} - have)
        if missing:
            more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
            raise CheckpointError(f"{INDEX_NAME} names {missing[0]}{more}, which is not in the directory")
        by_shard = {h.file: h.tensors for h in headers}
        absent = [t for t, s in weight_map.items() if t not in by_shard[str(s)]]
        if absent:
            raise CheckpointError(
                f"{INDEX_NAME}: tensor {absent[0]!r} is not in {weight_map[absent[0]]}'s header"
            )
    return CheckpointFacts(files=files, config=config, headers=headers)


def config_mismatches(cfg: dict[str, Any], model: Any) -> list[str]:
    """What config.json alone says differs from the catalog model (a models.yaml row)."""
    out: list[str] = []
    archs = cfg.get("architectures")
    arch = str(archs[0]) if isinstance(archs, list) and archs else None
    if arch != model.architecture:
        out.append(f"architecture {arch} (expected {model.architecture})")
    if cfg.get("num_hidden_layers") != model.layers:
        out.append(f"num_hidden_layers {cfg.get('num_hidden_layers')} (expected {model.layers})")
    if cfg.get("hidden_size") != model.hidden:
        out.append(f"hidden_size {cfg.get('hidden_size')} (expected {model.hidden})")
    if model.moe is not None and cfg.get("n_routed_experts") != model.moe.routed_experts:
        out.append(f"n_routed_experts {cfg.get('n_routed_experts')} (expected {model.moe.routed_experts})")
    return out


def mismatches(facts: CheckpointFacts, model: Any) -> list[str]:
    """What in the checkpoint differs from the catalog model: config.json, then the headers
    (every layer present, the weights' precision) and the shards' total size. Empty = it fits."""
    out = config_mismatches(facts.config, model)
    if not out:
        # The shards must hold every layer config.json declares (+ R1's MTP layer).
        want = model.layers + int(facts.config.get("num_nextn_predict_layers") or 0)
        got = facts.header_layers()
        if got != want:
            out.append(f"the shards hold {got} layers, config.json declares {want}")
    precision = facts.precision()
    if precision != model.native_dtype:
        out.append(f"weights in {precision} (expected {model.native_dtype}, as {model.hf_repo} ships)")
    expected = model.checkpoint_gib * GIB
    if abs(facts.weights_bytes - expected) > WEIGHTS_TOLERANCE * expected:
        out.append(
            f"{facts.weights_bytes / GIB:.4g} GiB of safetensors "
            f"(expected {model.checkpoint_gib:g} GiB ±{WEIGHTS_TOLERANCE:.0%})"
        )
    return out
