"""Who may read what: owners and modes of secrets and scopes, grants, client keys."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from secretfs import audit as audit_log
from secretfs import sealing
from secretfs.errors import ConflictError, NotFoundError, UsageError
from secretfs.refs import Ref, Scope
from secretfs.store import GRANT_FORMS, ClientKeyRecord, GrantRecord, ScopeMeta, SecretMeta
from secretfs.vault.core import Target, VaultCore, retried, target_key
from secretfs.vault.secrets import OWNER_KEYS, show_owner


class Access(VaultCore):
    """Ownership, grants and client keys (a part of `Vault`)."""

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

    @retried
    def set_owner(
        self, target: Target, changes: Mapping[str, int | None], *, action: str
    ) -> tuple[dict[str, int | None], dict[str, int | None]]:
        """Set (an int) or reset to inherited (None) some of uid, gid, mode of a secret or
        a scope's defaults; returns them before and after."""
        unknown = set(changes) - set(OWNER_KEYS)
        if unknown or not changes:
            raise UsageError(f"set_owner takes some of {', '.join(OWNER_KEYS)}")
        with self.audited(action, target) as trail:
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
                self.backend.set_scope_owner(target_key(target), uid, gid, mode, seq)
                self.auth.update(scopes=[target_key(target)])
            else:
                self.backend.set_owner(meta.secret_id, uid, gid, mode, seq)
                self.auth.update(secrets=[meta.secret_id])
            detail = " ".join(
                f"{k}={show_owner(k, before[k])}->{show_owner(k, after[k])}"
                for k in OWNER_KEYS
                if k in changes
            )
            changed = before != after
            trail.record(
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
            return self.backend.list_grants(target_key(target))
        return self.backend.list_grants(meta.scope, meta.name) + self.backend.list_grants(
            meta.scope, ""
        )

    @retried
    def grant(self, target: Target, kind: str, principal: int, *, form: str = "plain") -> bool:
        """Let one more uid or gid read a secret or a whole scope; False if it could.
        `form` "sealed": read only its sealed form (secretfs/sealing.py), never the value."""
        if kind not in ("uid", "gid"):
            raise UsageError(f"a grant is to a uid or a gid, not {kind!r}")
        if form not in GRANT_FORMS:
            raise UsageError(f"a grant's form is one of {', '.join(GRANT_FORMS)}, not {form!r}")
        with self.audited("grant", target) as trail:
            meta = self._target_meta(target)
            scope, name = (target_key(target), "") if meta is None else (meta.scope, meta.name)
            for g in self.backend.list_grants(scope, name):
                if (g.kind, g.principal) == (kind, principal) and g.form != form:
                    # One grant per uid or gid: never a silent "already granted".
                    raise ConflictError(
                        f"{kind} {principal} has a {g.form} grant here already:"
                        " `secretfs revoke` it first"
                    )
            seq = self.backend.next_seq()
            added = self.backend.add_grant(scope, name, kind, principal, time.time_ns(), seq, form)
            if added:
                new = [
                    g
                    for g in self.backend.list_grants(scope, name)
                    if (g.kind, g.principal) == (kind, principal)
                ]
                self.auth.update(added=new)
            trail.record(
                None,
                audit_log.OK if added else audit_log.UNCHANGED,
                f"{kind} {principal}" + (" sealed-only" if form == "sealed" else ""),
            )
        return added

    @retried
    def revoke(
        self, target: Target, principals: Sequence[tuple[str, int]] | None
    ) -> list[GrantRecord]:
        """Remove every grant of `principals` ((kind, id) pairs; None: every one) on the
        secret, or on the scope and each of its secrets. Returns what was removed."""
        with self.audited("revoke", target) as trail:
            meta = self._target_meta(target)
            if meta is None:
                candidates = self.backend.list_grants(target_key(target))
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
                trail.record(None, audit_log.OK, f"{g.kind} {g.principal}", on=on)
            if not removed:
                who = (
                    "any grant"
                    if wanted is None
                    else ", ".join(f"{k} {p}" for k, p in sorted(wanted))
                )
                trail.record(None, audit_log.UNCHANGED, f"no grant matched: {who}")
        return removed

    # -- client keys (sealed reads: secretfs/sealing.py) -----------------------------------

    def add_client_key(
        self, public_key: bytes, label: str, owner_uid: int | None
    ) -> ClientKeyRecord:
        """Register a public key (refused if it is registered and live already)."""
        record = ClientKeyRecord(sealing.new_key_id(), public_key, label, owner_uid, time.time_ns())
        with self.audited("client-key-add", None) as trail:
            for k in self.backend.list_client_keys():
                if k.public_key == public_key and k.revoked_ns is None:
                    raise ConflictError(f"this public key is registered already as {k.key_id}")
            self.backend.add_client_key(record, self.backend.next_seq())
            self.auth.update(client_keys=[record.key_id])
            trail.record(detail=f"{record.key_id} {sealing.fingerprint(public_key)}")
        return record

    def revoke_client_key(self, key_id: str) -> ClientKeyRecord:
        """Revoke a key softly: its row stays (audit trail), nothing is sealed to it again."""
        with self.audited("client-key-rm", None) as trail:
            keys = {k.key_id: k for k in self.backend.list_client_keys()}
            key = keys.get(key_id)
            if key is None:
                raise NotFoundError(f"no client key {key_id}")
            if key.revoked_ns is not None:
                raise ConflictError(f"client key {key_id} is revoked already")
            now = time.time_ns()
            self.backend.revoke_client_key(key_id, now, self.backend.next_seq())
            self.auth.update(client_keys=[key_id])
            trail.record(detail=f"{key_id} {sealing.fingerprint(key.public_key)}")
        return ClientKeyRecord(
            key.key_id,
            key.public_key,
            key.label,
            key.owner_uid,
            key.created_ns,
            now,
            key.last_used_ns,
        )

    def record_sealed_get(self, ref: str, version: int, key: ClientKeyRecord, bound: bool) -> None:
        """Audit a CLI sealed read and set the key's last use, in one transaction."""
        with self.recorded("get", ref) as trail:
            trail.record(version, audit_log.OK, sealing.sealed_detail(key.key_id, bound))
            self.backend.touch_client_keys({key.key_id: time.time_ns()})


__all__ = ["Access"]
