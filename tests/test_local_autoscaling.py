"""Serve autoscaling over the replicas a cluster has, live (issue #32 point 3), and idle stop's
record of completions served (point 2) on the same cluster: Ray + vLLM's CPU build + the
production app, `llmfleet local up --hosts 3` (2 engine replicas) with
`serveOptions.autoscaling_config` on short delays.

Idle: Serve releases one replica (its placement group is removed, Ray's state API), its host
stays alive in Ray, the app stays RUNNING and the head's watcher neither re-applies nor counts
the 401s, the unknown model's 404s or `GET /v1/models` as use (its idle seconds keep growing).
A burst: Serve starts the replica again on the same host, every request succeeds, the new
replica serves, and the watcher's idle seconds drop (the gate recorded completions served).
Status: passed whole on 2026-12-07 09:19 UTC (231 s with the cluster's up and down; a fresh
clone's `make setup` venv, bytecode compiled; quiet machine). Before, at load ~6 in venvs without
bytecode, Serve upscaled 1 -> 2 and downscaled again before the new engine started; the run
before this one got both replicas and both workers serving but one stream's text decoded to ""
(the tiny random model), so a load request now requires a finished stream, not non-empty text.
Cluster time: the up plus one engine reload; on an idle machine ~2 minutes, much longer when
the 2 shared cores are loaded (about 8 minutes for the up alone at load average 12-15).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import openai
import pytest

from infra.local import status
from infra.local.state import LocalState
from tests.test_local import cli, own_cluster

pytestmark = [pytest.mark.ray, pytest.mark.autoscaling]

AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "initial_replicas": 2,
    "target_ongoing_requests": 1,
    "upscale_delay_s": 1,
    "downscale_delay_s": 5,
    "look_back_period_s": 2,
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    opts = json.dumps({"autoscaling_config": AUTOSCALING})
    yield from own_cluster(tmp_path_factory, "la", "-c", f"llmfleet:serveOptions={opts}")


def _dashboard(st: LocalState) -> str:
    return f"http://{st.hosts[0].ip}:{st.ports.dashboard}"


def _replica_groups(st: LocalState, state: str = "CREATED") -> list[dict]:
    """Serve's engine replicas' placement groups in Ray's table: held (CREATED) or released
    (REMOVED: Ray's state API keeps a removed group's row)."""
    from ray.util.state import list_placement_groups

    pgs = list_placement_groups(address=_dashboard(st), timeout=10, raise_on_missing_output=False)
    return [
        {"id": p.placement_group_id, "name": p.name, "state": p.state}
        for p in pgs
        if p.state == state and p.name.startswith("SERVE_REPLICA::")
    ]


def _status(c: dict) -> dict:
    r = cli("status", "--name", c["name"], "--json", env=c["env"], timeout=120)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def _watch_lines(st: LocalState) -> list[str]:
    return Path(st.watcher.log).read_text().splitlines()


def _idle_after(st: LocalState, since_line: int, timeout: float = 30.0) -> tuple[int, int]:
    """(idle seconds, line count) from the first idle line the watcher logs after line `since_line`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = _watch_lines(st)
        for ln in lines[since_line:]:
            try:
                doc = json.loads(ln)
            except ValueError:
                continue  # the watcher's other lines (re-apply, Ray's own logging)
            if isinstance(doc, dict) and doc.get("llmfleet_watch") == "idle":
                return int(doc["seconds"]), len(lines)
        time.sleep(1)
    raise AssertionError(f"no idle line from the watcher within {timeout:g} s: {_watch_lines(st)[-5:]}")


