"""The head's deploy watcher: re-apply on a new Serve config or a worker's return, not otherwise."""

import argparse

from ray_cluster import node
from ray_cluster.watch import Reapply, WatchView, file_digest, reapply_reason, watch

A = {"10.0.0.11": "n1", "10.0.0.12": "n2"}


def test_reasons():
    base = WatchView("d1", A)
    assert reapply_reason(base, WatchView("d1", dict(A))) is None
    assert reapply_reason(base, WatchView("d2", A)) == Reapply("the Serve config changed")
    gone = WatchView("d1", {"10.0.0.11": "n1"})
    assert reapply_reason(base, gone) is None  # nothing can be placed without it yet
    back = reapply_reason(gone, WatchView("d1", {**A, "10.0.0.12": "n2b"}))
    assert back == Reapply("worker 10.0.0.12 came back", ("10.0.0.12",))
    # a restarted worker (same IP, new raylet) is a return too
    assert reapply_reason(base, WatchView("d1", {**A, "10.0.0.11": "n1b"})).joined == ("10.0.0.11",)
    # a return and a new config at one poll: the return (its re-apply deploys the new file too)
    assert reapply_reason(gone, WatchView("d2", A)).joined == ("10.0.0.12",)


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
        applied.append(str(reason))
        if reason.joined and fail_once["left"]:
            fail_once["left"] -= 1
            raise RuntimeError("serve deploy to http://127.0.0.1:8265 failed: timeout")

    watch(observe, apply, interval=0, polls=6, sleep=lambda s: None, log=logs.append)
    assert applied == [
        "worker 10.0.0.12 came back",  # poll 3: fails ...
        "worker 10.0.0.12 came back",  # poll 4: ... and is retried
        "the Serve config changed",  # poll 5
    ]
    assert any("retrying" in line for line in logs)


def test_a_returned_worker_gets_the_first_deploys_preflight_a_new_config_does_not(monkeypatch):
    """node._reapply: a worker's return frees the GPUs (deletes the apps) and runs the first
    deploy's path (preflight_first=True: wait for GPUs, gang + all-reduce preflight, deploy,
    RUNNING, a completion); a config change alone deploys in place without a preflight."""
    calls = []
    monkeypatch.setattr(node, "_free_gpus", lambda dashboard: calls.append(("free", dashboard)))
    monkeypatch.setattr(node, "_apply", lambda a, token, *, preflight_first: calls.append(("apply", preflight_first)))
    a = argparse.Namespace(dashboard="http://127.0.0.1:8265")
    node._reapply(a, "tok", Reapply("worker 10.0.0.12 came back", ("10.0.0.12",)))
    assert calls == [("free", "http://127.0.0.1:8265"), ("apply", True)]
    calls.clear()
    node._reapply(a, "tok", Reapply("the Serve config changed"))
    assert calls == [("apply", False)]


def test_deploy_watch_wires_the_watcher_to_reapply(monkeypatch, tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("applications: []\n")
    seen = {}
    monkeypatch.setattr(node, "load_serve_config", lambda path: {})
    monkeypatch.setattr(node, "_apply", lambda a, token, *, preflight_first: seen.setdefault("first", preflight_first))
    monkeypatch.setattr(node, "_reapply", lambda a, token, reason: seen.setdefault("reapply", reason))

    def fake_watch(observe, apply, interval):
        apply(Reapply("worker 10.0.0.12 came back", ("10.0.0.12",)))

    import ray_cluster.watch as w

    monkeypatch.setattr(w, "watch", fake_watch)
    a = argparse.Namespace(serve_config=str(cfg), token_env=None, watch=True, watch_interval=1.0)
    assert node.cmd_deploy(a) == 0
    assert seen["first"] is True and seen["reapply"].joined == ("10.0.0.12",)
