"""Where an etcd store lives: endpoints and a key prefix (a `StoreLocation`)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from secretfs import keys
from secretfs.checks import Check
from secretfs.errors import (
    SecretfsError,
    UsageError,
)
from secretfs.store.etcd.records import EtcdBackend

log = logging.getLogger(__name__)
DEFAULT_ETCD_PREFIX = "secretfs"
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")
_PREFIX = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


@dataclass(frozen=True, slots=True)
class EtcdLocation:
    """An etcd cluster (its client endpoints) and the key prefix of one store on it (a
    `StoreLocation`)."""

    endpoints: tuple[str, ...]  # host:port
    prefix: str  # without slashes at either end, e.g. "secretfs/prod"
    tls: bool = False

    @classmethod
    def parse(cls, text: str) -> EtcdLocation:
        """`etcd://host:port,host:port/prefix` or `etcd+https://...`; UsageError if malformed."""
        tls = text.startswith("etcd+https://")
        rest = text.partition("://")[2]
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
        return cls(tuple(endpoints), prefix, tls)

    @property
    def key_prefix(self) -> bytes:
        return f"/{self.prefix}/".encode()

    def urls(self) -> list[str]:
        scheme = "https" if self.tls else "http"
        return [f"{scheme}://{e}" for e in self.endpoints]

    def __str__(self) -> str:
        scheme = "etcd+https" if self.tls else "etcd"
        return f"{scheme}://{','.join(self.endpoints)}/{self.prefix}"

    def open(self, *, readonly: bool = False) -> EtcdBackend:
        return EtcdBackend.open(self)

    def exists(self) -> bool:
        return EtcdBackend.exists(self)

    def create(self, init: Callable[[EtcdBackend], None]) -> None:
        EtcdBackend.create(self, init)

    def key_file(self) -> Path:
        """`$SECRETFS_KEY_FILE`, else `/etc/secretfs/etcd/<prefix>.key` (root) or
        `~/.config/secretfs/etcd/<prefix>.key`, `/` in the prefix written as `_`."""
        return keys.remote_key_file_path("etcd", self.prefix)

    def local_file(self) -> Path | None:
        return None

    def doctor_checks(self) -> tuple[list[Check], bool]:
        """Does the cluster answer, and is there a store at the prefix."""
        try:
            found = self.exists()
        except SecretfsError as exc:
            return [
                Check(
                    "store",
                    "fail",
                    str(exc),
                    "start the etcd members, or check the endpoints in --store / $SECRETFS_STORE",
                )
            ], False
        if not found:
            return [
                Check(
                    "store",
                    "fail",
                    f"the etcd cluster answers but holds no store at {self}",
                    f"create one with `secretfs init --store {self}`, or check the prefix",
                )
            ], False
        return [Check("store", "ok", f"etcd cluster answers; store at {self}")], True
