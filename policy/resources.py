"""Resource policies: each looks at one resource's inputs (camelCase, as CrossGuard passes them)."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from infra.catalog.aws_managed import ssm_agent_actions

from . import _config
from ._props import as_list, get, is_unknown, plain, tags_of

INSTANCE = "aws:ec2/instance:Instance"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
HOSTS = (INSTANCE, LAUNCH_TEMPLATE)  # a launch template carries what the instances it launches get
VOLUME = "aws:ebs/volume:Volume"
ECR_REPO = "aws:ecr/repository:Repository"
IAM_POLICY_TYPES = {
    "aws:iam/policy:Policy",
    "aws:iam/rolePolicy:RolePolicy",
    "aws:iam/userPolicy:UserPolicy",
    "aws:iam/groupPolicy:GroupPolicy",
}
ROLE = "aws:iam/role:Role"
IAM_ATTACHMENT_TYPES = {
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
    "aws:iam/policyAttachment:PolicyAttachment",
    "aws:iam/userPolicyAttachment:UserPolicyAttachment",
    "aws:iam/groupPolicyAttachment:GroupPolicyAttachment",
}


def _props(args: ResourceValidationArgs) -> dict[str, Any]:
    return plain(args.props)


# --- EC2 instances -------------------------------------------------------------------------------


def _imdsv2(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in HOSTS:
        return
    tokens = get(_props(args), "metadataOptions", "httpTokens")
    if is_unknown(tokens):
        return
    if tokens != "required":
        report(f"metadataOptions.httpTokens is {tokens!r}; IMDSv2 needs 'required'", None)


# A boolean input given as text is read by the provider with Go's strconv.ParseBool
# (terraform-plugin-sdk's field reader): "1", "t" and "true" (as T, TRUE, True) are true. Any
# casing counts here: a policy errs toward flagging.
_TRUE_TEXT = ("1", "t", "true")


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in _TRUE_TEXT)


def _template_encrypted(props: Mapping[str, Any], report: ReportViolation) -> None:
    """A launch template's block devices carry `ebs.encrypted` as a string ("true")."""
    for i, m in enumerate(as_list(props.get("blockDeviceMappings"))):
        encrypted = get(m, "ebs", "encrypted")
        if get(m, "virtualName") or is_unknown(encrypted):
            continue  # an instance-store mapping has no EBS volume
        if not _is_true(encrypted):
            name = get(m, "deviceName", default=f"#{i}")
            report(
                f"blockDeviceMappings[{i}] ({name}) ebs.encrypted is {encrypted!r}; every EBS device must be encrypted",
                None,
            )


def _ec2_encrypted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == LAUNCH_TEMPLATE:
        _template_encrypted(_props(args), report)
        return
    if args.resource_type != INSTANCE:
        return
    props = _props(args)
    root = get(props, "rootBlockDevice", "encrypted")
    if not is_unknown(root) and root is not True:
        report(f"rootBlockDevice.encrypted is {root!r}; the root volume must be encrypted", None)
    for i, device in enumerate(as_list(props.get("ebsBlockDevices"))):
        encrypted = get(device, "encrypted")
        if not is_unknown(encrypted) and encrypted is not True:
            name = get(device, "deviceName", default=f"#{i}")
            report(
                f"ebsBlockDevices[{i}] ({name}) encrypted is {encrypted!r}; every EBS device must be encrypted",
                None,
            )


