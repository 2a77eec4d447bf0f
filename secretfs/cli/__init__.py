"""`secretfs`: the control CLI. Every write to the store goes through here.

`common.py` holds the group and what the commands share; each other module registers its
commands on that group when `commands()` imports it.
"""

from __future__ import annotations

import click

from secretfs.cli.common import cli
from secretfs.hardening import no_core_dumps
from secretfs.store import location


def commands() -> click.Group:
    """The CLI with every command registered: used by main() and by the docs build."""
    # Each module registers its commands.
    from secretfs.cli import (  # noqa: F401
        access,
        audit,
        batch,
        client_keys,
        completion,
        config,
        credentials,
        doctor,
        install,
        key,
        mount,
        node,
        run,
        secret,
        setup,
        transfer,
        versions,
        watch,
    )

    return cli


def main() -> None:
    # Before any key or value is in memory: a core of the CLI would hold them.
    no_core_dumps(keep_hard_limit=True)
    location.MEMORY_STORES = False
    commands()(prog_name="secretfs")


__all__ = ["cli", "commands", "main"]
