"""The upload to the stack's weights location and the bucket-side verify, on boto3.

Upload: boto3's transfer manager (multipart, `max_concurrency` parts in flight across all files).
Each object carries its sha256 in its metadata (`x-amz-meta-sha256`); S3's own checksums of a
multipart object are per part (a checksum of checksums), so they cannot stand for the file's
sha256 the manifest and the hosts use. Resumable per file: an object already there with the
file's size and sha256 is skipped, so a killed upload run again sends only what is missing.
manifest.json is written last, once every file is in: until then the bucket keeps the previous
manifest, whose sha256 values make a host that stages a half-replaced checkpoint fail its verify
rather than serve a mix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.subscribers import BaseSubscriber

from infra.weights import manifest as mf
from infra.weights.checkpoint import MANIFEST_NAME, LocalFile

SHA256_META = "sha256"  # x-amz-meta-sha256
MIB = 1024 * 1024
# 64 MiB parts: the hosts' `aws s3 sync` uses the same chunk size (infra/boot/cloud_init.py), and
# a 4 GiB shard is then 64 parts, well under S3's 10,000.
DEFAULT_CHUNK = 64 * MIB


class WeightsUploadError(RuntimeError):
    """An S3 call that failed: one line naming what and where."""


def err_text(e: BaseException) -> str:
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', '')}".rstrip(": ")
    return str(e) or type(e).__name__


@dataclass(frozen=True)
class Location:
    bucket: str
    prefix: str  # "" or ending in "/"

    @classmethod
    def from_uri(cls, uri: str) -> Location:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        return cls(bucket, prefix if not prefix or prefix.endswith("/") else prefix + "/")

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, rel: str) -> str:
        return self.prefix + rel


def listing(s3: Any, loc: Location) -> dict[str, int]:
    """rel -> size of every object under the prefix."""
    out: dict[str, int] = {}
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.prefix):
            for o in page.get("Contents", []):
                out[o["Key"][len(loc.prefix) :]] = int(o["Size"])
    except (ClientError, BotoCoreError) as e:
        raise WeightsUploadError(f"cannot list {loc.uri}: {err_text(e)}") from None
    return out


def _meta_sha256(s3: Any, loc: Location, rel: str) -> str | None:
    try:
        return s3.head_object(Bucket=loc.bucket, Key=loc.key(rel)).get("Metadata", {}).get(SHA256_META)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise WeightsUploadError(f"cannot read {loc.uri}{rel}: {err_text(e)}") from None


def _heads(s3: Any, loc: Location, rels: list[str]) -> dict[str, str | None]:
    with ThreadPoolExecutor(max_workers=16) as ex:
        return dict(zip(rels, ex.map(lambda r: _meta_sha256(s3, loc, r), rels), strict=True))


@dataclass
class UploadPlan:
    send: list[LocalFile]
    present: list[LocalFile]  # already in the bucket with the same size and sha256

    @property
    def send_bytes(self) -> int:
        return sum(f.size for f in self.send)


def plan_upload(
    s3: Any, loc: Location, files: tuple[LocalFile, ...], sums: dict[str, str], held: dict[str, int]
) -> UploadPlan:
    """Which files to send: all but those whose object has the same size and sha256 metadata."""
    same_size = [f.rel for f in files if held.get(f.rel) == f.size]
    metas = _heads(s3, loc, same_size)
    present = [f for f in files if f.rel in metas and metas[f.rel] == sums[f.rel]]
    done = {f.rel for f in present}
    return UploadPlan(send=[f for f in files if f.rel not in done], present=present)


def abort_stale_multipart(s3: Any, loc: Location, rels: set[str]) -> int:
    """Abort the unfinished multipart uploads a killed run left on the keys about to be sent (S3
    bills their parts until aborted). Uploads of other keys under the prefix are left alone."""
    keys = {loc.key(r) for r in rels}
    n = 0
    try:
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=loc.bucket, Prefix=loc.prefix):
            for u in page.get("Uploads", []):
                if u["Key"] in keys:
                    s3.abort_multipart_upload(Bucket=loc.bucket, Key=u["Key"], UploadId=u["UploadId"])
                    n += 1
    except (ClientError, BotoCoreError) as e:
        raise WeightsUploadError(
            f"cannot list or abort unfinished uploads under {loc.uri}: {err_text(e)}"
        ) from None
    return n


class _Progress(BaseSubscriber):
    def __init__(self, on_bytes: Callable[[int], None]):
        self._on_bytes = on_bytes

    def on_progress(self, future, bytes_transferred, **kwargs):  # noqa: ARG002 - s3transfer's signature
        # Negative on a retried part (s3transfer takes back what it will send again).
        self._on_bytes(bytes_transferred)


@dataclass
class UploadResult:
    sent: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def send(
    s3: Any,
    loc: Location,
    files: list[LocalFile],
    sums: dict[str, str],
    concurrency: int,
    chunk: int = DEFAULT_CHUNK,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> UploadResult:
    """Upload `files` through one transfer manager: up to `concurrency` parts in flight, across
    files. Every file is tried; the failures are returned, not raised, so the caller can say how
    much is in."""
    config = TransferConfig(
        multipart_threshold=chunk,
        multipart_chunksize=chunk,
        max_concurrency=concurrency,
        use_threads=True,
    )
    result = UploadResult()
    with create_transfer_manager(s3, config) as tm:
        futures = [
            (
                f,
                tm.upload(
                    str(f.path),
                    loc.bucket,
                    loc.key(f.rel),
                    extra_args={"Metadata": {SHA256_META: sums[f.rel]}},
                    subscribers=[_Progress(on_bytes)],
                ),
            )
            for f in files
        ]
        for f, fut in futures:
            try:
                fut.result()
                result.sent.append(f.rel)
            except Exception as e:  # noqa: BLE001 - each file's failure is reported, the rest go on
                result.failed.append((f.rel, err_text(e)))
    return result


def put_manifest(s3: Any, loc: Location, body: bytes) -> bool:
    """Write manifest.json unless the bucket's is byte-identical (a new version of the same
    bytes changes nothing for the hosts, but would be one more object version). True if written."""
    try:
        current = s3.get_object(Bucket=loc.bucket, Key=loc.key(MANIFEST_NAME))["Body"].read()
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in {"NoSuchKey", "404"}:
            raise WeightsUploadError(f"cannot read {loc.uri}{MANIFEST_NAME}: {err_text(e)}") from None
        current = None
    if current == body:
        return False
    try:
        s3.put_object(
            Bucket=loc.bucket,
            Key=loc.key(MANIFEST_NAME),
            Body=body,
            ContentType="application/json",
            Metadata={SHA256_META: hashlib.sha256(body).hexdigest()},
        )
    except (ClientError, BotoCoreError) as e:
        raise WeightsUploadError(f"cannot write {loc.uri}{MANIFEST_NAME}: {err_text(e)}") from None
    return True


def delete_keys(s3: Any, loc: Location, rels: list[str]) -> None:
    for i in range(0, len(rels), 1000):  # DeleteObjects takes at most 1,000 keys
        batch = [{"Key": loc.key(r)} for r in rels[i : i + 1000]]
        try:
            out = s3.delete_objects(Bucket=loc.bucket, Delete={"Objects": batch, "Quiet": True})
        except (ClientError, BotoCoreError) as e:
            raise WeightsUploadError(f"cannot delete under {loc.uri}: {err_text(e)}") from None
        if out.get("Errors"):
            first = out["Errors"][0]
            raise WeightsUploadError(
                f"cannot delete {first.get('Key')}: {first.get('Code')}: {first.get('Message')}"
            )


# --- verify --------------------------------------------------------------------------------------


@dataclass
class VerifyResult:
    uri: str
    files: int = 0
    bytes: int = 0
    by_content: int = 0  # objects whose bytes were hashed (--download) or whose sha256 metadata matched
    problems: list[str] = field(default_factory=list)
    manifest_sha256: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "ok": self.ok,
            "files": self.files,
            "bytes": self.bytes,
            "sha256_checked": self.by_content,
            "manifest_sha256": self.manifest_sha256,
            "problems": self.problems,
        }


def _download_sha256(s3: Any, loc: Location, rel: str, on_bytes: Callable[[int], None]) -> str:
    h = hashlib.sha256()
    body = s3.get_object(Bucket=loc.bucket, Key=loc.key(rel))["Body"]
    for chunk in body.iter_chunks(chunk_size=mf.HASH_BLOCK):
        h.update(chunk)
        on_bytes(len(chunk))
    return h.hexdigest()


def verify(
    s3: Any, loc: Location, download: bool = False, on_bytes: Callable[[int], None] = lambda n: None
) -> VerifyResult:
    """The bucket against its manifest.json: every file there with its size and sha256 (the
    object's sha256 metadata, or its bytes hashed with `download`), and nothing else under the
    prefix (the hosts stage the whole prefix, so an extra shard would be loaded too)."""
    res = VerifyResult(uri=loc.uri)
    try:
        body = s3.get_object(Bucket=loc.bucket, Key=loc.key(MANIFEST_NAME))["Body"].read()
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code")
        if code in {"NoSuchKey", "404"}:
            res.problems.append(f"no {MANIFEST_NAME} at {loc.uri}: upload with `llmfleet weights upload`")
            return res
        raise WeightsUploadError(f"cannot read {loc.uri}{MANIFEST_NAME}: {err_text(e)}") from None
    res.manifest_sha256 = hashlib.sha256(body).hexdigest()
    try:
        manifest = mf.parse(body, f"{loc.uri}{MANIFEST_NAME}")
    except mf.ManifestError as e:
        res.problems.append(str(e))
        return res
    held = listing(s3, loc)
    entries = manifest.by_path()
    res.files, res.bytes = len(entries), sum(e.size for e in entries.values())
    for rel in sorted(set(held) - set(entries) - {MANIFEST_NAME}):
        res.problems.append(f"{rel}: in the bucket but not in the manifest (the hosts would stage it too)")
    there = []
    for rel, e in sorted(entries.items()):
        if rel not in held:
            res.problems.append(f"{rel}: missing")
        elif held[rel] != e.size:
            res.problems.append(f"{rel}: {held[rel]} bytes, the manifest says {e.size}")
        else:
            there.append(rel)
    if download:
        with ThreadPoolExecutor(max_workers=8) as ex:
            got = dict(
                zip(there, ex.map(lambda r: _download_sha256(s3, loc, r, on_bytes), there), strict=True)
            )
        what = "its bytes hash to"
    else:
        got = _heads(s3, loc, there)
        what = "its sha256 metadata says"
    for rel in there:
        sha = got[rel]
        if sha is None:
            continue  # uploaded by another tool: size checked; --download checks its bytes
        if sha != entries[rel].sha256:
            res.problems.append(f"{rel}: {what} {sha[:12]}..., the manifest {entries[rel].sha256[:12]}...")
        else:
            res.by_content += 1
    return res
