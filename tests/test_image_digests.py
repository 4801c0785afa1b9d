"""Every external image is pinned by digest in one place (infra/catalog/images.yaml), and every
image reference the program renders (build args, mirrors' FROM lines, node scripts, user data,
SSH bootstrap commands, stack outputs) is by digest."""

from __future__ import annotations

import re
import shlex
from functools import cache
from pathlib import Path

import pytest
import yaml

from infra.catalog.images import ExternalImage, image_ref, load_images, load_images_from
from infra.constants import REPO_ROOT
from infra.program.offline import capture
from infra.stack.config import ConfigError, StackConfig, load_stack_config
from infra.stack.config_values import IMAGE_BY_DIGEST_RE
from tests.node_scripts import node_script

DIGEST = "sha256:" + "ab" * 32


def test_catalog_pins_each_image_by_tag_and_digest():
    images = load_images()
    assert {"vllm-openai", "prometheus", "dcgm-exporter", "grafana"} <= set(images)
    for img in images.values():
        assert IMAGE_BY_DIGEST_RE.match(img.ref), img.ref
        assert img.ref == f"{img.repository}:{img.tag}@{img.digest}"
        assert img.source.startswith("https://") and img.digest_source


def test_a_catalog_row_without_a_digest_fails_to_load(tmp_path):
    row = {k: v for k, v in load_images()["grafana"].model_dump().items() if k != "digest"}
    (tmp_path / "images.yaml").write_text(yaml.safe_dump([row]))
    with pytest.raises(ValueError, match=r"images.yaml row 0 \(grafana\): digest: Field required"):
        load_images_from(tmp_path / "images.yaml")
    (tmp_path / "images.yaml").write_text(yaml.safe_dump([{**row, "digest": "sha256:abc"}]))
    with pytest.raises(ValueError, match=r"row 0 \(grafana\): digest: String should match pattern"):
        load_images_from(tmp_path / "images.yaml")


def test_the_literal_copies_are_the_catalogs():
    """The Dockerfile's ARG default and Pulumi.yaml's default cannot read the catalog."""
    want = image_ref("vllm-openai")
    text = (REPO_ROOT / "images" / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M).group(1) == want
    schema = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())
    assert schema["config"]["baseImage"]["default"] == want
    assert StackConfig.model_fields["base_image"].default == want


@pytest.mark.parametrize(
    "value",
    [
        "vllm/vllm-openai:v0.29.0",  # a tag alone moves
        "vllm/vllm-openai:latest",
        f"vllm/vllm-openai:v0.29.0@{DIGEST[:-1]}",  # 63 hex
        f"vllm/vllm-openai:v0.29.0@sha512:{'a' * 64}",
        f"vllm/vllm-openai:v0.29.0@{DIGEST.upper()}",
        f"vllm/vllm-openai:v0.29.0@{DIGEST} ",
    ],
)
def test_base_image_must_be_pinned_by_digest(value):
    with pytest.raises(ConfigError) as e:
        load_stack_config({"aws:region": "us-east-1", "llmfleet:baseImage": value}, "dev")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("llmfleet:baseImage = ")
    assert "allowed: an image pinned by digest, REPO:TAG@sha256:<64 hex> or REPO@sha256:<64 hex> (" in msg


@pytest.mark.parametrize(
    "value",
    [
        f"vllm/vllm-openai:v0.29.0@{DIGEST}",
        f"vllm/vllm-openai@{DIGEST}",
        f"123456789012.dkr.ecr.us-east-1.amazonaws.com/mirror/vllm-openai:v0.29.0@{DIGEST}",
        f"localhost:5000/vllm@{DIGEST}",
    ],
)
def test_base_image_by_digest_is_accepted(value):
    assert (
        load_stack_config({"aws:region": "us-east-1", "llmfleet:baseImage": value}, "dev").base_image == value
    )


# ---------------------------------------------------------------- what the program renders


def _strings(v) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, dict):
        return [s for x in v.values() for s in _strings(x)]
    if isinstance(v, list):
        return [s for x in v for s in _strings(x)]
    return []


