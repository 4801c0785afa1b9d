"""What both programs build the same way: the ECR repository and the node image pushed to it."""

from __future__ import annotations

from infra.components.image import Image, ImageArgs
from infra.components.registry import Registry, RegistryArgs
from infra.constants import RAY_VERSION, cluster_name, node_image_context
from infra.stack.config import StackConfig


def registry_and_image(cfg: StackConfig) -> tuple[Registry, Image]:
    """The stack's ECR repository (immutable tags; force-deleted with the stack except prod)
    and the node image built from images/Dockerfile + ray_cluster/ and pushed to it."""
    registry = Registry(
        "registry",
        RegistryArgs(
            name=cluster_name(cfg),
            keep_images=cfg.ecr_keep_images,
            force_delete=cfg.stack != "prod",
            tags=cfg.common_tags,
        ),
    )
    image = Image(
        "node",
        ImageArgs(
            repository_url=registry.repository.repository_url,
            registry_id=registry.repository.registry_id,
            context_dir=node_image_context(),
            base_image=cfg.base_image,
            ray_version=RAY_VERSION,
            tags=cfg.common_tags,
        ),
    )
    return registry, image
