"""Stack policies on the hosts' roles: no host reads another stack's secrets.

A host role is a role EC2 can assume (its trust policy names ec2.amazonaws.com) or one an
instance profile of the stack carries. What it can do is the union of its inline policies
(`inlinePolicies`, RolePolicy), the customer-managed policies of the stack attached to it
(RolePolicyAttachment, PolicyAttachment, `managedPolicyArns`) and the AWS-managed policies it
attaches, whose grants come from the table in infra/catalog/aws_managed_policies.yaml (each with
its source and version). An AWS-managed policy attached as is can hand every host the account's
secrets: AmazonSSMManagedInstanceCore grants ssm:GetParameter(s) on "*", which reads prod's tokens
from a dev spot worker.

- `host-role-secrets-scoped` (mandatory): no host role may read SSM parameters (ssm:GetParameter*,
  ssm:Get*, ssm:*, *) outside `/llmfleet/<stack>/`, nor kms:Decrypt (kms:*, *) a key that is not
  one of the stack's own. Conditions are not credited: a grant on "*" is broad whatever narrows it,
  and Deny statements are not subtracted (a finding then is conservative, never missed).
- `host-role-policies-known` (mandatory): a host role attaches no policy whose grants cannot be
  read: an AWS-managed policy missing from the table, or a customer-managed policy from outside
  the stack. Mandatory rather than advisory because otherwise attaching any unlisted managed policy
  (AmazonSSMFullAccess, say) would walk around the mandatory check above with a warning; the fix
  is one row in the table (with its source) or a scoped policy in the stack. A user who accepts
  the risk can set this one policy to advisory in the pack config without weakening the other.

During a preview a document built from other resources' ARNs is unknown: checked at `up`.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pulumi_policy import EnforcementLevel, ReportViolation, StackValidationArgs, StackValidationPolicy

from infra.catalog.aws_managed import aws_managed_name, aws_managed_policies

from . import _config
from ._props import UNKNOWN, as_list, get, is_unknown
from ._stackview import Res, StackView

ROLE = "aws:iam/role:Role"
POLICY = "aws:iam/policy:Policy"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
ROLE_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
POLICY_ATTACHMENT = "aws:iam/policyAttachment:PolicyAttachment"
INSTANCE_PROFILE = "aws:iam/instanceProfile:InstanceProfile"
KMS_KEY = "aws:kms/key:Key"
EC2_SERVICE = re.compile(r"^ec2\.amazonaws\.com(\.cn)?$")

# The actions that read a parameter's value, and the one that decrypts (a SecureString read needs
# both: SSM decrypts with the caller's kms:Decrypt). A statement grants one when an Action pattern
# matches it (ssm:Get*, ssm:*, *) or a NotAction list leaves it out.
PARAMETER_READS = (
    "ssm:GetParameter",
    "ssm:GetParameters",
    "ssm:GetParametersByPath",
    "ssm:GetParameterHistory",
)
DECRYPT = ("kms:Decrypt",)
_PARAMETER_ARN = re.compile(r"^arn:[^:]*:ssm:[^:]*:[^:]*:parameter(/.*)$")


def stack_parameter_prefix(stack: str) -> str:
    return f"/llmfleet/{stack}/"


@dataclass(frozen=True)
class Grant:
    """One policy document a host role holds, where it comes from, and the resource to fix."""

    where: str  # for the message: "policy iam-node-policy", "AWS-managed X (v2)"
    document: Any  # dict, JSON string, or UNKNOWN
    urn: str


# --- pure: what one document grants --------------------------------------------------------------


def statements(document: Any) -> list[Any]:
    if isinstance(document, str):
        document = json.loads(document)
    return as_list(document.get("Statement")) if isinstance(document, Mapping) else []


def _matches(action: str, patterns: list[Any]) -> bool:
    return any(isinstance(p, str) and fnmatch.fnmatchcase(action.lower(), p.lower()) for p in patterns)


def granted(stmt: Mapping[str, Any], actions: tuple[str, ...]) -> list[str]:
    """Which of `actions` an Allow statement grants (through Action patterns or a NotAction)."""
    if stmt.get("Effect") != "Allow":
        return []
    if "NotAction" in stmt:
        excluded = as_list(stmt.get("NotAction"))
        return [a for a in actions if not _matches(a, excluded)]
    return [a for a in actions if _matches(a, as_list(stmt.get("Action")))]


def own_parameter(resource: str, stack: str) -> bool:
    """Whether a Resource pattern covers only parameters under /llmfleet/<stack>/."""
    m = _PARAMETER_ARN.match(resource)
    return bool(m) and m.group(1).startswith(stack_parameter_prefix(stack))


def secret_read_problems(document: Any, stack: str, own_keys: set[str]) -> list[str]:
    """What one policy document lets a host read beyond its own stack (pure, for tests too)."""
    try:
        stmts = statements(document)
    except ValueError as err:
        return [f"policy is not valid JSON ({err}): its grants cannot be checked"]
    out = []
    prefix = stack_parameter_prefix(stack)
    for i, stmt in enumerate(stmts):
        if not isinstance(stmt, Mapping):
            continue
        sid = f"Statement[{i}]" + (f" ({stmt['Sid']})" if stmt.get("Sid") else "")
        for actions, own, allowed in (
            (PARAMETER_READS, lambda r: own_parameter(r, stack), f"parameters under {prefix}"),
            (DECRYPT, lambda r: r in own_keys, "the stack's own KMS keys"),
        ):
            acts = granted(stmt, actions)
            if not acts:
                continue
            if "NotResource" in stmt:
                out.append(
                    f"{sid} grants {', '.join(acts)} on NotResource (every other resource); allowed: {allowed}"
                )
                continue
            beyond = [
                r
                for r in as_list(stmt.get("Resource"))
                if not is_unknown(r) and not (isinstance(r, str) and own(r))
            ]
            if beyond:
                out.append(
                    f"{sid} grants {', '.join(acts)} on {', '.join(map(repr, beyond))}; allowed: {allowed}"
                )
    return out


def is_host_trust(document: Any) -> bool | None:
    """Whether a trust policy lets EC2 assume the role; None when it is unknown."""
    if is_unknown(document):
        return None
    try:
        stmts = statements(document)
    except ValueError:
        return None
    for stmt in stmts:
        if not isinstance(stmt, Mapping) or stmt.get("Effect") != "Allow":
            continue
        services = as_list(get(stmt, "Principal", "Service"))
        if any(isinstance(s, str) and EC2_SERVICE.match(s) for s in services):
            return True
    return False


# --- the stack view: host roles and what they hold -----------------------------------------------


def _role_matches(role: Res, value: Any) -> bool:
    # An attachment names its role by name; the capture's ids and ARNs are accepted too.
    return isinstance(value, str) and value in (role.props.get("name"), role.id, role.props.get("arn"))


def _refers(view: StackView, res: Res, prop: str, role: Res, value: Any = None) -> bool | None:
    """Whether res.props[prop] (or `value`, one item of it) is this role; None when that is
    unknown during a preview."""
    value = get(res.props, prop) if value is None else value
    if _role_matches(role, value):
        return True
    if (
        isinstance(value, str)
        and not is_unknown(value)
        and any(_role_matches(r, value) for r in view.of_type(ROLE))
    ):
        return False
    ref = view.ref(res, prop, [ROLE], value)
    if isinstance(ref, Res):
        return ref is role
    return None if is_unknown(value) or ref is UNKNOWN else False


def host_roles(view: StackView) -> list[Res]:
    profiles = view.of_type(INSTANCE_PROFILE)
    out = []
    for role in view.of_type(ROLE):
        trusted = is_host_trust(role.props.get("assumeRolePolicy"))
        if trusted or any(_refers(view, p, "role", role) for p in profiles):
            out.append(role)
    return out


def _policy_of(view: StackView, holder: Res, prop: str, arn: Any) -> Res | None | Any:
    """The stack's customer-managed policy an attachment points at (Res), UNKNOWN during a
    preview, or None when it is not one of the stack's."""
    found = next(
        (p for p in view.of_type(POLICY) if isinstance(arn, str) and p.props.get("arn") == arn), None
    )
    if found is not None:
        return found
    if prop == "managedPolicyArns" and isinstance(arn, str) and not is_unknown(arn):
        # The engine's dependencies of a list are the whole list's, not this item's: a known ARN
        # that no stack policy has (by its arn, above, or its id) is outside the stack even when a
        # stack policy sits beside it in the list, and must be reported unreadable, not taken for it.
        return view.by_id(arn)
    ref = view.ref(holder, prop, [POLICY], arn)
    if isinstance(ref, Res) or ref is UNKNOWN:
        return ref
    return UNKNOWN if is_unknown(arn) else None


