"""A small evaluator of ECR lifecycle policy semantics, for testing our rules against a
simulated push history (tests/test_registry.py). Pure: images in, expired digests out.

The semantics, from the AWS docs:
https://docs.aws.amazon.com/AmazonECR/latest/userguide/LifecyclePolicies.html ("How lifecycle
policies work"), .../lifecycle_policy_parameters.html and .../lifecycle_policy_examples.html:
- rules are evaluated by ascending `rulePriority`;
- a rule selects images by `tagStatus` (`tagged`: at least one tag, and with `tagPrefixList` /
  `tagPatternList` every listed prefix / pattern matches one of the image's tags, a list is an
  AND; `untagged`: no tag; `any`: every image);
- `imageCountMoreThan` N marks the selected images beyond the newest N by push time, oldest
  first; `sinceImagePushed` N days marks the selected images pushed more than N days ago;
- "An image that matches the tagging requirements of a rule cannot be expired by a rule with a
  lower priority": every image a rule selects is seen by it, and a later rule's marks on a seen
  image are skipped (the docs' multiple-rules examples A and B, checked in the tests);
- the children of an image index (buildx's platform and attestation manifests, untagged) are
  not counted or expired on their own: ECR decides them with their index (observed with
  `get-lifecycle-policy-preview` in DefangLabs/pulumi-defang#466: the untagged children of a
  tagged index were not expired by a count rule although they were the oldest images).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass


@dataclass(frozen=True)
class Pushed:
    digest: str
    tags: tuple[str, ...]
    pushed_at: float  # days
    index: str | None = None  # the digest of the image index this manifest is a child of


def _selects(selection: dict, image: Pushed) -> bool:
    status = selection["tagStatus"]
    if status == "any":
        return True
    if status == "untagged":
        return not image.tags
    if not image.tags:
        return False
    prefixes = selection.get("tagPrefixList", [])
    patterns = selection.get("tagPatternList", [])
    return all(any(t.startswith(p) for t in image.tags) for p in prefixes) and all(
        any(fnmatch.fnmatchcase(t, pat) for t in image.tags) for pat in patterns
    )


def _marks(selection: dict, selected: list[Pushed], now: float) -> list[Pushed]:
    n = selection["countNumber"]
    if selection["countType"] == "imageCountMoreThan":
        return sorted(selected, key=lambda i: i.pushed_at, reverse=True)[n:]
    if selection["countType"] == "sinceImagePushed":
        assert selection["countUnit"] == "days"
        return [i for i in selected if now - i.pushed_at > n]
    raise ValueError(f"countType {selection['countType']!r}: not modelled")


def expired(rules: list[dict], images: list[Pushed], now: float) -> set[str]:
    """The digests one evaluation of the policy expires at time `now` (days)."""
    units = [i for i in images if i.index is None]
    seen: set[str] = set()
    out: set[str] = set()
    for rule in sorted(rules, key=lambda r: r["rulePriority"]):
        assert rule["action"]["type"] == "expire"
        selected = [i for i in units if _selects(rule["selection"], i)]
        out |= {i.digest for i in _marks(rule["selection"], selected, now) if i.digest not in seen}
        seen |= {i.digest for i in selected}
    # an expired index takes its children with it
    return out | {i.digest for i in images if i.index in out}
