"""Registry: the ECR repository the node image is pushed to."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws


def lifecycle_policy(keep: int) -> str:
    """Keep the newest `keep` images (build-cache manifests count too); expire the rest."""
    if keep < 1:
        raise ValueError(f"keep {keep}: allowed >= 1")
    return json.dumps(
        {
            "rules": [
                {
                    "rulePriority": 1,
                    "description": f"keep the last {keep} images",
                    "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": keep},
                    "action": {"type": "expire"},
                }
            ]
        }
    )


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
