"""`llmfleet weights upload | verify` against a real moto S3 server.

Checkpoints: the tiny DeepSeek-V3 model the project generates (uploaded for real), and header-only
ones (tests/synthetic_checkpoint.py) with R1's 91,991 tensor shapes in 163 sparse shards, which
only the header check may touch. The hosts' own verify script (infra/boot/cloud_init.py) is run
on a download of the upload, so the manifest is checked by what will read it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.boot.cloud_init import _VERIFY_PY
from infra.catalog import load_catalog
from infra.cli import app
from infra.local.tiny_model import ensure_tiny_model
from infra.weights import checkpoint as ck
from infra.weights import s3 as ws3
from tests.moto_fixtures import DUMMY_CREDS, MotoServer
from tests.synthetic_checkpoint import R1_CONFIG, r1_tensors, write_header_only

RUNNER = CliRunner()
BUCKET = "llmfleet-weights-test"
R1 = load_catalog().models["deepseek-r1"]


@pytest.fixture(scope="module")
def moto():
    with MotoServer() as m:
        yield m


@pytest.fixture
def s3(moto, monkeypatch):
    moto.reset()
    for k, v in {**DUMMY_CREDS, "AWS_ENDPOINT_URL": moto.url}.items():
        monkeypatch.setenv(k, v)
    client = moto.client("s3")
    client.create_bucket(Bucket=BUCKET)
    # The stack's own bucket is versioned (infra/components/weights.py): each PUT is a version,
    # which is how the tests count what was sent.
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return client


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A copy of the tiny model (the upload only reads it; the copy keeps the shared cache out)."""
    dst = tmp_path_factory.mktemp("tiny") / "tiny-deepseek-v3"
    shutil.copytree(ensure_tiny_model(), dst)
    return dst


@pytest.fixture(scope="module")
def r1_dir(tmp_path_factory) -> Path:
    return write_header_only(tmp_path_factory.mktemp("r1") / "DeepSeek-R1", r1_tensors(), 163, R1_CONFIG)


def upload(*args: str, prefix: str = "tiny/"):
    return RUNNER.invoke(
        app,
        ["weights", "upload", "--stack", "prod", "-c", f"llmfleet:weightsUri=s3://{BUCKET}/{prefix}", *args],
        env={"COLUMNS": "200"},
    )


def verify(*args: str, prefix: str = "tiny/"):
    return RUNNER.invoke(
        app,
        ["weights", "verify", "--stack", "prod", "-c", f"llmfleet:weightsUri=s3://{BUCKET}/{prefix}", *args],
        env={"COLUMNS": "200"},
    )


def keys(s3, prefix: str = "tiny/") -> dict[str, int]:
    """key -> number of versions: 1 = written once."""
    out: dict[str, int] = {}
    for v in s3.list_object_versions(Bucket=BUCKET, Prefix=prefix).get("Versions", []):
        out[v["Key"]] = out.get(v["Key"], 0) + 1
    return out


def one_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- the check: headers only, before any byte moves -----------------------------------------------


@pytest.fixture(scope="module")
def r1_read(r1_dir) -> tuple[ck.CheckpointFacts, int]:
    """R1's facts, and the bytes this process read to get them (/proc/self/io rchar)."""
    before = _bytes_read()
    facts = ck.read_checkpoint(r1_dir)
    return facts, _bytes_read() - before


@pytest.fixture
def r1_facts(r1_read) -> ck.CheckpointFacts:
    return r1_read[0]


def test_r1_shaped_checkpoint_fits_deepseek_r1_from_its_headers_alone(r1_read):
    facts, read = r1_read
    assert ck.mismatches(facts, R1) == []
    assert len(facts.headers) == 163 and sum(len(h.tensors) for h in facts.headers) == 91991
    assert facts.precision() == "fp8" and facts.header_layers() == 62  # 61 + the MTP layer
    assert abs(facts.weights_bytes / 1024**3 - R1.checkpoint_gib) < 1  # 641.3 GiB: the real shards' total
    # ~641 GiB of shards checked by reading their headers only (a few MiB), on ~20 MiB of disk.
    assert read < 64 * 1024**2, read
    assert sum(f.path.stat().st_blocks * 512 for f in facts.files) < 64 * 1024**2


