"""`secretfs registry …` and `secretfs git …`: typed credentials stored as ready-to-use
files (see secretfs/credentials.py for the formats)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from secretfs import credentials as creds
from secretfs.cli.common import cli, emit_json, handle_errors, open_vault, store_option
from secretfs.cli.params import GROUP_ID, USER_ID
from secretfs.cli.records import json_option, write_record
from secretfs.cli.values import parse_optional_mode, read_stdin
from secretfs.errors import NotFoundError, UsageError
from secretfs.files import INPUT_LIMIT, read_file_limited
from secretfs.refs import Ref, parse_ref, validate_name
from secretfs.store.location import StoreLocation

F = TypeVar("F", bound=Callable[..., Any])


def _owner_options(default_mode: str | None) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        fn = click.option(
            "--mode",
            "mode_text",
            default=default_mode,
            show_default=default_mode is not None,
            metavar="OCTAL",
            help="File mode in the mount"
            + ("." if default_mode else " (default: the scope's, else the mount's)."),
        )(fn)
        fn = click.option("--gid", type=GROUP_ID, help="Group in the mount (number or name).")(fn)
        return click.option("--uid", type=USER_ID, help="Owner in the mount (number or name).")(fn)

    return decorate


def _owner(uid: int | None, gid: int | None, mode_text: str | None) -> dict[str, int | None]:
    return {"uid": uid, "gid": gid, "mode": parse_optional_mode(mode_text)}


def _whole_secret(text: str) -> Ref:
    ref = parse_ref(text)
    if ref.field:
        raise UsageError(f"--secret names a whole secret, not a field: {ref.without_field()}")
    return ref


_SECRET_HELP = (
    f"The secret holding the config.json (default {creds.DEFAULT_REGISTRY_REF});"
    " logins for several registries share it."
)


# --------------------------------------------------------------------------- registry


@cli.group()
def registry() -> None:
    """Container registry logins, kept as one Docker config.json secret.

    The mounted file works as ~/.docker/config.json, as podman/skopeo/buildah
    --authfile, and as a Kubernetes .dockerconfigjson.
    """


@registry.command(name="add")
@click.argument("registry_name", metavar="REGISTRY")
@click.option("--username", "-u", required=True, help="The registry user name.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option(
    "--token-stdin",
    is_flag=True,
    help="Read an access token from standard input (sent as the password, as registries expect).",
)
@click.option(
    "--secret", "secret_ref", metavar="REF", default=creds.DEFAULT_REGISTRY_REF, help=_SECRET_HELP
)
@_owner_options(None)
@json_option
@store_option
@handle_errors
def registry_add(
    registry_name: str,
    username: str,
    password_stdin: bool,
    token_stdin: bool,
    secret_ref: str,
    uid: int | None,
    gid: int | None,
    mode_text: str | None,
    store: StoreLocation | None,
    as_json: bool = False,
) -> None:
    """Add (or replace) the login for REGISTRY in the config secret.

    Other registries already in the secret are kept. The password or token is read from
    standard input only (one trailing newline is dropped, as `docker login
    --password-stdin` does), so it never appears in the process list.
    """
    if password_stdin == token_stdin:
        raise UsageError("give exactly one of --password-stdin or --token-stdin")
    what = "password" if password_stdin else "token"
    key = creds.registry_key(registry_name)
    user = creds.check_username(username)
    ref = _whole_secret(secret_ref)
    password = creds.read_login_secret(read_stdin(INPUT_LIMIT, f"the {what}"), what)
    replaced = False

    def change(old: bytes | None) -> bytes:
        nonlocal replaced
        doc = creds.load_docker_config(old, str(ref))
        replaced = creds.set_auth(doc, key, user, password)
        return creds.dump_docker_config(doc)

    with open_vault(store) as vault:
        result = vault.update(ref, change, **_owner(uid, gid, mode_text))
    verb = "replaced" if replaced else "added"
    click.echo(
        f"{verb} the login for {key} (user {user}) in {ref}, version {result.meta.version}"
        f" (mounted at {ref.path})",
        err=True,
    )
    if as_json:
        emit_json(write_record(result))


@registry.command(name="ls")
@click.option(
    "--secret", "secret_ref", metavar="REF", default=creds.DEFAULT_REGISTRY_REF, help=_SECRET_HELP
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@store_option
@handle_errors
def registry_ls(secret_ref: str, as_json: bool, store: StoreLocation | None) -> None:
    """List the registries in the config secret and their user names (never passwords)."""
    ref = _whole_secret(secret_ref)
    with open_vault(store) as vault:
        try:
            value = vault.get_value(ref)
        except NotFoundError:
            raise NotFoundError(
                f"no registry logins: {ref} does not exist (add one with `secretfs registry add`)"
            ) from None
    logins = creds.list_logins(creds.load_docker_config(value, str(ref)))
    if as_json:
        emit_json(
            [{"registry": x.registry, "username": x.username, "kind": x.kind} for x in logins]
        )
        return
    if not logins:
        click.echo(f"no registry logins in {ref}", err=True)
        return
    width = max(len("REGISTRY"), *(len(x.registry) for x in logins))
    click.echo(f"{'REGISTRY':<{width}}  USERNAME")
    for x in logins:
        shown = x.username if x.username is not None else f"({x.kind})"
        click.echo(f"{x.registry:<{width}}  {shown}")


@registry.command(name="rm")
@click.argument("registry_name", metavar="REGISTRY")
@click.option(
    "--secret", "secret_ref", metavar="REF", default=creds.DEFAULT_REGISTRY_REF, help=_SECRET_HELP
)
@json_option
@store_option
@handle_errors
def registry_rm(
    registry_name: str, secret_ref: str, store: StoreLocation | None, as_json: bool = False
) -> None:
    """Remove the login for REGISTRY (the other logins stay)."""
    ref = _whole_secret(secret_ref)
    removed = ""

    def change(old: bytes | None) -> bytes:
        nonlocal removed
        if old is None:
            raise NotFoundError(f"secret {ref} not found: there are no registry logins in it")
        doc = creds.load_docker_config(old, str(ref))
        removed = registry_name if registry_name in doc["auths"] else ""
        removed = removed or creds.registry_key(registry_name)
        creds.remove_auth(doc, removed, str(ref))
        return creds.dump_docker_config(doc)

    with open_vault(store) as vault:
        result = vault.update(ref, change)
    click.echo(
        f"removed the login for {removed} from {ref}, version {result.meta.version}", err=True
    )
    if as_json:
        emit_json(write_record(result))


# --------------------------------------------------------------------------- git


@cli.group()
def git() -> None:
    """Git credentials: a personal access token or an SSH private key, one per secret.

    Each is mounted as a file that works as it is: a token file for GIT_ASKPASS or a
    credential helper, or a key for `ssh -i` / GIT_SSH_COMMAND (mode 0400 by default).
    """


@git.command(name="add")
@click.argument("name")
@click.option("--pat-stdin", is_flag=True, help="Read a personal access token from stdin.")
@click.option(
    "--ssh-key-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Read an SSH private key from this file.",
)
@click.option(
    "--secret",
    "secret_ref",
    metavar="REF",
    default=None,
    help=f"Where to keep it (default {creds.GIT_SCOPE}/NAME).",
)
@_owner_options("0400")
@json_option
@store_option
@handle_errors
def git_add(
    name: str,
    pat_stdin: bool,
    ssh_key_file: Path | None,
    secret_ref: str | None,
    uid: int | None,
    gid: int | None,
    mode_text: str,
    store: StoreLocation | None,
    as_json: bool = False,
) -> None:
    """Store a git credential NAME as a token file or an SSH key file.

    A new version replaces the previous one if NAME exists. The file is mode 0400 in the
    mount unless --mode says otherwise (ssh refuses a key that others can read).
    """
    if pat_stdin == (ssh_key_file is not None):
        raise UsageError("give exactly one of --pat-stdin or --ssh-key-file FILE")
    ref = _whole_secret(secret_ref or f"{creds.GIT_SCOPE}/{validate_name(name)}")
    if pat_stdin:
        token = read_stdin(INPUT_LIMIT, "the token")
        value, kind = creds.check_token(token), "token"
    else:
        assert ssh_key_file is not None
        data = read_file_limited(ssh_key_file, INPUT_LIMIT)
        value, kind = creds.check_ssh_private_key(data), "SSH private key"
    with open_vault(store) as vault:
        result = vault.set(ref, value, **_owner(uid, gid, mode_text))
    verb = "updated" if result.previous_version else "added"
    mode = result.meta.mode
    shown_mode = f", mode {mode:04o}" if mode is not None else ""
    click.echo(
        f"{verb} {kind} {ref}, version {result.meta.version} (mounted at {ref.path}{shown_mode})",
        err=True,
    )
    if as_json:
        emit_json(write_record(result))
