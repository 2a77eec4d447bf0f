"""The unlocked store: secrets in and out, sealed with the data key under the KEK.

This is what the CLI and the daemon use; backends only ever see ciphertext.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

from secretfs import audit as audit_log
from secretfs import crypto, fields, keys
from secretfs.authmeta import Authenticator, LastSeen, Problem
from secretfs.errors import (
    ConflictError,
    IntegrityError,
    KeySourceError,
    NotFoundError,
    SecretfsError,
    StoreError,
    StoreExistsError,
    TooLargeError,
    UsageError,
    WriteConflictError,
)
from secretfs.expiry import Schedule
from secretfs.keyring import Keyring, SealedValue, unfinished
from secretfs.refs import Ref, Scope
from secretfs.store import GRANT_FORMS, GrantRecord, ScopeMeta, SecretMeta, VersionMeta
from secretfs.store.base import Backend
from secretfs.store.location import StoreLocation, location_of

log = logging.getLogger(__name__)

DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
DEFAULT_MAX_VERSIONS = 10  # versions kept per secret; older ones are pruned on write
MAX_VERSIONS_LIMIT = 100_000
OWNER_KEYS = ("uid", "gid", "mode")

Target = Ref | Scope  # what ownership and grants apply to: one secret or a whole scope
WRITE_ATTEMPTS = 5  # a write that met another writer (etcd) is tried this often in all

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _retried(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run a whole write again when another writer committed first (WriteConflictError:
    nothing was written), a few times, with a short random pause between tries."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return fn(*args, **kwargs)
            except WriteConflictError:
                if attempt == WRITE_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0.01, 0.05) * attempt)  # noqa: S311 - jitter only
        raise AssertionError("unreachable")

    return wrapper


def _conflicts_message(conflicts: Sequence[Ref]) -> str:
    shown = ", ".join(str(r) for r in conflicts[:10])
    more = f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
    return (
        f"{len(conflicts)} secret(s) exist already (409): {shown}{more};"
        " nothing was written (choose --overwrite or --skip-existing)"
    )


def value_kind(value: bytes) -> str:
    """ "json" when the value is a JSON object or array (it gets a `.d/` directory)."""
    if not value or value.lstrip()[:1] not in (b"{", b"["):
        return "raw"
    return "json" if fields.parse(value) is not None else "raw"


ExistingPolicy = Literal["fail", "overwrite", "skip"]


@dataclass(frozen=True, slots=True)
class BulkOutcome:
    """What `write_many` did with one secret (never its value)."""

    ref: Ref
    action: Literal["created", "updated", "unchanged", "skipped", "conflict"]
    version: int  # the version it is at now


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a write did: the version before (0 for none) and the secret after."""

    previous_version: int
    meta: SecretMeta
    pruned: tuple[int, ...] = ()  # versions removed to keep the store's bound
    expiry_cleared_ns: int | None = None  # the expiry the previous value had, now gone


