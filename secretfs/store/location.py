"""Store URLs: which backend holds a store, and where.

`--store` (and `$SECRETFS_STORE`, and `-o store=`) takes:

- a plain path, or `sqlite:///abs/path` (`sqlite://rel/path` is relative): SQLite;
- `etcd://host:2379,host:2379/prefix`: an etcd v3 cluster, every key under `/prefix/`
  (default prefix `secretfs`; `+` may separate endpoints instead of `,`, as in an
  fstab line). `etcd+https://` talks TLS (see docs/cluster.md);
- `memory://name`: a store in this process's memory (tests; store/memory.py).

A location is an object with the operations on a store that is not open yet; each backend
module defines its own (`SqliteLocation`, `EtcdLocation`) and imports nothing from here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from secretfs.errors import UsageError
from secretfs.store.sqlite import SqliteLocation

if TYPE_CHECKING:
    from secretfs.checks import Check
    from secretfs.store.base import Backend
    from secretfs.store.etcd import EtcdLocation

__all__ = [
    "EtcdLocation",
    "SqliteLocation",
    "StoreLocation",
    "default_location",
    "location_of",
    "parse",
]


def __getattr__(name: str) -> object:
    if name == "EtcdLocation":  # imported on first use: the etcd backend brings httpx
        from secretfs.store.etcd import EtcdLocation

        return EtcdLocation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class StoreLocation(Protocol):
    """Where a store lives, and what can be done to it before it is opened."""

    def __str__(self) -> str:
        """The store's path or URL, for messages and `--store`."""
        ...

    def open(self, *, readonly: bool = False) -> Backend: ...

    def exists(self) -> bool: ...

    def create(self, init: Callable[[Backend], None]) -> None:
        """Create the store, `init` filling it in one transaction; StoreError if one exists."""
        ...

    def key_file(self) -> Path:
        """Where the store's key file is (`$SECRETFS_KEY_FILE` wins)."""
        ...

    def local_file(self) -> Path | None:
        """The store file on this machine, or None for a store reached over the network."""
        ...

    def doctor_checks(self) -> tuple[list[Check], bool]:
        """`doctor`'s checks of the store itself, and whether there is a store to check on."""
        ...


# memory:// is for code running in one process (tests, the Python API); the `secretfs`
# command turns it off: `init` would make a store, and a key file, gone at exit.
MEMORY_STORES = True


def parse(text: str) -> StoreLocation:
    """A `--store` value: a path or a store URL. UsageError for a malformed URL."""
    if text.startswith("sqlite://"):
        rest = text[len("sqlite://") :]
        if not rest:
            raise UsageError("sqlite:// needs a path: sqlite:///var/lib/secretfs/store.db")
        return SqliteLocation(Path(rest))
    for scheme in ("etcd://", "etcd+https://"):
        if text.startswith(scheme):
            from secretfs.store.etcd import EtcdLocation  # httpx: only for etcd stores

            return EtcdLocation.parse(text)
    if text.startswith("memory://"):
        if not MEMORY_STORES:
            raise UsageError(
                f"store URL {text!r}: a memory:// store lives in one process and is gone when"
                " it exits; the secretfs command cannot use one (a path or etcd:// can)"
            )
        from secretfs.store.memory import MemoryLocation

        return MemoryLocation.parse(text)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        raise UsageError(
            f"unknown store URL {text!r}: use a path, sqlite:///path or etcd://host:port/prefix"
        )
    return SqliteLocation(Path(text))


def location_of(store: StoreLocation | os.PathLike[str]) -> StoreLocation:
    """A location; a plain path (what the Python API has always taken) is a SQLite file."""
    if isinstance(store, os.PathLike):
        return SqliteLocation(Path(store))
    return store


def default_location() -> StoreLocation:
    from secretfs.store import default_store_path

    env = os.environ.get("SECRETFS_STORE")
    return parse(env) if env else SqliteLocation(default_store_path())
