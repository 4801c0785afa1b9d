"""The head's deploy watcher: re-apply on a new Serve config or a worker's return, not otherwise."""

from ray_cluster.watch import WatchView, file_digest, preflight_needed, reapply_reason, watch

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


def test_a_restarted_deploy_skips_the_preflight_once_an_app_is_deployed():
    assert preflight_needed({})  # the first deploy (or the dashboard is not up yet)
    assert not preflight_needed({"llm": "RUNNING"})  # the engine holds the GPUs
    assert not preflight_needed({"llm": "DEPLOY_FAILED"})  # _apply deletes and re-deploys it