def _wait(what: str, cond, timeout: float, every: float = 2.0, during=lambda: None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        during()
        if got := cond():
            return got
        time.sleep(every)
    raise AssertionError(f"{what} not seen within {timeout:g} s")


def test_an_idle_replica_is_released_and_a_burst_brings_it_back_without_a_redeploy(cluster):
    doc, st = cluster["doc"], cluster["st"]
    client = openai.OpenAI(base_url=doc["endpoint"], api_key=doc["token"], max_retries=0, timeout=120)
    stranger = openai.OpenAI(base_url=doc["endpoint"], api_key="not-the-token", max_retries=0, timeout=30)
    workers = [h.ip for h in st.hosts[1:]]
    # initial_replicas 2: the deploy placed both (its readiness waits for every replica's slots);
    # with a 5 s downscale delay one may be released before this first look
    seen = {len(_replica_groups(st))}
    assert seen <= {1, 2}, seen

    def noise() -> None:
        """What must not keep the workers awake: a 401 flood, an unknown model, the model list."""
        for _ in range(3):
            with pytest.raises(openai.AuthenticationError):
                stranger.completions.create(model=doc["model"], prompt="hi", max_tokens=2)
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
        assert [m.id for m in client.models.list().data] == [doc["model"]]

    def released() -> bool:
        held = len(_replica_groups(st))
        seen.add(held)
        # one group held, and the other seen held before or in Ray's table as REMOVED
        return held == 1 and (2 in seen or len(_replica_groups(st, "REMOVED")) >= 1)

    # 1. idle (noise only): Serve releases one replica; its placement group goes, its host stays
    _wait("one replica released", released, 180, during=noise)
    nodes = status._ray_nodes(st)
    assert nodes is not None and sorted(n["ip"] for n in nodes if n["alive"]) == sorted(
        h.ip for h in st.hosts
    ), nodes
    # noise for 12 s between two of the watcher's idle lines: the idle seconds grow by that much
    # (the watcher's own first apply ends on a real completion, so they count from there)
    idle1, _ = _idle_after(st, len(_watch_lines(st)))
    t1 = time.monotonic()
    while time.monotonic() - t1 < 12:
        noise()
        time.sleep(1)
    idle2, _ = _idle_after(st, len(_watch_lines(st)))
    assert idle2 >= idle1 + 10, f"idle {idle1} s, then {idle2} s after 12 s of 401s, 404s and GET /v1/models"
    # (after the idle check: `local status` sends a real completion of its own)
    s = _status(cluster)
    assert [a["status"] for a in s["applications"]] == ["RUNNING"], s["applications"]
    assert s["power"] == "serving"

    # 2. a burst: more requests in flight than one replica's target brings the second back
    before = _finished_series(st)
    errors: list[BaseException] = []
    served = [0]
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                stream = client.completions.create(
                    model=doc["model"], prompt="Tell me about Ray.", max_tokens=64, stream=True
                )
                # read to the end: a finished stream, not non-empty text (the tiny random model's
                # greedy tokens can decode to "": seen on 2026-12-07 09:13, the burst otherwise held)
                assert any(ch.choices and ch.choices[0].finish_reason for ch in stream)
                served[0] += 1
            except BaseException as e:  # noqa: BLE001 - every failure is reported below
                errors.append(e)
                return

    threads = [threading.Thread(target=load, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        _wait("two replicas running", lambda: len(_replica_groups(st)) == 2 and _running(cluster) == 2, 400)

        # the released replica's host serves again: a series of vLLM's own finished-request
        # counter grows there (per label set: the new engine's series starts at 0 beside the old one's)
        def grew() -> set[str]:
            now = _finished_series(st)
            return {ip for (ip, labels), v in now.items() if v > before.get((ip, labels), 0.0)}

        _wait("both workers serving", lambda: set(workers) <= grew(), 90)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert not errors, errors[:3]
    assert served[0] > 0

    # 3. the watcher redeployed nothing, the app stayed up, and it counted the completions
    idle, _ = _idle_after(st, len(_watch_lines(st)))  # the first line after the burst
    # completions reset it (the burst's, and `local status`'s probes): at most the gate's 10 s
    # between file writes plus one watcher poll (5 s) and rounding
    assert idle <= 17, f"idle {idle} s right after a burst of completions"
    assert not [ln for ln in _watch_lines(st) if "re-apply" in ln], _watch_lines(st)[-10:]
    s = _status(cluster)
    assert [a["status"] for a in s["applications"]] == ["RUNNING"]


def _running(c: dict) -> int:
    """Engine replicas RUNNING (the LLM server's deployment), per `local status`."""
    apps = _status(c)["applications"]
    return sum(
        1
        for a in apps
        for d in a["deployments"]
        if d["name"].startswith("LLMServer:")
        for r in d["replicas"]
        if r["state"] == "RUNNING"
    )


def _finished_series(st: LocalState) -> dict[tuple[str, frozenset], float]:
    """{(node IP, label set): value} of vLLM's finished-request counter, read from every host's
    metrics agent (as infra.local.status does, without summing the label sets)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, frozenset], float] = {}
    for target in status.metrics_targets(st):
        try:
            with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            continue
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                if smp.name == status.REQUESTS_FINISHED:
                    ip = smp.labels.get("NodeAddress", target.split(":")[0])
                    out[(ip, frozenset(smp.labels.items()))] = smp.value
    return out
