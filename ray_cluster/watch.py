"""The head's deploy watcher: after the first deploy, re-apply the Serve app in place when
its config file changes (a rollout rewrote it) or when a worker comes back (a recovered,
restarted or replaced host joins with a new Ray node id).

`reapply_reason` is the pure decision; `watch` is the loop, with every effect injected so a
unit test drives it without a cluster. `python -m ray_cluster.node deploy --watch` wires it to
the real cluster (ray_cluster.node).
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class WatchView:
    config_digest: str
    workers: dict[str, str] = field(default_factory=dict)  # alive worker IP -> Ray node id


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def preflight_needed(apps: dict[str, str]) -> bool:
    """Whether a starting deploy runs the gang/all-reduce preflight: only when no Serve app is
    deployed yet. A watcher restarted by a rollout (a new deploy command, e.g. `--replicas`) or
    by systemd finds the engine holding the GPUs, so the gang could never be reserved again;
    the first deploy proved the fabric. {} also means the dashboard is not up: preflight."""
    return not apps


def reapply_reason(before: WatchView, now: WatchView) -> str | None:
    """Why the app must be applied again, or None. A worker that is gone is not a reason yet
    (nothing can be placed without it); its return, under a new node id, is."""
    if now.config_digest != before.config_digest:
        return "the Serve config changed"
    back = sorted(ip for ip, node in now.workers.items() if before.workers.get(ip) != node)
    if back:
        return f"worker {', '.join(back)} came back"
    return None


def watch(
    observe: Callable[[], WatchView],
    apply: Callable[[str], None],
    *,
    interval: float = 30.0,
    polls: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> None:
    """Poll every `interval` s (forever, or `polls` times); call `apply(reason)` on each reason.

    A failed apply is logged and retried on the next poll (the view it failed on is not
    remembered), so one bad moment never stops the watcher."""
    before = observe()
    n = 0
    while polls is None or n < polls:
        n += 1
        sleep(interval)
        try:
            now = observe()
        except Exception as e:  # noqa: BLE001 - the head is restarting; look again next time
            log(f"watch: cannot observe the cluster: {str(e).splitlines()[0] if str(e) else e!r}")
            continue
        reason = reapply_reason(before, now)
        if reason is None:
            before = now
            continue
        log(f"re-apply: {reason}")
        try:
            apply(reason)
        except Exception as e:  # noqa: BLE001
            log(f"re-apply failed ({reason}): {str(e).splitlines()[0] if str(e) else e!r}; retrying")
            continue
        before = now
