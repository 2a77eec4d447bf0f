"""Who may read what: `grant`, `revoke`, `permissions`, `secret chmod`, `secret chown`.

Each takes a TARGET: a secret reference (`db`, `@api/token`, `:staging/db`) or a scope
(`deployment`, `@api`, `env/staging` or `:staging`, `project/shop/prod` or `shop:prod`).
A text that reads as a scope is the scope: `deployment` is the deployment scope and
`$S:deployment` the secret named "deployment".
"""

from __future__ import annotations

from typing import Any

import click

from secretfs.access import Layer, Ownership, ReaderEntry, readers_of, resolve
from secretfs.cli.common import cli, emit_json, handle_errors, open_vault, store_option
from secretfs.cli.completion import REF_OR_SCOPE
from secretfs.cli.params import GROUP_ID, USER_ID, parse_id
from secretfs.cli.records import grant_record, json_option, owner_record, revoked_record
from secretfs.cli.secret import secret as secret_group
from secretfs.cli.values import parse_mode
from secretfs.errors import RefError, UsageError
from secretfs.refs import Ref, Scope, parse_ref, parse_scope
from secretfs.store import GrantRecord, SecretMeta
from secretfs.store.location import StoreLocation
from secretfs.vault import Target, Vault

INHERIT = "inherit"
DEFAULT_MOUNT_MODE = 0o400


def parse_target(text: str) -> Target:
    """A scope if the text reads as one, else a secret reference (whole secret only)."""
    try:
        return parse_scope(text)
    except RefError:
        pass
    try:
        ref = parse_ref(text)
    except RefError as exc:
        raise UsageError(f"{text!r} is neither a scope nor a secret reference: {exc}") from None
    if ref.field:
        raise UsageError(
            f"{text!r} names a field: ownership and grants apply to the whole secret"
            f" {ref.without_field()} (its field files follow it)"
        )
    return ref


def target_label(target: Target) -> str:
    return f"scope {target.key}" if isinstance(target, Scope) else str(target)


def parse_owner(text: str) -> dict[str, int | None]:
    """`UID`, `UID:GID`, `:GID` (names or numbers), each part may be `inherit`; a bare
    `inherit` resets both."""
    if text == INHERIT:
        return {"uid": None, "gid": None}
    user, sep, group = text.partition(":")
    if sep and not group:
        raise UsageError(f"{text!r}: a ':' must be followed by a group (UID:GID or :GID)")
    if not user and not sep:
        raise UsageError("an owner is UID, UID:GID or :GID (numbers or names), or 'inherit'")
    out: dict[str, int | None] = {}
    if user:
        out["uid"] = None if user == INHERIT else parse_id(user, "user")
    if group:
        out["gid"] = None if group == INHERIT else parse_id(group, "group")
    return out


def parse_mode_or_inherit(text: str) -> int | None:
    return None if text == INHERIT else parse_mode(text, "MODE (or 'inherit')")


def _show(key: str, value: int | None) -> str:
    if value is None:
        return INHERIT
    return f"{value:04o}" if key == "mode" else str(value)


# -- chmod / chown ---------------------------------------------------------------------


def _set_owner(
    store: StoreLocation | None,
    target_text: str,
    changes: dict[str, int | None],
    action: str,
    as_json: bool = False,
) -> None:
    target = parse_target(target_text)
    with open_vault(store) as vault:
        before, after = vault.set_owner(target, changes, action=action)
    shown = ", ".join(f"{k} {_show(k, before[k])} -> {_show(k, after[k])}" for k in changes)
    verb = "changed" if before != after else "unchanged"
    click.echo(f"{target_label(target)}: {verb} ({shown})", err=True)
    if as_json:
        key = target.key if isinstance(target, Scope) else str(target)
        emit_json(owner_record(key, before, after))


