"""The built wheel, installed into a fresh virtualenv outside the checkout, runs `init`, `plan`,
`preview` and `cost` in a new project directory (issue #30's first "done when").

It builds the sdist and the wheel from it with uv, installs the wheel with its dependencies
(uv's cache, else PyPI: an install resolves afresh, not from uv.lock) and runs the installed
`llmfleet`: 20-41 s with a warm cache (three runs on the shared 2-core machine). `make wheel-test` runs it
alone; LLMFLEET_WHEEL_PYTHON (make's WHEEL_PYTHON) picks the fresh venv's interpreter, e.g. 3.13
(default: this one's version).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from infra.components.image import image_tag
from infra.constants import RAY_VERSION, REPO_ROOT

pytestmark = pytest.mark.slow


def _uv() -> str:
    for cand in (os.environ.get("UV"), str(REPO_ROOT / ".tools" / "bin" / "uv"), shutil.which("uv")):
        if cand and Path(cand).is_file():
            return str(Path(cand).absolute())
    pytest.skip("uv not found (make setup installs it in .tools/)")


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (
        f"{' '.join(argv)} -> {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    )
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from the checkout's sdist, installed in a fresh venv: its bin/ dir."""
    uv, tmp = _uv(), tmp_path_factory.mktemp("wheel")
    _run([uv, "build", "--out-dir", str(tmp / "dist"), str(REPO_ROOT)], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("llmfleet_iac-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for need in (
        "infra/rayconf/schemas/serve_deploy.schema.json",
        "infra/catalog/instances.yaml",
        "infra/templates/project/Pulumi.yaml",
        "infra/templates/project/__main__.py",
        "infra/templates/project/Pulumi.stack.yaml",
        "infra/_node_context/images/Dockerfile",
        "infra/_node_context/ray_cluster/node.py",
        "policy/PulumiPolicy.yaml",
    ):
        assert need in names, f"{need} missing from {wheel.name}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    python = os.environ.get("LLMFLEET_WHEEL_PYTHON", f"{sys.version_info.major}.{sys.version_info.minor}")
    venv = tmp / "venv"
    _run([uv, "venv", "--quiet", "--python", python, str(venv)], cwd=tmp)
    _run([uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(wheel)], cwd=tmp)
    return venv / "bin"


def test_installed_wheel_runs_init_plan_preview_cost_outside_the_checkout(installed, tmp_path):
    llmfleet = str(installed / "llmfleet")
    # a clean environment: nothing of the checkout on the path; bytecode may be written
    # (later commands reuse what the first compiled)
    env = {"PATH": f"{installed}:/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "100"}
    proj = tmp_path / "p"
    _run([llmfleet, "init", str(proj), "--model", "deepseek-r1", "--gpu", "L40S"], cwd=tmp_path, env=env)
    made = (proj / "Pulumi.yaml").read_text()
    assert f'virtualenv: "{installed.parent}"' in made  # Pulumi's language host runs the tool's venv

    plan = json.loads(
        _run(
            [llmfleet, "plan", "--model", "deepseek-r1", "--gpu", "L40S", "--json"], cwd=proj, env=env
        ).stdout
    )
    assert plan["fits"] and plan["instance_type"] == "g6e.48xlarge"

    preview = json.loads(_run([llmfleet, "preview", "--stack", "dev", "--json"], cwd=proj, env=env).stdout)
    assert preview["stack"] == "dev" and len(preview["resources"]) > 50
    (image,) = [r for r in preview["resources"] if r["name"] == "node-image"]
    # the wheel's image context hashes to the checkout's tag: the same node image
    assert "/site-packages/infra/_node_context" in image["inputs"]["context"]["location"]
    base = image["inputs"]["buildArgs"]["BASE_IMAGE"]
    tag = image_tag(REPO_ROOT, {"BASE_IMAGE": base, "RAY_VERSION": RAY_VERSION})
    assert image["inputs"]["tags"][0].endswith(f":{tag}")
    # the installed code ran, not the checkout's
    where = _run([str(installed / "python"), "-c", "import infra; print(infra.__file__)"], cwd=proj, env=env)
    assert str(REPO_ROOT) not in where.stdout

    cost = _run([llmfleet, "cost", "--stack", "dev", "--json"], cwd=proj, env=env).stdout
    assert json.loads(cost)["totalMonthlyCost"]

    # from a directory outside any project: one line, exit 2
    out = subprocess.run(
        [llmfleet, "preview", "--stack", "dev"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 2 and out.stderr.startswith("error: project: no Pulumi.yaml in ")
