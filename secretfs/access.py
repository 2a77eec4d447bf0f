"""Who may read what: POSIX mode bits on the caller's uid, gid and groups.

The daemon decides (the mount does not use the kernel's `default_permissions`), so the
same rule holds for every caller that reaches the mount. uid 0 gets no bypass: root on
the host reads a secret through the mount only where the bits allow it, and uses the
CLI (which needs the key) for anything else.
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


def allowed(mode: int, uid: int, gid: int, caller: Caller, want: int) -> bool:
    """POSIX permission check of `want` (READ/WRITE/EXEC bits) against a file's mode."""
    if caller.uid == uid:
        return (mode >> 6) & want == want
    if (mode >> 3) & want == want and (caller.gid == gid or gid in caller.groups()):
        return True
    return mode & want == want