@secret_group.command()
@click.argument("target", metavar="REF|SCOPE", type=REF_OR_SCOPE)
@click.argument("mode", metavar="MODE")
@json_option
@store_option
@handle_errors
def chmod(store: StoreLocation | None, target: str, mode: str, as_json: bool = False) -> None:
    """Set the file mode of a secret, or the default of a whole scope.

    MODE is octal (0400, 440) or `inherit` (from the scope, then the mount). Seen by the
    mount within a second. Only read bits give access; the mount stays read-only.
    """
    _set_owner(store, target, {"mode": parse_mode_or_inherit(mode)}, "chmod", as_json)


@secret_group.command()
@click.argument("target", metavar="REF|SCOPE", type=REF_OR_SCOPE)
@click.argument("owner", metavar="UID[:GID]")
@json_option
@store_option
@handle_errors
def chown(store: StoreLocation | None, target: str, owner: str, as_json: bool = False) -> None:
    """Set the owner and/or group of a secret, or the defaults of a whole scope.

    OWNER is UID, UID:GID or :GID, numbers or names of this host; a part may be
    `inherit`, and a bare `inherit` resets both (to the scope's, then the mount's).
    """
    _set_owner(store, target, parse_owner(owner), "chown", as_json)


# -- grant / revoke ----------------------------------------------------------------------


def _principals(uids: tuple[int, ...], gids: tuple[int, ...]) -> list[tuple[str, int]]:
    return [("uid", u) for u in uids] + [("gid", g) for g in gids]


@cli.command()
@click.argument("target", metavar="REF|SCOPE", type=REF_OR_SCOPE)
@click.option("--uid", "uids", multiple=True, type=USER_ID, help="A user (repeatable).")
@click.option("--gid", "gids", multiple=True, type=GROUP_ID, help="A group (repeatable).")
@click.option(
    "--sealed-only",
    is_flag=True,
    help="Only the sealed form (.sealed/… in the mount), never the value: a relay.",
)
@json_option
@store_option
@handle_errors
def grant(
    store: StoreLocation | None,
    target: str,
    uids: tuple[int, ...],
    gids: tuple[int, ...],
    sealed_only: bool,
    as_json: bool = False,
) -> None:
    """Let more uids or gids read a secret, or every secret of a scope.

    A grant adds read access on top of the mode bits (supplementary groups count); it
    never gives more than read. With --sealed-only it lets them open only the sealed
    files of the mount (docs/sealed.md), never the value. Seen by the mount within a
    second.
    """
    principals = _principals(uids, gids)
    if not principals:
        raise UsageError("grant to whom? give --uid N and/or --gid N")
    parsed = parse_target(target)
    form = "sealed" if sealed_only else "plain"
    records = []
    with open_vault(store) as vault:
        for kind, principal in principals:
            added = vault.grant(parsed, kind, principal, form=form)
            state = "granted" if added else "already granted"
            what = "the sealed form of " if sealed_only else ""
            click.echo(
                f"{state}: {kind} {principal} may read {what}{target_label(parsed)}", err=True
            )
            target_text = parsed.key if isinstance(parsed, Scope) else str(parsed)
            action = "granted" if added else "already_granted"
            records.append(grant_record(target_text, action, kind, principal, form))
    if as_json:
        emit_json(records)


