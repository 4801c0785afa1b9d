"""The AWS-managed IAM policies llmfleet knows the grants of (aws_managed_policies.yaml).

One table for both sides: the node role's SSM-agent policy is AmazonSSMManagedInstanceCore
minus its parameter reads (infra/components/iam.py), and the policy pack resolves what an
attached AWS-managed policy grants a host role (policy/host_roles.py). Pure: no Pulumi.
"""

from __future__ import annotations

import fnmatch
import re
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from infra import yaml_files
from infra.validation import first_error

DATA = Path(__file__).parent / "aws_managed_policies.yaml"

# arn:<partition>:iam::aws:policy/[<path>/]<name>: the account field "aws" marks AWS-managed.
_AWS_MANAGED_ARN = re.compile(r"^arn:aws[a-z-]*:iam::aws:policy/(?:[^/]+/)*([^/]+)$")

SSM_CORE = "AmazonSSMManagedInstanceCore"
# What AmazonSSMManagedInstanceCore grants that reads secrets: ssm:GetParameter(s) on "*" read
# every parameter of the account, SecureStrings included (with kms:Decrypt on their key, which the
# default aws/ssm key's policy gives every principal of the account through SSM).
SSM_PARAMETER_READS = ("ssm:GetParameter", "ssm:GetParameters")

EVERYTHING: dict[str, Any] = {"Effect": "Allow", "Action": "*", "Resource": "*"}


class ManagedPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[\w+=,.@-]+$")
    source: str = Field(pattern=r"^https://docs\.aws\.amazon\.com/")
    version: str = Field(pattern=r"^v[1-9][0-9]*$")
    everything: bool = False
    document: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ManagedPolicy:
        if self.everything == (self.document is not None):
            raise ValueError("set exactly one of everything: true and document")
        if self.document is not None:
            stmts = self.document.get("Statement")
            if not isinstance(stmts, list) or not stmts:
                raise ValueError("document.Statement must be a non-empty list")
            for i, s in enumerate(stmts):
                if not isinstance(s, dict) or s.get("Effect") not in ("Allow", "Deny"):
                    raise ValueError(f"document.Statement[{i}].Effect must be Allow or Deny")
                if ("Action" in s) == ("NotAction" in s) or ("Resource" in s) == ("NotResource" in s):
                    raise ValueError(
                        f"document.Statement[{i}] needs one of Action/NotAction and one of Resource/NotResource"
                    )
        return self

    def statements(self) -> list[dict[str, Any]]:
        """The policy's statements; "everything" is one Allow of every action on every resource."""
        if self.everything:
            return [dict(EVERYTHING)]
        assert self.document is not None
        return [dict(s) for s in self.document["Statement"]]


class ManagedPolicyError(ValueError):
    pass


def load_from(path: Path) -> dict[str, ManagedPolicy]:
    rows = yaml_files.safe_load(path.read_text()) or []
    out: dict[str, ManagedPolicy] = {}
    for i, row in enumerate(rows):
        try:
            item = ManagedPolicy.model_validate(row)
        except ValidationError as e:
            err = first_error(e)
            name = row.get("name", "?") if isinstance(row, dict) else "?"
            where = f"{err.path}: " if err.path else ""
            raise ManagedPolicyError(f"{path.name} row {i} ({name}): {where}{err.msg}") from None
        if item.name in out:
            raise ManagedPolicyError(f"{path.name}: duplicate name {item.name!r}")
        out[item.name] = item
    return out


@cache
def aws_managed_policies() -> dict[str, ManagedPolicy]:
    return load_from(DATA)


def aws_managed_name(arn: Any) -> str | None:
    """The policy name when `arn` is an AWS-managed policy's ARN, else None."""
    m = _AWS_MANAGED_ARN.match(arn) if isinstance(arn, str) else None
    return m.group(1) if m else None


def ssm_agent_statements() -> list[dict[str, Any]]:
    """AmazonSSMManagedInstanceCore's statements without the parameter reads (SSM_PARAMETER_READS).

    Raises when the table's document no longer holds exactly those reads in an Allow on "*": an
    edit of the data file must be looked at here, not silently carried into the node role.
    """
    core = aws_managed_policies()[SSM_CORE]
    out: list[dict[str, Any]] = []
    dropped: list[str] = []
    for stmt in core.statements():
        actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
        kept = [a for a in actions if a not in SSM_PARAMETER_READS]
        dropped += [a for a in actions if a in SSM_PARAMETER_READS]
        if any(fnmatch.fnmatchcase(r.lower(), a.lower()) for a in kept for r in SSM_PARAMETER_READS):
            raise ManagedPolicyError(f"{DATA.name} ({SSM_CORE}): a wildcard action reads parameters")
        if kept:
            out.append({**stmt, "Action": kept})
    if sorted(dropped) != sorted(SSM_PARAMETER_READS):
        raise ManagedPolicyError(
            f"{DATA.name} ({SSM_CORE}): expected to drop {', '.join(SSM_PARAMETER_READS)}, found {dropped or 'none'}"
        )
    return out


def ssm_agent_actions() -> tuple[str, ...]:
    """The SSM agent's actions that llmfleet's host roles keep on "*" (as AWS grants them)."""
    return tuple(a for s in ssm_agent_statements() for a in s["Action"])
