"""Registry: the ECR repository the node image is pushed to, and its lifecycle policy.

The repository holds three kinds of tagged images (infra/components/image.py,
infra/components/observability.py), each under its own tag prefix:
- `ctx-<hash>`: the node image, one per build context (what the hosts pull, by digest);
- `cache-<hash>`: the registry build cache, one per Dockerfile + build args;
- `mirror-<name>-<version>`: the upstream images mirrored once (Prometheus, DCGM exporter).
The lifecycle rules count each kind apart, so a run of rebuilds can only expire older node
images and caches, never a mirror (pushed once, it would otherwise be the oldest image and the
first to go: the next boot's `docker pull` then fails under `set -e`). Untagged images (a
build's leftovers, a superseded cache's manifests) expire by age. The children of a tagged
image index (buildx's platform and attestation manifests) are untagged too, but ECR decides
them with their index, not on their own (tests/ecr_lifecycle.py models the evaluation and
tests/test_registry.py runs these rules over 50 rebuilds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.components.image import CACHE_TAG_PREFIX, NODE_TAG_PREFIX
from infra.components.observability import MIRROR_TAG_PREFIX

# Build caches kept: the current one and the one before it (a rollback's build reuses it).
KEEP_CACHES = 2
UNTAGGED_DAYS = 7
# The node image and the one before it: a rollback to the previous commit must still pull.
MIN_KEEP_IMAGES = 2


def lifecycle_rules(
    keep: int, *, keep_caches: int = KEEP_CACHES, untagged_days: int = UNTAGGED_DAYS
) -> list[dict]:
    """The rules, lowest priority first. No rule selects `mirror-` tags: they never expire.
    No `tagStatus: any` rule either: it would count the mirrors with everything else."""
    if keep < MIN_KEEP_IMAGES:
        raise ValueError(
            f"ecrKeepImages {keep}: allowed >= {MIN_KEEP_IMAGES} (the current node image and the previous one)"
        )
    return [
        {
            "rulePriority": 1,
            "description": f"node images ({NODE_TAG_PREFIX}*): keep the newest {keep}",
            "selection": {
                "tagStatus": "tagged",
                "tagPrefixList": [NODE_TAG_PREFIX],
                "countType": "imageCountMoreThan",
                "countNumber": keep,
            },
            "action": {"type": "expire"},
        },
        {
            "rulePriority": 2,
            "description": f"build caches ({CACHE_TAG_PREFIX}*): keep the newest {keep_caches}",
            "selection": {
                "tagStatus": "tagged",
                "tagPrefixList": [CACHE_TAG_PREFIX],
                "countType": "imageCountMoreThan",
                "countNumber": keep_caches,
            },
            "action": {"type": "expire"},
        },
        {
            "rulePriority": 3,
            "description": f"untagged: expire after {untagged_days} days ({MIRROR_TAG_PREFIX}* images are never selected)",
            "selection": {
                "tagStatus": "untagged",
                "countType": "sinceImagePushed",
                "countUnit": "days",
                "countNumber": untagged_days,
            },
            "action": {"type": "expire"},
        },
    ]


def lifecycle_policy(keep: int) -> str:
    return json.dumps({"rules": lifecycle_rules(keep)})


@dataclass
class RegistryArgs:
    name: str
    keep_images: int
    force_delete: bool = False
    tags: dict[str, str] = field(default_factory=dict)


class Registry(pulumi.ComponentResource):
    def __init__(self, name: str, args: RegistryArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llmfleet:components:Registry", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.key = aws.kms.Key(
            f"{name}-key",
            description=f"{args.name}: ECR image encryption",
            enable_key_rotation=True,
            deletion_window_in_days=7,
            tags=args.tags,
            opts=child,
        )
        self.repository = aws.ecr.Repository(
            f"{name}-repo",
            name=args.name,
            image_scanning_configuration={"scan_on_push": True},
            image_tag_mutability="IMMUTABLE",  # a tag never moves: images are pulled by digest
            encryption_configurations=[{"encryption_type": "KMS", "kms_key": self.key.arn}],
            force_delete=args.force_delete,
            tags=args.tags,
            opts=child,
        )
        self.lifecycle = aws.ecr.LifecyclePolicy(
            f"{name}-lifecycle",
            repository=self.repository.name,
            policy=lifecycle_policy(args.keep_images),
            opts=child,
        )
        self.register_outputs(
            {"repository_url": self.repository.repository_url, "repository_arn": self.repository.arn}
        )