@cli.command()
@click.argument("target", metavar="REF|SCOPE", type=REF_OR_SCOPE)
@click.option("--uid", "uids", multiple=True, type=USER_ID, help="A user (repeatable).")
@click.option("--gid", "gids", multiple=True, type=GROUP_ID, help="A group (repeatable).")
@click.option("--all", "everyone", is_flag=True, help="Every grant on the target.")
@json_option
@store_option
@handle_errors
def revoke(
    store: StoreLocation | None,
    target: str,
    uids: tuple[int, ...],
    gids: tuple[int, ...],
    everyone: bool,
    as_json: bool = False,
) -> None:
    """Remove every matching grant, and say how many.

    On a scope, this removes the scope-wide grants and those on each secret of the scope.
    """
    principals = _principals(uids, gids)
    if bool(principals) == everyone:
        raise UsageError("revoke what? give --uid N and/or --gid N, or --all")
    parsed = parse_target(target)
    with open_vault(store) as vault:
        removed = vault.revoke(parsed, None if everyone else principals)
        left = [] if isinstance(parsed, Scope) else vault.grants(parsed)
    for g in removed:
        click.echo(f"revoked: {g.kind} {g.principal} on {_grant_on(g)}", err=True)
    click.echo(f"{len(removed)} grant{'s' if len(removed) != 1 else ''} revoked", err=True)
    for g in left:
        if (g.kind, g.principal) in set(principals):
            click.echo(
                f"note: {g.kind} {g.principal} can still read {parsed} through the grant on"
                f" {_grant_on(g)}",
                err=True,
            )
    if as_json:
        emit_json([revoked_record(g) for g in removed])


def _grant_on(g: GrantRecord) -> str:
    scope = Scope.from_key(g.scope)
    return f"scope {scope.key}" if not g.name else str(Ref(scope, g.name))


# -- permissions -------------------------------------------------------------------------


def _reader_json(r: ReaderEntry) -> dict[str, Any]:
    return {"who": r.who, "id": r.id, "via": r.via, "on": r.on}


def _reader_text(r: ReaderEntry, mode: int) -> str:
    who = {"uid": "uid", "gid": "gid", "everyone": "everyone"}[r.who]
    ident = (
        f"{who} {r.id}"
        if r.id is not None
        else ("everyone" if r.who == "everyone" else f"{who} of the mount")
    )
    if r.via == "grant":
        return f"{ident:<20} grant on {r.on}"
    if r.via == "sealed-grant":
        return f"{ident:<20} sealed form only (.sealed/…), grant on {r.on}"
    bits = {"owner": (mode >> 6) & 7, "group": (mode >> 3) & 7, "other": mode & 7}[r.via]
    return f"{ident:<20} {r.via}, mode {_rwx(bits)}"


def _rwx(bits: int) -> str:
    return "".join(c if bits & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))


def _secret_permissions(
    vault: Vault, meta: SecretMeta, mount: Layer
) -> tuple[Ownership, list[ReaderEntry]]:
    scope = vault.scope_meta(Scope.from_key(meta.scope))
    own = resolve(
        Layer(meta.uid, meta.gid, meta.mode), Layer(scope.uid, scope.gid, scope.mode), mount
    )
    ref = Ref(Scope.from_key(meta.scope), meta.name)
    granted = vault.grants(ref)
    grants = [(g.kind, g.principal, _grant_on(g)) for g in granted if g.form == "plain"]
    # A sealed-only grant reads no plaintext: listed last, apart from the readers.
    sealed = [
        ReaderEntry(g.kind, g.principal, "sealed-grant", _grant_on(g))
        for g in granted
        if g.form == "sealed"
    ]
    return own, readers_of(own, grants) + sealed


def _ownership_json(own: Ownership) -> dict[str, Any]:
    return {
        "uid": own.uid,
        "uid_from": own.uid_from,
        "gid": own.gid,
        "gid_from": own.gid_from,
        "mode": None if own.mode is None else f"{own.mode:04o}",
        "mode_from": own.mode_from,
    }


def _ownership_lines(own: Ownership, scope_key: str, indent: str) -> list[str]:
    def source(attr: str, origin: str) -> str:
        if origin == "secret":
            return "set on the secret"
        if origin == "scope":
            return f"default of scope {scope_key}"
        return {
            "uid": "the mount's user (who runs `secretfs mount`, or its --uid)",
            "gid": "the mount's group (of who runs `secretfs mount`, or its --gid)",
            "mode": "the mount's default (0400 unless `secretfs mount --mode`)",
        }[attr]

    uid = "-" if own.uid is None else str(own.uid)
    gid = "-" if own.gid is None else str(own.gid)
    mode = "-" if own.mode is None else f"{own.mode:04o}"
    return [
        f"{indent}owner  uid {uid:<8} {source('uid', own.uid_from)}",
        f"{indent}group  gid {gid:<8} {source('gid', own.gid_from)}",
        f"{indent}mode   {mode:<12} {source('mode', own.mode_from)}",
    ]


