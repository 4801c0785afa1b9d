"""Weights: where the checkpoint lives in S3.

Either the configured s3://BUCKET/PREFIX/ (nothing is created), or a private bucket this
stack creates (public access block, SSE, versioning) with the model id as prefix; the
operator uploads the checkpoint there (plus an optional manifest.json of sizes/sha256).
The host-side staging is rendered into the user data by infra/boot/cloud_init.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws


def split_s3_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/prefix/ -> (bucket, 'prefix/')."""
    if not uri.startswith("s3://"):
        raise ValueError(
            f"llmfleet:weightsUri = {uri!r}: EC2 hosts stage from S3; allowed: s3://BUCKET/PREFIX/"
        )
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


@dataclass
class WeightsArgs:
    name: str
    model: str
    weights_uri: str | None
    tags: dict[str, str] = field(default_factory=dict)


class Weights(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    prefix: str
    s3_uri: pulumi.Output[str]

    def __init__(self, name: str, args: WeightsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llmfleet:components:Weights", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.bucket = None
        if args.weights_uri:
            bucket, self.prefix = split_s3_uri(args.weights_uri)
            self.bucket_name = pulumi.Output.from_input(bucket)
        else:
            self.prefix = f"{args.model}/"
            self.bucket = aws.s3.Bucket(
                f"{name}-bucket",
                bucket_prefix=f"{args.name}-weights-"[:37],
                tags={**args.tags, "llmfleet:role": "weights"},
                opts=child,
            )
            aws.s3.BucketPublicAccessBlock(
                f"{name}-public-access-block",
                bucket=self.bucket.id,
                block_public_acls=True,
                block_public_policy=True,
                ignore_public_acls=True,
                restrict_public_buckets=True,
                opts=child,
            )
            aws.s3.BucketServerSideEncryptionConfiguration(
                f"{name}-sse",
                bucket=self.bucket.id,
                rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}],
                opts=child,
            )
            aws.s3.BucketVersioning(
                f"{name}-versioning",
                bucket=self.bucket.id,
                versioning_configuration={"status": "Enabled"},
                opts=child,
            )
            self.bucket_name = self.bucket.bucket
        self.s3_uri = self.bucket_name.apply(lambda b: f"s3://{b}/{self.prefix}")
        self.register_outputs({"s3_uri": self.s3_uri})
