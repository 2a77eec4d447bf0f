"""Audit records: who opened or changed what, when, and how it ended. Never a value.

The mount records every `open()` of a secret or field file (allowed, denied or failed);
the CLI records every write in the same transaction as the write. Records are never
changed (the store's triggers refuse UPDATE) and deleted only by `secretfs audit prune`,
the store's audit-max-age, which records each prune.

The mount keeps its records in an `AuditQueue` (memory only, no I/O on the read path);
the daemon flushes the queue in batches from a background task.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from secretfs.clock import SYSTEM, Clock
from secretfs.timeutil import iso_time

SOURCE_MOUNT = "mount"
SOURCE_CLI = "cli"
SOURCE_RESOLVER = "resolver"  # the daemon's secrets-engine socket (secretfs/resolver/)

# Outcomes. A mount open is allowed, denied (EACCES) or an error (EIO: a record that
# does not decrypt). A CLI write is ok, unchanged (nothing to do) or refused (an error).
ALLOWED = "allowed"
DENIED = "denied"
ERROR = "error"
OK = "ok"
UNCHANGED = "unchanged"
REFUSED = "refused"

_COMM_MAX = 64


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit line. `ref` is a canonical `$S:` reference, or a scope key for scope-wide
    actions (grants, chmod, chown on a scope); `id` is given by the store."""

    time_ns: int
    source: str
    action: str
    ref: str | None
    version: int | None
    uid: int | None
    gid: int | None
    pid: int | None
    process: str | None
    outcome: str
    detail: str | None = None
    id: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": iso_time_ns(self.time_ns),
            "time_ns": self.time_ns,
            "source": self.source,
            "action": self.action,
            "ref": self.ref,
            "version": self.version,
            "uid": self.uid,
            "gid": self.gid,
            "pid": self.pid,
            "process": self.process,
            "outcome": self.outcome,
            "detail": self.detail,
        }

    def to_text(self) -> str:
        who = f"uid={_dash(self.uid)} gid={_dash(self.gid)} pid={_dash(self.pid)}"
        what = self.ref if self.ref is not None else "-"
        if self.version is not None:
            what += f"@v{self.version}"
        line = (
            f"{iso_time_ns(self.time_ns)}  {self.source:<5}  {self.action:<8}  {self.outcome:<9}"
            f"  {what}  {who} process={self.process or '-'}"
        )
        return f"{line}  ({self.detail})" if self.detail else line