def _bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_another_architecture_is_refused_in_one_line_before_any_byte_moves(s3, tmp_path):
    qwen = {**R1_CONFIG, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}
    d = write_header_only(tmp_path / "qwen", r1_tensors(layers=4, mtp=0), 2, qwen)
    result = upload("--from", str(d))
    assert result.exit_code == 2
    line = one_line(result)
    assert (
        "is not deepseek-r1's checkpoint: architecture Qwen2ForCausalLM (expected DeepseekV3ForCausalLM)"
        in line
    )
    assert "num_hidden_layers 61 (expected 61)" not in line and "allowed: that checkpoint" in line
    assert keys(s3, "") == {}  # nothing reached the bucket


def test_r1_in_bf16_is_refused_with_what_differs(tmp_path):
    bf16 = write_header_only(tmp_path / "bf16", r1_tensors(weight_dtype="BF16"), 163, R1_CONFIG)
    assert ck.mismatches(ck.read_checkpoint(bf16), R1) == [
        "weights in bf16 (expected fp8, as deepseek-ai/DeepSeek-R1 ships)",
        "1275 GiB of safetensors (expected 642 GiB ±5%)",
    ]


def test_shards_missing_a_layer_config_json_declares_are_refused(r1_facts):
    # The last shard's tensors (the MTP layer's end) dropped from what the headers say.
    last = r1_facts.headers[-1]
    kept = {n: t for n, t in last.tensors.items() if not n.startswith("model.layers.61.")}
    cut = dataclasses.replace(
        r1_facts, headers=(*r1_facts.headers[:-1], dataclasses.replace(last, tensors=kept))
    )
    layers_in = {n.split(".")[2] for h in cut.headers for n in h.tensors if n.startswith("model.layers.")}
    if "61" in layers_in:  # the MTP layer spans more than the last shard: drop it everywhere
        cut = dataclasses.replace(
            cut,
            headers=tuple(
                dataclasses.replace(
                    h, tensors={n: t for n, t in h.tensors.items() if not n.startswith("model.layers.61.")}
                )
                for h in cut.headers
            ),
        )
    assert ck.mismatches(cut, R1) == ["the shards hold 61 layers, config.json declares 62"]


def test_a_truncated_shard_or_a_missing_one_is_named(tmp_path):
    d = write_header_only(tmp_path / "ck", r1_tensors(layers=2, mtp=0), 3, R1_CONFIG)
    shard = d / "model-00002-of-00003.safetensors"
    os.truncate(shard, shard.stat().st_size - 1)
    with pytest.raises(
        ck.CheckpointError,
        match=r"model-00002-of-00003.safetensors: the header describes \d+ bytes of tensors, the file holds \d+ \(truncated",
    ):
        ck.read_checkpoint(d)
    shard.unlink()
    with pytest.raises(
        ck.CheckpointError, match="index.json names model-00002-of-00003.safetensors, which is not in"
    ):
        ck.read_checkpoint(d)


@pytest.mark.parametrize("name", ["bad name.bin", "x$(id).json", "café.txt"])
def test_a_file_name_that_would_reach_a_key_and_a_host_path_is_refused(tmp_path, name):
    d = write_header_only(tmp_path / "ck", r1_tensors(layers=1, mtp=0), 1, R1_CONFIG)
    (d / name).write_text("x")
    with pytest.raises(ck.CheckpointError, match=r"allowed: letters, digits, '\.', '_', '-'"):
        ck.scan(d)


