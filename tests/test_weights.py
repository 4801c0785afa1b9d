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
        "aws s3 sync --delete --only-show-errors s3://corp-models/ds/r1/ /opt/llmfleet/models/deepseek-r1/"
        in node_script(c, "worker")
    )


def test_split_s3_uri():
    assert split_s3_uri("s3://b/p") == ("b", "p/")
    assert split_s3_uri("s3://b/") == ("b", "")
    with pytest.raises(ValueError, match="llmfleet:weightsUri"):
        split_s3_uri("https://example.com/w/")


# ------------------------------------------------------------------ weights identity across nodes
def _node(ip, weights=None, *, head=False, alive=True):
    """One entry of `ray.nodes()` (the keys Ray 2.60 returns that the check reads)."""
    from ray_cluster.contract import HEAD_RESOURCE, WEIGHTS_LABEL

    return {
        "NodeID": f"id-{ip}",
        "NodeManagerAddress": ip,
        "Alive": alive,
        "Resources": {"CPU": 8.0, **({HEAD_RESOURCE: 1.0} if head else {"GPU": 8.0})},
        "Labels": {"ray.io/node-id": f"id-{ip}", **({WEIGHTS_LABEL: weights} if weights else {})},
    }


def test_the_head_refuses_a_mixed_set_of_checkpoints():
    from ray_cluster.readiness import mixed_weights

    head = _node("10.0.0.10", head=True)
    same = [head, _node("10.0.0.11", "aaaa"), _node("10.0.0.12", "aaaa")]
    assert mixed_weights(same, "aaaa") is None
    # one worker still holds the old checkpoint: one line naming it and both fingerprints
    mixed = [head, _node("10.0.0.11", "aaaa"), _node("10.0.0.12", "bbbb")]
    msg = mixed_weights(mixed, "aaaa")
    assert (
        msg and msg.startswith("worker 10.0.0.12 holds weights bbbb, the head's are aaaa") and "\n" not in msg
    )
    # a worker without a ready marker, while the head has one
    assert "worker 10.0.0.12 holds weights none" in mixed_weights([head, _node("10.0.0.12")], "aaaa")
    # a dead node (a replaced worker's old entry) does not count
    assert mixed_weights([*same, _node("10.0.0.13", "old", alive=False)], "aaaa") is None
    # no marker on the head: the workers must still agree (the majority is the reference)
    three = [*mixed, _node("10.0.0.13", "aaaa")]
    assert mixed_weights(three, None).startswith(
        "worker 10.0.0.12 holds weights bbbb, most workers' are aaaa"
    )
    # the local cluster and owned hosts stage no marker anywhere: nothing to compare
    assert mixed_weights([head, _node("127.0.0.2"), _node("127.0.0.3")], None) is None


def test_a_worker_advertises_its_fingerprint_as_a_ray_label(tmp_path):
    from ray._private.label_utils import parse_node_labels_string, validate_node_labels

    from ray_cluster.contract import READY_MARKER, WEIGHTS_LABEL, read_weights_fingerprint
    from ray_cluster.ray_start import worker_start_command

    assert read_weights_fingerprint(str(tmp_path)) is None
    (tmp_path / READY_MARKER).write_text("uri=s3://b/m/\nmanifest.json sha256:ab\n")
    fp = read_weights_fingerprint(str(tmp_path))
    argv = worker_start_command("10.0.0.10:6379", "10.0.0.11", 8, labels={WEIGHTS_LABEL: fp})
    [flag] = [a for a in argv if a.startswith("--labels=")]
    labels = parse_node_labels_string(flag.removeprefix("--labels="))
    validate_node_labels(labels)  # Ray's own rules for keys and values
    assert labels == {WEIGHTS_LABEL: fp}
    assert not any(a.startswith("--labels") for a in worker_start_command("h:6379", "10.0.0.11", 8))
