"""Helpers shared by the rotation, crash and doctor tests (issue 4)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from secretfs import crypto
from secretfs.refs import parse_ref
from secretfs.vault import Vault


@dataclass(frozen=True)
class CheapKdf(crypto.KdfParams):
    """Real Argon2id at a small cost, stored in the store like any parameters: every CLI
    run that derives the key from the password stays fast."""

    time_cost: int = 1
    memory_kib: int = 64
    parallelism: int = 1


@contextlib.contextmanager
def clean_env(**extra: str) -> Iterator[pytest.MonkeyPatch]:
    """No SECRETFS_* in this process but `extra`."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("SECRETFS_"):
                mp.delenv(name)
        for name, value in extra.items():
            mp.setenv(name, value)
        yield mp


def password_store(store: Path, password: str, values: dict[str, bytes] | None = None) -> None:
    """A store whose KEK comes from `password` (cheap Argon2id costs), with `values`."""
    with clean_env(SECRETFS_PASSWORD=password) as mp:
        mp.setattr(crypto, "KdfParams", CheapKdf)
        Vault.init(store)
        write(store, values or {})


def key_file_store(store: Path, values: dict[str, bytes]) -> None:
    """A store with a new key file beside it, holding `values`."""
    with clean_env():
        Vault.init(store)
        write(store, values)


def write(store: Path, values: dict[str, bytes]) -> None:
    """Set each value in-process (the environment must give the store's key)."""
    vault = Vault.open(store)
    try:
        if values:
            vault.write_many([(parse_ref(n), v) for n, v in values.items()], existing="overwrite")
    finally:
        vault.close()


@contextlib.contextmanager
def raw_db(store: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, as anyone with write access to the file has."""
    conn = sqlite3.connect(store, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def flip(blob: bytes, index: int = -3) -> bytes:
    data = bytearray(blob)
    data[index] ^= 0x40
    return bytes(data)
