"""How long audit records are kept: `secretfs audit prune --before` and the store's
`audit-max-age`, which every mount applies hourly. Each prune is itself recorded, in the
same transaction as the delete (SQLite); on etcd the deletes are batches of Txns within
the cluster's limits and the record of the prune follows them."""

from __future__ import annotations

from collections.abc import Callable

from secretfs.audit import AuditRecord, iso_time_ns
from secretfs.store.base import Backend

MAX_AGE_META = "audit_max_age_s"  # meta key: seconds kept; absent or 0 keeps everything
NS = 1_000_000_000


def max_age_s(backend: Backend) -> int | None:
    raw = backend.meta_get(MAX_AGE_META)
    age = int(raw) if raw else 0
    return age or None


def prune(
    backend: Backend,
    before_ns: int,
    record: Callable[[str], AuditRecord],
    *,
    dry_run: bool = False,
) -> int:
    """Delete the records older than `before_ns` and record that; returns how many."""
    if dry_run:
        return backend.prune_audit(before_ns, dry_run=True)
    with backend.transaction():
        count = backend.prune_audit(before_ns)
        if count:
            backend.append_audit(
                [record(f"pruned {count} audit records before {iso_time_ns(before_ns)}")]
            )
    return count


def prune_by_max_age(backend: Backend, now_ns: int, record: Callable[[str], AuditRecord]) -> int:
    """Apply the store's audit-max-age (nothing when it is not set)."""
    age = max_age_s(backend)
    if age is None:
        return 0
    return prune(backend, now_ns - age * NS, record)
