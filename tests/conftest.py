"""Suite-wide hooks: the node image is built beside the light tests."""

from __future__ import annotations

import logging
import os
import sys
import tempfile

import pytest

from tests import image_prebuild, ray_fixtures

# The suite never writes the user's ~/.cache/llmfleet (live prices, the accepted-Serve-config
# markers of infra/rayconf/serve_config.py): one throwaway cache for the session, unless set.
os.environ.setdefault("LLMFLEET_CACHE_DIR", tempfile.mkdtemp(prefix="llmfleet-test-cache-"))

IMAGE_MODULE = "tests/test_image_build.py"
SERVING_MODULE = "tests/test_local.py"


def pytest_collection_modifyitems(session, config, items):
    # The fault suite (tests/test_faults.py, ~30 min), the fine-tune beside serving
    # (tests/test_finetune_local.py) and Serve autoscaling seen live (tests/test_local_autoscaling.py),
    # each minutes of its own 3-host cluster, run only when asked by marker (`make faults`,
    # `make finetune-local`, `make autoscaling-local`).
    for opt_in in ("faults", "finetune", "autoscaling"):
        if opt_in not in (config.option.markexpr or ""):
            skipped = [i for i in items if i.get_closest_marker(opt_in)]
            if skipped:
                config.hook.pytest_deselected(items=skipped)
                items[:] = [i for i in items if not i.get_closest_marker(opt_in)]

    # While the image builds in the background (~8 min from nothing, mostly one core), the suite
    # runs what it does not wait for: first the light modules (no `ray` marker: mocks, moto,
    # renderers; ~3 min, one core), then the small Ray clusters (test_node, test_placement: Ray
    # and actors, no engine). Then the image's module, and last the 3-host serving cluster, which
    # wants both cores to itself. Stable: each module keeps its tests' order.
    def rank(item) -> int:
        if item.nodeid.startswith(IMAGE_MODULE):
            return 2
        if item.nodeid.startswith(SERVING_MODULE):
            return 3
        return 1 if item.get_closest_marker("ray") else 0

    items.sort(key=rank)


@pytest.fixture(autouse=True, scope="module")
def _no_ray_left_in_this_process():
    """A module that attaches this process to a Ray instance (Serve LLM's build_openai_app starts
    a local one) detaches it: the next module's driver would otherwise talk to that instance."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(autouse=True, scope="module")
def _root_logger_as_found():
    """Ray's logging setup (Serve LLM's app build, ray.init) adds handlers to the root logger,
    bound to the stderr of that moment, which pytest closes after the test; a later module's
    library log line (the openai client's retry) then prints '--- Logging error ---' into a
    CLI's captured stderr. Each module leaves the root logger with the handlers it found
    (pytest's own capture handlers come and go per test and are left to pytest)."""
    root = logging.getLogger()
    found, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in found and not type(h).__module__.startswith("_pytest"):
            root.removeHandler(h)
    root.setLevel(level)


SHARED_CLUSTER_FIXTURE = "ray_hosts_cluster"


def pytest_runtest_teardown(item, nextitem):
    # tests/ray_fixtures.py's shared cluster goes as soon as no further test wants it, so the
    # image's and the serving cluster's modules have the machine to themselves.
    if SHARED_CLUSTER_FIXTURE in item.fixturenames and (
        nextitem is None or SHARED_CLUSTER_FIXTURE not in nextitem.fixturenames
    ):
        ray_fixtures.close_shared_cluster()


def pytest_collection_finish(session):
    # tests/image_prebuild.py says why a process, and why now (and never for --collect-only)
    if image_prebuild.wanted(
        session.config.option.collectonly, [item.nodeid for item in session.items], IMAGE_MODULE
    ):
        image_prebuild.start()


_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    ray_fixtures.close_shared_cluster()  # a no-op unless a run stopped early (-x, a crash)
    image_prebuild.finish()  # a no-op unless the module's fixture never ran (-x, -k, a crash)
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    # A full run once died with SIGSEGV in interpreter finalization, after its summary (782
    # passed): native code of the in-process libraries (Ray's core worker, torch, grpc) at exit.
    # The results are final by now; leave with pytest's own status, without finalization.
    # Not under mutmut (`make mutation`), which runs pytest in its own process and goes on.
    if _exit_status and "MUTANT_UNDER_TEST" not in os.environ:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
