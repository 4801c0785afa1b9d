"""The project's YAML loader: libyaml's parser, the same documents as yaml.safe_load."""

import pytest
import yaml

from infra import yaml_files
from infra.constants import REPO_ROOT


def test_every_project_yaml_file_loads_as_safe_load_does():
    files = [
        p
        for p in [
            *REPO_ROOT.glob("infra/**/*.yaml"),
            *REPO_ROOT.glob("stacks/*.yaml"),
            REPO_ROOT / "Pulumi.yaml",
        ]
        if ".venv" not in p.parts
    ]
    assert len(files) >= 10
    for path in files:
        text = path.read_text()
        assert yaml_files.safe_load(text) == yaml.safe_load(text), path


def test_the_c_parser_is_in_use_and_stays_safe():
    assert yaml_files.SAFE_LOADER is yaml.CSafeLoader  # PyYAML's wheels carry libyaml
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml_files.safe_load("!!python/object/apply:os.system ['true']")
