"""Secrets and their versions: read, write (one path, `Secrets._commit`), roll back,
prune, schedule, import many, remove."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from secretfs import fields
from secretfs.errors import ConflictError, NotFoundError, StoreError, TooLargeError, UsageError
from secretfs.expiry import Schedule
from secretfs.keyring import SealedValue
from secretfs.refs import Ref, Scope
from secretfs.store import GrantRecord, SecretMeta, VersionMeta
from secretfs.vault.core import AuditTrail, VaultCore, retried

OWNER_KEYS = ("uid", "gid", "mode")


class WriteMode(enum.Enum):
    """What a write requires of the secret; the value is its audit action."""

    CREATE = "create"  # a new secret: refused (409) if it exists
    UPDATE = "rotate"  # a new version of a secret that exists: refused (404) if none
    UPSERT = "set"  # either


WriteModeName = Literal["create", "rotate", "set"]  # a WriteMode's value, as the CLI says it
ExistingPolicy = Literal["fail", "overwrite", "skip"]


class Writable(NamedTuple):
    """A reference and value `check_writable` accepted: a write checks each once."""

    ref: Ref
    value: bytes


def value_kind(value: bytes) -> str:
    """ "json" when the value is a JSON object or array (it gets a `.d/` directory)."""
    if not value or value.lstrip()[:1] not in (b"{", b"["):
        return "raw"
    return "json" if fields.parse(value) is not None else "raw"


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


class Secrets(VaultCore):
    """Secrets and versions (a part of `Vault`)."""

    # -- reading -------------------------------------------------------------------------

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

    # -- writing: every new version goes through _commit ---------------------------------

    def check_writable(self, ref: Ref, value: bytes) -> Writable:
        """Refuse a field reference or a value over the size limit, before any write."""
        if ref.field:
            raise UsageError(f"write the whole secret, not a field: {ref.without_field()}")
        if len(value) > self.max_value_bytes:
            raise TooLargeError(
                f"value is {len(value)} bytes; the limit is {self.max_value_bytes} bytes"
            )
        return Writable(ref, value)

    def set(self, ref: Ref, value: bytes, **owner: int | None) -> WriteResult:
        """Create the secret or add a version to it (`write`, UPSERT)."""
        return self.write(ref, value, owner=owner)

    @retried
    def write(
        self,
        ref: Ref,
        value: bytes,
        *,
        how: WriteMode | WriteModeName = WriteMode.UPSERT,
        owner: Mapping[str, int | None] | None = None,
        schedule: Schedule | None = None,
    ) -> WriteResult:
        """One new version, as `how` requires, with an owner and an expiry and rotation
        period (`schedule`)."""
        mode = WriteMode(how)
        with self.refusals_recorded(mode.value, ref):
            item = self.check_writable(ref, value)
            with self.recorded(mode.value, ref) as trail:
                return self._commit(item, mode, trail, owner=owner, schedule=schedule)

    @retried
    def update(
        self, ref: Ref, change: Callable[[bytes | None], bytes], **owner: int | None
    ) -> WriteResult:
        """Read-modify-write in one transaction: `change(current value, or None)` gives
        the new version, so two concurrent updates never lose each other's change."""
        with self.audited("set", ref) as trail:
            current = self.backend.get_meta(ref.scope.key, ref.name)
            old = None
            if current is not None and not current.deleted:
                old = self.read_version(current.secret_id, current.version)
            item = self.check_writable(ref, change(old))
            return self._commit(item, WriteMode.UPSERT, trail, owner=owner)

    @retried
    def rollback(self, ref: Ref, to_version: int) -> WriteResult:
        """Make the value of an older version current again, as a new version."""
        with self.audited("rollback", ref) as trail:
            meta = self.meta(ref)
            try:
                value = self.read_version(meta.secret_id, to_version)
            except NotFoundError:
                kept = [v.version for v in self.backend.history(meta.secret_id)]
                raise NotFoundError(
                    f"secret {ref} has no version {to_version} (kept: {_span(kept)})"
                ) from None
            item = self.check_writable(ref, value)
            return self._commit(
                item, WriteMode.UPDATE, trail, detail=f"to the value of version {to_version}"
            )

    def _commit(
        self,
        item: Writable,
        mode: WriteMode,
        trail: AuditTrail,
        *,
        owner: Mapping[str, int | None] | None = None,
        schedule: Schedule | None = None,
        detail: str | None = None,
        now: int | None = None,
    ) -> WriteResult:
        """Seal and write one new version of a checked value, inside `trail`'s transaction,
        which records it (under the trail's action).

        The new value's expiry is `schedule.expires_ns` (none by default: an expiry
        belongs to a value); the rotation period is kept unless `schedule` changes it.
        Versions over the store's bound are pruned, oldest first, and audited.
        """
        ref, value = item
        owner = owner or {}
        now = time.time_ns() if now is None else now
        scope, name = ref.scope.key, ref.name
        current = self.backend.get_meta(scope, name)
        exists = current is not None and not current.deleted
        if exists and mode is WriteMode.CREATE:
            raise ConflictError(f"secret {ref} already exists (409): use `set` or `rotate`")
        if not exists and mode is WriteMode.UPDATE:
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
        base = current if exists else None
        if any(v is not None for v in owner.values()):
            self.backend.set_owner(
                secret_id,
                _pick(owner.get("uid"), base.uid if base else None),
                _pick(owner.get("gid"), base.gid if base else None),
                _pick(owner.get("mode"), base.mode if base else None),
                seq,
            )
        self.auth.update(secrets=[secret_id])
        old_expiry = base.expires_ns if base else None
        old_every = base.rotate_every_s if base else None
        new_expiry = schedule.expires_ns if schedule is not None else None
        every = old_every
        if schedule is not None and schedule.rotate_every_s is not None:
            every = schedule.rotate_every_s or None
        if (new_expiry, every) != (old_expiry, old_every):
            self.backend.set_schedule(secret_id, new_expiry, every, seq)
        details = [f"{k}={show_owner(k, v)}" for k, v in owner.items() if v is not None]
        if new_expiry is not None or every != old_every:
            details.append(_schedule_detail(new_expiry, every))
        if detail:
            details.insert(0, detail)
        trail.record(version, detail=" ".join(details) or None, on=ref)
        after = self.backend.get_meta(scope, name)
        assert after is not None
        pruned = self._prune_locked(trail, ref, after, self.max_versions, why="bound")
        cleared = old_expiry if old_expiry is not None and new_expiry is None else None
        return WriteResult(previous, after, tuple(pruned), cleared)

    # -- many at once ----------------------------------------------------------------------

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
        Items that are `Writable` (checked already) are not checked again.
        """
        scopes = {ref.scope for ref, _ in items}
        target = next(iter(scopes)) if len(scopes) == 1 else None
        with self.refusals_recorded("import", target):
            return self._write_many(self._checked(items), existing=existing, partial=partial)

    def _checked(self, items: Sequence[tuple[Ref, bytes]]) -> list[Writable]:
        return [i if isinstance(i, Writable) else self.check_writable(*i) for i in items]

    def _write_many(
        self, items: list[Writable], *, existing: ExistingPolicy, partial: bool
    ) -> list[BulkOutcome]:
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

    @retried
    def _write_batch(
        self, items: Sequence[Writable], *, existing: ExistingPolicy, partial: bool
    ) -> list[BulkOutcome]:
        """One transaction of write_many."""
        now = time.time_ns()
        outcomes: list[BulkOutcome] = []
        with self.recorded("import") as trail:
            self.backend.prefetch_secrets([(r.scope.key, r.name) for r, _ in items])
            for item in items:
                kept = self._existing_outcome(item, existing)
                if kept is not None:
                    outcomes.append(kept)
                    continue
                result = self._commit(item, WriteMode.UPSERT, trail, now=now)
                outcomes.append(
                    BulkOutcome(
                        item.ref,
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
        checked = self._checked(items)
        outcomes: list[BulkOutcome] = []
        with self.backend.snapshot():
            for item in checked:
                kept = self._existing_outcome(item, existing)
                if kept is None:
                    current = self.backend.get_meta(item.ref.scope.key, item.ref.name)
                    before = 0 if current is None else current.version
                    live = current is not None and not current.deleted
                    kept = BulkOutcome(item.ref, "updated" if live else "created", before + 1)
                outcomes.append(kept)
        _refuse_conflicts(outcomes, partial)
        return outcomes

    def _existing_outcome(self, item: Writable, existing: ExistingPolicy) -> BulkOutcome | None:
        """A secret that exists, left as it is by `existing` (None: write it)."""
        ref, value = item
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

    # -- versions kept, schedule, removal ---------------------------------------------------

    @retried
    def prune(self, ref: Ref, keep: int) -> list[int]:
        """Remove all but the newest `keep` versions of a secret; returns those removed."""
        if keep < 1:
            raise UsageError("--keep must be at least 1: the current version is always kept")
        with self.audited("prune", ref) as trail:
            meta = self.meta(ref)
            return self._prune_locked(trail, ref, meta, keep, why="asked")

    @retried
    def prune_all(self, keep: int | None = None) -> list[tuple[Ref, list[int]]]:
        """Prune every secret to `keep` versions (default: the store's bound)."""
        keep = self.max_versions if keep is None else keep
        if keep < 1:
            raise UsageError("--keep must be at least 1: the current version is always kept")
        out: list[tuple[Ref, list[int]]] = []
        with self.audited("prune", None) as trail:
            for secret_id in self.backend.secrets_over(keep):
                meta = self.backend.get_meta_by_id(secret_id)
                if meta is None:
                    continue
                ref = Ref(Scope.from_key(meta.scope), meta.name)
                out.append((ref, self._prune_locked(trail, ref, meta, keep, why="asked")))
        return out

    def _prune_locked(
        self, trail: AuditTrail, ref: Ref, meta: SecretMeta, keep: int, *, why: str
    ) -> list[int]:
        gone = self.backend.prune_versions(meta.secret_id, keep)
        if gone:
            reason = f"the store keeps {keep}" if why == "bound" else f"--keep {keep}"
            trail.record(
                meta.version, detail=f"removed {_span(gone)} ({reason})", action="prune", on=ref
            )
        return gone

    @retried
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
        with self.audited("expiry", ref) as trail:
            meta = self.meta(ref)
            expires = (
                None if clear_expiry else meta.expires_ns if expires_ns is None else expires_ns
            )
            every = meta.rotate_every_s if rotate_every_s is None else rotate_every_s or None
            self.backend.set_schedule(meta.secret_id, expires, every, self.backend.next_seq())
            trail.record(meta.version, detail=_schedule_detail(expires, every))
            after = self.backend.get_meta_by_id(meta.secret_id)
        assert after is not None
        return after

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

    @retried
    def remove(self, ref: Ref, *, force: bool = False) -> SecretMeta:
        """Remove a secret; refused (409) while grants name it, unless `force` (which
        removes those grants with it)."""
        with self.audited("rm", ref) as trail:
            meta, grants = self.removal_plan(ref, force=force)
            seq = self.backend.next_seq()
            for g in grants:
                self.backend.remove_grant(g, seq)
            self.backend.remove_secret(meta.secret_id, seq)
            self.auth.update(secrets=[meta.secret_id], removed=grants)
            trail.record(meta.version, detail=f"with {len(grants)} grant(s)" if grants else None)
        return meta


def _conflicts_message(conflicts: Sequence[Ref]) -> str:
    shown = ", ".join(str(r) for r in conflicts[:10])
    more = f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
    return (
        f"{len(conflicts)} secret(s) exist already (409): {shown}{more};"
        " nothing was written (choose --overwrite or --skip-existing)"
    )


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


def show_owner(key: str, value: int | None) -> str:
    """An owner field as audit details show it: `inherit`, a mode in octal, an id."""
    if value is None:
        return "inherit"
    return f"{value:04o}" if key == "mode" else str(value)
