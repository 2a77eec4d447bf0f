"""Store URLs: which backend holds a store, and where.

`--store` (and `$SECRETFS_STORE`, and `-o store=`) takes:

- a plain path, or `sqlite:///abs/path` (`sqlite://rel/path` is relative): SQLite;
- `etcd://host:2379,host:2379/prefix`: an etcd v3 cluster, every key under `/prefix/`
  (default prefix `secretfs`; `+` may separate endpoints instead of `,`, as in an
  fstab line). `etcd+https://` talks TLS (see docs/cluster.md).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from secretfs.errors import UsageError

if TYPE_CHECKING:
    from secretfs.store.base import Backend

DEFAULT_ETCD_PREFIX = "secretfs"
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")
_PREFIX = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


@dataclass(frozen=True, slots=True)
class EtcdLocation:
    """An etcd cluster (its client endpoints) and the key prefix of one store on it."""

    endpoints: tuple[str, ...]  # host:port
    prefix: str  # without slashes at either end, e.g. "secretfs/prod"
    tls: bool = False

    @property
    def key_prefix(self) -> bytes:
        return f"/{self.prefix}/".encode()

    def urls(self) -> list[str]:
        scheme = "https" if self.tls else "http"
        return [f"{scheme}://{e}" for e in self.endpoints]

    def __str__(self) -> str:
        scheme = "etcd+https" if self.tls else "etcd"
        return f"{scheme}://{','.join(self.endpoints)}/{self.prefix}"


StoreLocation = Path | EtcdLocation


def parse(text: str) -> StoreLocation:
    """A `--store` value: a path or a store URL. UsageError for a malformed URL."""
    if text.startswith("sqlite://"):
        rest = text[len("sqlite://") :]
        if not rest:
            raise UsageError("sqlite:// needs a path: sqlite:///var/lib/secretfs/store.db")
        return Path(rest)
    for scheme, tls in (("etcd://", False), ("etcd+https://", True)):
        if text.startswith(scheme):
            return _parse_etcd(text, text[len(scheme) :], tls)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        raise UsageError(
            f"unknown store URL {text!r}: use a path, sqlite:///path or etcd://host:port/prefix"
        )
    return Path(text)


def _parse_etcd(text: str, rest: str, tls: bool) -> EtcdLocation:
    hosts, _, prefix = rest.partition("/")
    prefix = prefix.strip("/") or DEFAULT_ETCD_PREFIX
    endpoints = []
    # "+" separates endpoints too: a comma would end a mount option (-o store=, fstab).
    for host in filter(None, re.split(r"[,+]", hosts)):
        m = _HOST.match(host)
        if m is None:
            raise UsageError(f"store URL {text!r}: {host!r} is not host or host:port")
        endpoints.append(host if m.group(2) else host + ":2379")
    if not endpoints:
        raise UsageError(f"store URL {text!r} names no etcd endpoint: etcd://host:2379/prefix")
    if not _PREFIX.match(prefix):
        raise UsageError(
            f"store URL {text!r}: the prefix {prefix!r} may hold letters, digits, '.', '_',"
            " '-' and '/' between names"
        )
    return EtcdLocation(tuple(endpoints), prefix, tls)


def default_location() -> StoreLocation:
    from secretfs.store import default_store_path

    env = os.environ.get("SECRETFS_STORE")
    return parse(env) if env else default_store_path()


def key_file_path(location: StoreLocation) -> Path:
    """The key file of a store: `$SECRETFS_KEY_FILE`, else beside a SQLite file, else for
    an etcd store `/etc/secretfs/etcd/<prefix>.key` (root) or
    `~/.config/secretfs/etcd/<prefix>.key`, `/` in the prefix written as `_`."""
    from secretfs import keys

    if isinstance(location, Path):
        return keys.key_file_path(location)
    env = os.environ.get(keys.ENV_KEY_FILE)
    if env:
        return Path(env)
    if os.geteuid() == 0:
        base = Path("/etc/secretfs")
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "secretfs"
    return base / "etcd" / (location.prefix.replace("/", "_") + ".key")


def open_backend(location: StoreLocation, *, readonly: bool = False) -> Backend:
    if isinstance(location, Path):
        from secretfs.store.sqlite import SqliteBackend

        return SqliteBackend.open(location, readonly=readonly)
    from secretfs.store.etcd import EtcdBackend

    return EtcdBackend.open(location)


def store_exists(location: StoreLocation) -> bool:
    if isinstance(location, Path):
        return location.exists()
    from secretfs.store.etcd import EtcdBackend

    return EtcdBackend.exists(location)


def create_backend(location: StoreLocation, init: Callable[[Backend], None]) -> None:
    if isinstance(location, Path):
        from secretfs.store.sqlite import SqliteBackend

        SqliteBackend.create(location, init)
        return
    from secretfs.store.etcd import EtcdBackend

    EtcdBackend.create(location, init)
