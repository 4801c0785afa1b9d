"""The fault suite's steady client load and what is measured from it (tests/test_faults.py).

`Load` runs `concurrency` threads, each sending one completion at a time through the official
`openai` client (no retries: a failed request is counted, not hidden), with a short pause
between requests so the rate stays steady and the 2-core machine keeps room for the engines.
Every request is recorded with its start and end (monotonic) and whether it succeeded.

Measured per fault (t0 = the moment the fault is injected):
- failed / total: requests *started* at or after t0 - `lead` s (a request in flight when the fault
  hits counts) until the load stops;
- serving gap: from t0 to the end of the first successful request started after the last failed
  one; 0 when nothing failed. It is how long clients saw failures.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import openai


@dataclass(frozen=True)
class Request:
    start: float
    end: float
    ok: bool
    error: str = ""


@dataclass
class Window:
    requests: list[Request]
    t0: float

    @property
    def failed(self) -> list[Request]:
        return [r for r in self.requests if not r.ok]

    @property
    def total(self) -> int:
        return len(self.requests)

    def serving_gap(self) -> float | None:
        """Seconds from t0 until clients were answered again after the last failure (0: no failure;
        None: no success came after the last failure)."""
        if not self.failed:
            return 0.0
        last_fail = max(r.start for r in self.failed)
        after = [r for r in self.requests if r.ok and r.start > last_fail]
        return min(r.end for r in after) - self.t0 if after else None

    def errors(self) -> list[str]:
        return sorted({r.error for r in self.failed})


@dataclass
class Load:
    endpoint: str  # .../v1
    token: str
    model: str
    concurrency: int = 2
    timeout: float = 30.0
    pause: float = 0.25
    max_tokens: int = 4
    records: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _loop(self, i: int) -> None:
        client = openai.OpenAI(
            base_url=self.endpoint, api_key=self.token, max_retries=0, timeout=self.timeout
        )
        n = 0
        while not self._stop.is_set():
            n += 1
            t = time.monotonic()
            try:
                r = client.completions.create(
                    model=self.model, prompt=f"client {i} request {n}:", max_tokens=self.max_tokens
                )
                ok, err = bool(r.choices), "" if r.choices else "no choices"
            except openai.APIStatusError as e:  # the HTTP status tells Serve's 503 from a 500
                ok, err = False, f"{type(e).__name__} {e.status_code}"
            except openai.APIError as e:
                ok, err = False, type(e).__name__
            with self._lock:
                self.records.append(Request(t, time.monotonic(), ok, err))
            self._stop.wait(self.pause)

    def __enter__(self) -> Load:
        self._threads = [
            threading.Thread(target=self._loop, args=(i,), daemon=True, name=f"load-{i}")
            for i in range(self.concurrency)
        ]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)

    def window(self, t0: float, lead: float = 0.0) -> Window:
        with self._lock:
            return Window([r for r in self.records if r.start >= t0 - lead], t0)

    def successes_since(self, t: float) -> int:
        with self._lock:
            return sum(1 for r in self.records if r.ok and r.start >= t)

    def wait_successes(self, n: int, since: float, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.successes_since(since) >= n:
                return True
            time.sleep(0.5)
        return False
