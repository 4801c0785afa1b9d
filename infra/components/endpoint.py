"""Endpoint: the NLB in front of the serving port: the head's, or every serving host's.

The bearer token it serves with is a SecretToken (infra/components/secret_token.py): it must
exist before the hosts that serve it boot (their node scripts read it). Two kinds of target:

- default: the head's fixed private IP (target type ip, infra/components/head.py): a replaced
  head is the same target, so the NLB never changes when the head's group replaces its instance;
  the head's proxy is the only one (Serve `proxy_location: HeadOnly`).
- llmfleet:gcsRedis (`every_host`): target type instance, one target group that the head's Auto
  Scaling group and every worker group register their instances with (`target_group_arns` on
  the groups: a replaced instance is deregistered and its successor registered by the group).
  Every host runs a Serve proxy and an ingress replica (infra/rayconf/serving.py ingress_hosts),
  so while the head is replaced the workers' proxies keep answering. The health check is Serve's
  own proxy route, HTTP GET /-/healthz on the serving port (Ray 2.60 ray/serve/_private/
  proxy_request_response.py `is_health_request`): 200 "success" when the proxy is ready, 503
  while it drains or before it has routes and running replicas (proxy.py
  `_get_health_or_routes_reponse`, proxy_router.py `ready_for_traffic`). Serve drains the proxy
  of a node that holds no replica of any deployment (controller.py `_update_proxy_nodes`:
  the head and the nodes with replicas; proxy_state.py `update`), so the NLB stops sending
  there by itself. The groups keep EC2 health checks: a proxy that is down while the engine
  loads is readiness, not a broken host, and must not make the group replace it.

TLS: with a certificate (ACM, llmfleet:endpointCertificateArn) the listener is TLS with a
current TLS 1.2/1.3 policy and terminates on the NLB; the NLB -> head hop stays TCP inside the
VPC (the endpoint security group admits only the NLB's subnet side). Without one the listener
is plain TCP (the policy pack: mandatory violation on a public endpoint, advisory on an
internal one). DNS: with llmfleet:endpointDnsName + endpointHostedZoneId, a Route 53 alias
record points the name at the NLB and the URL uses the name (the one the certificate covers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws


@dataclass
class EndpointArgs:
    name: str
    vpc_id: pulumi.Input[str]
    subnet_ids: list[pulumi.Input[str]]
    security_group_id: pulumi.Input[str]
    # the head's fixed address (its interface's), the one target; None: every host's proxy is a
    # target (llmfleet:gcsRedis), registered by the hosts' groups (`every_host`)
    head_ip: pulumi.Input[str] | None
    port: int = 8000
    internal: bool = True
    certificate_arn: str | None = None
    dns_name: str | None = None
    hosted_zone_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def every_host(self) -> bool:
        """llmfleet:gcsRedis: an instance target group the hosts' groups register with (above)."""
        return self.head_ip is None


# TLS 1.3 and 1.2 only, forward secrecy (AWS's recommended NLB policy).
TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"


# Serve's proxy health route (Ray 2.60 proxy_request_response.py): 200 ready, 503 draining.
PROXY_HEALTH_PATH = "/-/healthz"


def target_group_inputs(args: EndpointArgs) -> dict[str, Any]:
    """The target group's type and health check: the head's address over TCP, or (every_host)
    each host's instance, checked at Serve's proxy health route."""
    check: dict[str, Any] = {
        "port": str(args.port),
        "interval": 10,
        "healthy_threshold": 3,
        "unhealthy_threshold": 3,
    }
    if not args.every_host:
        # the fixed address, not an instance id that changes on replacement
        return {"target_type": "ip", "health_check": {"protocol": "TCP", **check}}
    return {
        "target_type": "instance",
        # Instance targets preserve the client's address by default, ip targets over TCP do not
        # (AWS: NLB target group attributes, client IP preservation). Off, as the head's ip
        # target has it: a host sees the NLB's address, as it did, and a host that calls the
        # endpoint is not refused as its own client (the NLB's documented hairpin limit).
        "preserve_client_ip": "false",
        "health_check": {"protocol": "HTTP", "path": PROXY_HEALTH_PATH, "matcher": "200", **check},
    }


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
            vpc_id=args.vpc_id,
            **target_group_inputs(args),
            tags=args.tags,
            opts=child,
        )
        if args.head_ip is not None:
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
