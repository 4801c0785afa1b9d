"""Composition for `llmfleet:provider: existing`: the cluster on servers you own.

No EC2, VPC or load balancer: the declared hosts are bootstrapped over SSH (ExistingHosts),
and the stack exports the same outputs as the AWS program, so cluster.yaml, the Serve config
and the cost/policy views render from them unchanged.

The node image comes from, in order:
- llmfleet:imageRegistry = REPO@sha256:<digest>  a prebuilt image, pulled as is;
- llmfleet:imageRegistry = REPO                  built here and pushed to REPO (your docker login);
- unset                                          built here and pushed to an ECR repository this
                                                 stack creates (needs AWS credentials where
                                                 `pulumi up` runs and on the hosts, to pull).
"""

from __future__ import annotations

from typing import Any

import pulumi

from infra.boot.ssh_bootstrap import render_bootstrap
from infra.boot.ssh_node import node_spec
from infra.components.existing_hosts import (
    ExistingHosts,
    ExistingHostsArgs,
    HostBoot,
    PushedImage,
    PushedImageArgs,
)
from infra.constants import RAY_VERSION, SSH_USER, cluster_name, node_image_context
from infra.rayconf.serving import serving_outputs
from infra.stack.config import OwnedStackConfig
from infra.stack.resolve import resolve


def node_image(cfg: OwnedStackConfig) -> pulumi.Input[str]:
    """The REPO@sha256:... every host pulls."""

    reg = cfg.image_registry
    if reg and "@sha256:" in reg:
        return reg
    if reg:
        return PushedImage(
            "node",
            PushedImageArgs(
                repository=reg,
                context_dir=node_image_context(),
                base_image=cfg.base_image,
                ray_version=RAY_VERSION,
            ),
        ).ref
    # start-up: the ECR registry's module loads pulumi_aws; only a stack without its own registry needs it
    from infra.program.shared import registry_and_image

    return registry_and_image(cfg)[1].ref


def build_existing(cfg: OwnedStackConfig) -> dict[str, Any]:
    head = cfg.head_host
    assert head is not None  # check_hosts requires exactly one head
    workers = cfg.worker_hosts
    stack = resolve(cfg)  # once per program run; everything below gets this one
    plan = stack.plan
    head_ip = str(head.ray_ip)
    image_ref = node_image(cfg)

    def boot(host) -> HostBoot:
        return HostBoot(
            host=host,
            container=node_spec(stack, host, head_ip, "").container,
            script=lambda ref: render_bootstrap(stack, host, head_ip, ref),
        )

    # require_secret keeps the key a secret Output all the way into the SSH connection.
    ssh_key = pulumi.Config("llmfleet").require_secret("sshPrivateKey")
    hosts = ExistingHosts(
        "hosts",
        ExistingHostsArgs(
            head=boot(head), workers=[boot(w) for w in workers], image_ref=image_ref, ssh_private_key=ssh_key
        ),
    )
    outputs: dict[str, Any] = {
        "cluster_name": cluster_name(cfg),
        "provider": "existing",
        "endpoint_url": f"http://{head.address}:{cfg.endpoint_port}/v1",
        "head_private_ip": head.ray_ip,
        "head_address": head.address,
        "head_container": node_spec(stack, head, head_ip, "").container,
        "worker_private_ips": [w.ray_ip for w in workers],
        "worker_addresses": [w.address for w in workers],
        "image_ref": image_ref,
        # No SSM on-prem: the token itself, as a secret (`pulumi stack output api_token --show-secrets`).
        "api_token": pulumi.Output.secret(hosts.token.result),
        # The Ray cluster token (RAY_AUTH_TOKEN), for drivers outside the node containers.
        "ray_auth_token": pulumi.Output.secret(hosts.ray_token.result),
        "ssh_user": head.ssh_user or SSH_USER,
        **serving_outputs(cfg, plan, len(workers)),
    }
    if cfg.weights_uri:
        outputs["weights_uri"] = cfg.weights_uri
    if cfg.host_hourly_usd is not None:
        outputs["host_hourly_usd"] = cfg.host_hourly_usd
    # The region only means something when AWS serves the image (ECR) or the weights (S3).
    if not cfg.image_registry or (cfg.weights_uri or "").startswith("s3://"):
        outputs["region"] = cfg.region
    return outputs
