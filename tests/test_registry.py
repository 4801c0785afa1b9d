"""ECR repository + lifecycle policy under the recording mocks."""

import json

import pytest

from infra.components.registry import lifecycle_policy
from infra.program.offline import capture


def test_repository_hardened_and_lifecycle_keeps_n():
    c = capture("prod", ["ecrKeepImages=5"])
    [repo] = c.of_type("aws:ecr/repository:Repository")
    i = repo["inputs"]
    assert i["imageScanningConfiguration"]["scanOnPush"] is True
    assert i["imageTagMutability"] == "IMMUTABLE"
    key = c.named("registry-key")  # (the stack's other key, secrets-key, is for its SecureStrings)
    assert key["inputs"]["enableKeyRotation"] is True
    assert i["encryptionConfigurations"] == [{"encryptionType": "KMS", "kmsKey": key["outputs"]["arn"]}]
    assert i["forceDelete"] is False  # prod keeps its images on destroy
    [lc] = c.of_type("aws:ecr/lifecyclePolicy:LifecyclePolicy")
    assert lc["inputs"]["repository"] == repo["outputs"]["name"] == "llmfleet-prod"
    [rule] = json.loads(lc["inputs"]["policy"])["rules"]
    assert rule["selection"] == {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 5}
    assert rule["action"] == {"type": "expire"}


def test_lifecycle_policy_rejects_zero():
    with pytest.raises(ValueError):
        lifecycle_policy(0)
