"""The unlocked store: secrets in and out, sealed with the data key under the KEK.

This is what the CLI and the daemon use; backends only ever see ciphertext. `Vault` is
composed of its parts, one concern each: `secrets.py` (secrets and versions, and the one
write path), `access.py` (owners, grants, client keys), `admin.py` (bounds, data keys,
integrity), over `core.py` (the open store and the audit trail every write records in).
"""

from __future__ import annotations

import contextlib
import os
import time

from secretfs import crypto, keys, nodes
from secretfs.authmeta import Authenticator
from secretfs.errors import KeySourceError, SecretfsError, StoreError, StoreExistsError
from secretfs.keyring import Keyring, SealedValue, unfinished
from secretfs.store.base import Backend
from secretfs.store.location import StoreLocation, location_of
from secretfs.vault.access import Access
from secretfs.vault.admin import Admin
from secretfs.vault.core import (
    DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_MAX_VERSIONS,
    MAX_VERSIONS_LIMIT,
    AuditTrail,
    Target,
    log,
)
from secretfs.vault.secrets import (
    OWNER_KEYS,
    BulkOutcome,
    ExistingPolicy,
    Secrets,
    Writable,
    WriteMode,
    WriteResult,
    value_kind,
)


class Vault(Secrets, Access, Admin):
    """A store opened with its KEK: the data keys are unwrapped and held in memory."""

    @classmethod
    def init(
        cls,
        path: StoreLocation | os.PathLike[str],
        *,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        max_versions: int = DEFAULT_MAX_VERSIONS,
    ) -> keys.KekSource:
        """Create a store; its KEK from the environment, else a new key file beside it."""
        path = location_of(path)
        if path.exists():
            raise StoreExistsError(f"a store already exists at {path}")
        source = keys.env_source()
        new_key_file: bytes | None = None
        salt = params = None
        if source is None:
            key_path = path.key_file()
            if key_path.exists():
                raise KeySourceError(
                    f"key file {key_path} exists but there is no store at {path}:"
                    " refusing to reuse or replace it (move it away, or set $SECRETFS_STORE)"
                )
            new_key_file = crypto.random_key()
            kek = new_key_file
            source = keys.KekSource(keys.KIND_KEY_FILE, str(key_path))
        elif source.kind == keys.KIND_KEY:
            kek = keys.kek_from_env_key()
        else:
            salt, params = crypto.new_salt(), crypto.KdfParams()
            kek = keys.kek_from_password(salt, params)

        store_id = os.urandom(16)
        keyring = Keyring.create(store_id, kek, source)
        now = time.time_ns()

        def setup(backend: Backend) -> None:
            backend.meta_set("store_id", store_id)
            backend.meta_set("kek_kind", source.kind.encode())
            backend.meta_set("max_value_bytes", str(max_value_bytes).encode())
            backend.meta_set("max_versions", str(max_versions).encode())
            backend.meta_set("created_ns", str(now).encode())
            if salt is not None and params is not None:
                backend.meta_set("kdf_salt", salt)
                backend.meta_set("kdf_params", params.to_json().encode())
                backend.meta_set(
                    "kdf_check", crypto.kdf_record_digest(salt, params.to_json().encode())
                )
            keyring.write_new_store(backend, now)

        if new_key_file is not None:
            keys.write_key_file(path.key_file(), new_key_file)
        try:
            path.create(setup)
        except StoreError:
            # Raised only before the store was linked into place: drop our new key file.
            if new_key_file is not None:
                path.key_file().unlink(missing_ok=True)
            raise
        return source

    @classmethod
    def open(cls, path: StoreLocation | os.PathLike[str], *, readonly: bool = False) -> Vault:
        backend = location_of(path).open(readonly=readonly)
        try:
            vault = cls._unlock(backend)
            if not readonly:
                vault._authenticate_old_store()
                nodes.migrate(vault)  # nodes enrolled before their keys were authenticated
            return vault
        except BaseException:
            backend.close()
            raise

    @classmethod
    def _unlock(cls, backend: Backend) -> Vault:
        keyring = Keyring.unlock(backend)
        for problem in keyring.damaged.values():
            log.warning("%s", problem)
        for note in unfinished(backend):
            log.warning("%s", note)
        return cls(backend, keyring)

    def close(self) -> None:
        with contextlib.suppress(SecretfsError):
            self.remember_state()
        self.backend.close()

    def replace_backend(self, backend: Backend) -> None:
        """Serve from another handle on the same store (a mount whose store file was
        replaced by a restore): every part that reads the store follows it."""
        self.backend = backend
        self.auth = Authenticator(backend, self.keyring)


__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "DEFAULT_MAX_VERSIONS",
    "MAX_VERSIONS_LIMIT",
    "OWNER_KEYS",
    "AuditTrail",
    "BulkOutcome",
    "ExistingPolicy",
    "SealedValue",
    "Target",
    "Vault",
    "Writable",
    "WriteMode",
    "WriteResult",
    "value_kind",
]
