"""`llmfleet logs`: a deployed stack's logs from CloudWatch Logs, by node.

Where the hosts write them (infra/boot/metrics.py): every container's output into the
containers group, one stream per host and container (`<role>-<node ip>/<container>`), and the
boot log into the boot group (`<role>-<node ip>`); the groups are the stack's `log_groups`
output (infra/components/observability.py). A node is `head` (its fixed address) or
`worker-N` (slot N's running instance, found by its Auto Scaling group's tag).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from infra.stack.outputs import StackOutputs
from infra.worker_lookup import running_worker_slots

SINCE_RE = re.compile(r"([0-9]{1,6})([smhd])")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
NODE_RE = re.compile(r"head|worker-([0-9]{1,4})")
SOURCES = ("all", "containers", "boot")
# filter_log_events takes at most 100 stream names per call.
MAX_STREAMS = 100


class LogsError(ValueError):
    """One line: which option or stack output is wrong, and what is allowed."""


@dataclass(frozen=True)
class LogEvent:
    timestamp_ms: int
    group: str
    stream: str
    message: str
    event_id: str

    def line(self) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.timestamp_ms / 1000))
        return f"{ts}.{self.timestamp_ms % 1000:03d}Z {self.stream} {self.message.rstrip()}"


def parse_since(text: str) -> int:
    """`10m` -> 600 (seconds); LogsError naming the value and what is allowed."""
    m = SINCE_RE.fullmatch(text.strip())
    if not m or int(m.group(1)) == 0:
        raise LogsError(
            f"--since {text!r}: allowed a positive whole number with s, m, h or d (e.g. 30s, 10m, 2h, 1d)"
        )
    return int(m.group(1)) * UNIT_S[m.group(2)]


def log_groups(outputs: StackOutputs, source: str) -> list[str]:
    """The stack's log groups for `source` (all | containers | boot)."""
    if source not in SOURCES:
        raise LogsError(f"--source {source!r}: allowed {', '.join(SOURCES)}")
    groups = list(outputs.log_groups or [])
    if not groups:
        raise LogsError(
            "stack output 'log_groups' is missing: this stack ships no logs to CloudWatch (provider aws only)"
        )
    if source == "all":
        return groups
    picked = [g for g in groups if g.rsplit("/", 1)[-1] == source]
    if not picked:
        raise LogsError(f"--source {source}: the stack's log groups are {', '.join(groups)}")
    return picked


def node_stream_name(outputs: StackOutputs, node: str, ec2: Any) -> str:
    """`head` / `worker-N` -> the stream name the node's host writes (`<role>-<ip>`)."""
    m = NODE_RE.fullmatch(node)
    slots = len(outputs.worker_groups or [])
    if not m:
        raise LogsError(f"--node {node!r}: allowed head or worker-N (N in 0..{max(slots - 1, 0)})")
    if node == "head":
        return f"head-{outputs.head_private_ip}"
    slot = int(m.group(1))
    if slot >= slots:
        raise LogsError(
            f"--node {node}: the stack has {slots} worker slot(s); allowed worker-0..worker-{slots - 1}"
        )
    ips = [ip for s, ip, _ in running_worker_slots(ec2, list(outputs.worker_groups or [])) if s == slot]
    if not ips:
        raise LogsError(
            f"--node {node}: {outputs.worker_groups[slot]} has no running instance now (replacing it?); "  # type: ignore[index]
            "omit --node to read every stream"
        )
    return f"worker-{ips[0]}"


def streams_of(logs: Any, group: str, node_stream: str) -> list[str]:
    """The group's streams of one node: the boot stream itself and its containers' `<it>/<name>`
    (a prefix alone would also take worker-10.0.0.12's streams for worker-10.0.0.1)."""
    names: list[str] = []
    pages = logs.get_paginator("describe_log_streams").paginate(
        logGroupName=group, logStreamNamePrefix=node_stream
    )
    for page in pages:
        for s in page.get("logStreams", []):
            n = s["logStreamName"]
            if n == node_stream or n.startswith(node_stream + "/"):
                names.append(n)
    return names


def read_events(
    logs: Any, groups: Sequence[str], node_stream: str | None, start_ms: int, end_ms: int | None = None
) -> list[LogEvent]:
    """Every event of these groups (of one node, when `node_stream`) from start_ms, oldest first."""
    out: list[LogEvent] = []
    for group in groups:
        kw: dict[str, Any] = {"logGroupName": group, "startTime": start_ms}
        if end_ms is not None:
            kw["endTime"] = end_ms
        if node_stream is not None:
            names = streams_of(logs, group, node_stream)
            if not names:
                continue  # this node has written nothing to this group yet
            batches = [names[i : i + MAX_STREAMS] for i in range(0, len(names), MAX_STREAMS)]
        else:
            batches = [[]]
        for batch in batches:
            args = {**kw, "logStreamNames": batch} if batch else kw
            for page in logs.get_paginator("filter_log_events").paginate(**args):
                for e in page.get("events", []):
                    out.append(
                        LogEvent(e["timestamp"], group, e["logStreamName"], e["message"], e["eventId"])
                    )
    return sorted(out, key=lambda e: (e.timestamp_ms, e.stream, e.event_id))


def follow(
    logs: Any,
    groups: Sequence[str],
    node_stream: str | None,
    start_ms: int,
    *,
    poll_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    polls: int | None = None,
) -> Iterator[LogEvent]:
    """read_events, then every new event as it arrives (`aws logs tail --follow`): each poll
    asks from the newest timestamp seen, and skips the events it already gave at that instant.
    `polls`: stop after that many polls (tests); None until interrupted."""
    since = start_ms
    seen_at_since: set[str] = set()
    n = 0
    while polls is None or n < polls:
        if n:
            sleep(poll_s)
        n += 1
        for e in read_events(logs, groups, node_stream, since):
            if e.timestamp_ms == since and e.event_id in seen_at_since:
                continue
            if e.timestamp_ms > since:
                since, seen_at_since = e.timestamp_ms, set()
            seen_at_since.add(e.event_id)
            yield e
