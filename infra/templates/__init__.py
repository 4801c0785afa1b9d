"""The project template `llmfleet init` writes: Pulumi.yaml, __main__.py and one stack file.

Pulumi.yaml and __main__.py are the checkout's own (one typed config block, one program entry):
an installed wheel carries them in project/ (pyproject's force-include), a checkout reads them
from its root. The stack file is project/Pulumi.stack.yaml with the model, GPU type, region and
stack name filled in. Pure: text in, text out; the command validates and writes.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

from infra.constants import REPO_ROOT

HERE = Path(__file__).resolve().parent / "project"
STACK_TEMPLATE = HERE / "Pulumi.stack.yaml"
PROJECT_FILES = ("Pulumi.yaml", "__main__.py")
# `template:` is what `pulumi new` reads from the checkout's Pulumi.yaml; a project has no use for it.
_TEMPLATE_BLOCK = re.compile(r"^template:\n(?: .*\n)*", re.MULTILINE)
_VIRTUALENV = re.compile(r"^    virtualenv: .*\n", re.MULTILINE)


@dataclass(frozen=True)
class ProjectChoice:
    stack: str
    model: str
    gpu: str
    gpu_count: int
    instance_type: str
    region: str


def source(name: str) -> Path:
    """A project file as the package ships it: the wheel's copy, else the checkout's."""
    packaged = HERE / name
    return packaged if packaged.is_file() else REPO_ROOT / name


def project_yaml(text: str, virtualenv: str | None) -> str:
    """The checkout's Pulumi.yaml for a new project: no `template:` block, and the Pulumi
    language host pointed at the virtualenv llmfleet is installed in (None: the python on PATH)."""
    text = _TEMPLATE_BLOCK.sub("", text)
    # JSON's double-quoted string is a YAML scalar too: any path stays one value.
    line = "" if virtualenv is None else f"    virtualenv: {json.dumps(virtualenv)}\n"
    return _VIRTUALENV.sub(lambda _: line, text)


def stack_yaml(choice: ProjectChoice) -> str:
    return string.Template(STACK_TEMPLATE.read_text()).substitute(
        stack=choice.stack,
        model=choice.model,
        gpu=choice.gpu,
        gpu_count=choice.gpu_count,
        instance_type=choice.instance_type,
        region=choice.region,
    )


def render(choice: ProjectChoice, virtualenv: str | None) -> dict[str, str]:
    """Relative path -> text of every file of the new project."""
    return {
        "Pulumi.yaml": project_yaml(source("Pulumi.yaml").read_text(), virtualenv),
        "__main__.py": source("__main__.py").read_text(),
        f"stacks/Pulumi.{choice.stack}.yaml": stack_yaml(choice),
    }
