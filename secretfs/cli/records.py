"""The JSON records commands print with --json: one schema per record type, documented in
docs/cli.md ("JSON output"). Values never appear in any of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from secretfs.cli.schedule import schedule_record
from secretfs.refs import Ref, Scope
from secretfs.store import GrantRecord, SecretMeta
from secretfs.timeutil import iso_time
from secretfs.vault import WriteResult

F = TypeVar("F", bound=Callable[..., Any])

#: write.action: what a write did to the secret.
WRITE_ACTIONS = ("created", "updated", "rotated", "rolled_back", "restored")


def write_record(
    result: WriteResult, action: str | None = None, value_of_version: int | None = None
) -> dict[str, Any]:
    """A new version written (set, create, rotate, rollback, registry, git)."""
    meta = result.meta
    chosen = action or ("created" if result.previous_version == 0 else "updated")
    assert chosen in WRITE_ACTIONS, chosen
    schedule = schedule_record(meta)
    return {
        "ref": str(_ref(meta)),
        "action": chosen,
        "previous_version": result.previous_version,
        "new_version": meta.version,
        "value_of_version": value_of_version,
        "size": meta.size,
        "pruned": list(result.pruned),
        "expires": schedule["expires"],
        "rotation_due": schedule["rotation_due"],
    }


def removal_record(
    meta: SecretMeta, action: str, grants_removed: int, recoverable_until_ns: int | None
) -> dict[str, Any]:
    """A secret removed (`secret rm`): `removed` leaves a tombstone until
    recoverable_until, `purged` does not."""
    return {
        "ref": str(_ref(meta)),
        "action": action,
        "version": meta.version,
        "grants_removed": grants_removed,
        "recoverable_until": (
            None if recoverable_until_ns is None else iso_time(recoverable_until_ns)
        ),
    }


def grant_record(target: str, action: str, kind: str, principal: int, form: str) -> dict[str, Any]:
    """One grant added (`granted`), found there already (`already_granted`) or `revoked`;
    target is a ref or a scope key."""
    return {"target": target, "action": action, "kind": kind, "id": principal, "form": form}


def revoked_record(g: GrantRecord) -> dict[str, Any]:
    scope = Scope.from_key(g.scope)
    target = str(Ref(scope, g.name)) if g.name else scope.key
    return grant_record(target, "revoked", g.kind, g.principal, g.form)


def owner_record(
    target: str, before: dict[str, int | None], after: dict[str, int | None]
) -> dict[str, Any]:
    """chmod / chown: the owner fields before and after (null: inherited)."""

    def shown(d: dict[str, int | None]) -> dict[str, Any]:
        mode = d.get("mode")
        return {
            "uid": d.get("uid"),
            "gid": d.get("gid"),
            "mode": None if mode is None else f"{mode:04o}",
        }

    return {"target": target, "changed": before != after, "before": shown(before),
            "after": shown(after)}  # fmt: skip


def setting_record(name: str, value: object) -> dict[str, Any]:
    """`config set`: the setting as `config show --json` shows it afterwards."""
    return {"setting": name, "value": value}


def init_record(
    store: str, kind: str, source: str, max_value_size: int, max_versions: int, notes: list[str]
) -> dict[str, Any]:
    """`init`: the store created and where its key-encryption key comes from."""
    return {
        "store": store,
        "kek": {"source": kind, "from": source},
        "max_value_size": max_value_size,
        "max_versions": max_versions,
        "notes": notes,
    }


def install_record(kind: str, path: str, command: list[str], notes: list[str]) -> dict[str, Any]:
    """`install mount-helper` / `install systemd`: the file written and what it runs."""
    return {"installed": kind, "path": path, "command": command, "notes": notes}


def _ref(meta: SecretMeta) -> Ref:
    return Ref(Scope.from_key(meta.scope), meta.name)


def json_option(fn: F) -> F:
    """--json on a command that changes something: its record on stdout."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print what was done as JSON (schemas: docs/cli.md, JSON output).",
    )(fn)
