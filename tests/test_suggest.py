"""infra.stack.suggest: case-insensitive ids and "did you mean" near misses."""

import pytest

from infra.catalog import load_catalog
from infra.stack.config import NS, declared_keys
from infra.stack.suggest import canonical, closest, did_you_mean

MODELS = list(load_catalog().models)
GPUS = list(load_catalog().gpus)
KEYS = [k for k in declared_keys() if k.startswith(f"{NS}:")]


@pytest.mark.parametrize(
    ("value", "allowed", "want"),
    [
        ("r1", MODELS, "deepseek-r1"),  # a short form of one id
        ("deepseek-r2", MODELS, "deepseek-r1"),
        ("L2", GPUS, "L20"),
        ("h1000", GPUS, "H100"),
        ("llmfleet:workrCount", KEYS, "llmfleet:workerCount"),
        ("llmfleet:modle", KEYS, "llmfleet:model"),
    ],
)
def test_near_misses(value, allowed, want):
    assert closest(value, allowed) == want
    assert did_you_mean(value, allowed) == f"did you mean {want}? "


@pytest.mark.parametrize(
    ("value", "allowed"),
    [("llama", MODELS), ("xyz", GPUS), ("", GPUS), ("llmfleet:gpu", KEYS), ("llmfleet:zzzz", KEYS)],
)
def test_nothing_close_suggests_nothing(value, allowed):
    # the shared "llmfleet:" namespace must not make every key look close to every other
    assert closest(value, allowed) is None
    assert did_you_mean(value, allowed) == ""


def test_canonical_ignores_case_only():
    assert canonical("l40s", GPUS) == "L40S"
    assert canonical("DeepSeek-R1", MODELS) == "deepseek-r1"
    assert canonical("L40", GPUS) is None


@pytest.mark.parametrize(
    ("value", "allowed", "want"),
    [
        # difflib alone picks H100 (one letter away) over the family the user named (issue #30)
        ("A100", GPUS, "did you mean A100-40GB or A100-80GB? "),
        ("a100", GPUS, "did you mean A100-40GB or A100-80GB? "),
        ("deepseek-r1-distill", MODELS, "did you mean "),
    ],
)
def test_a_family_prefix_suggests_every_member(value, allowed, want):
    assert did_you_mean(value, allowed).startswith(want)
    members = [a for a in allowed if a.lower().startswith(value.lower() + "-")]
    assert len(members) >= 2 and all(m in did_you_mean(value, allowed) for m in members)
    assert closest(value, allowed) is None  # no single best guess among equals


def test_a_prefix_must_end_at_a_separator():
    # "L4" is an id of its own; "L40" is not the family of L40S
    assert closest("L40", GPUS) != "L4"
    assert "L4," not in did_you_mean("L40", GPUS)
