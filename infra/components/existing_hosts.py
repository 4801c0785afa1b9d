"""ExistingHosts: bootstrap the Ray cluster onto servers you own, over SSH (provider = existing).

One `pulumi_command.remote.Command` per declared host, all parented here. Each runs the
script `infra.boot.ssh_bootstrap.render_bootstrap` renders for that host (checks, weights,
image, node container); its `triggers` hold the script's sha256, so a change of config,
image or node code re-runs it, and its `delete` stops the container. Workers wait for the
head. Two RandomPasswords travel on the commands' stdin (secret), never in the script: the Ray
cluster token to every host (Ray token auth: defense in depth beside your network's rules for
Ray's ports) and the endpoint token to the head.

PushedImage: the node image built from images/Dockerfile and pushed to a registry you name
(llmfleet:imageRegistry), for stacks without ECR; hosts pull it by digest.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_docker_build as docker_build
import pulumi_random as random
from pulumi_command import remote

from infra.boot.ssh_bootstrap import remote_create_command, script_sha256
from infra.boot.ssh_node import stdin_secrets, stop_command
from infra.components.image import node_image_inputs
from infra.components.secret_token import RAY_TOKEN_LENGTH
from infra.stack.host_spec import HostSpec

TOKEN_LENGTH = 48
# Fail a host that does not answer within ~2 minutes instead of pulumi-command's 10 x 15 s
# default, which is the same order; kept explicit so the wait is a decision, not an accident.
DIAL_ERROR_LIMIT = 8
PER_DIAL_TIMEOUT_S = 15


def host_slug(host: HostSpec) -> str:
    """A logical-name-safe form of the host's address (addresses are unique in the config)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", host.address).strip("-").lower()


@dataclass(frozen=True)
class HostBoot:
    """One host as the component needs it: where to SSH, the node container the delete stops,
    and its bootstrap script for an image reference (rendered by infra.boot.ssh_bootstrap)."""

    host: HostSpec
    container: str
    script: Callable[[str], str]


@dataclass
class ExistingHostsArgs:
    head: HostBoot
    workers: list[HostBoot]
    image_ref: pulumi.Input[str]  # REPO@sha256:... the hosts pull
    ssh_private_key: pulumi.Input[str]  # a Pulumi secret


class ExistingHosts(pulumi.ComponentResource):
    def __init__(self, name: str, args: ExistingHostsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llmfleet:components:ExistingHosts", name, None, opts)
        image = pulumi.Output.from_input(args.image_ref)

        self.token = random.RandomPassword(
            f"{name}-api-token", length=TOKEN_LENGTH, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        # Alphanumeric: it lands in a docker --env-file, which takes quotes and `#` literally.
        self.ray_token = random.RandomPassword(
            f"{name}-ray-token",
            length=RAY_TOKEN_LENGTH,
            special=False,
            opts=pulumi.ResourceOptions(parent=self),
        )

        def bootstrap(boot: HostBoot, after: list[pulumi.Resource]) -> remote.Command:
            host = boot.host
            script = image.apply(boot.script)
            return remote.Command(
                f"{name}-{host.role}-{host_slug(host)}",
                connection=remote.ConnectionArgs(
                    host=host.address,
                    user=host.ssh_user,
                    private_key=args.ssh_private_key,
                    host_key=host.host_key,
                    dial_error_limit=DIAL_ERROR_LIMIT,
                    per_dial_timeout=PER_DIAL_TIMEOUT_S,
                ),
                create=script.apply(remote_create_command),
                delete=stop_command(boot.container),
                triggers=[script.apply(script_sha256)],
                stdin=pulumi.Output.secret(
                    pulumi.Output.all(self.ray_token.result, self.token.result).apply(
                        lambda t, role=host.role: stdin_secrets(role, t[0], t[1])
                    )
                ),
                add_previous_output_in_env=False,
                # One fixed container name per host: the old command's delete (docker rm -f)
                # must run before the new create, never after it.
                opts=pulumi.ResourceOptions(parent=self, depends_on=after, delete_before_replace=True),
            )

        self.head = bootstrap(args.head, [])
        self.workers = [bootstrap(w, [self.head]) for w in args.workers]
        self.register_outputs(
            {
                "head": self.head.id,
                "workers": [w.id for w in self.workers],
            }
        )


@dataclass
class PushedImageArgs:
    repository: str  # registry/path, no tag
    context_dir: Path
    base_image: str
    ray_version: str
    platform: str = "linux/amd64"


class PushedImage(pulumi.ComponentResource):
    """Build images/Dockerfile and push it to `repository` with the operator's docker login."""

    def __init__(self, name: str, args: PushedImageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llmfleet:components:PushedImage", name, None, opts)
        # content hash: an unchanged tree pushes nothing new
        tag, inputs = node_image_inputs(args.context_dir, args.base_image, args.ray_version, args.platform)
        self.image = docker_build.Image(
            f"{name}-image",
            **inputs,
            tags=[f"{args.repository}:{tag}"],
            labels={"org.opencontainers.image.title": "llmfleet-node", "llmfleet.context": tag},
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.ref = self.image.ref  # repo@sha256:...
        self.register_outputs({"ref": self.ref})
