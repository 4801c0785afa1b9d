"""Stack files -> the flat config map Pulumi would give the program -> a validated StackConfig.

Pure (PyYAML + the config model): the CLI's offline commands, the policy pack and the program's
offline capture all read stacks/Pulumi.<stack>.yaml (plus Pulumi.yaml's declared defaults and
`-c KEY=VALUE` overrides) through here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infra import yaml_files
from infra.constants import REPO_ROOT
from infra.stack import suggest
from infra.stack.config import (
    NS,
    SECRET_KEYS,
    SECRET_PLACEHOLDER,
    ConfigError,
    StackConfig,
    load_stack_config,
)


def _to_pulumi_value(value: Any) -> str:
    """Pulumi hands every config value to the program as a string; structured values
    as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def stack_file(stack: str, project_dir: Path = REPO_ROOT) -> Path:
    return project_dir / "stacks" / f"Pulumi.{stack}.yaml"


def available_stacks(project_dir: Path = REPO_ROOT) -> list[str]:
    return sorted(
        p.name[len("Pulumi.") : -len(".yaml")] for p in (project_dir / "stacks").glob("Pulumi.*.yaml")
    )


def project_defaults(project_dir: Path = REPO_ROOT) -> dict[str, str]:
    """Defaults declared in Pulumi.yaml's config block (project keys are in our namespace)."""
    proj = yaml_files.safe_load((project_dir / "Pulumi.yaml").read_text())
    out = {}
    for key, decl in (proj.get("config") or {}).items():
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
    stack: str, overrides: Sequence[str] = (), project_dir: Path = REPO_ROOT
) -> tuple[dict[str, str], set[str]]:
    """The flat config map Pulumi would give the program, and its secret keys."""
    path = stack_file(stack, project_dir)
    if not path.exists():
        stacks = available_stacks(project_dir)
        hint = suggest.did_you_mean(stack, stacks)
        raise ConfigError(
            f"--stack {stack!r}: no file {path.relative_to(project_dir)}; {hint}allowed: {', '.join(stacks) or 'none'}"
        )
    doc = yaml_files.safe_load(path.read_text()) or {}
    raw = project_defaults(project_dir)
    secrets: set[str] = set()
    for key, value in (doc.get("config") or {}).items():
        full = key if ":" in key else f"{NS}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
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


def load_config(stack: str, overrides: Sequence[str] = (), project_dir: Path = REPO_ROOT) -> StackConfig:
    raw, _ = raw_stack_config(stack, overrides, project_dir)
    return load_stack_config(raw, stack)
