"""ECR repository + lifecycle policy under the recording mocks, and the policy's rules run over a
simulated push history (tests/ecr_lifecycle.py evaluates ECR's lifecycle semantics)."""

import json

import pytest

from infra.components.image import cache_tag, image_tag
from infra.components.observability import MIRRORS, mirror_tag
from infra.components.registry import lifecycle_policy, lifecycle_rules
from infra.constants import REPO_ROOT
from infra.program.offline import capture
from tests.ecr_lifecycle import Pushed, expired


def test_repository_hardened_and_lifecycle_counts_each_kind_apart():
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
    rules = json.loads(lc["inputs"]["policy"])["rules"]
    assert rules == lifecycle_rules(5)
    # nothing counts every image together, and nothing selects the mirrors
    assert all(r["selection"]["tagStatus"] != "any" for r in rules)
    assert not any(p.startswith("mirror") for r in rules for p in r["selection"].get("tagPrefixList", []))


def test_the_tags_the_program_pushes_have_distinct_prefixes():
    args = {"BASE_IMAGE": "b", "RAY_VERSION": "r"}
    node, cache = image_tag(REPO_ROOT, args), cache_tag(REPO_ROOT, args)
    mirrors = [mirror_tag(u) for u in MIRRORS.values()]
    [node_rule, cache_rule, _] = lifecycle_rules(10)
    assert [node_rule["selection"]["tagPrefixList"], cache_rule["selection"]["tagPrefixList"]] == [
        ["ctx-"],
        ["cache-"],
    ]
    assert node.startswith("ctx-") and cache.startswith("cache-")
    assert all(m.startswith("mirror-") for m in mirrors)


@pytest.mark.parametrize("keep", [0, 1])
def test_lifecycle_policy_keeps_at_least_the_previous_image(keep):
    with pytest.raises(ValueError, match=f"ecrKeepImages {keep}: allowed >= 2"):
        lifecycle_policy(keep)


def test_config_rejects_keeping_fewer_than_two_images():
    from infra.stack.config import ConfigError, load_stack_config

    with pytest.raises(ConfigError, match="llmfleet:ecrKeepImages = 1") as e:
        load_stack_config({"llmfleet:ecrKeepImages": 1})
    assert "\n" not in str(e.value) and "2" in str(e.value)


# ------------------------------------------------------------------ the evaluator, per the docs
# https://docs.aws.amazon.com/AmazonECR/latest/userguide/lifecycle_policy_examples.html
def _rule(priority, prefix, count):
    return {
        "rulePriority": priority,
        "selection": {"tagStatus": "tagged", "tagPrefixList": [prefix], "countType": "imageCountMoreThan",
                      "countNumber": count},
        "action": {"type": "expire"},
    }  # fmt: skip


DOCS_RULES = [_rule(1, "prod", 1), _rule(2, "beta", 1)]


def test_docs_example_a_expires_only_image_a():
    """Example A: A [beta-1, prod-1] 10 days ago, B [beta-2, prod-2] 9, C [beta-3] 8. Rule 1 marks
    A; rule 2 marks A and B, but B was seen by rule 1 (expiring it would violate rule 1), so it is
    skipped. Result: Image A is expired."""
    images = [
        Pushed("A", ("beta-1", "prod-1"), -10),
        Pushed("B", ("beta-2", "prod-2"), -9),
        Pushed("C", ("beta-3",), -8),
    ]
    assert expired(DOCS_RULES, images, now=0) == {"A"}


def test_docs_example_b_expires_images_a_and_b():
    """Example B: A..C tagged beta-n and prod-n, D [beta-4] only. Rule 1 marks A and B; rule 2
    marks A, B and C, but C was seen by rule 1 and is skipped. Result: Images A and B expire."""
    images = [
        Pushed("A", ("beta-1", "prod-1"), -10),
        Pushed("B", ("beta-2", "prod-2"), -9),
        Pushed("C", ("beta-3", "prod-3"), -8),
        Pushed("D", ("beta-4",), -7),
    ]
    assert expired(DOCS_RULES, images, now=0) == {"A", "B"}