def _no_public_ip(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == LAUNCH_TEMPLATE:
        for i, nic in enumerate(as_list(_props(args).get("networkInterfaces"))):
            if _is_true(get(nic, "associatePublicIpAddress")):
                report(
                    f"networkInterfaces[{i}].associatePublicIpAddress is true; hosts are reached through SSM and the load balancer only",
                    None,
                )
        return
    if args.resource_type != INSTANCE:
        return
    # an instance's is a boolean, but text reaches the provider too (`"true"` in a stack's YAML)
    if _is_true(_props(args).get("associatePublicIpAddress")):
        report(
            "associatePublicIpAddress is true; hosts are reached through SSM and the load balancer only", None
        )


def _instance_type_allowed(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in HOSTS:
        return
    itype = _props(args).get("instanceType")
    if itype is None or is_unknown(itype):
        return
    allowed = _config.value(args.get_config(), "allowedInstanceTypes") or list(
        _config.catalog_instance_types()
    )
    if itype not in allowed:
        report(f"instanceType {itype!r} is not allowed; allowed: {', '.join(sorted(allowed))}", None)


# --- EBS / ECR -----------------------------------------------------------------------------------


def _volume_encrypted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != VOLUME:
        return
    encrypted = _props(args).get("encrypted")
    if not is_unknown(encrypted) and encrypted is not True:
        report(f"encrypted is {encrypted!r}; EBS volumes must be encrypted", None)


ECR_ENCRYPTION_TYPES = ("AES256", "KMS", "KMS_DSSE")


def _ecr_hardened(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != ECR_REPO:
        return
    props = _props(args)
    scan = get(props, "imageScanningConfiguration", "scanOnPush")
    if not is_unknown(scan) and scan is not True:
        report(f"imageScanningConfiguration.scanOnPush is {scan!r}; images must be scanned on push", None)
    mutability = props.get("imageTagMutability")
    if not is_unknown(mutability) and mutability != "IMMUTABLE":
        report(
            f"imageTagMutability is {mutability!r}; tags must be 'IMMUTABLE' so a digest cannot change under a tag",
            None,
        )
    # AWS encrypts ECR with AES256 when the block is absent; we still ask for it explicitly so the
    # program states its intent and a review sees it.
    configs = as_list(props.get("encryptionConfigurations"))
    if not configs:
        report("encryptionConfigurations is not set; declare encryptionType AES256 or KMS", None)
    for i, cfg in enumerate(configs):
        etype = get(cfg, "encryptionType")
        if not is_unknown(etype) and etype not in ECR_ENCRYPTION_TYPES:
            report(
                f"encryptionConfigurations[{i}].encryptionType is {etype!r}; allowed: {', '.join(ECR_ENCRYPTION_TYPES)}",
                None,
            )


# --- IAM -----------------------------------------------------------------------------------------

# Actions that have no resource-level permissions, so `Resource: "*"` is the only possible grant.
# Source: AWS Service Authorization Reference ("Resource types" column empty).
STAR_RESOURCE_ACTIONS = (
    "ecr:GetAuthorizationToken",
    "ec2:Describe*",
    "ssm:UpdateInstanceInformation",
    "ssm:ListAssociations",
    "ssm:ListInstanceAssociations",
    "ssm:DescribeParameters",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
    "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage",
    "ec2messages:FailMessage",
    "ec2messages:GetEndpoint",
    "ec2messages:GetMessages",
    "ec2messages:SendReply",
    "cloudwatch:PutMetricData",
    "logs:DescribeLogGroups",
    "s3:ListAllMyBuckets",
    "sts:GetCallerIdentity",
    "elasticloadbalancing:Describe*",
    "autoscaling:Describe*",
    "pricing:GetProducts",
    "servicequotas:GetServiceQuota",
    "servicequotas:ListServiceQuotas",
)

# The SSM agent's own calls (AmazonSSMManagedInstanceCore minus its parameter reads, from the
# table in infra/catalog/aws_managed_policies.yaml): AWS grants them on "*" in its own policy, and
# they act on the calling instance, its messages and the documents it runs. Several accept an
# instance ARN, but a worker's instance id is unknown when the policy is written (an Auto Scaling
# group launches it), so they stay on "*"; none of them reads a parameter or decrypts.
SSM_AGENT_ACTIONS = ssm_agent_actions()

ADMIN_POLICY_SUFFIXES = (":policy/AdministratorAccess", ":policy/PowerUserAccess", ":policy/IAMFullAccess")


def _statements(document: Any) -> list[Any]:
    if isinstance(document, str):
        document = json.loads(document)
    stmts = document.get("Statement", []) if isinstance(document, Mapping) else []
    return as_list(stmts)


def _needs_star_resource(action: str) -> bool:
    return any(
        fnmatch.fnmatchcase(action.lower(), p.lower()) for p in (*STAR_RESOURCE_ACTIONS, *SSM_AGENT_ACTIONS)
    )


def iam_document_problems(document: Any) -> list[str]:
    """Least-privilege problems of one IAM policy document (dict or JSON string)."""
    problems: list[str] = []
    try:
        statements = _statements(document)
    except ValueError as err:
        return [f"policy is not valid JSON: {err}"]
    for i, stmt in enumerate(statements):
        if not isinstance(stmt, Mapping) or stmt.get("Effect") != "Allow":
            continue
        sid = f"Statement[{i}]" + (f" ({stmt['Sid']})" if stmt.get("Sid") else "")
        if "NotAction" in stmt:
            problems.append(f"{sid} allows NotAction, which grants every other action")
        actions = [a for a in as_list(stmt.get("Action")) if isinstance(a, str)]
        wild = [a for a in actions if a == "*" or a.endswith(":*")]
        if wild:
            problems.append(f"{sid} allows wildcard action {', '.join(wild)}; list the actions it needs")
        resources = [r for r in as_list(stmt.get("Resource")) if isinstance(r, str)]
        if "*" in resources or "NotResource" in stmt:
            broad = [a for a in actions if a not in wild and not _needs_star_resource(a)]
            if broad:
                problems.append(
                    f"{sid} grants {', '.join(broad)} on Resource '*'; these actions support resource ARNs"
                )
    return problems


def _iam_least_privilege(args: ResourceValidationArgs, report: ReportViolation) -> None:
    props = _props(args)
    if args.resource_type in IAM_ATTACHMENT_TYPES:
        arn = props.get("policyArn")
        if isinstance(arn, str) and arn.endswith(ADMIN_POLICY_SUFFIXES):
            report(f"policyArn {arn} grants administrator-level access", None)
        return
    if args.resource_type in IAM_POLICY_TYPES:
        documents = [("", props.get("policy"))]
    elif args.resource_type == ROLE:
        documents = [
            (f"inlinePolicies[{get(p, 'name', default=i)}]: ", get(p, "policy"))
            for i, p in enumerate(as_list(props.get("inlinePolicies")))
        ]
    else:
        return
    for where, document in documents:
        # A document built from other resources' ARNs is unknown during preview: checked at `up`.
        if document is None or is_unknown(document):
            continue
        for problem in iam_document_problems(document):
            report(where + problem, None)


# --- tags ----------------------------------------------------------------------------------------

DEFAULT_REQUIRED_TAGS = ("Project", "llmfleet:stack")

# AWS types the program creates that take `tags`; any other resource with a `tags` input counts too.
TAGGABLE_TYPES = {
    INSTANCE,
    VOLUME,
    ECR_REPO,
    "aws:ec2/vpc:Vpc",
    "aws:ec2/subnet:Subnet",
    "aws:ec2/securityGroup:SecurityGroup",
    "aws:ec2/internetGateway:InternetGateway",
    "aws:ec2/natGateway:NatGateway",
    "aws:ec2/eip:Eip",
    "aws:ec2/routeTable:RouteTable",
    "aws:ec2/vpcEndpoint:VpcEndpoint",
    "aws:ec2/placementGroup:PlacementGroup",
    "aws:ec2/launchTemplate:LaunchTemplate",
    "aws:autoscaling/group:Group",
    "aws:iam/role:Role",
    "aws:iam/policy:Policy",
    "aws:iam/instanceProfile:InstanceProfile",
    "aws:s3/bucket:Bucket",
    "aws:s3/bucketV2:BucketV2",
    "aws:lb/loadBalancer:LoadBalancer",
    "aws:lb/targetGroup:TargetGroup",
    "aws:lb/listener:Listener",
    "aws:ssm/parameter:Parameter",
    "aws:cloudwatch/logGroup:LogGroup",
}


def _required_tags(args: ResourceValidationArgs, report: ReportViolation) -> None:
    props = _props(args)
    # Outside the AWS types, `tags` may mean something else (docker-build's image tags are a list).
    aws_tags = args.resource_type.startswith("aws:") and (
        isinstance(props.get("tags"), Mapping) or is_unknown(props.get("tags"))
    )
    if args.resource_type not in TAGGABLE_TYPES and not aws_tags:
        return
    tags = tags_of(props)
    if is_unknown(tags):
        return
    # Tags set once on the provider (defaultTags) apply to every resource it manages.
    if args.provider is not None:
        default_tags = get(plain(args.provider.props), "defaultTags", "tags")
        if isinstance(default_tags, Mapping):
            tags = {**default_tags, **tags}
    required = _config.value(args.get_config(), "requiredTags", list(DEFAULT_REQUIRED_TAGS))
    missing = [t for t in required if not tags.get(t)]
    if missing:
        report(f"missing required tags: {', '.join(missing)}", None)


# --- the policy objects --------------------------------------------------------------------------

RESOURCE_POLICIES: list[ResourceValidationPolicy] = [
    ResourceValidationPolicy(
        name="ec2-imdsv2-required",
        description="EC2 instances and launch templates require IMDSv2 (metadataOptions.httpTokens = required).",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_imdsv2,
    ),
    ResourceValidationPolicy(
        name="ec2-ebs-encrypted",
        description="EC2 root and EBS block devices (of instances and launch templates) are encrypted.",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_ec2_encrypted,
    ),
    ResourceValidationPolicy(
        name="ec2-no-public-ip",
        description="EC2 instances get no public IP address.",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_no_public_ip,
    ),
    ResourceValidationPolicy(
        name="ec2-instance-type-allowed",
        description="EC2 instance types come from the allowed list (default: the llmfleet catalog).",
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=PolicyConfigSchema(
            properties={
                "allowedInstanceTypes": _config.string_list(
                    "Instance types a stack may launch; default: every type in infra/catalog."
                )
            }
        ),
        validate=_instance_type_allowed,
    ),
    ResourceValidationPolicy(
        name="ebs-volume-encrypted",
        description="EBS volumes are encrypted.",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_volume_encrypted,
    ),
    ResourceValidationPolicy(
        name="ecr-repository-hardened",
        description="ECR repositories scan on push, have immutable tags and declare encryption.",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_ecr_hardened,
    ),
    ResourceValidationPolicy(
        name="iam-least-privilege",
        description="IAM policies grant no '*' action, and '*' resources only to actions that need it.",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_iam_least_privilege,
    ),
    ResourceValidationPolicy(
        name="required-tags",
        description="Taggable resources carry the required tags.",
        enforcement_level=EnforcementLevel.ADVISORY,
        config_schema=PolicyConfigSchema(
            properties={
                "requiredTags": _config.string_list(
                    "Tag keys every taggable resource must have.", default=list(DEFAULT_REQUIRED_TAGS)
                )
            }
        ),
        validate=_required_tags,
    ),
]
