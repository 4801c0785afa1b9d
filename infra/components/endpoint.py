"""Endpoint: the NLB in front of the head's serving port.

The bearer token it serves with is a SecretToken (infra/components/secret_token.py): it must
exist before the head boots (its user data reads it). The target is the head's fixed private IP
(target type ip, infra/components/head.py): a replaced head is the same target, so the NLB
never changes when the head's group replaces its instance.

TLS: with a certificate (ACM, llmfleet:endpointCertificateArn) the listener is TLS with a
current TLS 1.2/1.3 policy and terminates on the NLB; the NLB -> head hop stays TCP inside the
VPC (the endpoint security group admits only the NLB's subnet side). Without one the listener
is plain TCP (the policy pack: mandatory violation on a public endpoint, advisory on an
internal one). DNS: with llmfleet:endpointDnsName + endpointHostedZoneId, a Route 53 alias
record points the name at the NLB and the URL uses the name (the one the certificate covers).
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
    head_ip: pulumi.Input[str]  # the head's fixed address (its interface's)
    port: int = 8000
    internal: bool = True
    certificate_arn: str | None = None
    dns_name: str | None = None
    hosted_zone_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


# TLS 1.3 and 1.2 only, forward secrecy (AWS's recommended NLB policy).
TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"


def endpoint_url(host: str, port: int, tls: bool) -> str:
    return f"{'https' if tls else 'http'}://{host}:{port}/v1"


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
            target_type="ip",  # the fixed address, not an instance id that changes on replacement
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
            target_id=args.head_ip,
            port=args.port,
            opts=child,
        )
        tls = args.certificate_arn is not None
        self.listener = aws.lb.Listener(
            f"{name}-listener",
            load_balancer_arn=self.nlb.arn,
            port=args.port,
            protocol="TLS" if tls else "TCP",
            **({"certificate_arn": args.certificate_arn, "ssl_policy": TLS_POLICY} if tls else {}),
            default_actions=[{"type": "forward", "target_group_arn": self.target_group.arn}],
            tags=args.tags,
            opts=child,
        )
        self.record = None
        if args.dns_name and args.hosted_zone_id:
            self.record = aws.route53.Record(
                f"{name}-dns",
                zone_id=args.hosted_zone_id,
                name=args.dns_name,
                type="A",
                aliases=[
                    {"name": self.nlb.dns_name, "zone_id": self.nlb.zone_id, "evaluate_target_health": True}
                ],
                opts=child,
            )
            self.url = pulumi.Output.from_input(endpoint_url(args.dns_name, args.port, tls))
        else:
            self.url = self.nlb.dns_name.apply(lambda d: endpoint_url(d, args.port, tls))
        self.register_outputs({"url": self.url})
