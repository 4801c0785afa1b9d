"""`llmfleet local sleep` / `local wake` on a real local cluster (Ray + vLLM's CPU build): asleep,
a request gets the gate's 503 with Retry-After in OpenAI's error shape (read by the openai
client), `status` says asleep; after `wake` the next request succeeds with no deploy by hand.

Its own two-host cluster (one worker host), so sleeping it does not disturb test_local.py's.
"""

from __future__ import annotations

import json
import os
import time

import openai
import pytest

from infra.local import hosts, layout, state
from tests.ray_fixtures import local_subnet
from tests.test_local import ROOT, cli, free_port

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    mode = layout.resolve_mode(os.environ.get("LLMFLEET_LOCAL_TEST_MODE", "auto"), ROOT)
    name = f"ls{os.getpid() % 100000}"
    subnet = local_subnet(name, mode == "netns")
    port = free_port()
    sd = tmp_path_factory.mktemp("sleep-state")
    env = {state.STATE_DIR_ENV: str(sd), "LLMFLEET_DATA_DIR": str(tmp_path_factory.mktemp("sleep-data"))}
    try:
        r = cli("up", "--name", name, "--hosts", "2", "--subnet", str(subnet), "--port", str(port),
                "--mode", mode, "--json", env=env, timeout=900)  # fmt: skip
        assert r.returncode == 0, f"local up failed: {r.stderr[-2000:]}"
        yield {"name": name, "env": env, "doc": json.loads(r.stdout)}
    finally:
        cli("down", "--name", name, env=env, timeout=120)
        hosts.teardown(hosts.prefix_for(name), cluster=name, state_dir=sd)


def _complete(doc: dict, timeout: float = 120):
    c = openai.OpenAI(base_url=doc["endpoint"], api_key=doc["token"], max_retries=0, timeout=timeout)
    return c.completions.create(model=doc["model"], prompt="Hello", max_tokens=4, temperature=0)


def test_asleep_is_503_with_retry_after_and_wake_serves_again_without_a_deploy(cluster):
    doc, env, name = cluster["doc"], cluster["env"], cluster["name"]
    assert _complete(doc).choices[0].text is not None

    r = cli("sleep", "--name", name, "--json", env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "asleep" and len(json.loads(r.stdout)["stopped"]) == 1

    # Ray notices the worker is gone after its health checks; until then a request may hang on
    # the dead replica, so ask until the gate answers (bounded), never longer than a minute.
    deadline, err = time.monotonic() + 90, None
    while time.monotonic() < deadline:
        try:
            _complete(doc, timeout=15)
        except openai.InternalServerError as e:
            err = e
            break
        except (openai.APITimeoutError, openai.APIConnectionError):
            pass
        time.sleep(3)
    assert err is not None, "no 503 from the gate within 90 s of `local sleep`"
    assert err.status_code == 503 and int(err.response.headers["retry-after"]) > 0
    assert err.body["code"] == "endpoint_asleep" and err.body["type"] == "service_unavailable"
    assert "llmfleet wake" in err.body["message"]

    st = cli("status", "--name", name, "--json", env=env, timeout=120)
    assert st.returncode in (0, 1), st.stderr
    assert json.loads(st.stdout)["power"] == "asleep"

    t0 = time.monotonic()
    w = cli("wake", "--name", name, "--json", "--timeout", "600", env=env, timeout=700)
    assert w.returncode == 0, w.stderr[-2000:]
    assert json.loads(w.stdout)["state"] == "serving"
    assert _complete(doc).choices[0].text is not None  # the next request succeeds
    st = cli("status", "--name", name, "--json", env=env, timeout=120)
    assert json.loads(st.stdout)["power"] == "serving", time.monotonic() - t0
