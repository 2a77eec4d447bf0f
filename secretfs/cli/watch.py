"""`secretfs watch`: print each change to the store's secrets as it happens."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

import click

from secretfs.cli.common import cli, handle_errors, store_option, store_path
from secretfs.errors import StoreError
from secretfs.follow import POLL_SECONDS, Follower, Selection
from secretfs.store.location import StoreLocation


@cli.command()
@click.argument("targets", nargs=-1, metavar="[REF|SCOPE]...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per change and line.")
@store_option
@handle_errors
def watch(targets: tuple[str, ...], as_json: bool, store: StoreLocation | None) -> None:
    """Print each change to these secrets (all, when none is given) as it happens.

    A change is a new version (old -> new, marked "same value" when the value did not
    change), a new secret or a removed one, each with the time it was written. Reads
    only metadata: no key is needed and no value is decrypted. Runs until SIGTERM or
    SIGINT (Ctrl-C), then exits 0.
    """
    selection = Selection.parse(targets)
    backend = store_path(store).open(readonly=True)
    stop = threading.Event()
    try:
        if backend.meta_get("store_id") is None:
            raise StoreError(f"{backend.name} is not an initialized secretfs store")
        follower = Follower(backend, selection)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _s, _f: stop.set())
        what = "every secret" if selection.everything else " ".join(targets)
        click.echo(f"watching {what} in {backend.name} (Ctrl-C to stop)", err=True)
        while not stop.wait(POLL_SECONDS):
            for change in follower.poll(time.time_ns()):
                line = json.dumps(change.to_json()) if as_json else change.to_text()
                click.echo(line)
            sys.stdout.flush()
    except BrokenPipeError:
        pass  # our reader went away (`watch | head -1`): nothing left to do
    finally:
        backend.close()
