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
