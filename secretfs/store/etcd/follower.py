"""A mount's in-memory copy of every `d/` key, kept current by a watch."""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from secretfs.clock import SYSTEM, Clock
from secretfs.errors import IntegrityError, StoreError
from secretfs.store.etcd.gateway import (
    DEFAULT_LOAD_TIMEOUT,
    ENV_LOAD_TIMEOUT,
    Gateway,
    WatchIdleError,
    env_seconds,
    prefix_end,
)
from secretfs.store.etcd.txn import unb64
from secretfs.store.records import parsed_record, secret_meta
from secretfs.timeutil import iso_time

if TYPE_CHECKING:
    from secretfs.store import SecretMeta
    from secretfs.store.etcd.location import EtcdLocation

log = logging.getLogger(__name__)

# A watch that delivers nothing (no event, no progress notification) for this long is
# dropped and started on another member: a hung member must not hold a mount's view.
WATCH_IDLE_SECONDS = 3.0
# Behind the cluster (the health check saw a newer write) and silent this long: switch.
WATCH_SILENT_SECONDS = 0.3
# How often a mount checks that the cluster answers and that its watch keeps up: a
# change reaches a mount whose member hangs within about this plus a reconnect.
HEALTH_SECONDS = 0.5
HEALTH_TIMEOUT = 1.0  # for that check, across members
RETRY_SECONDS = 0.5  # between attempts to re-establish a broken watch


@dataclass(slots=True)
class _Follow:
    """A mount's in-memory copy of every `d/` key and how current it is."""

    kv: dict[bytes, bytes]
    revision: int  # the watch resumes after this
    version: int = 0  # bumped on every change: data_version()
    watching: bool = False
    reachable: bool = True
    stale_since: int | None = None  # wall time, ns
    problem: str | None = None
    lag: int = 0
    heard: float = 0.0  # the watch's last message (the clock's monotonic time)
    member: str | None = None  # the member carrying the watch
    switching: bool = False  # the watch was dropped on purpose: restart it at once
    catch_up: int = 0  # a watch started after a switch is current once it got to here
    # Rows by their `seq`, so changes_since() costs the change, not the store.
    row_seq: dict[bytes, int] = field(default_factory=dict)
    by_seq: list[tuple[int, bytes]] = field(default_factory=list)  # sorted; stale ok
    keys: list[bytes] = field(default_factory=list)  # kv's keys, sorted: scans by prefix

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self.kv:
            bisect.insort(self.keys, key)
        self.kv[key] = value

    def pop(self, key: bytes) -> None:
        if self.kv.pop(key, None) is not None:
            at = bisect.bisect_left(self.keys, key)
            if at < len(self.keys) and self.keys[at] == key:
                del self.keys[at]
        self.row_seq.pop(key, None)

    def scan(self, prefix: bytes) -> dict[bytes, bytes]:
        out = {}
        for at in range(bisect.bisect_left(self.keys, prefix), len(self.keys)):
            key = self.keys[at]
            if not key.startswith(prefix):
                break
            out[key] = self.kv[key]
        return out

    def index_all(self, rows: bytes, parsed: ParsedRows) -> None:
        self.keys = sorted(self.kv)
        self.row_seq = {}
        for key, value in self.kv.items():
            if key.startswith(rows):
                known = parsed.get(key)
                self.row_seq[key] = known[1].seq if known and known[0] is value else _row_seq(value)
        self.by_seq = sorted((seq, key) for key, seq in self.row_seq.items())

    def index(self, key: bytes, value: bytes) -> None:
        seq = _row_seq(value)
        if self.row_seq.get(key) == seq:
            return
        self.row_seq[key] = seq
        bisect.insort(self.by_seq, (seq, key))
        if len(self.by_seq) > 2 * len(self.row_seq) + 1024:
            self.by_seq = sorted((s, k) for k, s in self.row_seq.items())

    def changed_rows(self, seq: int) -> list[bytes]:
        """Keys of rows whose seq is above `seq` (each once)."""
        start = bisect.bisect_right(self.by_seq, (seq, b"\xff" * 8))
        keys = {k for s, k in self.by_seq[start:] if self.row_seq.get(k) == s}
        return sorted(keys)


