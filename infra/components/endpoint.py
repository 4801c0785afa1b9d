"""Endpoint: the NLB in front of the head's serving port.

The bearer token it serves with is a SecretToken (infra/components/secret_token.py): it must
exist before the head boots (its user data reads it), while the NLB needs the head instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws


@dataclass
class EndpointArgs:
    name: str
    vpc_id: pulumi.Input[str]
    subnet_ids: list[pulumi.Input[str]]
    security_group_id: pulumi.Input[str]
    head_instance_id: pulumi.Input[str]
    port: int = 8000
    internal: bool = True
    tags: dict[str, str] = field(default_factory=dict)


class Endpoint(pulumi.ComponentResource):
    def __init__(self, name: str, args: EndpointArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llmfleet:components:Endpoint", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.nlb = aws.lb.LoadBalancer(
            f"{name}-nlb",
            load_balancer_type="network",
            internal=args.internal,
            subnets=args.subnet_ids,
            security_groups=[args.security_group_id],
            enable_cross_zone_load_balancing=True,
            tags=args.tags,
            opts=child,
        )
        self.target_group = aws.lb.TargetGroup(
            f"{name}-tg",
            port=args.port,
            protocol="TCP",
            target_type="instance",
            vpc_id=args.vpc_id,
            health_check={
                "protocol": "TCP",
                "port": str(args.port),
                "interval": 10,
                "healthy_threshold": 3,
                "unhealthy_threshold": 3,
            },
            tags=args.tags,
            opts=child,
        )
        aws.lb.TargetGroupAttachment(
            f"{name}-head",
            target_group_arn=self.target_group.arn,
            target_id=args.head_instance_id,
            port=args.port,
            opts=child,
        )
        self.listener = aws.lb.Listener(
            f"{name}-listener",
            load_balancer_arn=self.nlb.arn,
            port=args.port,
            protocol="TCP",
            default_actions=[{"type": "forward", "target_group_arn": self.target_group.arn}],
            tags=args.tags,
            opts=child,
        )
        self.url = self.nlb.dns_name.apply(lambda d: f"http://{d}:{args.port}/v1")
        self.register_outputs({"url": self.url})
