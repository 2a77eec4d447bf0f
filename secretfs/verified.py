"""The versions a mount serves, kept sealed in memory so that an open needs no SQL.

A version's ciphertext never changes once written (a re-encryption seals the same
plaintext again), and a version number is never reused for a secret. So once a version
has been read from the store and verified (decrypted once), its ciphertext is kept, and
each later open of it takes that: no query, no decryption. Plaintext is never kept here;
the handle that reads decrypts it then.

What could make a kept version wrong is dropped: the daemon forgets the versions of
each secret the store reports changed (`forget`), and everything when another process
wrote to the store at all (`clear`), so a record damaged on disk after it was verified
gives EIO again within a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from secretfs.keyring import SealedValue

# Bytes of memory kept at most (ciphertext and bookkeeping): ~14,000 small secrets, or
# ~1,800 of 4 KiB. Only what is opened again and again needs to stay.
DEFAULT_BUDGET = 8 * 1024 * 1024

SealedLoader = Callable[[int, int], SealedValue]  # (secret_id, version) -> not yet opened


class VerifiedVersions:
    """(secret_id, version) -> its verified SealedValue, least recently used dropped first."""

    def __init__(self, load: SealedLoader, budget: int = DEFAULT_BUDGET) -> None:
        self._load = load
        self.budget = budget
        # Oldest use first: a hit moves its entry to the end (a plain dict is leaner
        # than an OrderedDict, and there may be tens of thousands of entries).
        self._kept: dict[tuple[int, int], SealedValue] = {}
        self._versions: dict[int, list[int]] = {}  # secret_id -> versions kept
        self._bytes = 0

    def get(self, secret_id: int, version: int) -> tuple[SealedValue, bytes | None]:
        """The version, and its plaintext if it had to be verified now (else None).

        Raises what loading and opening raise (NotFoundError, IntegrityError, ...); a
        version that does not verify is not kept, so each open tries again.
        """
        key = (secret_id, version)
        kept = self._kept.pop(key, None)
        if kept is not None:
            self._kept[key] = kept
            return kept, None
        sealed = self._load(secret_id, version)
        value = sealed.open()
        self._kept[key] = sealed
        self._versions.setdefault(secret_id, []).append(version)
        self._bytes += sealed.cost
        while self._bytes > self.budget and self._kept:
            self._drop(next(iter(self._kept)))
        return sealed, value

    def peek(self, secret_id: int, version: int) -> SealedValue | None:
        """The version if it is kept, else None; loads nothing and keeps nothing."""
        return self._kept.get((secret_id, version))

    def load(self, secret_id: int, version: int) -> SealedValue:
        """The version from the store, not verified and not kept: for one-off bulk reads
        (a resolver `**`) that must not push out what the mount's opens keep."""
        return self._load(secret_id, version)

    def forget(self, secret_ids: Iterable[int]) -> None:
        """Drop every kept version of these secrets."""
        for secret_id in secret_ids:
            for version in list(self._versions.get(secret_id, ())):
                self._drop((secret_id, version))

    def clear(self) -> None:
        self._kept.clear()
        self._versions.clear()
        self._bytes = 0

    def _drop(self, key: tuple[int, int]) -> None:
        self._bytes -= self._kept.pop(key).cost
        versions = self._versions[key[0]]
        versions.remove(key[1])
        if not versions:
            del self._versions[key[0]]

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def bytes(self) -> int:
        return self._bytes
