"""The plaintext a mount holds for its open files: one copy per (secret, version, field),
shared by every handle open on it and wiped when the last of them closes.

The total held is capped (`-o max_plain=`): a handle whose content would pass the cap
holds nothing and decrypts on each read instead, so many handles on a large secret
cost one copy, and many large secrets cost at most the cap. Pure bookkeeping: the FUSE
adapter (fs.py) says what to decrypt and when handles open and close.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from secretfs import crypto

DEFAULT_CAP = 64 * 1024 * 1024  # bytes of plaintext held at most for open files


class _Entry:
    __slots__ = ("data", "refs")

    def __init__(self, data: bytearray) -> None:
        self.data = data
        self.refs = 1


class PlainPool:
    """Reference-counted shared plaintext with a cap on the bytes held."""

    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        if cap < 0:
            raise ValueError("the plaintext cap cannot be negative")
        self.cap = cap
        self.held = 0  # bytes held, never above `cap`
        self._entries: dict[Hashable, _Entry] = {}

    def acquire(self, key: Hashable, make: Callable[[], bytes]) -> tuple[bytearray, bool]:
        """The plaintext of `key` and whether it is shared (one more reference taken).

        Made with `make()` if nobody holds it. Unshared (False) when holding it would
        pass the cap: then it is the caller's alone, to use once and `crypto.wipe`.
        """
        entry = self._entries.get(key)
        if entry is not None:
            entry.refs += 1
            return entry.data, True
        data = bytearray(make())
        if self.held + len(data) > self.cap:
            return data, False
        self._entries[key] = _Entry(data)
        self.held += len(data)
        return data, True

    def release(self, key: Hashable) -> None:
        """Drop one reference; the last one wipes the plaintext."""
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.refs -= 1
        if entry.refs <= 0:
            del self._entries[key]
            self.held -= len(entry.data)
            crypto.wipe(entry.data)

    def refs(self, key: Hashable) -> int:
        entry = self._entries.get(key)
        return 0 if entry is None else entry.refs

    def __len__(self) -> int:
        return len(self._entries)