@cli.command()
@click.argument("target", metavar="REF|SCOPE", type=REF_OR_SCOPE)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--mount-mode",
    default="0400",
    show_default=True,
    help="The mount's default mode (`secretfs mount --mode`), for secrets that inherit it.",
)
@store_option
@handle_errors
def permissions(store: StoreLocation | None, target: str, as_json: bool, mount_mode: str) -> None:
    """Who may read a secret (or each secret of a scope), and why.

    Readers come from the mode's read bits (owner, group, everyone) and from grants on
    the secret or its scope. uid 0 is not special: root reads only as one of these.
    """
    parsed = parse_target(target)
    mode = parse_mode(mount_mode)
    mount = Layer(None, None, DEFAULT_MOUNT_MODE if mode is None else mode)
    with open_vault(store) as vault:
        vault.check_integrity()
        if isinstance(parsed, Ref):
            meta = vault.meta(parsed)
            own, readers = _secret_permissions(vault, meta, mount)
            if as_json:
                emit_json(_secret_json(meta, own, readers))
                return
            click.echo(f"{parsed}  ({parsed.path})")
            _print_secret(own, readers, meta.scope, "  ")
            click.echo("uid 0 (root) is not special: it reads only as one of the above.")
            return
        scope_meta = vault.scope_meta(parsed)
        scope_own = resolve(Layer(), Layer(scope_meta.uid, scope_meta.gid, scope_meta.mode), mount)
        scope_grants = vault.backend.list_grants(parsed.key, "")
        secrets = [
            (m, *_secret_permissions(vault, m, mount)) for m in vault.list_secrets(parsed.key)
        ]
    if as_json:
        emit_json(
            {
                "scope": parsed.key,
                **_ownership_json(scope_own),
                "grants": [
                    {"who": g.kind, "id": g.principal, "form": g.form} for g in scope_grants
                ],
                "secrets": [_secret_json(m, o, r) for m, o, r in secrets],
            }
        )
        return
    click.echo(f"scope {parsed.key}: defaults for its secrets")
    for line in _ownership_lines(scope_own, parsed.key, "  "):
        click.echo(line.replace("default of scope " + parsed.key, "set on the scope"))
    shown = (
        ", ".join(
            f"{g.kind} {g.principal}" + (" (sealed only)" if g.form == "sealed" else "")
            for g in scope_grants
        )
        or "none"
    )
    click.echo(f"  grants on the whole scope: {shown}")
    for meta, own, readers in secrets:
        click.echo(f"{Ref(parsed, meta.name)}")
        _print_secret(own, readers, meta.scope, "  ")
    if not secrets:
        click.echo("(no secrets in this scope yet)")
    click.echo("uid 0 (root) is not special: it reads only as one of the above.")


def _secret_json(meta: SecretMeta, own: Ownership, readers: list[ReaderEntry]) -> dict[str, Any]:
    ref = Ref(Scope.from_key(meta.scope), meta.name)
    return {
        "ref": str(ref),
        "path": ref.path,
        **_ownership_json(own),
        "readers": [_reader_json(r) for r in readers],
    }


def _print_secret(own: Ownership, readers: list[ReaderEntry], scope_key: str, indent: str) -> None:
    for line in _ownership_lines(own, scope_key, indent):
        click.echo(line)
    assert own.mode is not None
    click.echo(f"{indent}readers:")
    for r in readers:
        click.echo(f"{indent}  {_reader_text(r, own.mode)}")
    if not readers:
        click.echo(f"{indent}  nobody (no read bit and no grant)")
