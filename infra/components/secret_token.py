"""SecretToken: a random secret kept as an SSM SecureString, read by the hosts at boot.

Two of them per AWS stack: the endpoint's bearer token (the head's OpenAI ingress) and the Ray
cluster token (every node; Ray's ports are already closed to all but the cluster's security
group, so it is defense in depth). Both are read at boot (infra/boot/cloud_init.py), never put in
user data, and are alphanumeric: they land in a docker `--env-file`, where quotes or `#`
would be taken literally.

Both are encrypted with the stack's own KMS key (SecretsKey, `alias/llmfleet/<stack>`), not the
account's default `aws/ssm` key. That key's policy lets every principal of the account decrypt
through SSM, so a parameter read (ssm:GetParameter) is the only barrier in front of a token.
With a key per stack, reading a SecureString also needs kms:Decrypt on that stack's key, which
only that stack's node role holds (infra/components/iam.py: this key only, through SSM only, for
this stack's parameter ARNs only): a dev host holds no grant that decrypts prod's tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_random as random

ENDPOINT_TOKEN_LENGTH = 48
# Ray's own `ray get-auth-token --generate` makes 256 bits; 64 alphanumerics hold ~380.
RAY_TOKEN_LENGTH = 64


# The key's old material is kept on rotation, so parameters encrypted before it still decrypt.
SECRETS_KEY_DELETION_DAYS = 7  # as the registry's key; the parameters it protects go with the stack


def secrets_key_alias(stack: str) -> str:
    return f"alias/llmfleet/{stack}"


def secrets_key_policy(caller_arn: str, account_id: str) -> dict[str, Any]:
    """The key policy (pure): the account root administers the key and IAM policies decide the rest.

    This is AWS's default key policy written out: it makes the key manageable by the account's
    administrators (KMS refuses a policy that would lock everyone out) and delegates every grant to
    IAM, where the node role gets kms:Decrypt on this key alone, conditioned on SSM and this
    stack's parameter ARNs. No principal is named here beside the root: a role named in a key
    policy keeps its access even when its IAM policies lose it.
    """
    partition = caller_arn.split(":")[1] if caller_arn.startswith("arn:") else "aws"
    return {
        "Version": "2012-10-17",
        "Id": "llmfleet-secrets",
        "Statement": [
            {
                "Sid": "AccountRootAdministers",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:{partition}:iam::{account_id}:root"},
                "Action": "kms:*",
                "Resource": "*",
            }
        ],
    }


@dataclass
class SecretsKeyArgs:
    stack: str
    tags: dict[str, str] = field(default_factory=dict)


class SecretsKey(pulumi.ComponentResource):
    """The stack's customer managed KMS key for its SecureStrings, rotated yearly, with an alias."""

    def __init__(self, name: str, args: SecretsKeyArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llmfleet:components:SecretsKey", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        caller = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self))
        policy = pulumi.Output.all(caller.arn, caller.account_id).apply(
            lambda a: json.dumps(secrets_key_policy(a[0], a[1]))
        )
        self.key = aws.kms.Key(
            f"{name}-key",
            description=f"llmfleet {args.stack}: SSM SecureStrings (endpoint and Ray tokens)",
            enable_key_rotation=True,
            deletion_window_in_days=SECRETS_KEY_DELETION_DAYS,
            policy=policy,
            tags=args.tags,
            opts=child,
        )
        self.alias = aws.kms.Alias(
            f"{name}-alias", name=secrets_key_alias(args.stack), target_key_id=self.key.key_id, opts=child
        )
        self.register_outputs({"key_arn": self.key.arn, "alias": self.alias.name})


def token_parameter_name(stack: str) -> str:
    return f"/llmfleet/{stack}/endpoint-token"


def ray_token_parameter_name(stack: str) -> str:
    return f"/llmfleet/{stack}/ray-auth-token"


@dataclass
class SecretTokenArgs:
    parameter_name: str
    description: str
    length: int
    # The stack's SecretsKey (its key id): never the account's default aws/ssm key.
    kms_key_id: pulumi.Input[str]
    tags: dict[str, str] = field(default_factory=dict)


class SecretToken(pulumi.ComponentResource):
    def __init__(self, name: str, args: SecretTokenArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llmfleet:components:SecretToken", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.token = random.RandomPassword(f"{name}-value", length=args.length, special=False, opts=child)
        self.parameter = aws.ssm.Parameter(
            f"{name}-parameter",
            name=args.parameter_name,
            type="SecureString",
            key_id=args.kms_key_id,
            value=self.token.result,
            description=args.description,
            tags=args.tags,
            opts=child,
        )
        self.register_outputs({"name": self.parameter.name, "arn": self.parameter.arn})


def endpoint_token(stack: str, tags: dict[str, str], kms_key_id: pulumi.Input[str]) -> SecretToken:
    return SecretToken(
        "token",
        SecretTokenArgs(
            parameter_name=token_parameter_name(stack),
            description="llmfleet endpoint bearer token (read by the head at boot)",
            length=ENDPOINT_TOKEN_LENGTH,
            kms_key_id=kms_key_id,
            tags=tags,
        ),
    )


def ray_cluster_token(stack: str, tags: dict[str, str], kms_key_id: pulumi.Input[str]) -> SecretToken:
    return SecretToken(
        "ray-token",
        SecretTokenArgs(
            parameter_name=ray_token_parameter_name(stack),
            description="llmfleet Ray cluster auth token (RAY_AUTH_TOKEN, read by every host at boot)",
            length=RAY_TOKEN_LENGTH,
            kms_key_id=kms_key_id,
            tags=tags,
        ),
    )
