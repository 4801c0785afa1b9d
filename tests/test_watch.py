"""The head's deploy watcher: re-apply on a new Serve config or a worker's return, not otherwise."""

import json

from ray_cluster import serve_rest
from ray_cluster.watch import (
    ALARM_EVENT,
    FAILED,
    AppBackoff,
    WatchView,
    file_digest,
    preflight_needed,
    reapply_reason,
    watch,
)

A = {"10.0.0.11": "n1", "10.0.0.12": "n2"}


def test_reasons():
    base = WatchView("d1", A)
    assert reapply_reason(base, WatchView("d1", dict(A))) is None
    assert reapply_reason(base, WatchView("d2", A)) == "the Serve config changed"
    gone = WatchView("d1", {"10.0.0.11": "n1"})
    assert reapply_reason(base, gone) is None  # nothing can be placed without it yet
    assert reapply_reason(gone, WatchView("d1", {**A, "10.0.0.12": "n2b"})) == "worker 10.0.0.12 came back"
    # a restarted worker (same IP, new raylet) is a return too
    assert reapply_reason(base, WatchView("d1", {**A, "10.0.0.11": "n1b"})) == "worker 10.0.0.11 came back"


def test_loop_applies_once_per_event_and_retries_a_failed_apply(tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("applications: []\n")
    workers = [
        dict(A),
        {"10.0.0.11": "n1"},
        {"10.0.0.11": "n1"},
        {**A, "10.0.0.12": "n3"},
        {**A, "10.0.0.12": "n3"},
    ]
    edits = {5: "applications: [x]\n"}  # at the 5th poll, a rollout has rewritten the file
    seen = iter(range(100))
    applied, logs = [], []
    fail_once = {"left": 1}

    def observe():
        i = next(seen)
        if i in edits:
            cfg.write_text(edits[i])
        return WatchView(file_digest(str(cfg)), workers[min(i, len(workers) - 1)])

    def apply(reason):
        applied.append(reason)
        if reason.startswith("worker") and fail_once["left"]:
            fail_once["left"] -= 1
            raise RuntimeError("serve deploy to http://127.0.0.1:8265 failed: timeout")

    watch(observe, apply, interval=0, polls=6, sleep=lambda s: None, log=logs.append)
    assert applied == [
        "worker 10.0.0.12 came back",  # poll 3: fails ...
        "worker 10.0.0.12 came back",  # poll 4: ... and is retried
        "the Serve config changed",  # poll 5
    ]
    assert any("retrying" in line for line in logs)


def test_a_file_rewritten_during_the_first_deploy_is_applied_at_the_first_poll(tmp_path):
    """The first observation comes after the watcher's own first deploy, which may take minutes:
    its baseline is the digest of the bytes that deploy read, not of the file at that moment."""
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("applications: [old]\n")
    deployed = file_digest(str(cfg))  # what the first deploy read ...
    cfg.write_text("applications: [new]\n")  # ... then a config-only change landed while it ran

    def observe():
        return WatchView(file_digest(str(cfg)), dict(A))

    applied: list[str] = []
    watch(observe, applied.append, interval=0, polls=3, sleep=lambda s: None, deployed_digest=deployed)
    assert applied == ["the Serve config changed"]  # once: the view it applied becomes the baseline
    # without the deployed digest the rewritten file is the baseline and is never applied (the
    # fault suite's lost config-only change)
    applied.clear()
    watch(observe, applied.append, interval=0, polls=3, sleep=lambda s: None)
    assert applied == []


def test_a_restarted_deploy_skips_the_preflight_once_an_app_is_deployed():
    assert preflight_needed({})  # the first deploy (or the dashboard is not up yet)
    assert not preflight_needed({"llm": "RUNNING"})  # the engine holds the GPUs
    assert not preflight_needed({"llm": "DEPLOY_FAILED"})  # _apply deletes and re-deploys it
    # the head's Ray restarted empty (no app) after this head deployed: the workers were proven
    assert not preflight_needed({}, deployed_before=True)
    assert not preflight_needed({"llm": "RUNNING"}, deployed_before=True)


def test_backoff_state_machine():
    """A failed app: first re-apply after `first` s, then doubling delays up to the cap; a
    healthy app resets it. Time is given, so the sequence is exact."""
    b = AppBackoff(first=300, cap=1200)
    bad, ok = {"llm": "DEPLOY_FAILED"}, {"llm": "RUNNING"}
    assert b.step(ok, 0) is None and b.failing_since is None
    assert b.step(bad, 100) is None  # first seen: Serve gets `first` s to heal its replicas
    assert b.step(bad, 399) is None
    assert b.step(bad, 400) == "app llm=DEPLOY_FAILED for 300 s (re-apply 1)"
    b.attempted(400)
    assert b.step(bad, 999) is None and b.step(bad, 1000) == "app llm=DEPLOY_FAILED for 900 s (re-apply 2)"
    b.attempted(1000)
    assert b.step({"llm": "UNHEALTHY"}, 2199) is None
    assert b.step({"llm": "UNHEALTHY"}, 2200) == "app llm=UNHEALTHY for 2100 s (re-apply 3)"
    b.attempted(2200)
    assert b.due == 2200 + 1200  # capped
    assert [b.delay(n) for n in range(4)] == [300, 600, 1200, 1200]
    assert b.step(ok, 2300) is None and (b.failing_since, b.attempts) == (None, 0)
    assert b.step(bad, 5000) is None and b.due == 5300  # a new failure starts over
    # other statuses (deploying, updating) are not failures
    assert AppBackoff().step({"llm": "DEPLOYING"}, 0) is None


def test_the_loop_reapplies_a_failed_app_with_backoff_and_logs_the_alarm_metric():
    statuses = [
        "RUNNING",
        "UNHEALTHY",
        "UNHEALTHY",
        "UNHEALTHY",
        "UNHEALTHY",
        "UNHEALTHY",
        "RUNNING",
        "RUNNING",
    ]
    clock = {"t": 0.0}
    seen = iter(statuses)
    applied, logs, slept = [], [], []

    def sleep(s):
        slept.append(s)
        clock["t"] += s

    def apply(reason):
        applied.append((clock["t"], reason))
        if len(applied) == 1:
            raise RuntimeError("serve applications not RUNNING after 600 s: llm=UNHEALTHY")

    watch(
        lambda: WatchView("d1", dict(A), {"llm": next(seen)}),
        apply,
        interval=100,
        polls=len(statuses) - 1,
        sleep=sleep,
        clock=lambda: clock["t"],
        backoff=AppBackoff(first=100, cap=150),
        log=logs.append,
    )
    # unhealthy first seen at t=100: re-applied at 200 (raised: still an attempt), then 150 s later
    assert applied == [
        (200, "app llm=UNHEALTHY for 100 s (re-apply 1)"),
        (400, "app llm=UNHEALTHY for 300 s (re-apply 2)"),
    ]
    alarm = [json.loads(line) for line in logs if line.startswith("{")]
    assert [a["seconds"] for a in alarm] == [0, 100, 200, 300, 400, 0]
    assert alarm[0] == {"llmfleet_watch": ALARM_EVENT, "seconds": 0, "apps": {"llm": "UNHEALTHY"}}
    assert alarm[2]["apps"] == {"llm": "UNHEALTHY"} and alarm[-1] == {
        "llmfleet_watch": ALARM_EVENT,
        "seconds": 0,
    }
    assert slept == [100] * (len(statuses) - 1)


def test_failed_is_serves_own_list():
    assert FAILED == serve_rest.FAILED == ("DEPLOY_FAILED", "UNHEALTHY")


def test_a_long_reapply_keeps_the_alarm_line_coming():
    """A re-apply that blocks (waiting for a replaced worker) must not read as a healthy app."""
    import time

    seen = iter(["RUNNING", "UNHEALTHY", "UNHEALTHY"])
    logs = []
    watch(
        lambda: WatchView("d1", dict(A), {"llm": next(seen)}),
        lambda reason: time.sleep(0.5),
        interval=0.1,
        polls=2,
        sleep=lambda s: None,
        clock=time.monotonic,
        backoff=AppBackoff(first=0, cap=0),
        log=logs.append,
    )
    during = [
        json.loads(line)
        for line in logs[logs.index(next(x for x in logs if x.startswith("re-apply"))) :]
        if line.startswith("{")
    ]
    assert len(during) >= 3 and all(d["apps"] == {"llm": "UNHEALTHY"} for d in during)
    assert "" not in logs


def test_a_reapply_deletes_the_app_only_when_a_failed_deployment_serves_nothing():
    from ray_cluster.serve_rest import app_needs_restart

    ingress = {"BearerOpenAiIngress": {"status": "HEALTHY", "replicas": 1}}

    def llm(status: str, running: int) -> dict:
        return {"llm": {**ingress, "LLMServer:m": {"status": status, "replicas": running}}}

    # one replica lost with its worker: UNHEALTHY, but the other replica still answers
    assert not app_needs_restart({"llm": "UNHEALTHY"}, llm("UNHEALTHY", 1))
    assert app_needs_restart({"llm": "UNHEALTHY"}, llm("UNHEALTHY", 0))
    assert app_needs_restart({"llm": "DEPLOY_FAILED"}, llm("DEPLOY_FAILED", 0))
    assert app_needs_restart({"llm": "DEPLOY_FAILED"}, {})  # the build failed: no deployments
    assert not app_needs_restart({"llm": "RUNNING"}, llm("HEALTHY", 2))
    assert not app_needs_restart({}, {})


def test_the_deploys_fingerprint_is_the_watchers_digest_of_the_same_bytes(tmp_path):
    """cmd_deploy hands its first deploy's config_fingerprint to the watcher as the baseline it
    compares file_digest against: the two must agree on the same bytes."""
    from ray_cluster.node import config_fingerprint

    cfg = tmp_path / "serve.yaml"
    cfg.write_bytes(b"applications: [x]\n")
    assert config_fingerprint(cfg.read_bytes()) == file_digest(str(cfg))
