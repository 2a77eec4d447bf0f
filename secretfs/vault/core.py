"""What every part of the Vault shares: the open store, its bounds, and the one way a
write is audited (`audited`: a transaction whose records commit with it, and a refusal
recorded in a transaction of its own)."""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from secretfs import audit as audit_log
from secretfs import keys
from secretfs.authmeta import Authenticator
from secretfs.errors import NotFoundError, SecretfsError, WriteConflictError
from secretfs.keyring import Keyring
from secretfs.refs import Ref, Scope
from secretfs.store import SecretMeta
from secretfs.store.base import Backend

log = logging.getLogger("secretfs.vault")

DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
DEFAULT_MAX_VERSIONS = 10  # versions kept per secret; older ones are pruned on write
MAX_VERSIONS_LIMIT = 100_000

Target = Ref | Scope  # what ownership and grants apply to: one secret or a whole scope
WRITE_ATTEMPTS = 5  # a write that met another writer (etcd) is tried this often in all

_P = ParamSpec("_P")
_R = TypeVar("_R")


def retried(fn: Callable[_P, _R]) -> Callable[_P, _R]:
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


def target_key(target: Target) -> str:
    """A secret's canonical reference, or a scope's key (as audit records name them)."""
    return target.key if isinstance(target, Scope) else str(target)


def target_text(target: Target | str | None) -> str | None:
    """`target_key`, for what an audit record names (text as it is, or nothing)."""
    return target if target is None or isinstance(target, str) else target_key(target)


@dataclass
class AuditTrail:
    """The audit records of one write (never a value), appended in its transaction just
    before it commits: they commit with the write or roll back with it."""

    action: str
    target: Target | str | None
    records: list[audit_log.AuditRecord] = field(default_factory=list)

    def record(
        self,
        version: int | None = None,
        outcome: str = audit_log.OK,
        detail: str | None = None,
        *,
        action: str | None = None,
        on: Target | str | None = None,
    ) -> None:
        """One record of this CLI process: the trail's action and target unless given."""
        text = target_text(self.target if on is None else on)
        self.records.append(
            audit_log.cli_record(action or self.action, text, version, outcome, detail)
        )


class VaultCore:
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

    def meta(self, ref: Ref) -> SecretMeta:
        found = self.backend.get_meta(ref.scope.key, ref.name)
        if found is None or found.deleted:
            raise NotFoundError(f"secret {ref.without_field()} not found")
        return found

    # -- audit: every write's records go through one AuditTrail --------------------------

    @contextlib.contextmanager
    def recorded(self, action: str, target: Target | str | None = None) -> Iterator[AuditTrail]:
        """A transaction whose audit records (`trail.record`) commit with it."""
        trail = AuditTrail(action, target)
        with self.backend.transaction():
            yield trail
            if trail.records:
                self.backend.append_audit(trail.records)

    @contextlib.contextmanager
    def audited(self, action: str, target: Target | str | None) -> Iterator[AuditTrail]:
        """`recorded`, and a refusal (a SecretfsError) recorded too (`refusals_recorded`)."""
        with self.refusals_recorded(action, target), self.recorded(action, target) as trail:
            yield trail

    @contextlib.contextmanager
    def refusals_recorded(self, action: str, target: Target | str | None) -> Iterator[None]:
        """Record a write refused with a SecretfsError, in a transaction of its own (the
        write's own transaction, and its records, rolled back)."""
        try:
            yield
        except WriteConflictError:
            raise  # not refused: another writer came first, and the write is tried again
        except SecretfsError as exc:
            try:
                with self.recorded(action, target) as trail:
                    trail.record(outcome=audit_log.REFUSED, detail=str(exc)[:300])
            except SecretfsError as err:
                log.warning("cannot record the refused %s in the audit log: %s", action, err)
            raise


__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "DEFAULT_MAX_VERSIONS",
    "MAX_VERSIONS_LIMIT",
    "AuditTrail",
    "Target",
    "VaultCore",
    "retried",
    "target_key",
    "target_text",
]
