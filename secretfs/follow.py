"""Following the store's changes: what `secretfs watch` prints and `run --on-change` acts on.

Pure logic over the backend's metadata (no key, no value): the store's change counter
says what changed since the last poll (`changes_since`), its data version says cheaply
whether to ask at all, as the mount's daemon does. A change is a new version, a new
secret or a removed one; a new owner or mode is not (the value did not change).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from secretfs.audit import iso_time_ns
from secretfs.errors import RefError
from secretfs.refs import Ref, Scope, parse_ref, parse_scope
from secretfs.store import SecretMeta
from secretfs.store.base import ChangeFeed

POLL_SECONDS = 0.2  # as the mount: a change is reported within well under a second

Event = Literal["created", "updated", "removed"]


@dataclass(frozen=True, slots=True)
class Change:
    """One secret's change. `same_value`: a new version whose value equals the old one's
    (same fingerprint under the same data key)."""

    ref: Ref
    event: Event
    old_version: int | None  # None: it did not exist
    new_version: int | None  # None: it was removed
    time_ns: int  # when the new version was written (or the secret removed, as polled)
    same_value: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": str(self.ref),
            "event": self.event,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "same_value": self.same_value,
            "time": iso_time_ns(self.time_ns),
        }

    def to_text(self) -> str:
        old = "-" if self.old_version is None else f"v{self.old_version}"
        new = "-" if self.new_version is None else f"v{self.new_version}"
        note = "  (same value)" if self.same_value else ""
        return f"{iso_time_ns(self.time_ns)}  {self.event:<7}  {self.ref}  {old} -> {new}{note}"


@dataclass(frozen=True, slots=True)
class Selection:
    """Which secrets to follow: these (scope key, name) pairs and every secret of these
    scopes; nothing given means every secret."""

    secrets: frozenset[tuple[str, str]] = frozenset()
    scopes: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, texts: Iterable[str]) -> Selection:
        """Each text is a scope (`@api`, `:staging`, `env/staging`) or else a reference
        (`db`, `$S:@api/token`; a field follows its whole secret)."""
        secrets: set[tuple[str, str]] = set()
        scopes: set[str] = set()
        for text in texts:
            try:
                scopes.add(parse_scope(text).key)
                continue
            except RefError:
                pass
            try:
                ref = parse_ref(text)
            except RefError as exc:
                raise RefError(f"{text!r} is neither a scope nor a reference: {exc}") from None
            secrets.add((ref.scope.key, ref.name))
        return cls(frozenset(secrets), frozenset(scopes))

    @classmethod
    def of_refs(cls, refs: Iterable[Ref]) -> Selection:
        return cls(frozenset((r.scope.key, r.name) for r in refs))

    def __or__(self, other: Selection) -> Selection:
        return Selection(self.secrets | other.secrets, self.scopes | other.scopes)

    @property
    def everything(self) -> bool:
        return not self.secrets and not self.scopes

    def matches(self, meta: SecretMeta) -> bool:
        return (
            self.everything or meta.scope in self.scopes or (meta.scope, meta.name) in self.secrets
        )


@dataclass(frozen=True, slots=True)
class _Seen:
    version: int
    deleted: bool
    fingerprint: str


class Follower:
    """Remembers each followed secret's version; `poll` says what changed since."""

    def __init__(self, backend: ChangeFeed, selection: Selection) -> None:
        self.backend = backend
        self.selection = selection
        self._data_version = backend.data_version()
        self._seq = 0
        self._seen: dict[int, _Seen] = {}
        self._take(backend.changes_since(0))  # where things stand now: not reported

    def poll(self, now_ns: int) -> list[Change]:
        """What changed since the last poll, oldest first (`now_ns` dates removals)."""
        data_version = self.backend.data_version()
        if data_version == self._data_version:
            return []
        self._data_version = data_version
        return self._take(self.backend.changes_since(self._seq), now_ns)

    def _take(self, metas: Iterable[SecretMeta], now_ns: int | None = None) -> list[Change]:
        out: list[Change] = []
        for meta in metas:
            self._seq = max(self._seq, meta.seq)
            if not self.selection.matches(meta):
                continue
            before = self._seen.get(meta.secret_id)
            self._seen[meta.secret_id] = _Seen(meta.version, meta.deleted, meta.fingerprint)
            if now_ns is None:
                continue
            change = _change(before, meta, now_ns)
            if change is not None:
                out.append(change)
        return out


def _change(before: _Seen | None, meta: SecretMeta, now_ns: int) -> Change | None:
    ref = Ref(Scope.from_key(meta.scope), meta.name)
    gone = before is None or before.deleted
    if meta.deleted:
        if gone:
            return None
        assert before is not None
        return Change(ref, "removed", before.version, None, now_ns)
    if gone:
        return Change(ref, "created", None, meta.version, meta.updated_ns)
    assert before is not None
    if before.version == meta.version:
        return None  # a new owner, mode or schedule: same value
    same = before.fingerprint == meta.fingerprint
    return Change(ref, "updated", before.version, meta.version, meta.updated_ns, same)