_DAMAGED_SEQ = 2**62
# A secret row's bytes and what they parse to (kept while the bytes are the same).
ParsedRows = dict[bytes, tuple[bytes, "SecretMeta"]]


def _row_seq(raw: bytes) -> int:
    """A row's seq; one that does not parse counts as changed (reading it reports it)."""
    try:
        return int(orjson.loads(raw)["seq"])
    except (ValueError, KeyError, TypeError):
        return _DAMAGED_SEQ


class Follower:
    """Every `d/` key of one etcd store in memory, kept current by a watch, and whether
    the cluster answers.

    Two loops keep it: `watch_loop` (apply the watch; on another member when its member
    falls silent) and `health_loop` (read `d/lock` every HEALTH_SECONDS: is the cluster
    there, and does the watch keep up). It starts no thread: its owner runs each of
    `loops()` on one (the daemon: children of its nursery) and calls `stop()`. Reads
    (`get`, `scan`, `changed_rows`) never wait on etcd. Time comes from `clock`.
    """

    def __init__(self, location: EtcdLocation, timeout: float, clock: Clock = SYSTEM) -> None:
        self.location = location
        self._timeout = timeout
        self._clock = clock
        self._p = location.key_prefix
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._running = 0  # loops running now
        # Secret rows parsed as they load, on the loading threads while etcd encodes
        # the next page: the backend's parse cache (EtcdBackend._parsed_row) starts here.
        self.parsed: ParsedRows = {}
        kv, revision = self._load_all()
        # Made here, not by its loop: `stop()` reaches the watch from the start.
        self._watch_gw = Gateway(location, timeout=timeout)
        self._follow = _Follow(kv, revision, heard=clock.monotonic())
        self._follow.index_all(self._key("d/s/"), self.parsed)

    def _key(self, *parts: str) -> bytes:
        return self._p + "/".join(parts).encode()

    def loops(self) -> tuple[Callable[[], None], ...]:
        """What keeps the copy current, each to run on a thread of its own until `stop()`."""
        return (self.watch_loop, self.health_loop)

    def stop(self) -> None:
        """Make the loops return: at once, or (one in a call to a hung member) within that
        call's timeout. Once stopped, a loop started later returns at once."""
        self._stop.set()
        self._watch_gw.stop_watch()

    @property
    def running(self) -> int:
        """How many of the loops are running now."""
        with self._lock:
            return self._running

    @contextlib.contextmanager
    def _loop(self) -> Iterator[None]:
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1

    def close(self) -> None:
        """Stop; the watch's connection is closed by its loop, or here if none runs it."""
        self.stop()
        with self._lock:
            idle = self._running == 0
        if idle:
            self._watch_gw.close()

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            return self._follow.kv.get(key)

    def scan(self, prefix: bytes) -> dict[bytes, bytes]:
        with self._lock:
            return self._follow.scan(prefix)

    @property
    def version(self) -> int:
        """Bumped on every change seen."""
        with self._lock:
            return self._follow.version

    def changed_rows(self, seq: int) -> list[tuple[bytes, bytes]]:
        """The secret rows whose seq is above `seq`: the change, not the store."""
        with self._lock:
            found = [(k, self._follow.kv.get(k)) for k in self._follow.changed_rows(seq)]
        return [(k, raw) for k, raw in found if raw is not None]

    def _load_all(self) -> tuple[dict[bytes, bytes], int]:
        """Every `d/` key at one revision, page by page, within the load timeout (not
        the request timeout: a large store takes longer than one request may)."""
        deadline = time.monotonic() + env_seconds(ENV_LOAD_TIMEOUT, DEFAULT_LOAD_TIMEOUT)
        # All of d/ in ranges cut where the keys there is one of per secret start (d/id/,
        # d/meta/ between, d/s/, d/v/): a page then costs etcd its range, not the store.
        cuts = [self._key(p) for p in ("d/", "d/id/", "d/id0", "d/s/", "d/s0", "d/v/", "d/v0")]
        ranges = list(zip(cuts, [*cuts[1:], prefix_end(self._key("d/"))], strict=True))
        rows, parsed = self._key("d/s/"), self.parsed

        def parse(page: list[tuple[bytes, bytes]]) -> None:
            for key, raw in page:
                if key.startswith(rows):
                    try:
                        parsed[key] = (raw, parsed_record(key, raw, secret_meta))
                    except IntegrityError:
                        pass  # damaged: said when the backend parses it to serve it

        gw = Gateway(self.location, timeout=self._timeout)
        try:
            return gw.load(ranges, deadline=deadline, on_page=parse)
        finally:
            gw.close()

    def _resync(self) -> None:
        kv, revision = self._load_all()
        with self._lock:
            self._follow.kv = kv
            self._follow.revision = revision
            self._follow.index_all(self._key("d/s/"), self.parsed)
            self._follow.version += 1
        log.info("etcd: reloaded %d keys of %s at revision %d", len(kv), self.location, revision)

    def watch_loop(self) -> None:
        follow = self._follow
        prefix = self._key("d/")
        with self._loop():
            try:
                while not self._stop.is_set():
                    try:
                        self._watch_once(self._watch_gw, follow, prefix)
                    except WatchIdleError as exc:
                        self.watch_idle(str(exc))
                    except StoreError as exc:
                        if self._stop.is_set():
                            break  # the stream broken by `stop()`: no news of the cluster
                        self._set_watching(False, str(exc))
                    with self._lock:
                        switching, follow.switching = follow.switching, False
                    # A member given up for silence: go to the next one at once.
                    if not switching and self._clock.wait(self._stop, RETRY_SECONDS):
                        break
            finally:
                self._watch_gw.close()

    def watch_idle(self, problem: str) -> None:
        """The watch brought nothing for WATCH_IDLE_SECONDS: stale if the health check saw
        the cluster move on (or not answer); else a quiet store on a cluster without
        progress notifications: nothing was missed, start again at once, not stale."""
        follow = self._follow
        with self._lock:
            quiet = follow.reachable and follow.lag == 0
            follow.switching = follow.switching or quiet
        if not quiet:
            self._set_watching(False, problem)

    def _watch_once(self, gw: Gateway, follow: _Follow, prefix: bytes) -> None:
        results = gw.watch(prefix, prefix_end(prefix), follow.revision + 1, WATCH_IDLE_SECONDS)
        with contextlib.closing(results):
            self._apply_watch(results, follow)

    def _apply_watch(self, results: Iterator[dict[str, Any]], follow: _Follow) -> None:
        rows = self._key("d/s/")
        created = False
        for result in results:
            if self._stop.is_set():
                return
            with self._lock:
                follow.heard = self._clock.monotonic()
            compacted = int(result.get("compact_revision", 0) or 0)
            if compacted or result.get("canceled"):
                reason = result.get("cancel_reason") or f"compacted at revision {compacted}"
                log.warning("etcd watch on %s ended (%s): reloading in full", self.location, reason)
                self._resync()
                return
            if result.get("created"):
                created = True
                with self._lock:
                    follow.member = self._watch_gw.watch_url
            events = result.get("events") or []
            if not events:
                if not result.get("created"):
                    # A progress notification: every change up to here was delivered.
                    header = int((result.get("header") or {}).get("revision", 0) or 0)
                    with self._lock:
                        follow.revision = max(follow.revision, header)
                self._caught_up(follow, created)
                continue
            with self._lock:
                for event in events:
                    kv = event["kv"]
                    key = unb64(kv["key"])
                    if event.get("type") == "DELETE":
                        follow.pop(key)
                    else:
                        value = unb64(kv.get("value"))
                        follow.put(key, value)
                        if key.startswith(rows):
                            follow.index(key, value)
                    follow.revision = max(follow.revision, int(kv.get("mod_revision", 0)))
                follow.version += 1
            self._caught_up(follow, created)

    def _caught_up(self, follow: _Follow, created: bool) -> None:
        """Current again once the watch is established and, after a switch, has brought
        what the cluster had when the old one was given up."""
        with self._lock:
            ready = created and not follow.watching and follow.revision >= follow.catch_up
        if ready:
            self._set_watching(True, None)

    def health_loop(self) -> None:
        gw = Gateway(self.location, timeout=min(self._timeout, HEALTH_TIMEOUT))
        lock = self._key("d/lock")
        with self._loop():
            try:
                while not self._clock.wait(self._stop, HEALTH_SECONDS):
                    try:
                        kvs, _ = gw.range(lock)
                    except StoreError as exc:
                        self._set_reachable(False, str(exc))
                        continue
                    self.cluster_answered(int(kvs[0].get("mod_revision", 0)) if kvs else 0)
            finally:
                gw.close()

    def cluster_answered(self, written: int) -> None:
        """The health check read `d/lock`, last written at revision `written`: switch
        members when the watch is behind and silent past WATCH_SILENT_SECONDS; restart
        it when it stays behind two checks running."""
        follow = self._follow
        self._set_reachable(True, None)
        with self._lock:
            behind = written > follow.revision
            silent = self._clock.monotonic() - follow.heard
            follow.lag = follow.lag + 1 if behind else 0
            lag, member = follow.lag, follow.member
        if behind and silent > WATCH_SILENT_SECONDS:
            with self._lock:
                follow.catch_up = max(follow.catch_up, written)
            # The cluster moved on and the watch brought nothing: its member is
            # hung or cut off. Stale until a watch on another member catches up.
            problem = (
                f"etcd member {member} carrying the watch sent nothing for"
                f" {silent:.1f}s while the cluster moved on: switching members"
            )
            log.warning("%s (%s)", problem, self.location)
            self._switch(problem)
        elif lag >= 2:
            # Writes went on that the watch did not bring: start it again.
            log.warning("etcd watch on %s fell behind: restarting it", self.location)
            self._switch(None)

    def _switch(self, problem: str | None) -> None:
        """Drop the current watch; with a `problem`, stale, and the next on another member."""
        follow = self._follow
        with self._lock:
            follow.lag = 0
            follow.switching = True
        if problem is not None:
            self._set_watching(False, problem)
        self._watch_gw.stop_watch(elsewhere=problem is not None)

    def _set_watching(self, watching: bool, problem: str | None) -> None:
        self._update(lambda f: setattr(f, "watching", watching), problem)

    def _set_reachable(self, reachable: bool, problem: str | None) -> None:
        self._update(lambda f: setattr(f, "reachable", reachable), problem)

    def _update(self, change: Callable[[_Follow], None], problem: str | None) -> None:
        follow = self._follow
        with self._lock:
            was = follow.watching and follow.reachable
            change(follow)
            now = follow.watching and follow.reachable
            if problem is not None:
                follow.problem = problem
            if now:
                follow.problem = None
            if was and not now:
                follow.stale_since = self._clock.time_ns()
            elif now:
                follow.stale_since = None
            revision = follow.revision
        if was and not now:
            log.warning(
                "etcd cluster of %s unreachable: serving the last state seen (revision %d): %s",
                self.location,
                revision,
                problem,
            )
        elif now and not was:
            log.info(
                "etcd cluster of %s answers: following from revision %d", self.location, revision
            )

    def status(self) -> dict[str, Any]:
        follow = self._follow
        with self._lock:
            stale = follow.stale_since
            return {
                "backend": "etcd",
                "store": str(self.location),
                "connected": follow.watching and follow.reachable,
                "last_revision": follow.revision,
                "stale_since": None if stale is None else iso_time(stale),
                "problem": follow.problem,
                "member": follow.member,
            }
