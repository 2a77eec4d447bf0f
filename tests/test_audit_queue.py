"""The daemon's audit queue: repeated denials summed up, nothing lost without a count."""

from __future__ import annotations

import time

from secretfs.audit import ALLOWED, DENIED, AuditQueue
from tests.fakeclock import FakeClock


def _deny(q: AuditQueue, t: int, uid: int = 1001, ref: str = "$S:db", pid: int = 7) -> None:
    q.add_mount(t, "open", ref, 1, uid, uid, pid, "cat", DENIED, "EACCES")


def test_repeated_denials_become_the_first_plus_one_summary_when_the_window_ends() -> None:
    clock = FakeClock()
    q = AuditQueue(window=10, clock=clock)
    start = clock.time_ns()
    for i in range(1000):
        _deny(q, start + i * 1000, pid=100 + i)
    (first,) = q.take()  # the first is written as it happens
    assert first.detail == "EACCES" and first.pid == 100
    clock.advance(9.99)
    assert not q.due() and q.take() == [] and len(q) == 1  # the window is still open
    clock.advance(0.01)
    assert q.due()
    (summary,) = q.take()
    assert summary.pid == 1099 and summary.outcome == DENIED
    assert summary.detail is not None
    assert summary.detail.startswith("EACCES; repeated 999 times from ")
    assert q.take() == [] and not q.due()


def test_repeats_in_an_open_window_wait_and_are_counted_in_len() -> None:
    clock = FakeClock()
    q = AuditQueue(window=3600, clock=clock)
    now = clock.time_ns()
    for i in range(5):
        _deny(q, now + i)
    assert [r.detail for r in q.take()] == ["EACCES"]
    clock.advance(3599)
    assert len(q) == 1 and not q.due()
    assert [r.detail[:19] for r in q.take(final=True) if r.detail] == ["EACCES; repeated 4 "]


def test_different_uids_refs_and_outcomes_are_kept_apart() -> None:
    q = AuditQueue(window=3600)
    now = time.time_ns()
    _deny(q, now, uid=1001)
    _deny(q, now, uid=1002)
    _deny(q, now, ref="$S:other")
    q.add_mount(now, "open", "$S:db", 1, 1001, 1001, 1, "cat", ALLOWED, None)
    q.add_mount(now, "open", "$S:db", 1, 1001, 1001, 1, "cat", ALLOWED, None)
    assert len(q.take()) == 5  # allowed opens are each recorded


def test_a_new_window_starts_after_the_old_one_ends() -> None:
    q = AuditQueue(window=1)
    t = time.time_ns()
    _deny(q, t)
    _deny(q, t + 1)
    _deny(q, t + 2 * 10**9)  # past the window: the summary, then a new first record
    details = [r.detail for r in q.take(final=True)]
    assert details[0] == "EACCES"
    assert details[1] is not None and "repeated 1 times" in details[1]
    assert details[2] == "EACCES"


def test_overflow_is_counted_for_status_and_written_as_a_note() -> None:
    q = AuditQueue(limit=3)
    now = time.time_ns()
    for i in range(5):
        q.add_mount(now, "open", f"$S:s{i}", 1, 0, 0, 1, "cat", ALLOWED, None)
    assert q.status()["dropped"] == 2
    batch = q.take()
    assert batch[-1].action == "audit" and batch[-1].detail is not None
    assert batch[-1].detail.startswith("2 records dropped")
    q.put_back(batch)
    assert q.status() == {"pending": 3, "dropped": 3, "failing": None}