def iso_time_ns(ns: int) -> str:
    """ISO 8601 UTC with microseconds: audit lines are ordered finer than seconds."""
    return iso_time(ns // 1_000_000_000 * 1_000_000_000).replace(
        "Z", f".{ns // 1000 % 1_000_000:06d}Z"
    )


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def process_name(pid: int) -> str | None:
    """The kernel's short name of `pid` (`/proc/<pid>/comm`), or None if it is gone."""
    # os-level calls: this runs on every open through the mount, and is 5x cheaper.
    try:
        fd = os.open(f"/proc/{pid}/comm", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.read(fd, _COMM_MAX)
    except OSError:
        return None
    finally:
        os.close(fd)
    return raw.rstrip(b"\n").decode("utf-8", "replace")


class ProcessNames:
    """`process_name` remembered per pid for `ttl` seconds: a burst of opens by one
    process reads /proc once. Kept short so that a pid the kernel hands out again (its
    counter wraps at pid_max) or a process that exec()s is named afresh within `ttl`."""

    def __init__(
        self,
        ttl: float = 0.1,
        clock: Clock = SYSTEM,
        limit: int = 4096,
        lookup: Callable[[int], str | None] = process_name,
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._limit = limit
        self._lookup = lookup
        self._names: dict[int, tuple[float, str | None]] = {}

    def get(self, pid: int) -> str | None:
        now = self._clock.monotonic()
        known = self._names.get(pid)
        if known is not None and now < known[0]:
            return known[1]
        name = self._lookup(pid)
        if len(self._names) >= self._limit:
            fresh = {p: k for p, k in self._names.items() if now < k[0]}
            self._names = fresh if len(fresh) < self._limit // 2 else {}
        self._names[pid] = (now + self.ttl, name)
        return name


def cli_record(
    action: str,
    ref: str | None,
    version: int | None = None,
    outcome: str = OK,
    detail: str | None = None,
) -> AuditRecord:
    """A record of this CLI process doing `action`."""
    pid = os.getpid()
    return AuditRecord(
        time_ns=time.time_ns(),
        source=SOURCE_CLI,
        action=action,
        ref=ref,
        version=version,
        uid=os.getuid(),
        gid=os.getgid(),
        pid=pid,
        process=process_name(pid),
        outcome=outcome,
        detail=detail,
    )


# time_ns, action, ref, version, uid, gid, pid, process, outcome, detail (AuditRecord's
# fields, source "mount" and no id)
MountEvent = tuple[int, str, str | None, int | None, int, int, int, str | None, str, str | None]


AGGREGATE_SECONDS = 10.0  # repeats of one denial are summed up over this long
_AGGREGATED = (DENIED, ERROR)
_AGGREGATE_KEYS = 10_000  # distinct repeating denials followed at once, at most


class _Repeats:
    """Repeats of one denial after the first (which is written as it happens)."""

    __slots__ = ("count", "first_ns", "last", "start_ns")

    def __init__(self, start_ns: int) -> None:
        self.start_ns = start_ns
        self.count = 0
        self.first_ns = 0
        self.last: MountEvent | None = None


class AuditQueue:
    """Records waiting to be written; bounded, so a store that stays locked cannot eat
    the daemon's memory (what is dropped is counted, logged and recorded once writing
    works).

    A denial (or error) repeated by the same uid on the same ref with the same outcome
    is written once as it happens; its repeats within `window` seconds become one
    record whose detail says how many and from when to when, written when the window
    ends. A uid hammering what it may not open adds a record every `window` seconds,
    not one per attempt.
    """

    def __init__(
        self, limit: int = 100_000, window: float = AGGREGATE_SECONDS, clock: Clock = SYSTEM
    ) -> None:
        self.limit = limit
        self.window_ns = int(window * 1e9)
        self.clock = clock  # when a window has ended, and the time of a drop note
        self._pending: list[AuditRecord | MountEvent] = []
        self._repeats: dict[tuple[object, ...], _Repeats] = {}
        self.dropped = 0  # not yet reported in a record
        self.dropped_total = 0  # since the start, for status and the log
        # Set while records cannot be written (why): new opens may be refused meanwhile.
        self.failing: str | None = None
        # The store is unreachable (not refusing): records wait here, opens go on, until
        # the queue would have to drop one.
        self.waiting_for_store = False

    def add(self, record: AuditRecord) -> None:
        self._append(record)

    def _append(self, record: AuditRecord | MountEvent) -> None:
        if len(self._pending) >= self.limit:
            self.dropped += 1
            self.dropped_total += 1
            return
        self._pending.append(record)

    def add_mount(
        self,
        time_ns: int,
        action: str,
        ref: str | None,
        version: int | None,
        uid: int,
        gid: int,
        pid: int,
        process: str | None,
        outcome: str,
        detail: str | None,
    ) -> None:
        """A mount's record, kept as a plain tuple until `take()`: building the record (a
        frozen dataclass, slow to make) is left to the batch, off the read path."""
        event = (time_ns, action, ref, version, uid, gid, pid, process, outcome, detail)
        if outcome in _AGGREGATED:
            key = (uid, ref, action, outcome, detail)
            repeats = self._repeats.get(key)
            if repeats is not None and time_ns - repeats.start_ns < self.window_ns:
                if not repeats.count:
                    repeats.first_ns = time_ns
                repeats.count += 1
                repeats.last = event
                return
            if repeats is not None:
                self._summarise(repeats)
            if len(self._repeats) >= _AGGREGATE_KEYS:
                self._summarise_all()
            self._repeats[key] = _Repeats(time_ns)
        self._append(event)

    def _summarise(self, repeats: _Repeats) -> None:
        if repeats.count and repeats.last is not None:
            last = repeats.last
            note = (
                f"repeated {repeats.count} times from {iso_time_ns(repeats.first_ns)}"
                f" to {iso_time_ns(last[0])}"
            )
            self._append((*last[:9], f"{last[9]}; {note}" if last[9] else note))

    def _summarise_all(self) -> None:
        for repeats in self._repeats.values():
            self._summarise(repeats)
        self._repeats.clear()

    def due(self) -> bool:
        """Whether anything waits to be taken now (records, a drop, an ended window)."""
        now_ns = self.clock.time_ns()
        return bool(self._pending or self.dropped) or any(
            r.count and now_ns - r.start_ns >= self.window_ns for r in self._repeats.values()
        )

    def __len__(self) -> int:
        return len(self._pending) + sum(1 for r in self._repeats.values() if r.count)

    def take(self, final: bool = False) -> list[AuditRecord]:
        """Everything pending (plus a note of what was dropped, and the repeats whose
        window ended, or all of them when `final`); the queue is then empty of those."""
        now = self.clock.time_ns()
        if final:
            self._summarise_all()
        else:
            for key, repeats in list(self._repeats.items()):
                if now - repeats.start_ns >= self.window_ns:
                    self._summarise(repeats)
                    del self._repeats[key]
        pending, self._pending = self._pending, []
        batch = [
            r if isinstance(r, AuditRecord) else AuditRecord(r[0], SOURCE_MOUNT, *r[1:])
            for r in pending
        ]
        if self.dropped:
            batch.append(
                AuditRecord(
                    time_ns=now,
                    source=SOURCE_MOUNT,
                    action="audit",
                    ref=None,
                    version=None,
                    uid=None,
                    gid=None,
                    pid=os.getpid(),
                    process=None,
                    outcome=ERROR,
                    detail=f"{self.dropped} records dropped: the store was not writable",
                )
            )
            self.dropped = 0
        return batch

    def put_back(self, batch: list[AuditRecord]) -> None:
        """A batch that could not be written goes back in front of newer records."""
        merged: list[AuditRecord | MountEvent] = [*batch, *self._pending]
        overflow = max(0, len(merged) - self.limit)
        self.dropped += overflow
        self.dropped_total += overflow
        self._pending = merged[overflow:]

    def status(self) -> dict[str, object]:
        """For `.secretfs-status`: what waits, what was lost, and whether writing fails."""
        return {
            "pending": len(self),
            "dropped": self.dropped_total,
            "failing": self.failing,
        }
