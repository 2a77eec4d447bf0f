"""Who may read what: POSIX mode bits on the caller's uid, gid and groups, plus grants.

The daemon decides (the mount does not use the kernel's `default_permissions`), so the
same rule holds for every caller that reaches the mount. uid 0 gets no bypass: a
container process running as root on the host reads a secret through the mount only
where the bits or a grant allow it; root uses the CLI (which needs the key) for anything
else. A grant adds read (and, on a field directory, traverse) and never anything more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

READ = 4
WRITE = 2
EXEC = 1


@dataclass(frozen=True, slots=True)
class Caller:
    """The process behind a FUSE request; groups are read only when a rule needs them."""

    uid: int
    gid: int
    pid: int
    groups: Callable[[], frozenset[int]] = lambda: frozenset()


@dataclass(frozen=True, slots=True)
class Readers:
    """Who grants let read (and traverse) a secret, on top of its mode bits."""

    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.uids or self.gids)

    def __or__(self, other: Readers) -> Readers:
        if not other:
            return self
        if not self:
            return other
        return Readers(self.uids | other.uids, self.gids | other.gids)

    def admits(self, caller: Caller) -> bool:
        if caller.uid in self.uids or caller.gid in self.gids:
            return True
        return bool(self.gids) and not self.gids.isdisjoint(caller.groups())


NOBODY = Readers()


def mode_allows(mode: int, uid: int, gid: int, caller: Caller, want: int) -> bool:
    """POSIX permission check of `want` (READ/WRITE/EXEC bits) against a file's mode."""
    if caller.uid == uid:
        return (mode >> 6) & want == want
    if (mode >> 3) & want == want and (caller.gid == gid or gid in caller.groups()):
        return True
    return mode & want == want


def allowed(
    mode: int, uid: int, gid: int, caller: Caller, want: int, readers: Readers = NOBODY
) -> bool:
    """The mode bits, else a grant: grants add read and traverse, never write."""
    if mode_allows(mode, uid, gid, caller, want):
        return True
    return want & WRITE == 0 and readers.admits(caller)


@dataclass(frozen=True, slots=True)
class Layer:
    """One level of owner defaults; None inherits from the level below."""

    uid: int | None = None
    gid: int | None = None
    mode: int | None = None


@dataclass(frozen=True, slots=True)
class Ownership:
    """A secret's effective owner, group and mode, and where each came from."""

    uid: int | None  # None: the mount's (known only to the mount)
    gid: int | None
    mode: int | None
    uid_from: str  # "secret", "scope" or "mount"
    gid_from: str
    mode_from: str


def resolve(secret: Layer, scope: Layer, mount: Layer) -> Ownership:
    """Each of uid, gid and mode from the secret, else its scope, else the mount."""
    picked: list[tuple[int | None, str]] = []
    for attr in ("uid", "gid", "mode"):
        for name, layer in (("secret", secret), ("scope", scope), ("mount", mount)):
            value = getattr(layer, attr)
            if value is not None or name == "mount":
                picked.append((value, name))
                break
    (uid, uid_from), (gid, gid_from), (mode, mode_from) = picked
    return Ownership(uid, gid, mode, uid_from, gid_from, mode_from)


@dataclass(frozen=True, slots=True)
class ReaderEntry:
    """One way a secret can be read: `who` is "uid", "gid" or "everyone"."""

    who: str
    id: int | None  # None: the mount's user or group (known only to the mount)
    via: str  # "owner", "group", "other", "grant"
    on: str | None = None  # for a grant: the secret's ref or the scope key it is on


def readers_of(own: Ownership, grants: list[tuple[str, int, str]]) -> list[ReaderEntry]:
    """Everyone who may read a secret with ownership `own` and `grants` ((kind, id, on)
    triples): the mode's read bits first, then each grant."""
    assert own.mode is not None
    out: list[ReaderEntry] = []
    if own.mode & 0o400:
        out.append(ReaderEntry("uid", own.uid, "owner"))
    if own.mode & 0o040:
        out.append(ReaderEntry("gid", own.gid, "group"))
    if own.mode & 0o004:
        out.append(ReaderEntry("everyone", None, "other"))
    for kind, principal, on in grants:
        out.append(ReaderEntry(kind, principal, "grant", on))
    return out
