"""Stack files -> the flat config map Pulumi would give the program -> a validated StackConfig.

Pure (PyYAML + the config model): the CLI's offline commands, the policy pack and the program's
offline capture all read stacks/Pulumi.<stack>.yaml (plus Pulumi.yaml's declared defaults and
`-c KEY=VALUE` overrides) through here.

The project is found as the Pulumi CLI finds it: the nearest directory at or above the working
directory that holds Pulumi.yaml (the checkout is one; `llmfleet init DIR` writes another).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from infra import yaml_files
from infra.stack import suggest
from infra.stack.config import (
    NS,
    SECRET_KEYS,
    SECRET_PLACEHOLDER,
    ConfigError,
    StackConfig,
    load_stack_config,
)
from infra.stack.names import STACK_NAME_ALLOWED, STACK_REF_RE


def _to_pulumi_value(value: Any) -> str:
    """Pulumi hands every config value to the program as a string; structured values
    as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


PROJECT_FILE = "Pulumi.yaml"


def _yaml_mapping(path: Path) -> dict[str, Any]:
    """A project or stack file's top level: a mapping (empty file: {}), else one line."""
    doc = yaml_files.safe_load(path.read_text())
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level is a {type(doc).__name__}; allowed: a YAML mapping")
    return {str(k): v for k, v in cast(dict[Any, Any], doc).items()}


def _block(doc: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    block: Any = doc.get(key) or {}
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: {key} is a {type(block).__name__}; allowed: a mapping of keys to values")
    return {str(k): v for k, v in cast(dict[Any, Any], block).items()}


def project_name(project_dir: Path | None = None) -> str:
    """Pulumi.yaml's `name`: the PROJECT of a fully qualified stack name."""
    path = (project_dir or project_root()) / PROJECT_FILE
    return str(_yaml_mapping(path).get("name", ""))


def stack_name(stack: str, project_dir: Path | None = None) -> str:
    """The short name of a stack as Pulumi takes it: NAME, ORG/NAME or ORG/PROJECT/NAME (PROJECT
    being this project). The stack file is named after the short name, as Pulumi names it; the
    name is checked before it becomes part of a path."""
    if not STACK_REF_RE.fullmatch(stack):
        raise ConfigError(
            f"--stack {stack!r}: not a stack name; allowed: NAME, ORG/NAME or ORG/PROJECT/NAME, "
            f"each {STACK_NAME_ALLOWED}"
        )
    parts = stack.split("/")
    if len(parts) == 3 and parts[1] != (project := project_name(project_dir)):
        raise ConfigError(
            f"--stack {stack!r}: project {parts[1]!r} is not this project; "
            f"allowed: {parts[0]}/{project}/{parts[2]} (Pulumi.yaml's name)"
        )
    return parts[-1]


def project_root(start: Path | None = None) -> Path:
    """The nearest directory at or above `start` (default: the working directory) holding
    Pulumi.yaml, as `pulumi` looks for its project; one-line ConfigError when there is none."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / PROJECT_FILE).is_file():
            return d
    raise ConfigError(
        f"project: no {PROJECT_FILE} in {here} or any directory above it; allowed: run llmfleet "
        "inside an llmfleet project (`llmfleet init DIR` creates one)"
    )


def stack_file(stack: str, project_dir: Path | None = None) -> Path:
    return (project_dir or project_root()) / "stacks" / f"Pulumi.{stack_name(stack, project_dir)}.yaml"


def available_stacks(project_dir: Path | None = None) -> list[str]:
    stacks_dir = (project_dir or project_root()) / "stacks"
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in stacks_dir.glob("Pulumi.*.yaml"))


def project_defaults(project_dir: Path | None = None) -> dict[str, str]:
    """Defaults declared in Pulumi.yaml's config block (project keys are in our namespace)."""
    path = (project_dir or project_root()) / PROJECT_FILE
    proj = _yaml_mapping(path)
    # Pulumi namespaces a project's own keys by the project's name: the program reads llmfleet:*.
    if proj.get("name") != NS:
        raise ConfigError(
            f"{path}: name {proj.get('name')!r}: the program reads the {NS}: config namespace; allowed: {NS}"
        )
    out: dict[str, str] = {}
    for key, decl in _block(proj, "config", path).items():
        full = key if ":" in key else f"{NS}:{key}"
        if isinstance(decl, dict) and "default" in decl:
            out[full] = _to_pulumi_value(decl["default"])
        elif not isinstance(decl, dict):
            out[full] = _to_pulumi_value(decl)
    return out


# The config namespaces a `-c` override may set: the project's own and those of the providers
# the program builds with (Pulumi hands provider config such as aws:profile to the provider).
# Anything else is read by nobody, so a typo there ("lmfleet:", "foo:") would pass silently.
NAMESPACES = (NS, "aws", "pulumi", "random", "command", "docker-build", "tls")


def check_namespace(key: str, given: str | None = None) -> None:
    """Refuse a `-c` key whose namespace nothing in the project reads (one line)."""
    ns = key.partition(":")[0]
    if ns not in NAMESPACES:
        hint = suggest.did_you_mean(ns, NAMESPACES)
        raise ConfigError(
            f"-c {given or key!r}: unknown config namespace {ns!r}; {hint}allowed: "
            + ", ".join(f"{n}:" for n in NAMESPACES)
        )


def parse_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"-c {item!r}: expected KEY=VALUE, e.g. -c llmfleet:workerCount=2")
    if ":" not in key:
        key = f"{NS}:{key}"
    check_namespace(key, item)
    return key, value


def raw_stack_config(
    stack: str, overrides: Sequence[str] = (), project_dir: Path | None = None
) -> tuple[dict[str, str], set[str]]:
    """The flat config map Pulumi would give the program, and its secret keys."""
    project_dir = project_dir or project_root()
    path = stack_file(stack, project_dir)
    if not path.exists():
        stacks = available_stacks(project_dir)
        hint = suggest.did_you_mean(stack_name(stack, project_dir), stacks)
        raise ConfigError(
            f"--stack {stack!r}: no file {path.relative_to(project_dir)}; {hint}allowed: {', '.join(stacks) or 'none'}"
        )
    doc = _yaml_mapping(path)
    raw = project_defaults(project_dir)
    secrets: set[str] = set()
    for key, value in _block(doc, "config", path).items():
        full = key if ":" in key else f"{NS}:{key}"
        if isinstance(value, dict) and set(cast(dict[str, Any], value)) == {"secure"}:
            # Encrypted by the stack's secrets provider; offline we only know it is set.
            raw[full] = SECRET_PLACEHOLDER
            secrets.add(full)
        else:
            raw[full] = _to_pulumi_value(value)
    for item in overrides:
        k, v = parse_override(item)
        raw[k] = v
    secrets |= {k for k in raw if k in SECRET_KEYS}
    return raw, secrets


def load_config(stack: str, overrides: Sequence[str] = (), project_dir: Path | None = None) -> StackConfig:
    raw, _ = raw_stack_config(stack, overrides, project_dir)
    return load_stack_config(raw, stack_name(stack, project_dir))
