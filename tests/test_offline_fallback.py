"""The offline engine's fast path and its fallback (infra/program/offline.py): with the fast path
off (LLMFLEET_OFFLINE_FAST=0), or with one of the Pulumi SDK's private hooks it uses gone, the
same program runs on Pulumi's public MockMonitor and records the same capture, only slower."""

import json
import os
import subprocess
import sys
import time

import pytest
from pulumi.runtime import resource as presource

from infra.constants import REPO_ROOT
from infra.program import offline
from infra.program.offline import capture, fast_path_enabled, fast_path_missing

SHIPPED = sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in (REPO_ROOT / "stacks").glob("Pulumi.*.yaml"))

# One child process, the public path from its first import (the fast path's provider-module
# loader never ran there either): every shipped stack's capture as JSON.
_SLOW_CHILD = """
import json, sys, time
from infra.program.offline import capture, fast_path_enabled
assert not fast_path_enabled()
t0 = time.perf_counter()
out = {s: capture(s) for s in sys.argv[1:]}
print(json.dumps({"seconds": time.perf_counter() - t0, "captures": {
    s: {"resources": c.resources, "outputs": c.outputs, "invokes": c.invokes} for s, c in out.items()}},
    default=str))
"""


def _keyed(resources, outputs, invokes) -> dict:
    """A capture, independent of registration order (Pulumi's asyncio interleaving varies it from
    run to run on either path): each resource by URN, the outputs, the invokes as a multiset."""
    return {
        "resources": {r["urn"]: json.loads(json.dumps(r, default=str)) for r in resources},
        "outputs": json.loads(json.dumps(outputs, default=str)),
        "invokes": sorted(map(str, invokes)),
    }


def test_the_installed_sdk_has_every_hook_of_the_fast_path():
    # The SDK range pinned in pyproject.toml is the one the fast path was tested with.
    assert fast_path_missing() == []
    assert fast_path_enabled()


def test_every_shipped_stack_captures_the_same_without_the_fast_path():
    assert len(SHIPPED) >= 5  # block-h100, dev, onprem-l20, prod, staging
    t0 = time.perf_counter()
    fast = {s: capture(s) for s in SHIPPED}
    fast_s = time.perf_counter() - t0
    env = {**os.environ, offline.FAST_ENV: "0"}
    proc = subprocess.run(
        [sys.executable, "-c", _SLOW_CHILD, *SHIPPED], capture_output=True, text=True, cwd=REPO_ROOT, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    slow = json.loads(proc.stdout)
    for s in SHIPPED:
        c = fast[s]
        want = _keyed(c.resources, c.outputs, c.invokes)
        got = _keyed(**slow["captures"][s])
        assert got["resources"].keys() == want["resources"].keys(), s
        for urn, rec in want["resources"].items():
            assert got["resources"][urn] == rec, (s, urn)
        assert got["outputs"] == want["outputs"], s
        assert got["invokes"] == want["invokes"], s
    # Same captures, and the fast path is the faster one (its reason to exist).
    print(f"fast {fast_s:.1f} s, public MockMonitor {slow['seconds']:.1f} s for {len(SHIPPED)} stacks")


def test_a_missing_private_hook_falls_back_to_the_public_mocks(monkeypatch):
    want = capture("dev")
    # An SDK whose private names moved: the hooks the fast path looks for include one it lacks.
    # (Deleting a real one would break the SDK itself, which calls them.)
    monkeypatch.setattr(
        offline, "_FAST_HOOKS", (*offline._FAST_HOOKS, (presource, "_renamed_in_a_later_sdk"))
    )
    assert fast_path_missing() == ["pulumi.runtime.resource._renamed_in_a_later_sdk"]
    assert not fast_path_enabled()
    registered: list[str] = []
    public_register = offline.pmocks.MockMonitor.RegisterResource

    def spy(self, request):
        registered.append(request.name)
        return public_register(self, request)

    # The public MockMonitor answers every registration (the fast path answers them itself).
    monkeypatch.setattr(offline.pmocks.MockMonitor, "RegisterResource", spy)
    got = capture("dev")
    assert len(registered) == len(got.resources)
    assert _keyed(got.resources, got.outputs, got.invokes) == _keyed(
        want.resources, want.outputs, want.invokes
    )


def test_the_env_switch_turns_the_fast_path_off(monkeypatch):
    monkeypatch.setenv(offline.FAST_ENV, "0")
    assert not fast_path_enabled()
    monkeypatch.setenv(offline.FAST_ENV, "1")
    assert fast_path_enabled()


@pytest.mark.parametrize("missing", ["_resolve_callbacks"])
def test_missing_mock_hooks_are_named(monkeypatch, missing):
    monkeypatch.delattr(offline.pmocks, missing)
    assert fast_path_missing() == [f"pulumi.runtime.mocks.{missing}"]