def _shard(path: Path, header: dict, data_bytes: int, header_len: int | None = None) -> ck.LocalFile:
    raw = json.dumps(header).encode()
    path.write_bytes(
        struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + b"\0" * data_bytes
    )
    return ck.LocalFile(rel=path.name, path=path, size=path.stat().st_size)


def test_a_shard_whose_header_does_not_describe_its_bytes_is_named(tmp_path):
    t = {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}
    assert ck.read_header(_shard(tmp_path / "ok.safetensors", {"w": t}, 8)).data_bytes == 8
    # a tensor whose extent is not its dtype x shape
    bad = _shard(tmp_path / "span.safetensors", {"w": {**t, "data_offsets": [0, 6]}}, 6)
    with pytest.raises(
        ck.CheckpointError, match=r"^span.safetensors: tensor 'w' is BF16 \[2, 2\] but spans 6 bytes$"
    ):
        ck.read_header(bad)
    # bytes after the last tensor: not the checkpoint the header describes (no "truncated")
    extra = _shard(tmp_path / "extra.safetensors", {"w": t}, 9)
    with pytest.raises(
        ck.CheckpointError,
        match=r"^extra.safetensors: the header describes 8 bytes of tensors, the file holds 9$",
    ):
        ck.read_header(extra)
    # a header length past the end of the file
    cut = _shard(tmp_path / "cut.safetensors", {"w": t}, 0, header_len=4096)
    with pytest.raises(
        ck.CheckpointError, match=r"^cut.safetensors: header length 4096 does not fit the file \(\d+ bytes\)$"
    ):
        ck.read_header(cut)


def test_a_checkpoint_without_its_config_shards_or_an_indexed_tensor_is_refused(tmp_path):
    d = write_header_only(tmp_path / "ck", r1_tensors(layers=1, mtp=0), 1, R1_CONFIG)
    index = json.loads((d / ck.INDEX_NAME).read_text())
    index["weight_map"]["model.layers.0.not_there.weight"] = "model-00001-of-00001.safetensors"
    (d / ck.INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(
        ck.CheckpointError,
        match=r"^model.safetensors.index.json: tensor 'model.layers.0.not_there.weight' is not in "
        r"model-00001-of-00001.safetensors's header$",
    ):
        ck.read_checkpoint(d)
    (d / "config.json").unlink()
    with pytest.raises(
        ck.CheckpointError, match="^config.json is missing: a Hugging Face checkpoint carries one"
    ):
        ck.read_checkpoint(d)
    (d / "config.json").write_text(json.dumps(R1_CONFIG))
    for f in d.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ck.CheckpointError, match=r"no .safetensors files \(vLLM loads safetensors\)$"):
        ck.read_checkpoint(d)
    (d / "dangling.json").symlink_to(tmp_path / "gone")
    with pytest.raises(
        ck.CheckpointError, match=r"dangling.json': not a regular file \(a broken symlink\?\)$"
    ):
        ck.scan(d)


def test_config_json_of_another_width_or_expert_count_is_not_r1():
    assert ck.config_mismatches(R1_CONFIG, R1) == []
    assert ck.config_mismatches({**R1_CONFIG, "hidden_size": 4096}, R1) == [
        "hidden_size 4096 (expected 7168)"
    ]
    assert ck.config_mismatches({**R1_CONFIG, "n_routed_experts": 64}, R1) == [
        "n_routed_experts 64 (expected 256)"
    ]


def test_a_bucket_manifest_with_a_path_or_digest_the_hosts_could_not_use_is_refused():
    from infra.weights import manifest as mf

    good = {"path": "model-00001-of-00001.safetensors", "size": 1, "sha256": "a" * 64}
    assert mf.parse(json.dumps({"files": [good]}).encode(), "m").files[0].path == good["path"]
    bad = [("path", "/etc/passwd"), ("path", "../x"), ("path", "a/../../etc/passwd"), ("path", "a//b"),
           ("sha256", "A" * 64), ("sha256", "ab")]  # fmt: skip
    for field, value in bad:
        with pytest.raises(
            mf.ManifestError, match=rf"^s3://b/manifest.json: files\[0\].{field} = {value!r}: allowed: "
        ):
            mf.parse(json.dumps({"files": [{**good, field: value}]}).encode(), "s3://b/manifest.json")


