"""A clock that moves only when a test says so (secretfs/clock.py), like trio's MockClock:
timing decisions are tested without sleeping."""

from __future__ import annotations

import threading

WALL_START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


class FakeClock:
    """`advance` moves it; a `wait` that nothing ends jumps to its deadline at once (trio's
    autojump), so a loop waiting on it runs its next step without a real delay."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._start = start
        self.waits: list[float] = []  # each wait's length, in the order asked

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def monotonic(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return WALL_START_NS + round((self.now - self._start) * 1e9)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        self.waits.append(seconds)
        if event.is_set():
            return True
        self.advance(seconds)
        return event.is_set()