@dataclass(frozen=True)
class Unreadable:
    """An attached policy whose grants nobody can read here."""

    arn: str
    urn: str
    aws_managed: bool


def _attached(view: StackView, role: Res) -> Iterator[tuple[Res, str, Any]]:
    """(holder, its property, policyArn) for each managed policy attached to the role."""
    for att in view.of_type(ROLE_ATTACHMENT):
        if _refers(view, att, "role", role):
            yield att, "policyArn", get(att.props, "policyArn")
    for att in view.of_type(POLICY_ATTACHMENT):
        if any(_refers(view, att, "roles", role, value=r) for r in as_list(att.props.get("roles"))):
            yield att, "policyArn", get(att.props, "policyArn")
    for arn in as_list(role.props.get("managedPolicyArns")):
        yield role, "managedPolicyArns", arn


def role_grants(view: StackView, role: Res) -> tuple[list[Grant], list[Unreadable]]:
    """Every policy document the role holds, and the attachments whose grants cannot be read."""
    grants = [
        Grant(f"inline policy {get(p, 'name', default=i)}", get(p, "policy"), role.urn)
        for i, p in enumerate(as_list(role.props.get("inlinePolicies")))
        if not is_unknown(p)
    ]
    for rp in view.of_type(ROLE_POLICY):
        if _refers(view, rp, "role", role):
            grants.append(Grant(f"role policy {rp.name}", get(rp.props, "policy"), rp.urn))
    unreadable = []
    managed = aws_managed_policies()
    for holder, prop, arn in _attached(view, role):
        name = aws_managed_name(arn)
        if name is not None:
            if name in managed:
                entry = managed[name]
                doc = {"Statement": entry.statements()}
                grants.append(Grant(f"AWS-managed {name} ({entry.version})", doc, holder.urn))
            else:
                unreadable.append(Unreadable(arn, holder.urn, aws_managed=True))
            continue
        policy = _policy_of(view, holder, prop, arn)
        if isinstance(policy, Res):
            grants.append(Grant(f"policy {policy.name}", get(policy.props, "policy"), policy.urn))
        elif policy is None and isinstance(arn, str):
            unreadable.append(Unreadable(arn, holder.urn, aws_managed=False))
    return grants, unreadable


