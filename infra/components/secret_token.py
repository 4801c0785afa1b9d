"""SecretToken: a random secret kept as an SSM SecureString, read by the hosts at boot.

Two of them per AWS stack: the endpoint's bearer token (the head's OpenAI ingress) and the Ray
cluster token (every node; Ray's ports are already closed to all but the cluster's security
group, so it is defense in depth). Both are read at boot (infra/boot/cloud_init.py), never put in
user data, and are alphanumeric: they land in a docker `--env-file`, where quotes or `#`
would be taken literally.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_random as random

ENDPOINT_TOKEN_LENGTH = 48
# Ray's own `ray get-auth-token --generate` makes 256 bits; 64 alphanumerics hold ~380.
RAY_TOKEN_LENGTH = 64


def token_parameter_name(stack: str) -> str:
    return f"/llmfleet/{stack}/endpoint-token"


def ray_token_parameter_name(stack: str) -> str:
    return f"/llmfleet/{stack}/ray-auth-token"


@dataclass
class SecretTokenArgs:
    parameter_name: str
    description: str
    length: int
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
            value=self.token.result,
            description=args.description,
            tags=args.tags,
            opts=child,
        )
        self.register_outputs({"name": self.parameter.name, "arn": self.parameter.arn})


def endpoint_token(stack: str, tags: dict[str, str]) -> SecretToken:
    return SecretToken(
        "token",
        SecretTokenArgs(
            parameter_name=token_parameter_name(stack),
            description="llmfleet endpoint bearer token (read by the head at boot)",
            length=ENDPOINT_TOKEN_LENGTH,
            tags=tags,
        ),
    )


def ray_cluster_token(stack: str, tags: dict[str, str]) -> SecretToken:
    return SecretToken(
        "ray-token",
        SecretTokenArgs(
            parameter_name=ray_token_parameter_name(stack),
            description="llmfleet Ray cluster auth token (RAY_AUTH_TOKEN, read by every host at boot)",
            length=RAY_TOKEN_LENGTH,
            tags=tags,
        ),
    )