def test_only_the_unfinished_uploads_of_the_keys_about_to_be_sent_are_aborted(s3):
    for key in ("tiny/model.safetensors", "tiny/other.safetensors", "elsewhere/model.safetensors"):
        s3.create_multipart_upload(Bucket=BUCKET, Key=key)
    loc = ws3.Location.from_uri(f"s3://{BUCKET}/tiny/")
    assert ws3.abort_stale_multipart(s3, loc, {"model.safetensors"}) == 1
    left = sorted(u["Key"] for u in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []))
    assert left == ["elsewhere/model.safetensors", "tiny/other.safetensors"]


def test_dry_run_of_the_r1_shaped_checkpoint_passes_the_check_and_sends_nothing(s3, r1_dir):
    result = upload("--from", str(r1_dir), "--dry-run", "--json", prefix="deepseek-r1/")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["files"] == 165 and doc["model_checked"] and doc["dry_run"]  # 163 shards + index + config
    assert keys(s3, "") == {}


# --- the upload ------------------------------------------------------------------------------------


def _download(s3, prefix: str, dest: Path) -> Path:
    for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]:
        p = dest / o["Key"][len(prefix) :]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read())
    return dest


def test_tiny_model_upload_writes_a_manifest_the_hosts_verify(s3, tiny, tmp_path):
    result = upload("--from", str(tiny), "--skip-model-check", "--json")
    assert result.exit_code == 0, result.stderr
    local = {p.name: p for p in tiny.iterdir()}
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key="tiny/manifest.json")["Body"].read())
    assert [e["path"] for e in manifest["files"]] == sorted(local)
    for e in manifest["files"]:
        data = local[e["path"]].read_bytes()
        assert e["size"] == len(data) and e["sha256"] == hashlib.sha256(data).hexdigest()
        assert s3.get_object(Bucket=BUCKET, Key=f"tiny/{e['path']}")["Body"].read() == data
    # The hosts' staging: download the prefix, then their verify script against the manifest.
    staged = _download(s3, "tiny/", tmp_path / "staged")
    ok = subprocess.run(
        [sys.executable, "-c", _VERIFY_PY, str(staged), str(staged / "manifest.json")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "verified 6 files" in ok.stdout, ok.stderr
    (staged / "model.safetensors").write_bytes(b"\0" + (staged / "model.safetensors").read_bytes()[1:])
    bad = subprocess.run(
        [sys.executable, "-c", _VERIFY_PY, str(staged), str(staged / "manifest.json")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "model.safetensors: sha256 mismatch" in bad.stderr
    # Same checkpoint again: nothing sent, the manifest's bytes (the hosts' identity) unchanged.
    again = upload("--from", str(tiny), "--skip-model-check", "--json")
    doc = json.loads(again.stdout)
    assert doc["uploaded"] == [] and len(doc["already_there"]) == 6 and not doc["manifest_written"]
    assert set(keys(s3).values()) == {1}
    assert verify().exit_code == 0


class _Crash(Exception):
    pass


def _count_puts(client, sent: list[str], crash_after: int | None = None) -> None:
    """A hook on the real client: record each object written; raise after `crash_after` of them
    (the process dying mid-upload, as far as the bucket can tell)."""

    def on_call(params, **_):
        if crash_after is not None and len(sent) >= crash_after:
            raise _Crash("killed")
        sent.append(params["Key"])

    for op in ("PutObject", "CreateMultipartUpload"):
        client.meta.events.register(f"before-parameter-build.s3.{op}", on_call)


def test_killed_halfway_and_run_again_it_uploads_only_what_is_missing(s3, moto, tiny, monkeypatch):
    import infra.commands.weights as cmd

    first: list[str] = []
    crashing = moto.client("s3")
    _count_puts(crashing, first, crash_after=2)
    monkeypatch.setattr(cmd, "_s3_client", lambda cfg, n: crashing)
    result = upload("--from", str(tiny), "--skip-model-check", "--concurrency", "1")
    assert result.exit_code == 1
    assert "2 of 6 files are in; run the same command again to upload the rest" in one_line(result)
    in_after_crash = set(keys(s3))
    assert in_after_crash == set(first) and len(first) == 2
    assert "tiny/manifest.json" not in in_after_crash  # written last, only when all is in
    # A SIGKILL mid-file leaves an unfinished multipart upload behind (S3 bills its parts).
    left = sorted({f"tiny/{p.name}" for p in tiny.iterdir()} - in_after_crash)[0]
    mpu = s3.create_multipart_upload(Bucket=BUCKET, Key=left)["UploadId"]
    s3.upload_part(Bucket=BUCKET, Key=left, UploadId=mpu, PartNumber=1, Body=b"x" * 1024)

    second: list[str] = []
    counting = moto.client("s3")
    _count_puts(counting, second)
    monkeypatch.setattr(cmd, "_s3_client", lambda cfg, n: counting)
    result = upload("--from", str(tiny), "--skip-model-check", "--json")
    assert result.exit_code == 0, result.stderr
    everything = {f"tiny/{p.name}" for p in tiny.iterdir()}
    assert sorted(second) == sorted(everything - in_after_crash | {"tiny/manifest.json"})
    assert keys(s3) == dict.fromkeys(everything | {"tiny/manifest.json"}, 1)  # nothing written twice
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert verify("--download").exit_code == 0


def test_sigkilled_mid_upload_the_rerun_sends_only_the_rest(s3, moto, tiny, tmp_path, monkeypatch):
    """The real thing: the CLI in its own process, SIGKILLed once a few objects are in."""
    import infra.commands.weights as cmd

    d = tmp_path / "ck"
    shutil.copytree(tiny, d)
    for i in range(40):
        (d / f"part-{i:02d}.bin").write_bytes(os.urandom(256 * 1024))
    env = {**os.environ, **DUMMY_CREDS, "AWS_ENDPOINT_URL": moto.url, "COLUMNS": "200"}
    argv = [sys.executable, "-m", "infra.cli", "weights", "upload", "--stack", "prod", "--from", str(d)]
    argv += ["-c", f"llmfleet:weightsUri=s3://{BUCKET}/k/", "--skip-model-check", "--concurrency", "1"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(keys(s3, "k/")) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    before = keys(s3, "k/")
    assert 3 <= len(before) < 46 and "k/manifest.json" not in before

    sent: list[str] = []
    counting = moto.client("s3")
    _count_puts(counting, sent)
    monkeypatch.setattr(cmd, "_s3_client", lambda cfg, n: counting)
    result = upload("--from", str(d), "--skip-model-check", prefix="k/")
    assert result.exit_code == 0, result.stderr
    everything = {f"k/{p.name}" for p in d.iterdir()}
    assert sorted(sent) == sorted(everything - set(before) | {"k/manifest.json"})
    assert keys(s3, "k/") == dict.fromkeys(everything | {"k/manifest.json"}, 1)


def test_multipart_objects_carry_the_files_sha256(s3, tmp_path):
    big = tmp_path / "ck"
    big.mkdir()
    data = os.urandom(12 * 1024 * 1024)
    (big / "shard.bin").write_bytes(data)
    files = ck.scan(big)
    sums = {"shard.bin": hashlib.sha256(data).hexdigest()}
    parts: list[int] = []
    s3.meta.events.register(
        "before-parameter-build.s3.UploadPart", lambda params, **_: parts.append(params["PartNumber"])
    )
    loc = ws3.Location(BUCKET, "big/")
    res = ws3.send(s3, loc, list(files), sums, concurrency=4, chunk=5 * 1024 * 1024)
    assert res.failed == [] and sorted(parts) == [1, 2, 3]
    head = s3.head_object(Bucket=BUCKET, Key="big/shard.bin")
    assert head["Metadata"] == {"sha256": sums["shard.bin"]} and head["ContentLength"] == len(data)
    assert ws3.plan_upload(s3, loc, files, sums, ws3.listing(s3, loc)).send == []
    other = {"shard.bin": "0" * 64}  # same size, other content: sent again
    assert [f.rel for f in ws3.plan_upload(s3, loc, files, other, ws3.listing(s3, loc)).send] == ["shard.bin"]


def test_objects_not_in_the_checkpoint_are_refused_unless_deleted(s3, tiny):
    s3.put_object(Bucket=BUCKET, Key="tiny/model-00001-of-00009.safetensors", Body=b"old")
    result = upload("--from", str(tiny), "--skip-model-check")
    assert result.exit_code == 2
    assert "holds model-00001-of-00009.safetensors, which is not in" in one_line(result)
    assert set(keys(s3)) == {"tiny/model-00001-of-00009.safetensors"}
    result = upload("--from", str(tiny), "--skip-model-check", "--delete")
    assert result.exit_code == 0, result.stderr
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="tiny/")["Contents"]}
    assert "tiny/model-00001-of-00009.safetensors" not in listed and len(listed) == 7


# --- verify ----------------------------------------------------------------------------------------


def test_verify_names_what_differs_from_the_manifest(s3, tiny):
    assert verify().exit_code == 1  # nothing uploaded: no manifest
    assert upload("--from", str(tiny), "--skip-model-check").exit_code == 0
    assert verify("--json").exit_code == 0
    cfg = (tiny / "config.json").read_bytes()
    s3.put_object(
        Bucket=BUCKET, Key="tiny/config.json", Body=cfg.replace(b"2", b"3"), Metadata={"sha256": "f" * 64}
    )
    s3.delete_object(Bucket=BUCKET, Key="tiny/tokenizer.json")
    s3.put_object(Bucket=BUCKET, Key="tiny/stale.safetensors", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key="tiny/chat_template.jinja", Body=b"short")  # another tool, no metadata
    result = verify("--json")
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["problems"]
    assert problems == [
        "stale.safetensors: in the bucket but not in the manifest (the hosts would stage it too)",
        f"chat_template.jinja: 5 bytes, the manifest says {(tiny / 'chat_template.jinja').stat().st_size}",
        "tokenizer.json: missing",
        "config.json: its sha256 metadata says ffffffffffff..., the manifest "
        f"{hashlib.sha256(cfg).hexdigest()[:12]}...",
    ]
    # Same size, other bytes, no metadata: only --download sees it.
    gen = (tiny / "generation_config.json").read_bytes()
    s3.put_object(Bucket=BUCKET, Key="tiny/generation_config.json", Body=gen[::-1])
    assert not any("generation_config" in p for p in json.loads(verify("--json").stdout)["problems"])
    deep = json.loads(verify("--json", "--download").stdout)["problems"]
    assert any(p.startswith("generation_config.json: its bytes hash to") for p in deep)


# --- where, and from where -------------------------------------------------------------------------


def test_the_location_comes_from_the_config_or_the_stack_outputs(s3, tiny, tmp_path):
    unset = RUNNER.invoke(app, ["weights", "upload", "--stack", "prod", "--from", str(tiny)])
    assert unset.exit_code == 2 and "llmfleet:weightsUri is unset" in one_line(unset)
    nfs = RUNNER.invoke(app, ["weights", "verify", "--stack", "onprem-l20"])
    assert nfs.exit_code == 2
    assert (
        "llmfleet:weightsUri = '/mnt/models/deepseek-ai/DeepSeek-R1': weights upload writes to S3"
        in one_line(nfs)
    )
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"weights_uri": f"s3://{BUCKET}/from-outputs/"}))
    done = RUNNER.invoke(
        app,
        [
            "weights",
            "upload",
            "--stack",
            "prod",
            "--outputs",
            str(outputs),
            "--from",
            str(tiny),
            "--skip-model-check",
        ],
    )
    assert done.exit_code == 0, done.stderr
    assert f"s3://{BUCKET}/from-outputs/" in done.stdout and "tiny/manifest.json" not in keys(s3, "")
    outputs.write_text(json.dumps({"weights_uri": "s3://x/../etc/"}))
    bad = RUNNER.invoke(app, ["weights", "verify", "--stack", "prod", "--outputs", str(outputs)])
    assert bad.exit_code == 2 and "weights_uri = 's3://x/../etc/'" in one_line(bad)


