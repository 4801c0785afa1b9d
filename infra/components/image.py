"""Image: build images/Dockerfile (vLLM release + Ray + ray_cluster) and push it to ECR.

The tag is the build context's content hash, so an unchanged tree never pushes a new tag (the
repository's tags are IMMUTABLE). The registry build cache is keyed by the dependency layers
(Dockerfile + build args): a changed `ray_cluster` reuses the cached base/Ray layers, and
re-exporting an existing immutable cache tag is ignored rather than failing the build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

# The tag's hash is pure (no Pulumi): local mode's `make image` computes it too.
from infra.image_context import (  # noqa: F401 (re-exported: the tag's home for the components)
    CACHE_TAG_PREFIX,
    CONTEXT_PATHS,
    NODE_TAG_PREFIX,
    cache_tag,
    context_hash,
    image_tag,
)


@dataclass
class ImageArgs:
    repository_url: pulumi.Input[str]
    registry_id: pulumi.Input[str]
    context_dir: Path
    base_image: str
    ray_version: str
    platform: str = "linux/amd64"
    tags: dict[str, str] = field(default_factory=dict)


def node_image_inputs(
    context_dir: Path, base_image: str, ray_version: str, platform: str
) -> tuple[str, dict]:
    """The context tag and the docker_build.Image arguments every build of the node image shares
    (ECR here, the owned hosts' registry in existing_hosts): one Dockerfile, one context."""
    build_args = {"BASE_IMAGE": base_image, "RAY_VERSION": ray_version}
    return image_tag(context_dir, build_args), {
        "context": {"location": str(context_dir)},
        "dockerfile": {"location": str(context_dir / "images" / "Dockerfile")},
        "build_args": build_args,
        "platforms": [docker_build.Platform(platform)],
        "push": True,
    }


class Image(pulumi.ComponentResource):
    def __init__(self, name: str, args: ImageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llmfleet:components:Image", name, None, opts)
        tag, inputs = node_image_inputs(args.context_dir, args.base_image, args.ray_version, args.platform)
        cache = cache_tag(args.context_dir, inputs["build_args"])
        auth = aws.ecr.get_authorization_token_output(
            registry_id=args.registry_id, opts=pulumi.InvokeOutputOptions(parent=self)
        )
        repo = pulumi.Output.from_input(args.repository_url)
        self.image = docker_build.Image(
            f"{name}-image",
            **inputs,
            tags=[repo.apply(lambda r: f"{r}:{tag}")],
            registries=[
                {
                    "address": repo.apply(lambda r: r.split("/", 1)[0]),
                    "username": auth.user_name,
                    "password": pulumi.Output.secret(auth.password),
                }
            ],
            cache_from=[{"registry": {"ref": repo.apply(lambda r: f"{r}:{cache}")}}],
            cache_to=[
                {
                    "registry": {
                        "ref": repo.apply(lambda r: f"{r}:{cache}"),
                        "image_manifest": True,  # ECR needs the cache as an image manifest
                        "oci_media_types": True,
                        "mode": docker_build.CacheMode.MAX,
                        "ignore_error": True,  # the cache tag is immutable once written
                    }
                }
            ],
            labels={"org.opencontainers.image.title": "llmfleet-node", "llmfleet.context": tag},
            opts=pulumi.ResourceOptions(parent=self),
        )
        # repo@sha256:...: hosts pull the exact bytes that were built.
        self.ref = self.image.ref
        self.tag = tag
        self.register_outputs({"ref": self.ref, "digest": self.image.digest})
