"""Weights location: a hardened bucket the stack creates, or the configured S3 URI."""

import json

import pytest

from infra.components.weights import split_s3_uri
from infra.program.offline import capture
from tests.node_scripts import node_script


def test_created_bucket_is_private_encrypted_versioned():
    c = capture("prod")
    [bucket] = c.of_type("aws:s3/bucket:Bucket")
    bid = bucket["id"]
    [pab] = c.of_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert pab["inputs"]["bucket"] == bid
    for flag in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"):
        assert pab["inputs"][flag] is True
    [sse] = c.of_type(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    )
    assert sse["inputs"]["bucket"] == bid
    assert sse["inputs"]["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"
    [ver] = c.of_type("aws:s3/bucketVersioning:BucketVersioning")
    assert ver["inputs"]["versioningConfiguration"]["status"] == "Enabled"
    assert c.outputs["weights_uri"] == f"s3://{bucket['outputs']['bucket']}/deepseek-r1/"


def test_configured_uri_creates_no_bucket_and_scopes_iam():
    c = capture("prod", ["weightsUri=s3://corp-models/ds/r1"])
    assert not c.of_type("aws:s3/bucket:Bucket")
    assert c.outputs["weights_uri"] == "s3://corp-models/ds/r1/"
    doc = json.loads(c.named("iam-node-policy")["inputs"]["policy"])
    read = next(s for s in doc["Statement"] if s["Sid"] == "ReadWeights")
    assert read["Resource"] == "arn:aws:s3:::corp-models/ds/r1/*"
    assert (
        "aws s3 sync --only-show-errors s3://corp-models/ds/r1/ /opt/llmfleet/models/deepseek-r1/"
        in node_script(c, "worker")
    )


def test_split_s3_uri():
    assert split_s3_uri("s3://b/p") == ("b", "p/")
    assert split_s3_uri("s3://b/") == ("b", "")
    with pytest.raises(ValueError, match="llmfleet:weightsUri"):
        split_s3_uri("https://example.com/w/")