def test_hub_source_fails_in_one_line_when_the_hub_is_unreachable(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "COLUMNS": "200"}
    for k in ("AWS_ENDPOINT_URL",):
        env.pop(k, None)
    env.update(DUMMY_CREDS)
    cmd = [sys.executable, "-m", "infra.cli", "weights", "upload", "--stack", "prod"]
    out = subprocess.run(
        [*cmd, "-c", f"llmfleet:weightsUri=s3://{BUCKET}/r1/", "--from", "hf:deepseek-ai/DeepSeek-R1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == (
        "error: --from hf:deepseek-ai/DeepSeek-R1: cannot download from the Hugging Face hub: the hub is "
        "unreachable (offline, or no network) and the files are not in the local cache; download the "
        "checkpoint where the hub is reachable and pass --from DIR"
    )


def _hf_cache(home: Path, repo: str, files: Path) -> None:
    """huggingface_hub's cache layout (blobs, a snapshot of symlinks to them, refs/main), as a
    download leaves it: offline, the library serves the repo from here."""
    base = home / "hub" / ("models--" + repo.replace("/", "--"))
    commit = "0" * 39 + "1"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    (base / "blobs").mkdir()
    for f in files.iterdir():
        blob = base / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))


def test_hub_source_checks_config_json_first_then_uploads_the_snapshot(s3, moto, tiny, tmp_path):
    _hf_cache(tmp_path / "hf", "llmfleet/tiny-deepseek-v3", tiny)
    env = {**os.environ, **DUMMY_CREDS, "AWS_ENDPOINT_URL": moto.url, "COLUMNS": "200"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    cmd = [sys.executable, "-m", "infra.cli", "weights", "upload", "--stack", "prod", "--json"]
    cmd += ["-c", f"llmfleet:weightsUri=s3://{BUCKET}/hf/", "--from", "hf:llmfleet/tiny-deepseek-v3"]
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    # with --json the one error is one JSON object on stdout (the CLI's error shape)
    assert json.loads(refused.stdout)["error"]["message"].startswith(
        "hf:llmfleet/tiny-deepseek-v3 is not deepseek-r1's checkpoint: num_hidden_layers 2 (expected 61)"
    )
    done = subprocess.run([*cmd, "--skip-model-check"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "/snapshots/" in json.loads(done.stdout)["source"]
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key="hf/manifest.json")["Body"].read())
    assert {e["path"]: e["sha256"] for e in manifest["files"]} == {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tiny.iterdir()
    }


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("hf:DeepSeek-R1", "no organisation"),
        ("hf:org/na..me", "Cannot have -- or .."),
        ("hf:org/m@x;rm", "revision 'x;rm'"),
        ("hf:org/m@v1/../../main", "revision 'v1/../../main'"),  # the pattern's '.' and '/' allow it
    ],
)
def test_hub_source_is_checked_before_the_hub_is_asked(value, why):
    result = upload("--from", value)
    assert result.exit_code == 2 and why in one_line(result) and "allowed: hf:ORG/NAME" in one_line(result)
