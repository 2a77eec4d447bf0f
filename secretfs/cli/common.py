"""What every command module shares: the `secretfs` group, `--store`, opening the store,
JSON output and the one error handler (the commands import this, never the package)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from secretfs import __version__
from secretfs.errors import SecretfsError
from secretfs.store.location import StoreLocation, default_location, location_of
from secretfs.store.location import parse as parse_location
from secretfs.vault import Vault

F = TypeVar("F", bound=Callable[..., Any])


class StoreParam(click.ParamType):  # type: ignore[type-arg]
    """A store file path, `sqlite:///path`, or `etcd://host:2379,host:2379/prefix`."""

    name = "store"

    def convert(self, value: Any, param: Any, ctx: Any) -> StoreLocation:
        if not isinstance(value, str):  # already converted (a default, or a second pass)
            return location_of(value)
        try:
            return parse_location(value)
        except SecretfsError as exc:
            self.fail(str(exc), param, ctx)


def store_option(fn: F) -> F:
    return click.option(
        "--store",
        "store",
        type=StoreParam(),
        default=None,
        metavar="PATH|URL",
        help="The store: a file path or sqlite:///path, or etcd://host:2379,host:2379/prefix"
        " (default: $SECRETFS_STORE, else /var/lib/secretfs/store.db for root, else"
        " ~/.local/share/secretfs/store.db).",
    )(fn)


def store_path(store: StoreLocation | None) -> StoreLocation:
    """The store given, else $SECRETFS_STORE (a path or URL), else the default file."""
    return store if store is not None else default_location()


@contextmanager
def open_vault(store: StoreLocation | None) -> Iterator[Vault]:
    vault = Vault.open(store_path(store))
    try:
        yield vault
    finally:
        vault.close()


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def handle_errors(fn: F) -> F:
    """Turn our errors into a one-line message and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SecretfsError as exc:
            click.echo(f"secretfs: error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="secretfs")
def cli() -> None:
    """Secrets as plain files: an encrypted store, a read-only FUSE mount, this CLI."""
