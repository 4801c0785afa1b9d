"""RayClusterToken: the one Ray authentication token every node of the cluster shares, in SSM.

Ray's ports are already closed to everything but the cluster's security group; the token is
defense in depth (a process inside the VPC that is not a node still cannot join or submit).
Every host reads it at boot (infra/cloud_init.py), so it is never in user data. Alphanumeric
only: it lands in a docker `--env-file`, where quotes or `#` would be taken literally.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_random as random

# Ray's own `ray get-auth-token --generate` makes 256 bits; 64 alphanumerics hold ~380.
RAY_TOKEN_LENGTH = 64


def ray_token_parameter_name(stack: str) -> str:
    return f"/llmfleet/{stack}/ray-auth-token"


@dataclass
class RayClusterTokenArgs:
    stack: str
    tags: dict[str, str] = field(default_factory=dict)


class RayClusterToken(pulumi.ComponentResource):
    def __init__(self, name: str, args: RayClusterTokenArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llmfleet:components:RayClusterToken", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.token = random.RandomPassword(
            f"{name}-value", length=RAY_TOKEN_LENGTH, special=False, opts=child
        )
        self.parameter = aws.ssm.Parameter(
            f"{name}-parameter",
            name=ray_token_parameter_name(args.stack),
            type="SecureString",
            value=self.token.result,
            description="llmfleet Ray cluster auth token (RAY_AUTH_TOKEN, read by every host at boot)",
            tags=args.tags,
            opts=child,
        )
        self.register_outputs({"name": self.parameter.name, "arn": self.parameter.arn})