def current_stack() -> str | None:
    cfg = _config.stack_model()
    if cfg is not None:
        return cfg.stack
    try:
        import pulumi

        return pulumi.get_stack()
    except Exception:  # noqa: BLE001 - no Pulumi runtime: nothing names the stack
        return None


def secrets_problems(view: StackView, stack: str) -> list[tuple[str, str]]:
    """(urn, message) for every host-role grant that reads parameters or decrypts beyond the stack."""
    own_keys = {k.props["arn"] for k in view.of_type(KMS_KEY) if isinstance(k.props.get("arn"), str)}
    out = []
    for role in host_roles(view):
        grants, _ = role_grants(view, role)
        for g in grants:
            if g.document is None or is_unknown(g.document):
                continue
            for problem in secret_read_problems(g.document, stack, own_keys):
                out.append((g.urn, f"host role {role.name}: {g.where}: {problem}"))
    return out


def unreadable_problems(view: StackView) -> list[tuple[str, str]]:
    out = []
    for role in host_roles(view):
        for u in role_grants(view, role)[1]:
            what = (
                "an AWS-managed policy missing from infra/catalog/aws_managed_policies.yaml"
                if u.aws_managed
                else "a customer-managed policy from outside this stack"
            )
            out.append(
                (
                    u.urn,
                    f"host role {role.name} attaches {u.arn}, {what}: its grants cannot be checked; "
                    "allowed: a policy of this stack, or an AWS-managed policy listed in the table (with its source)",
                )
            )
    return out


def _secrets_scoped(args: StackValidationArgs, report: ReportViolation) -> None:
    stack = current_stack()
    if stack is None:
        report("the stack name is unknown, so the host roles' parameter scope cannot be checked", None)
        return
    for urn, message in secrets_problems(StackView.of(args.resources), stack):
        report(message, urn)


def _policies_known(args: StackValidationArgs, report: ReportViolation) -> None:
    for urn, message in unreadable_problems(StackView.of(args.resources)):
        report(message, urn)


HOST_ROLE_POLICIES: list[StackValidationPolicy] = [
    StackValidationPolicy(
        name="host-role-secrets-scoped",
        description=(
            "Host roles (EC2) read SSM parameters only under /llmfleet/<stack>/ and decrypt only with "
            "the stack's own KMS keys, AWS-managed attachments included."
        ),
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_secrets_scoped,
    ),
    StackValidationPolicy(
        name="host-role-policies-known",
        description=(
            "Host roles attach only policies whose grants can be checked: the stack's own, or "
            "AWS-managed ones in infra/catalog/aws_managed_policies.yaml."
        ),
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_policies_known,
    ),
]
