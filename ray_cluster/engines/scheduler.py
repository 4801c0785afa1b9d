"""One decode loop shared by every request of an engine (continuous batching), on asyncio.

Callers submit groups of requests (a `@serve.batch` batch is one group). Each loop iteration runs
one batched forward for all running rows, then admits waiting groups: their prompts are prefilled
together and merged into the running batch, so requests that arrive while others decode join at
the next step instead of waiting for the whole batch to end. Model calls run in a worker thread so
the event loop keeps receiving requests.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from typing import Any

from ray_cluster.engines.decoder import BatchedDecoder, GenRequest, RunningBatch, StepOutput


class _Group:
    def __init__(self, n: int):
        self.n = n
        self.queue: asyncio.Queue = asyncio.Queue()
        self.finished: set[int] = set()


class Scheduler:
    """Admits groups FIFO while the running batch has room for them (max_rows)."""

    def __init__(self, decoder: BatchedDecoder, max_rows: int):
        self.decoder = decoder
        self.max_rows = max_rows
        self.pending: deque[tuple[list[GenRequest], _Group]] = deque()
        self.batch: RunningBatch | None = None
        self.live: list[_Group] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.group_sizes: list[int] = []  # requests per submitted group
        self.step_sizes: Counter[int] = Counter()  # rows per decode forward -> count

    def submit(self, requests: list[GenRequest]) -> asyncio.Queue:
        """Queue a group; its queue receives one list per step (None for finished rows), then None."""
        if len(requests) > self.max_rows:
            raise ValueError(f"group of {len(requests)} exceeds max_rows={self.max_rows}")
        group = _Group(len(requests))
        self.pending.append((requests, group))
        self.group_sizes.append(len(requests))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        return group.queue

    async def stream(self, requests: list[GenRequest]):
        """Async iterator of per-step lists for one group."""
        queue = self.submit(requests)
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def _iteration(self) -> list[tuple[Any, StepOutput]]:
        """Runs in a worker thread: one decode step, then admission of waiting groups."""
        outs: list[tuple[Any, StepOutput]] = []
        if self.batch is not None and self.batch.size:
            self.step_sizes[self.batch.size] += 1
            outs += self.decoder.step(self.batch)
        while self.pending:
            size = self.batch.size if self.batch is not None else 0
            reqs, group = self.pending[0]
            if size and size + len(reqs) > self.max_rows:
                break
            self.pending.popleft()
            self.live.append(group)
            new, first = self.decoder.start(reqs, [(group, i) for i in range(len(reqs))])
            outs += first
            self.batch = new if not size else self.decoder.merge(self.batch, new)
        return outs

    def _dispatch(self, outs: list[tuple[Any, StepOutput]]) -> None:
        by_group: dict[int, tuple[_Group, list[StepOutput | None]]] = {}
        for (group, i), out in outs:
            step = by_group.setdefault(id(group), (group, [None] * group.n))[1]
            step[i] = out
            if out.finish_reason:
                group.finished.add(i)
        for group, step in by_group.values():
            group.queue.put_nowait(step)
            if len(group.finished) == group.n:
                group.queue.put_nowait(None)
        self.live = [g for g in self.live if len(g.finished) < g.n]

    def _fail(self, exc: BaseException) -> None:
        """A model error ends every request in flight or waiting, never leaves one hanging."""
        for group in self.live + [g for _, g in self.pending]:
            group.queue.put_nowait(exc)
        self.live, self.pending, self.batch = [], deque(), None

    async def _loop(self) -> None:
        while True:
            if (self.batch is None or not self.batch.size) and not self.pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                outs = await asyncio.to_thread(self._iteration)
            except Exception as e:  # noqa: BLE001 - handed to every waiting caller
                self._fail(e)
                continue
            self._dispatch(outs)

    def stats(self) -> dict[str, Any]:
        return {
            "group_sizes": list(self.group_sizes),
            "step_batch_sizes": dict(self.step_sizes),
            "max_step_batch": max(self.step_sizes, default=0),
        }
