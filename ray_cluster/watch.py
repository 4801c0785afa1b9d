"""The head's deploy watcher: after the first deploy, re-apply the Serve app in place when
its config file changes (a rollout rewrote it), when a worker comes back (a recovered,
restarted or replaced host joins with a new Ray node id), or when the app itself stays
DEPLOY_FAILED or UNHEALTHY (Serve's REST status): then with exponential backoff, capped.

While an app is failed the watcher logs one JSON line a poll, `{"llmfleet_watch":
"app_unhealthy", "seconds": N, ...}` (and `seconds: 0` once it is back): on AWS a follower
copies the head's deploy unit journal into the boot log, which CloudWatch receives, where a metric
filter turns the line into a metric and an alarm fires when an app stays failed
(infra/components/recovery.py: app_alarm).

`reapply_reason` and `AppBackoff` are the pure decisions; `watch` is the loop, with every
effect (clock and sleeper included) injected so a unit test drives it without a cluster.
`python -m ray_cluster.node deploy --watch` wires it to the real cluster (ray_cluster.node).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ray_cluster.serve_rest import FAILED

# Serve replaces an unhealthy replica itself first (a 671B engine takes minutes to load): the
# first re-apply waits this long, then each next one twice as long, up to the cap.
BACKOFF_FIRST_S = 300.0
BACKOFF_CAP_S = 3600.0
ALARM_EVENT = "app_unhealthy"
IDLE_EVENT = "idle"


@dataclass(frozen=True)
class WatchView:
    config_digest: str
    workers: dict[str, str] = field(default_factory=dict)  # alive worker IP -> Ray node id
    apps: dict[str, str] = field(default_factory=dict)  # Serve app -> status ({}: not known)


@dataclass
class AppBackoff:
    """When to re-apply an app that stays failed: `first` s after it is first seen failed, then
    after each attempt twice the previous delay, at most `cap`. All apps healthy again resets it."""

    first: float = BACKOFF_FIRST_S
    cap: float = BACKOFF_CAP_S
    failing_since: float | None = None
    attempts: int = 0
    due: float = 0.0

    def delay(self, attempts: int) -> float:
        return min(self.cap, self.first * 2**attempts)

    def step(self, apps: dict[str, str], now: float) -> str | None:
        """The reason to re-apply now, or None. Call `attempted(now)` after each re-apply."""
        failed = sorted(f"{name}={status}" for name, status in apps.items() if status in FAILED)
        if not failed:
            self.failing_since, self.attempts = None, 0
            return None
        if self.failing_since is None:
            self.failing_since, self.due = now, now + self.delay(0)
        if now < self.due:
            return None
        return f"app {', '.join(failed)} for {now - self.failing_since:.0f} s (re-apply {self.attempts + 1})"

    def attempted(self, now: float) -> None:
        self.attempts += 1
        self.due = now + self.delay(self.attempts)

    def alarm_line(self, apps: dict[str, str], now: float, was_failing: bool) -> str | None:
        """The JSON line the alarm's metric filter reads: while failed, and once when back."""
        if self.failing_since is None:
            return json.dumps({"llmfleet_watch": ALARM_EVENT, "seconds": 0}) if was_failing else None
        failed = {k: v for k, v in sorted(apps.items()) if v in FAILED}
        return json.dumps(
            {"llmfleet_watch": ALARM_EVENT, "seconds": round(now - self.failing_since), "apps": failed}
        )


def idle_line(activity_file: str, now: float, awake_since: float | None) -> str:
    """The JSON line the idle-stop alarm's metric filter reads (llmfleet:idleStopMinutes): seconds
    since the gate's last request (the file's mtime) or since the workers joined, whichever is
    later; 0 while no worker is alive (`awake_since` None). Idle counts only hours the workers
    are up and unused, so a `wake` or a schedule's scale-up is not stopped again by the idle
    seconds of the night before (an alarm in ALARM re-runs its scaling action every period)."""
    if awake_since is None:
        return json.dumps({"llmfleet_watch": IDLE_EVENT, "seconds": 0})
    try:
        last = max(os.stat(activity_file).st_mtime, awake_since)
    except OSError:
        last = awake_since
    return json.dumps({"llmfleet_watch": IDLE_EVENT, "seconds": max(0, round(now - last))})