def _docker_commands(text: str, verb: str) -> list[list[str]]:
    """Each `docker VERB ...` command of a script or command line, continuation lines joined,
    split into words; also the SSH bootstrap's spelling of them (`IMAGE=...` is what it pulls,
    `CONTAINER_ARGS=(run ...)` what it runs)."""
    joined = re.sub(r"\\\n\s*", " ", text.replace("'\"'\"'", "'"))
    found = [m.group(1) for m in re.finditer(rf"\bdocker {verb}\b([^\n;&|]*)", joined)]
    if verb == "pull":
        found += [m.group(1) for m in re.finditer(r"^IMAGE=(\S+)$", joined, re.M)]
    if verb == "run":
        found += [m.group(1) for m in re.finditer(r"^CONTAINER_ARGS=\(run (.*)\)$", joined, re.M)]
    out = []
    for cmd in found:
        try:
            out.append(shlex.split(cmd))
        except ValueError:
            out.append(cmd.split())
    return out


@cache
def rendered(stack: str) -> list[str]:
    c = capture(stack)
    texts = [s for r in c.resources for s in _strings(r["inputs"])] + _strings(c.outputs)
    if c.config.provider == "aws":
        texts += [node_script(c, role) for role in ("head", "worker")]
    return texts


STACKS = ["prod", "onprem-l20"]


@pytest.mark.parametrize("stack", STACKS)
def test_every_docker_pull_and_run_names_an_image_by_digest(stack):
    texts = rendered(stack)
    pulls = [cmd for t in texts for cmd in _docker_commands(t, "pull")]
    runs = [cmd for t in texts for cmd in _docker_commands(t, "run")]
    assert runs, "no `docker run` rendered: the scan reads nothing"
    for cmd in pulls:
        assert cmd and IMAGE_BY_DIGEST_RE.match(cmd[-1]), cmd
    for cmd in runs:
        # the image is the one word that is a reference; exactly one, and by digest
        refs = [w for w in cmd if IMAGE_BY_DIGEST_RE.match(w)]
        assert len(refs) == 1, cmd


@pytest.mark.parametrize("stack", STACKS)
def test_every_build_base_and_mirror_source_is_by_digest(stack):
    c = capture(stack)
    images = c.of_type("docker-build:index:Image")
    assert images
    for img in images:
        i = img["inputs"]
        base = (i.get("buildArgs") or {}).get("BASE_IMAGE")
        froms = re.findall(r"^FROM\s+(\S+)", (i.get("dockerfile") or {}).get("inline", ""), re.M)
        assert base or froms, img["name"]
        for ref in [base] * bool(base) + froms:
            assert IMAGE_BY_DIGEST_RE.match(ref), (img["name"], ref)
    # each upstream the stack uses is the catalog's own pin
    upstream = {e.ref for e in load_images().values()}
    for img in images:
        i = img["inputs"]
        for ref in [(i.get("buildArgs") or {}).get("BASE_IMAGE")] + re.findall(
            r"^FROM\s+(\S+)", (i.get("dockerfile") or {}).get("inline", ""), re.M
        ):
            assert ref is None or ref in upstream, ref


@pytest.mark.parametrize("stack", STACKS)
def test_no_catalog_repository_is_named_by_tag_alone(stack):
    """Anywhere in what the program renders, a catalog repository is followed by its pin."""
    images: dict[str, ExternalImage] = load_images()
    found = 0
    for text in rendered(stack):
        for img in images.values():
            for m in re.finditer(rf"(?<![\w./-]){re.escape(img.repository)}(?![\w/-])(\S*)", text):
                found += 1
                assert m.group(1).startswith(f":{img.tag}@{img.digest}"), (img.id, text[m.start() : m.end()])
    assert found >= 2 if stack == "prod" else True  # prod: the base build arg, the mirrors, Grafana


def test_grafana_command_runs_the_pinned_grafana():
    out = capture("prod").outputs["grafana_command"]
    assert out.rstrip().endswith(image_ref("grafana"))


def test_mirror_tags_follow_the_digest():
    from infra.components.observability import MIRRORS, mirror_tag

    assert (
        mirror_tag(MIRRORS["prometheus"])
        == f"mirror-prometheus-v2.53.2-{load_images()['prometheus'].digest[7:19]}"
    )
    assert mirror_tag(f"quay.io/prometheus/prometheus:v2.53.2@sha256:{'1' * 64}") != mirror_tag(
        f"quay.io/prometheus/prometheus:v2.53.2@sha256:{'2' * 64}"
    )


def test_refresh_script_is_documented_in_the_catalog():
    text = (Path(REPO_ROOT) / "infra" / "catalog" / "images.yaml").read_text()
    assert "scripts/refresh_image_digests.py" in text
    assert (REPO_ROOT / "scripts" / "refresh_image_digests.py").exists()
