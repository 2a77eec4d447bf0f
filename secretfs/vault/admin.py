"""The store as a whole: its bounds, its data keys, and whether its metadata is authentic."""

from __future__ import annotations

from secretfs.authmeta import LastSeen, Problem
from secretfs.errors import IntegrityError, UsageError
from secretfs.refs import Ref
from secretfs.vault.core import MAX_VERSIONS_LIMIT, VaultCore, log, retried


class Admin(VaultCore):
    """Store settings, data keys and integrity (a part of `Vault`)."""

    @retried
    def set_limits(
        self, *, max_versions: int | None = None, max_value_bytes: int | None = None
    ) -> None:
        """Change the store's bounds; versions over a new bound go at their next write."""
        with self.audited("config", None) as trail:
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
            trail.record(detail=" ".join(changes) or None)

    # -- data keys -----------------------------------------------------------------------

    def refresh_data_keys(self) -> list[int]:
        """Unwrap data key generations added since this vault was opened; returns them."""
        return self.keyring.refresh(self.backend)

    def record_tag(self, purpose: bytes, data: bytes, gen: int | None = None) -> str | None:
        """A keyed tag over a record kept outside the secret rows (a removed secret kept
        for restore), so that a record changed in the store is refused, not trusted; under
        data key generation `gen` (default: the active one), None once it is retired."""
        return self.keyring.record_tag(purpose, data, gen)

    # -- authenticated metadata ----------------------------------------------------------

    @retried
    def _authenticate_old_store(self) -> None:
        """A store from before authenticated metadata gets its tags, once, audited."""
        if not self.auth.needs_migration():
            return
        if self.lastseen().read(self.store_id) is not None:
            # This host saw the store authenticated: its tags were deleted, not never made.
            log.error("%s: the authenticated store state is gone (`secretfs doctor`)", self.name)
            return
        with self.recorded("auth-migrate") as trail:
            if not self.auth.needs_migration():
                return
            rows = self.auth.migrate()
            trail.record(detail=f"{rows} access row(s) tagged; fingerprints keyed per secret")
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
        why = self.auth.secret_problem(meta)
        if why is not None:
            problems.append(f"{ref}: {why}")
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