def test_docs_single_rule_examples():
    """The "expire images older than 14 days" (tagPatternList prod*) and "keep only one untagged
    image, expire all others"."""
    age = [{"rulePriority": 1, "selection": {"tagStatus": "tagged", "tagPatternList": ["prod*"],
            "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 14},
            "action": {"type": "expire"}}]  # fmt: skip
    images = [Pushed("old", ("prod-1",), -20), Pushed("new", ("prod-2",), -3), Pushed("dev", ("dev-1",), -30)]
    assert expired(age, images, now=0) == {"old"}
    one = [{"rulePriority": 1, "selection": {"tagStatus": "untagged", "countType": "imageCountMoreThan",
            "countNumber": 1}, "action": {"type": "expire"}}]  # fmt: skip
    images = [Pushed("u1", (), -3), Pushed("u2", (), -2), Pushed("u3", (), -1), Pushed("t", ("x",), -9)]
    assert expired(one, images, now=0) == {"u1", "u2"}


# ------------------------------------------------------------------ 50 rebuilds
def _index(digest, tag, at):
    """A buildx push: a tagged image index and its untagged platform + attestation manifests."""
    return [
        Pushed(digest, (tag,), at),
        *(Pushed(f"{digest}/{k}", (), at, index=digest) for k in ("amd64", "att")),
    ]


def simulate(rules, rebuilds=50, dockerfile_every=7):
    """Mirrors pushed once (day 0), then one rebuild a day: a new node image, a new build cache
    when the Dockerfile changed, an orphaned untagged manifest; ECR evaluates the policy after
    each day. Yields (day, what is referenced, the repository's digests)."""
    repo = [p for i, m in enumerate(MIRRORS) for p in _index(f"mirror{i}", f"mirror-{m}-v1", 0.0)]
    mirrors = {p.digest for p in repo}
    for day in range(1, rebuilds + 1):
        repo += _index(f"node{day}", f"ctx-{day:04x}", day)
        if day == 1 or day % dockerfile_every == 0:
            cache = f"cache{day}"
            repo.append(Pushed(cache, (f"cache-{day:04x}",), day))
        repo.append(Pushed(f"orphan{day}", (), day))
        gone = expired(rules, repo, now=day + 0.5)
        repo = [p for p in repo if p.digest not in gone]
        prev = {f"node{day - 1}", f"node{day - 1}/amd64", f"node{day - 1}/att"} if day > 1 else set()
        referenced = mirrors | {f"node{day}", f"node{day}/amd64", f"node{day}/att", cache} | prev
        yield day, referenced, {p.digest for p in repo}


@pytest.mark.parametrize("keep", [2, 10])
def test_fifty_rebuilds_keep_the_current_and_previous_image_and_every_mirror(keep):
    for day, referenced, present in simulate(lifecycle_rules(keep)):
        assert referenced <= present, (day, sorted(referenced - present))
        # ... and the repository stays bounded: `keep` node images, two caches, a week of orphans
        assert sum(d.startswith("node") and "/" not in d for d in present) <= keep, day
        assert sum(d.startswith("cache") for d in present) <= 2, day
        assert sum(d.startswith("orphan") for d in present) <= 8, day


def test_the_old_count_everything_rule_expired_a_mirror():
    """The rule this replaces (tagStatus any, keep 10): after ~8 rebuilds a mirror is gone."""
    old = [{"rulePriority": 1, "selection": {"tagStatus": "any", "countType": "imageCountMoreThan",
            "countNumber": 10}, "action": {"type": "expire"}}]  # fmt: skip
    lost = [day for day, referenced, present in simulate(old) if not referenced <= present]
    assert lost and lost[0] <= 10
