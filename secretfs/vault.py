"""The unlocked store: secrets in and out, sealed with the data key under the KEK.

This is what the CLI and the daemon use; backends only ever see ciphertext.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from secretfs import crypto, keys
from secretfs.errors import (
    ConflictError,
    IntegrityError,
    KeySourceError,
    NotFoundError,
    StoreError,
    TooLargeError,
)
from secretfs.refs import Ref
from secretfs.store import SecretMeta, VersionMeta
from secretfs.store.sqlite import SqliteBackend

DEFAULT_MAX_VALUE_BYTES = 1024 * 1024


def value_kind(value: bytes) -> str:
    """ "json" when the value is a JSON object or array (it gets a `.d/` directory)."""
    if not value or value.lstrip()[:1] not in (b"{", b"["):
        return "raw"
    try:
        parsed = json.loads(value)
    except ValueError:
        return "raw"
    return "json" if isinstance(parsed, dict | list) else "raw"


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a write did: the version before (0 for none) and the secret after."""

    previous_version: int
    meta: SecretMeta


class Vault:
    """A store opened with its KEK: the data keys are unwrapped and held in memory."""

    def __init__(
        self,
        backend: SqliteBackend,
        store_id: bytes,
        data_keys: dict[int, bytes],
        active_gen: int,
        source: keys.KekSource,
    ) -> None:
        self.backend = backend
        self.store_id = store_id
        self._data_keys = data_keys
        self.active_gen = active_gen
        self.kek_source = source
        self._fp_key = crypto.fingerprint_key(data_keys[active_gen])
        raw_limit = backend.meta_get("max_value_bytes")
        self.max_value_bytes = int(raw_limit) if raw_limit else DEFAULT_MAX_VALUE_BYTES

    @property
    def path(self) -> Path:
        return self.backend.path

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def init(cls, path: Path, *, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> keys.KekSource:
        """Create a store; its KEK from the environment, else a new key file beside it."""
        source = keys.env_source()
        new_key_file: bytes | None = None
        salt = params = None
        if source is None:
            key_path = keys.key_file_path(path)
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
        data_key = crypto.random_key()
        now = time.time_ns()

        def setup(backend: SqliteBackend) -> None:
            backend.meta_set("store_id", store_id)
            backend.meta_set("kek_kind", source.kind.encode())
            backend.meta_set("active_gen", b"1")
            backend.meta_set("max_value_bytes", str(max_value_bytes).encode())
            backend.meta_set("created_ns", str(now).encode())
            if salt is not None and params is not None:
                backend.meta_set("kdf_salt", salt)
                backend.meta_set("kdf_params", params.to_json().encode())
            wrapped = crypto.wrap_key(kek, data_key, crypto.data_key_aad(store_id, 1))
            backend.put_data_key(1, wrapped, now)

        if new_key_file is not None:
            keys.write_key_file(keys.key_file_path(path), new_key_file)
        SqliteBackend.create(path, setup)
        return source

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> Vault:
        backend = SqliteBackend.open(path, readonly=readonly)
        try:
            return cls._unlock(backend)
        except BaseException:
            backend.close()
            raise

    @classmethod
    def _unlock(cls, backend: SqliteBackend) -> Vault:
        store_id = backend.meta_get("store_id")
        active = backend.meta_get("active_gen")
        if store_id is None or active is None:
            raise StoreError(f"{backend.path} is not an initialized secretfs store")
        kek, source = _resolve_kek(backend)
        wrapped = backend.data_keys()
        data_keys: dict[int, bytes] = {}
        for gen, blob in wrapped.items():
            try:
                data_keys[gen] = crypto.unwrap_key(kek, blob, crypto.data_key_aad(store_id, gen))
            except IntegrityError:
                raise KeySourceError(
                    f"the key from {source.description} does not unlock {backend.path}"
                    " (wrong key or password, or a damaged key record)"
                ) from None
        active_gen = int(active)
        if active_gen not in data_keys:
            raise StoreError(f"{backend.path}: the active data key is missing")
        return cls(backend, store_id, data_keys, active_gen, source)

    def close(self) -> None:
        self.backend.close()

    # -- reading -------------------------------------------------------------------------

    def meta(self, ref: Ref) -> SecretMeta:
        found = self.backend.get_meta(ref.scope.key, ref.name)
        if found is None or found.deleted:
            raise NotFoundError(f"secret {ref.without_field()} not found")
        return found

    def list_secrets(self, scope: str | None = None) -> list[SecretMeta]:
        return self.backend.list_meta(scope)

    def history(self, ref: Ref) -> list[VersionMeta]:
        return self.backend.history(self.meta(ref).secret_id)

    def get_value(self, ref: Ref, version: int | None = None) -> bytes:
        meta = self.meta(ref)
        want = meta.version if version is None else version
        try:
            return self.read_version(meta.secret_id, want)
        except NotFoundError:
            raise NotFoundError(f"secret {ref.without_field()} has no version {want}") from None

    def read_version(self, secret_id: int, version: int) -> bytes:
        """Decrypt one version; IntegrityError if its record was tampered with or moved."""
        sealed = self.backend.sealed(secret_id, version)
        if sealed is None:
            raise NotFoundError(f"no version {version} of secret #{secret_id}")
        key = self._data_keys.get(sealed.key_gen)
        if key is None:
            raise IntegrityError(f"secret #{secret_id} v{version}: its data key is missing")
        aad = crypto.value_aad(self.store_id, sealed.scope, sealed.name, version, sealed.key_gen)
        return crypto.open_sealed(key, sealed.ciphertext, aad)

    # -- writing -------------------------------------------------------------------------

    def create(self, ref: Ref, value: bytes, **owner: int | None) -> WriteResult:
        """Add a new secret; ConflictError if the name exists (HTTP 409)."""
        return self._write(ref, value, must_exist=False, must_not_exist=True, owner=owner)

    def set(self, ref: Ref, value: bytes, **owner: int | None) -> WriteResult:
        """Create the secret or add a version to it."""
        return self._write(ref, value, must_exist=False, must_not_exist=False, owner=owner)

    def rotate(self, ref: Ref, value: bytes) -> WriteResult:
        """Add a version to an existing secret; NotFoundError if there is none."""
        return self._write(ref, value, must_exist=True, must_not_exist=False, owner={})

    def _write(
        self,
        ref: Ref,
        value: bytes,
        *,
        must_exist: bool,
        must_not_exist: bool,
        owner: dict[str, int | None],
    ) -> WriteResult:
        if ref.field:
            raise StoreError(f"write the whole secret, not a field: {ref.without_field()}")
        if len(value) > self.max_value_bytes:
            raise TooLargeError(
                f"value is {len(value)} bytes; the limit is {self.max_value_bytes} bytes"
            )
        scope, name = ref.scope.key, ref.name
        now = time.time_ns()
        with self.backend.transaction():
            current = self.backend.get_meta(scope, name)
            exists = current is not None and not current.deleted
            if exists and must_not_exist:
                raise ConflictError(f"secret {ref} already exists (409): use `set` or `rotate`")
            if not exists and must_exist:
                raise NotFoundError(f"secret {ref} not found")
            seq = self.backend.next_seq()
            if current is None:
                secret_id = self.backend.add_secret(scope, name, now, seq)
                previous = last = 0
            else:
                secret_id, last = current.secret_id, current.version
                previous = last if exists else 0
                if not exists:
                    self.backend.revive_secret(secret_id, now, seq)
            version = last + 1
            gen = self.active_gen
            aad = crypto.value_aad(self.store_id, scope, name, version, gen)
            self.backend.put_version(
                secret_id,
                version,
                created_ns=now,
                size=len(value),
                kind=value_kind(value),
                key_gen=gen,
                fingerprint=crypto.fingerprint(self._fp_key, value),
                ciphertext=crypto.seal(self._data_keys[gen], value, aad),
                seq=seq,
            )
            if owner and any(v is not None for v in owner.values()):
                base = current if exists and current is not None else None
                self.backend.set_owner(
                    secret_id,
                    _pick(owner.get("uid"), base.uid if base else None),
                    _pick(owner.get("gid"), base.gid if base else None),
                    _pick(owner.get("mode"), base.mode if base else None),
                    seq,
                )
            after = self.backend.get_meta(scope, name)
        assert after is not None
        return WriteResult(previous, after)

    def remove(self, ref: Ref) -> SecretMeta:
        with self.backend.transaction():
            meta = self.meta(ref)
            self.backend.remove_secret(meta.secret_id, self.backend.next_seq())
        return meta


def _pick(new: int | None, old: int | None) -> int | None:
    return old if new is None else new


def _resolve_kek(backend: SqliteBackend) -> tuple[bytes, keys.KekSource]:
    source = keys.env_source()
    if source is not None and source.kind == keys.KIND_KEY:
        return keys.kek_from_env_key(), source
    if source is not None:
        salt, params = backend.meta_get("kdf_salt"), backend.meta_get("kdf_params")
        if salt is None or params is None:
            raise KeySourceError(
                f"${keys.ENV_PASSWORD} is set but {backend.path} was not initialized with a"
                " password (unset it to use the store's key file or $SECRETFS_KEY)"
            )
        return keys.kek_from_password(salt, crypto.KdfParams.from_json(params.decode())), source
    path = keys.key_file_path(backend.path)
    return keys.read_key_file(path), keys.KekSource(keys.KIND_KEY_FILE, str(path))