def activity_file_of(serve_config: dict[str, Any]) -> str | None:
    """The gate's activity file named in a Serve config's app args (idle stop on), or None."""
    apps: list[dict[str, Any]] = serve_config.get("applications") or []
    for app in apps:
        args: dict[str, Any] = app.get("args") or {}
        path = args.get("activity_file")
        if isinstance(path, str) and path:
            return path
    return None


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def preflight_needed(apps: dict[str, str], deployed_before: bool = False) -> bool:
    """Whether a starting deploy runs the gang/all-reduce preflight: only when no Serve app is
    deployed yet and this head never deployed one. A watcher restarted by a rollout (a new deploy
    command, e.g. `--replicas`) or by systemd finds the engine holding the GPUs, so the gang could
    never be reserved again; the first deploy proved the fabric. {} also means the dashboard is not
    up: preflight, unless this head deployed before (`deployed_before`, the deploy's marker in
    the head's own temp dir): then the head's Ray restarted empty (no GCS fault tolerance) and
    the workers are the ones the preflight proved; running it again only delays serving (issue
    #26: serving after a head kill). A replaced head has no marker and runs it."""
    return not apps and not deployed_before


def reapply_reason(before: WatchView, now: WatchView) -> str | None:
    """Why the app must be applied again, or None. A worker that is gone is not a reason yet
    (nothing can be placed without it); its return, under a new node id, is."""
    if now.config_digest != before.config_digest:
        return "the Serve config changed"
    back = sorted(ip for ip, node in now.workers.items() if before.workers.get(ip) != node)
    if back:
        return f"worker {', '.join(back)} came back"
    return None


def _heartbeat(every: float, emit: Callable[[], None]) -> threading.Event:
    """Call `emit` every `every` s (real time) until the returned event is set."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            emit()

    threading.Thread(target=loop, name="watch-heartbeat", daemon=True).start()
    return stop


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else repr(e)


def watch(
    observe: Callable[[], WatchView],
    apply: Callable[[str], object],
    *,
    interval: float = 30.0,
    polls: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    backoff: AppBackoff | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    idle: Callable[[], str | None] = lambda: None,
    deployed_digest: str | None = None,
) -> None:
    """Poll every `interval` s (forever, or `polls` times); call `apply(reason)` on each reason.

    `deployed_digest`: the digest of the Serve config's bytes the caller deployed before it
    started watching (file_digest's). The first observation is the baseline otherwise, so a
    file rewritten while that first deploy ran (a rollout, a config-only change minutes after
    `up`) would never be applied: the fault suite lost one so (the watcher logged "idle" for
    180 s while the file held a new max_ongoing_requests).
    A failed apply for a new config or a returning worker is logged and retried on the next
    poll (the view it failed on is not remembered), so one bad moment never stops the watcher;
    a failed app is re-applied on `backoff`'s schedule, whether the last re-apply raised or not."""
    backoff = backoff or AppBackoff()
    before = observe()
    if deployed_digest is not None:
        before = replace(before, config_digest=deployed_digest)
    n = 0
    while polls is None or n < polls:
        n += 1
        sleep(interval)
        if line := idle():  # every poll, whatever else happens: the idle alarm reads the silence too
            log(line)
        try:
            now = observe()
        except Exception as e:  # noqa: BLE001 - the head is restarting; look again next time
            log(f"watch: cannot observe the cluster: {_first_line(e)}")
            continue
        reason = reapply_reason(before, now)
        t, was_failing = clock(), backoff.failing_since is not None
        app_reason = backoff.step(now.apps, t)
        line = backoff.alarm_line(now.apps, t, was_failing)
        if line:
            log(line)
        reason = reason or app_reason
        if reason is None:
            before = now
            continue
        log(f"re-apply: {reason}")

        # A re-apply may wait for hours (a replaced worker stages its weights): while an app is
        # failed the alarm's line keeps coming, or CloudWatch would read the silence as healthy.
        def beat(apps: dict[str, str] = now.apps) -> None:
            line = backoff.alarm_line(apps, clock(), False)
            if line:
                log(line)

        stop = _heartbeat(interval, beat) if backoff.failing_since is not None and interval > 0 else None
        try:
            if app_reason:
                backoff.attempted(t)
            apply(reason)
        except Exception as e:  # noqa: BLE001
            log(f"re-apply failed ({reason}): {_first_line(e)}; retrying")
            continue
        finally:
            if stop is not None:
                stop.set()
        before = now
