"""Are the weights where the stack says, complete (manifest / safetensors index vs the objects)
and about the size the catalog expects."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from infra.account_check.model import GIB, WEIGHTS_TOLERANCE, Check, PreflightInputs, _err, split_s3_uri


def _read_json(s3: Any, bucket: str, key: str) -> Any | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            return None
        raise
    return json.loads(body)


def _manifest_problems(manifest: Any, sizes: dict[str, int]) -> list[str]:
    """manifest.json: {"files": [{"path": "x.safetensors", "size": N}, ...]} (or {"files": {"path": N}})."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if isinstance(files, dict):
        files = [{"path": k, "size": v} for k, v in files.items()]
    if not isinstance(files, list):
        return ["manifest.json has no 'files' list"]
    bad = []
    for f in files:
        path, size = f.get("path") or f.get("name"), f.get("size")
        if path not in sizes:
            bad.append(f"{path} missing")
        elif size is not None and int(size) != sizes[path]:
            bad.append(f"{path} is {sizes[path]} bytes, manifest says {size}")
    return bad


def _index_problems(index: Any, sizes: dict[str, int]) -> list[str]:
    """Hugging Face model.safetensors.index.json: every shard in weight_map must be there."""
    shards = set((index or {}).get("weight_map", {}).values())
    return [f"{s} missing" for s in sorted(shards) if s not in sizes]


def check_weights(s3: Any, inp: PreflightInputs) -> Check:
    name = "weights"
    if not inp.weights_uri:
        return Check(
            name,
            "warn",
            "no llmfleet:weightsUri: `pulumi up` creates the weights bucket and the workers stage from "
            "`pulumi stack output weights_uri` at boot; upload the checkpoint there (or set "
            "llmfleet:weightsUri to an existing upload, which preflight then checks)",
        )
    if not inp.weights_uri.startswith("s3://"):
        return Check(name, "warn", f"{inp.weights_uri} is not on S3, so preflight cannot check it")
    try:
        bucket, prefix = split_s3_uri(inp.weights_uri)
    except ValueError as e:
        return Check(name, "fail", str(e))
    uri = f"s3://{bucket}/{prefix}"
    sync = f"aws s3 sync <local checkpoint dir> {uri}"
    sizes: dict[str, int] = {}
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                sizes[o["Key"][len(prefix) :]] = int(o["Size"])
    except (ClientError, BotoCoreError) as e:
        return Check(name, "fail", f"cannot list {uri}: {_err(e)}: create the bucket and upload ({sync})")
    if not sizes:
        return Check(name, "fail", f"{uri} holds no objects: upload the weights ({sync})")
    total = sum(sizes.values())
    problems: list[str] = []
    try:
        if "manifest.json" in sizes:
            problems += _manifest_problems(_read_json(s3, bucket, prefix + "manifest.json"), sizes)
        if "model.safetensors.index.json" in sizes:
            problems += _index_problems(
                _read_json(s3, bucket, prefix + "model.safetensors.index.json"), sizes
            )
    except (ClientError, BotoCoreError, ValueError) as e:
        problems.append(f"cannot read the manifest: {_err(e)}")
    held = f"{uri} holds {total / GIB:.1f} GiB in {len(sizes)} objects"
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        return Check(name, "fail", f"{held}; {'; '.join(problems[:3])}{more}: finish the upload ({sync})")
    if inp.expected_weights_bytes:
        exp = inp.expected_weights_bytes
        if abs(total - exp) > WEIGHTS_TOLERANCE * exp:
            return Check(
                name,
                "fail",
                f"{held}, expected {exp / GIB:.1f} GiB ±5% (model card {inp.model}): "
                + ("finish the upload" if total < exp else "point weightsUri at the checkpoint itself")
                + f" ({sync})",
            )
        return Check(name, "pass", f"{held}, expected {exp / GIB:.1f} GiB ±5% (model card {inp.model})")
    return Check(name, "pass", held)
