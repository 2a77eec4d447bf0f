"""`--uid`/`--gid`/`--owner` take a number (it need not exist on this host) or a user or
group name of this host, on every command, through one shared click type (issue 12.4)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from secretfs.cli import commands
from secretfs.cli.params import OwnerId
from tests.conftest import Cli
from tests.test_cli_inputs import _params

OWNER_OPTIONS = {"uid", "gid", "uids", "gids", "owner_uid"}


def test_every_owner_option_takes_names_and_numbers_through_one_type() -> None:
    found = [(where, p) for where, p in _params(commands()) if p.name in OWNER_OPTIONS]
    # secret create/set, mount, grant, revoke, client-key add, the credential commands.
    assert len(found) >= 10, [w for w, _ in found]
    wrong = [f"{w} {p.name}" for w, p in found if not isinstance(p.type, OwnerId)]
    assert not wrong


def _meta(cli: Cli, ref: str) -> dict[str, object]:
    records = json.loads(cli("secret", "ls", "--json").stdout)
    return next(r for r in records if r["ref"].endswith(ref))  # type: ignore[no-any-return]


def test_secret_set_takes_user_and_group_names(cli: Cli, initialized_store: Path) -> None:
    cli("secret", "set", "db", "--from-stdin", "--uid", "www-data", "--gid", "nogroup", input=b"v")
    meta = _meta(cli, "db")
    assert (meta["uid"], meta["gid"]) == (33, 65534)
    # A container's user need not exist here: any number in range goes through.
    cli("secret", "set", "db", "--from-stdin", "--uid", "70999", "--gid", "70998", input=b"w")
    meta = _meta(cli, "db")
    assert (meta["uid"], meta["gid"]) == (70999, 70998)


def test_an_unknown_name_is_a_usage_error_that_says_to_use_a_number(
    cli: Cli, initialized_store: Path
) -> None:
    for args in (
        ["secret", "set", "db", "--from-stdin", "--uid", "no-such-user-xyz"],
        ["secret", "create", "db", "--from-stdin", "--gid", "no-such-group-xyz"],
        ["grant", "db", "--gid", "no-such-group-xyz"],
    ):
        proc = cli(*args, input=b"v", check=False)
        assert proc.returncode == 2, proc.stderr
        assert b"no-such-" in proc.stderr and b"give a numeric id" in proc.stderr
        assert b"Traceback" not in proc.stderr


def test_grant_takes_names(cli: Cli, initialized_store: Path) -> None:
    cli("secret", "set", "db", "--from-stdin", input=b"v")
    out = cli("grant", "db", "--uid", "nobody", "--gid", "www-data")
    assert b"uid 65534" in out.stderr and b"gid 33" in out.stderr


def test_mount_o_uid_takes_a_name_or_refuses_an_unknown_one(
    cli: Cli, initialized_store: Path, tmp_path: Path
) -> None:
    (tmp_path / "mnt").mkdir()
    proc = cli("mount", str(tmp_path / "mnt"), "-o", "uid=no-such-user-xyz", check=False)
    assert proc.returncode == 2 and b"no user named" in proc.stderr


def test_owner_type_in_help() -> None:
    ctx = click.Context(commands())
    secret = commands().commands["secret"]
    assert isinstance(secret, click.Group)
    assert "--uid UID|NAME" in secret.commands["set"].get_help(ctx)