class Vault:
    """A store opened with its KEK: the data keys are unwrapped and held in memory."""

    def __init__(self, backend: Backend, keyring: Keyring) -> None:
        self.backend = backend
        self.keyring = keyring
        self.auth = Authenticator(backend, keyring)
        raw_versions = backend.meta_get("max_versions")
        self.max_versions = int(raw_versions) if raw_versions else DEFAULT_MAX_VERSIONS
        raw_limit = backend.meta_get("max_value_bytes")
        self.max_value_bytes = int(raw_limit) if raw_limit else DEFAULT_MAX_VALUE_BYTES

    @property
    def store_id(self) -> bytes:
        return self.keyring.store_id

    @property
    def active_gen(self) -> int:
        return self.keyring.active_gen

    @property
    def kek_source(self) -> keys.KekSource:
        return self.keyring.kek_source

    @property
    def name(self) -> str:
        """The store's path or URL, for messages."""
        return self.backend.name

    @property
    def path(self) -> Path:
        """The store file of a SQLite store (StoreError for another backend)."""
        path = getattr(self.backend, "path", None)
        if not isinstance(path, Path):
            raise StoreError(f"{self.name} is not a store file")
        return path

    # -- opening -------------------------------------------------------------------------

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
            return vault
        except BaseException:
            backend.close()
            raise

    @_retried
    def _authenticate_old_store(self) -> None:
        """A store from before authenticated metadata gets its tags, once, audited."""
        if not self.auth.needs_migration():
            return
        if self.lastseen().read(self.store_id) is not None:
            # This host saw the store authenticated: its tags were deleted, not never made.
            log.error("%s: the authenticated store state is gone (`secretfs doctor`)", self.name)
            return
        with self.backend.transaction():
            if not self.auth.needs_migration():
                return
            rows = self.auth.migrate()
            self.audit(
                "auth-migrate",
                None,
                detail=f"{rows} access row(s) tagged; fingerprints keyed per secret",
            )
        log.warning("%s: access metadata authenticated for the first time", self.name)

    def lastseen(self) -> LastSeen:
        """This host's record of the newest store state it saw (beside the key file)."""
        key_file = self.backend.key_file()
        return LastSeen(key_file.with_name(f".{key_file.name.removesuffix('.key')}.seen"))

    def verify_all(self, *, versions: bool = True) -> list[Problem]:
        """Every authenticated row, the store's digest and the rollback marks (with
        `versions`, also that each current version row is there)."""
        return self.auth.verify_all(self.lastseen(), versions=versions)

    def check_integrity(self) -> None:
        """IntegrityError (exit 6) naming every access row that fails verification."""
        problems = self.verify_all(versions=False)
        if problems:
            shown = "; ".join(str(p) for p in problems[:10])
            more = f" and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise IntegrityError(
                f"{len(problems)} integrity problem(s) in {self.name}: {shown}{more}"
                " (`secretfs doctor` tells more)"
            )
        self.remember_state()

    def check_secret(self, ref: Ref) -> None:
        """IntegrityError (exit 6) if this secret's row, or the store's state, fails."""
        meta = self.meta(ref)
        problems: list[str] = []
        if not self.auth.secret_ok(meta):
            problems.append(f"the row of {ref} fails authentication")
        state = self.keyring.read_state(self.backend)
        if state is None:
            problems.append("the authenticated store state is missing or not authentic")
        else:
            problems += [str(p) for p in self.lastseen().check(self.store_id, state, self.name)]
        if problems:
            raise IntegrityError(
                f"{self.name}: {'; '.join(problems)} (`secretfs doctor` tells more)"
            )

    def remember_state(self) -> None:
        """Note the store's authenticated serial as seen by this host (best effort)."""
        state = self.keyring.read_state(self.backend)
        if state is not None:
            self.lastseen().record(self.store_id, state.serial)

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

    # -- reading -------------------------------------------------------------------------

    def meta(self, ref: Ref) -> SecretMeta:
        found = self.backend.get_meta(ref.scope.key, ref.name)
        if found is None or found.deleted:
            raise NotFoundError(f"secret {ref.without_field()} not found")
        return found

    def record_tag(self, purpose: bytes, data: bytes, gen: int | None = None) -> str | None:
        """A keyed tag over a record kept outside the secret rows (a removed secret kept
        for restore), so that a record changed in the store is refused, not trusted; under
        data key generation `gen` (default: the active one), None once it is retired."""
        return self.keyring.record_tag(purpose, data, gen)

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
        return self.sealed_version(secret_id, version).open()

    def sealed_version(self, secret_id: int, version: int) -> SealedValue:
        """One version's ciphertext and what opens it, not opened yet (NotFoundError if
        there is no such version; IntegrityError if its data key is not available)."""
        sealed = self.backend.sealed(secret_id, version)
        if sealed is None:
            raise NotFoundError(f"no version {version} of secret #{secret_id}")
        if not self.keyring.has(sealed.key_gen):
            # Re-encryption added a generation since this vault was opened (a mount).
            self.keyring.refresh(self.backend)
        return self.keyring.handle(sealed)

    # -- writing -------------------------------------------------------------------------

    def set(self, ref: Ref, value: bytes, **owner: int | None) -> WriteResult:
        """Create the secret or add a version to it."""
        return self._write(ref, value, must_exist=False, must_not_exist=False, owner=owner)

    def write(
        self,
        ref: Ref,
        value: bytes,
        *,
        how: Literal["create", "set", "rotate"],
        owner: Mapping[str, int | None] | None = None,
        schedule: Schedule | None = None,
    ) -> WriteResult:
        """`create`, `set` or `rotate`, with an expiry and rotation period (`schedule`)."""
        return self._write(
            ref,
            value,
            must_exist=how == "rotate",
            must_not_exist=how == "create",
            owner=dict(owner or {}),
            schedule=schedule,
        )

    @_retried
    def rollback(self, ref: Ref, to_version: int) -> WriteResult:
        """Make the value of an older version current again, as a new version."""
        with self.refusal_audited("rollback", ref), self.backend.transaction():
            meta = self.meta(ref)
            try:
                value = self.read_version(meta.secret_id, to_version)
            except NotFoundError:
                kept = [v.version for v in self.backend.history(meta.secret_id)]
                raise NotFoundError(
                    f"secret {ref} has no version {to_version} (kept: {_span(kept)})"
                ) from None
            return self._write_locked(
                ref,
                value,
                must_exist=True,
                must_not_exist=False,
                owner={},
                now=time.time_ns(),
                action="rollback",
                detail=f"to the value of version {to_version}",
            )

    @_retried
    def prune(self, ref: Ref, keep: int) -> list[int]:
        """Remove all but the newest `keep` versions of a secret; returns those removed."""
        if keep < 1:
            raise UsageError("--keep must be at least 1: the current version is always kept")
        with self.refusal_audited("prune", ref), self.backend.transaction():
            meta = self.meta(ref)
            return self._prune_locked(ref, meta, keep, why="asked")

    @_retried
    def prune_all(self, keep: int | None = None) -> list[tuple[Ref, list[int]]]:
        """Prune every secret to `keep` versions (default: the store's bound)."""
        keep = self.max_versions if keep is None else keep
        if keep < 1:
            raise UsageError("--keep must be at least 1: the current version is always kept")
        out: list[tuple[Ref, list[int]]] = []
        with self.refusal_audited("prune", None), self.backend.transaction():
            for secret_id in self.backend.secrets_over(keep):
                meta = self.backend.get_meta_by_id(secret_id)
                if meta is None:
                    continue
                ref = Ref(Scope.from_key(meta.scope), meta.name)
                out.append((ref, self._prune_locked(ref, meta, keep, why="asked")))
        return out

    def _prune_locked(self, ref: Ref, meta: SecretMeta, keep: int, *, why: str) -> list[int]:
        gone = self.backend.prune_versions(meta.secret_id, keep)
        if gone:
            reason = f"the store keeps {keep}" if why == "bound" else f"--keep {keep}"
            self.audit("prune", ref, meta.version, detail=f"removed {_span(gone)} ({reason})")
        return gone

    @_retried
    def set_schedule(
        self,
        ref: Ref,
        *,
        expires_ns: int | None = None,
        clear_expiry: bool = False,
        rotate_every_s: int | None = None,
    ) -> SecretMeta:
        """Change a secret's expiry (`expires_ns`, or none with `clear_expiry`) and
        rotation period (seconds; 0 clears; None keeps) without writing a new version."""
        with self.refusal_audited("expiry", ref), self.backend.transaction():
            meta = self.meta(ref)
            expires = (
                None if clear_expiry else meta.expires_ns if expires_ns is None else expires_ns
            )
            every = meta.rotate_every_s if rotate_every_s is None else rotate_every_s or None
            self.backend.set_schedule(meta.secret_id, expires, every, self.backend.next_seq())
            self.audit("expiry", ref, meta.version, detail=_schedule_detail(expires, every))
            after = self.backend.get_meta_by_id(meta.secret_id)
        assert after is not None
        return after

    @_retried
    def set_limits(
        self, *, max_versions: int | None = None, max_value_bytes: int | None = None
    ) -> None:
        """Change the store's bounds; versions over a new bound go at their next write."""
        with self.refusal_audited("config", None), self.backend.transaction():
            changes = []
            if max_versions is not None:
                if not 1 <= max_versions <= MAX_VERSIONS_LIMIT:
                    raise UsageError(f"max-versions must be between 1 and {MAX_VERSIONS_LIMIT}")
                self.backend.meta_set("max_versions", str(max_versions).encode())
                changes.append(f"max-versions {self.max_versions}->{max_versions}")
                self.max_versions = max_versions
            if max_value_bytes is not None:
                self.backend.meta_set("max_value_bytes", str(max_value_bytes).encode())
                changes.append(f"max-value-size {self.max_value_bytes}->{max_value_bytes}")
                self.max_value_bytes = max_value_bytes
            self.audit("config", None, detail=" ".join(changes) or None)

    # -- data keys -----------------------------------------------------------------------

    def refresh_data_keys(self) -> list[int]:
        """Unwrap data key generations added since this vault was opened; returns them."""
        return self.keyring.refresh(self.backend)

    @_retried
    def update(
        self, ref: Ref, change: Callable[[bytes | None], bytes], **owner: int | None
    ) -> WriteResult:
        """Read-modify-write in one transaction: `change(current value, or None)` gives
        the new version, so two concurrent updates never lose each other's change."""
        with self.refusal_audited("set", ref), self.backend.transaction():
            current = self.backend.get_meta(ref.scope.key, ref.name)
            old = None
            if current is not None and not current.deleted:
                old = self.read_version(current.secret_id, current.version)
            return self._write_locked(
                ref,
                change(old),
                must_exist=False,
                must_not_exist=False,
                owner=owner,
                now=time.time_ns(),
                action="set",
            )

    @_retried
    def _write(
        self,
        ref: Ref,
        value: bytes,
        *,
        must_exist: bool,
        must_not_exist: bool,
        owner: dict[str, int | None],
        schedule: Schedule | None = None,
    ) -> WriteResult:
        action = "create" if must_not_exist else "rotate" if must_exist else "set"
        with self.refusal_audited(action, ref):
            self.check_writable(ref, value)
            with self.backend.transaction():
                return self._write_locked(
                    ref,
                    value,
                    must_exist=must_exist,
                    must_not_exist=must_not_exist,
                    owner=owner,
                    now=time.time_ns(),
                    action=action,
                    schedule=schedule,
                )

    def check_writable(self, ref: Ref, value: bytes) -> None:
        """Refuse a field reference or a value over the size limit, before any write."""
        if ref.field:
            raise UsageError(f"write the whole secret, not a field: {ref.without_field()}")
        if len(value) > self.max_value_bytes:
            raise TooLargeError(
                f"value is {len(value)} bytes; the limit is {self.max_value_bytes} bytes"
            )

    def _write_locked(
        self,
        ref: Ref,
        value: bytes,
        *,
        must_exist: bool,
        must_not_exist: bool,
        owner: dict[str, int | None],
        now: int,
        action: str | None = None,
        schedule: Schedule | None = None,
        detail: str | None = None,
    ) -> WriteResult:
        """Seal and write one new version; the caller holds `backend.transaction()`.

        The audit record (`action`, default create/rotate/set) commits with the version.
        The new value's expiry is `schedule.expires_ns` (none by default: an expiry
        belongs to a value); the rotation period is kept unless `schedule` changes it.
        Versions over the store's bound are pruned, oldest first, and audited.
        """
        self.check_writable(ref, value)
        scope, name = ref.scope.key, ref.name
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
        self.keyring.sync_active(self.backend)
        gen, blob = self.keyring.seal_value(scope, name, version, value)
        self.backend.put_version(
            secret_id,
            version,
            created_ns=now,
            size=len(value),
            kind=value_kind(value),
            key_gen=gen,
            fingerprint=self.keyring.fingerprint(scope, name, value),
            ciphertext=blob,
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
        self.auth.update(secrets=[secret_id])
        old_expiry = current.expires_ns if exists and current is not None else None
        old_every = current.rotate_every_s if exists and current is not None else None
        new_expiry = schedule.expires_ns if schedule is not None else None
        every = old_every
        if schedule is not None and schedule.rotate_every_s is not None:
            every = schedule.rotate_every_s or None
        if (new_expiry, every) != (old_expiry, old_every):
            self.backend.set_schedule(secret_id, new_expiry, every, seq)
        set_owner = [f"{k}={_show(k, v)}" for k, v in owner.items() if v is not None]
        if new_expiry is not None or every != old_every:
            set_owner.append(_schedule_detail(new_expiry, every))
        if detail:
            set_owner.insert(0, detail)
        self.audit(
            action or ("create" if must_not_exist else "rotate" if must_exist else "set"),
            ref,
            version,
            detail=" ".join(set_owner) or None,
        )
        after = self.backend.get_meta(scope, name)
        assert after is not None
        pruned = self._prune_locked(ref, after, self.max_versions, why="bound")
        cleared = old_expiry if old_expiry is not None and new_expiry is None else None
        return WriteResult(previous, after, tuple(pruned), cleared)

    def write_many(
        self,
        items: Sequence[tuple[Ref, bytes]],
        *,
        existing: ExistingPolicy = "fail",
        partial: bool = False,
    ) -> list[BulkOutcome]:
        """Write many secrets in ONE transaction: all of it commits, or none of it.
        Where a transaction is bounded (etcd's --max-txn-ops), in batches that each
        commit whole, after checking the whole set for conflicts (docs/cluster.md).

        A secret that exists already is, by `existing`: "fail", a conflict; "overwrite",
        given a new version unless its value is already equal ("unchanged"); "skip",
        left as it is. Conflicts refuse the whole write (ConflictError naming each one)
        unless `partial`, which leaves them out and reports them in the outcomes.
        """
        scopes = {ref.scope for ref, _ in items}
        target = next(iter(scopes)) if len(scopes) == 1 else None
        with self.refusal_audited("import", target):
            return self._write_many(items, existing=existing, partial=partial)

    def _write_many(
        self, items: Sequence[tuple[Ref, bytes]], *, existing: ExistingPolicy, partial: bool
    ) -> list[BulkOutcome]:
        for ref, value in items:
            self.check_writable(ref, value)
        sizes = [len(value) for _, value in items]
        if self.backend.write_batch(sizes) >= len(items):
            return self._write_batch(items, existing=existing, partial=partial)
        if existing == "fail" and not partial:
            # Refuse before the first batch commits, not half-way through.
            with self.backend.snapshot():
                self.backend.prefetch_secrets([(r.scope.key, r.name) for r, _ in items])
                taken = [r for r, _ in items if self._exists(r)]
            if taken:
                raise ConflictError(_conflicts_message(taken))
        outcomes: list[BulkOutcome] = []
        while len(outcomes) < len(items):
            done = len(outcomes)
            batch = items[done : done + self.backend.write_batch(sizes[done:])]
            try:
                outcomes.extend(self._write_batch(batch, existing=existing, partial=partial))
            except StoreError as exc:
                if not done:
                    raise
                raise StoreError(
                    f"{exc} ({done} of {len(items)} secrets were written by earlier batches,"
                    " each whole: run the same import again with --skip-existing to finish)"
                ) from None
        return outcomes

    def _exists(self, ref: Ref) -> bool:
        meta = self.backend.get_meta(ref.scope.key, ref.name)
        return meta is not None and not meta.deleted

    @_retried
    def _write_batch(
        self, items: Sequence[tuple[Ref, bytes]], *, existing: ExistingPolicy, partial: bool
    ) -> list[BulkOutcome]:
        """One transaction of write_many."""
        now = time.time_ns()
        outcomes: list[BulkOutcome] = []
        with self.backend.transaction():
            self.backend.prefetch_secrets([(r.scope.key, r.name) for r, _ in items])
            for ref, value in items:
                kept = self._existing_outcome(ref, value, existing)
                if kept is not None:
                    outcomes.append(kept)
                    continue
                result = self._write_locked(
                    ref,
                    value,
                    must_exist=False,
                    must_not_exist=False,
                    owner={},
                    now=now,
                    action="import",
                )
                outcomes.append(
                    BulkOutcome(
                        ref,
                        "updated" if result.previous_version else "created",
                        result.meta.version,
                    )
                )
            _refuse_conflicts(outcomes, partial)
        return outcomes

    def plan_many(
        self,
        items: Sequence[tuple[Ref, bytes]],
        *,
        existing: ExistingPolicy = "fail",
        partial: bool = False,
    ) -> list[BulkOutcome]:
        """What write_many would do (`import --dry-run`), decided the same way, writing
        nothing (not even an audit record); the version is the one it would write."""
        for ref, value in items:
            self.check_writable(ref, value)
        outcomes: list[BulkOutcome] = []
        with self.backend.snapshot():
            for ref, value in items:
                kept = self._existing_outcome(ref, value, existing)
                if kept is None:
                    current = self.backend.get_meta(ref.scope.key, ref.name)
                    before = 0 if current is None else current.version
                    live = current is not None and not current.deleted
                    kept = BulkOutcome(ref, "updated" if live else "created", before + 1)
                outcomes.append(kept)
        _refuse_conflicts(outcomes, partial)
        return outcomes

    def _existing_outcome(
        self, ref: Ref, value: bytes, existing: ExistingPolicy
    ) -> BulkOutcome | None:
        """A secret that exists, left as it is by `existing` (None: write it)."""
        current = self.backend.get_meta(ref.scope.key, ref.name)
        if current is None or current.deleted:
            return None
        if existing == "fail":
            return BulkOutcome(ref, "conflict", current.version)
        if existing == "skip":
            return BulkOutcome(ref, "skipped", current.version)
        if current.fingerprint == self.keyring.fingerprint(ref.scope.key, ref.name, value):
            return BulkOutcome(ref, "unchanged", current.version)
        return None

    def removal_plan(
        self, ref: Ref, *, force: bool = False
    ) -> tuple[SecretMeta, list[GrantRecord]]:
        """What `remove` would remove (the secret, its own grants), or its refusal; writes
        nothing (`rm --dry-run`)."""
        meta = self.meta(ref)
        grants = self.backend.list_grants(meta.scope, meta.name)
        if grants and not force:
            who = ", ".join(f"{g.kind} {g.principal}" for g in grants)
            raise ConflictError(
                f"secret {ref} is granted to {who} (409): `secretfs revoke` first,"
                " or `rm --force` to remove it and its grants"
            )
        return meta, grants

    @_retried
    def remove(self, ref: Ref, *, force: bool = False) -> SecretMeta:
        """Remove a secret; refused (409) while grants name it, unless `force` (which
        removes those grants with it)."""
        with self.refusal_audited("rm", ref), self.backend.transaction():
            meta, grants = self.removal_plan(ref, force=force)
            seq = self.backend.next_seq()
            for g in grants:
                self.backend.remove_grant(g, seq)
            self.backend.remove_secret(meta.secret_id, seq)
            self.auth.update(secrets=[meta.secret_id], removed=grants)
            detail = f"with {len(grants)} grant(s)" if grants else None
            self.audit("rm", ref, meta.version, detail=detail)
        return meta

    # -- audit ---------------------------------------------------------------------------

    def audit(
        self,
        action: str,
        ref: Target | str | None,
        version: int | None = None,
        outcome: str = audit_log.OK,
        detail: str | None = None,
    ) -> None:
        """Append a record of this CLI process doing `action` (never a value).

        Inside `backend.transaction()` the record commits or rolls back with the write.
        """
        text = None if ref is None else _target_text(ref) if not isinstance(ref, str) else ref
        self.backend.append_audit([audit_log.cli_record(action, text, version, outcome, detail)])

    @contextlib.contextmanager
    def refusal_audited(self, action: str, ref: Target | str | None) -> Iterator[None]:
        """Record a write refused with a SecretfsError, in a transaction of its own (the
        write's own transaction, and its record, rolled back)."""
        try:
            yield
        except WriteConflictError:
            raise  # not refused: another writer came first, and the write is tried again
        except SecretfsError as exc:
            try:
                with self.backend.transaction():
                    self.audit(action, ref, outcome=audit_log.REFUSED, detail=str(exc)[:300])
            except SecretfsError as err:
                log.warning("cannot record the refused %s in the audit log: %s", action, err)
            raise

    # -- ownership and grants ------------------------------------------------------------

    def _target_meta(self, target: Target) -> SecretMeta | None:
        """The secret a target names (NotFoundError if none), or None for a scope."""
        if isinstance(target, Scope):
            return None
        if target.field:
            raise UsageError(
                f"ownership and grants apply to a whole secret, not a field: {target}"
                f" (use {target.without_field()})"
            )
        return self.meta(target)

    def scope_meta(self, scope: Scope) -> ScopeMeta:
        found = self.backend.get_scope_meta(scope.key)
        return found if found is not None else ScopeMeta(scope.key, None, None, None, 0)

    @_retried
    def set_owner(
        self, target: Target, changes: Mapping[str, int | None], *, action: str
    ) -> tuple[dict[str, int | None], dict[str, int | None]]:
        """Set (an int) or reset to inherited (None) some of uid, gid, mode of a secret or
        a scope's defaults; returns them before and after."""
        unknown = set(changes) - set(OWNER_KEYS)
        if unknown or not changes:
            raise UsageError(f"set_owner takes some of {', '.join(OWNER_KEYS)}")
        with self.refusal_audited(action, target), self.backend.transaction():
            meta = self._target_meta(target)
            if meta is None:
                assert isinstance(target, Scope)
                current: ScopeMeta | SecretMeta = self.scope_meta(target)
            else:
                current = meta
            before = {k: getattr(current, k) for k in OWNER_KEYS}
            after = {**before, **changes}
            seq = self.backend.next_seq()
            uid, gid, mode = after["uid"], after["gid"], after["mode"]
            if meta is None:
                self.backend.set_scope_owner(_target_text(target), uid, gid, mode, seq)
                self.auth.update(scopes=[_target_text(target)])
            else:
                self.backend.set_owner(meta.secret_id, uid, gid, mode, seq)
                self.auth.update(secrets=[meta.secret_id])
            detail = " ".join(
                f"{k}={_show(k, before[k])}->{_show(k, after[k])}"
                for k in OWNER_KEYS
                if k in changes
            )
            changed = before != after
            self.audit(
                action,
                target,
                None if meta is None else meta.version,
                audit_log.OK if changed else audit_log.UNCHANGED,
                detail,
            )
        return before, after

    def grants(self, target: Target) -> list[GrantRecord]:
        """The grants that reach a secret (its own and its scope's), or for a scope, the
        scope's and those on each of its secrets."""
        meta = self._target_meta(target)
        if meta is None:
            return self.backend.list_grants(_target_text(target))
        return self.backend.list_grants(meta.scope, meta.name) + self.backend.list_grants(
            meta.scope, ""
        )

    @_retried
    def grant(self, target: Target, kind: str, principal: int, *, form: str = "plain") -> bool:
        """Let one more uid or gid read a secret or a whole scope; False if it could.
        `form` "sealed": read only its sealed form (secretfs/sealing.py), never the value."""
        if kind not in ("uid", "gid"):
            raise UsageError(f"a grant is to a uid or a gid, not {kind!r}")
        if form not in GRANT_FORMS:
            raise UsageError(f"a grant's form is one of {', '.join(GRANT_FORMS)}, not {form!r}")
        with self.refusal_audited("grant", target), self.backend.transaction():
            meta = self._target_meta(target)
            scope, name = (_target_text(target), "") if meta is None else (meta.scope, meta.name)
            for g in self.backend.list_grants(scope, name):
                if (g.kind, g.principal) == (kind, principal) and g.form != form:
                    # One grant per uid or gid: never a silent "already granted".
                    raise ConflictError(
                        f"{kind} {principal} has a {g.form} grant here already:"
                        " `secretfs revoke` it first"
                    )
            seq = self.backend.next_seq()
            added = self.backend.add_grant(
                scope, name, kind, principal, time.time_ns(), seq, form
            )
            if added:
                new = [
                    g
                    for g in self.backend.list_grants(scope, name)
                    if (g.kind, g.principal) == (kind, principal)
                ]
                self.auth.update(added=new)
            self.audit(
                "grant",
                target,
                None,
                audit_log.OK if added else audit_log.UNCHANGED,
                f"{kind} {principal}" + (" sealed-only" if form == "sealed" else ""),
            )
        return added

    @_retried
    def revoke(
        self, target: Target, principals: Sequence[tuple[str, int]] | None
    ) -> list[GrantRecord]:
        """Remove every grant of `principals` ((kind, id) pairs; None: every one) on the
        secret, or on the scope and each of its secrets. Returns what was removed."""
        with self.refusal_audited("revoke", target), self.backend.transaction():
            meta = self._target_meta(target)
            if meta is None:
                candidates = self.backend.list_grants(_target_text(target))
            else:
                candidates = self.backend.list_grants(meta.scope, meta.name)
            wanted = None if principals is None else set(principals)
            removed = [g for g in candidates if wanted is None or (g.kind, g.principal) in wanted]
            seq = self.backend.next_seq()
            for g in removed:
                self.backend.remove_grant(g, seq)
            if removed:
                self.auth.update(removed=removed)
                on: Target = (
                    Scope.from_key(g.scope) if not g.name else Ref(Scope.from_key(g.scope), g.name)
                )
                self.audit("revoke", on, None, audit_log.OK, f"{g.kind} {g.principal}")
            if not removed:
                who = (
                    "any grant"
                    if wanted is None
                    else ", ".join(f"{k} {p}" for k, p in sorted(wanted))
                )
                self.audit("revoke", target, None, audit_log.UNCHANGED, f"no grant matched: {who}")
        return removed


def _refuse_conflicts(outcomes: list[BulkOutcome], partial: bool) -> None:
    conflicts = [o.ref for o in outcomes if o.action == "conflict"]
    if conflicts and not partial:
        raise ConflictError(_conflicts_message(conflicts))


def _span(versions: Sequence[int]) -> str:
    """`version 3`, `versions 1-4`, or `versions 1, 3, 5`."""
    if not versions:
        return "no versions"
    if len(versions) == 1:
        return f"version {versions[0]}"
    if list(versions) == list(range(versions[0], versions[-1] + 1)):
        return f"versions {versions[0]}-{versions[-1]}"
    return "versions " + ", ".join(str(v) for v in versions)


def _schedule_detail(expires_ns: int | None, every: int | None) -> str:
    from secretfs.expiry import format_duration
    from secretfs.timeutil import iso_time

    return (
        f"expires={'never' if expires_ns is None else iso_time(expires_ns)}"
        f" rotate-every={'never' if every is None else format_duration(every)}"
    )


def _pick(new: int | None, old: int | None) -> int | None:
    return old if new is None else new


def _show(key: str, value: int | None) -> str:
    if value is None:
        return "inherit"
    return f"{value:04o}" if key == "mode" else str(value)


def _target_text(target: Target) -> str:
    """A secret's canonical reference, or a scope's key (as audit records name them)."""
    return target.key if isinstance(target, Scope) else str(target)
