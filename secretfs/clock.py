"""The one clock the daemon's timing decisions read: injectable, so tests drive it.

Every interval the mount decides on (a refused row looked at again, audit repeats
folded per window, the shutdown bound, an etcd watch gone silent) asks a `Clock`, never
`time` directly; tests pass a fake one (tests/fakeclock.py) and step it, without
sleeping. Trio's own sleeps keep trio's clock (`trio.run(clock=)`).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: intervals and deadlines."""
        ...

    def time_ns(self) -> int:
        """Wall time in nanoseconds since the epoch: what records and status show."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait until `event` is set or `seconds` pass; whether it is set."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time_ns(self) -> int:
        return time.time_ns()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(seconds)


SYSTEM = SystemClock()
