"""Storage records shared by every backend.

A backend stores only ciphertext and metadata; it never sees a key or a plaintext.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class SecretMeta:
    """What `stat`/`ls` need to know of a secret's current version: never the value."""

    secret_id: int
    scope: str  # Scope.key, e.g. "deployment", "@api", "env/staging"
    name: str
    version: int  # current version; after removal, the last one it had
    deleted: bool
    size: int
    kind: str  # "raw", or "json" when the value is a JSON object or array
    created_ns: int  # when the secret was first created
    updated_ns: int  # when the current version was written (the file's mtime)
    uid: int | None  # None: inherit from the scope, then the mount
    gid: int | None
    mode: int | None
    fingerprint: str
    seq: int  # store-wide change counter at this row's last change
    expires_ns: int | None = None  # the current value expires then (None: never)
    rotate_every_s: int | None = None  # rotation is due this long after each version


@dataclass(frozen=True, slots=True)
class VersionMeta:
    """One kept version of a secret, as `history` shows it."""

    version: int
    created_ns: int
    size: int
    kind: str
    key_gen: int
    fingerprint: str


@dataclass(frozen=True, slots=True)
class ScopeMeta:
    """Owner and mode defaults of a whole scope; None inherits from the mount."""

    scope: str
    uid: int | None
    gid: int | None
    mode: int | None
    seq: int


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """Read access for one more uid or gid, to a secret (`name`) or a whole scope (`name == ""`)."""

    scope: str
    name: str
    kind: str  # "uid" or "gid"
    principal: int
    created_ns: int
    # "plain": may read the value; "sealed": may read only its sealed form (a relay).
    form: str = "plain"


GRANT_FORMS = ("plain", "sealed")


@dataclass(frozen=True, slots=True)
class ClientKeyRecord:
    """A client's registered X25519 public key: sealed reads are sealed to it."""

    key_id: str  # "ck_" + 32 hex
    public_key: bytes  # 32 bytes
    label: str
    owner_uid: int | None
    created_ns: int
    revoked_ns: int | None = None  # soft revocation: kept for the audit trail
    last_used_ns: int | None = None  # the last sealed read to it


@dataclass(frozen=True, slots=True)
class SealedVersion:
    """A version's ciphertext and what is needed to open it."""

    secret_id: int
    scope: str
    name: str
    version: int
    key_gen: int
    ciphertext: bytes


def default_store_path() -> Path:
    """`$SECRETFS_STORE`, else the system path for root, else the user's data dir."""
    env = os.environ.get("SECRETFS_STORE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/secretfs/store.db")
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "secretfs" / "store.db"
