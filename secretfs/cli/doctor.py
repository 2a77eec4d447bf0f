"""`secretfs doctor`."""

from __future__ import annotations

import sys

import click

from secretfs import doctor as checks
from secretfs.cli.common import cli, handle_errors, store_option, store_path
from secretfs.store.location import StoreLocation


@cli.command()
@store_option
@click.option(
    "--allow-other",
    is_flag=True,
    help="Also check that this user may mount with -o allow_other.",
)
@click.option(
    "--accept-restore",
    is_flag=True,
    help="Accept the store as it is now after a deliberate restore (audited): its rows"
    " are tagged again and this host's record of the newest state is reset.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def doctor(
    store: StoreLocation | None, allow_other: bool, accept_restore: bool, as_json: bool
) -> None:
    """Check this machine and the store, and say what to do about each problem.

    \b
    machine: /dev/fuse, fusermount3, user_allow_other (with --allow-other)
    store:   file modes (store, -wal, -shm, key file), the key source, that the key
             opens it, PRAGMA integrity_check, that every stored version decrypts,
             no key rotation or re-encryption left half done, expired secrets
             (an etcd store: that the cluster answers, instead of file modes)
    mounts:  each secretfs mount on this machine serves current data (not stale)

    Also: every access row (secret owner/mode/version, scope defaults, grants) and the
    store's digest verify under the key, and the store is not older than this host last
    saw it (a rollback or restore; `--accept-restore` accepts a deliberate one).

    Exits 0 when healthy (warnings allowed), 6 when metadata fails verification, 1 when
    another check failed.
    """
    report = checks.run(store_path(store), allow_other=allow_other, accept_restore=accept_restore)
    click.echo(checks.dumps(report) if as_json else checks.render(report))
    sys.exit(0 if report.healthy else 6 if report.tampered else 1)
