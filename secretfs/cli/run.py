"""`secretfs run -- CMD` and `secretfs inject`: references in, values out."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from secretfs import keys
from secretfs import run as runner
from secretfs.cli.common import cli, handle_errors, store_option, store_path
from secretfs.cli.values import parse_mode
from secretfs.errors import ConflictError, UsageError
from secretfs.files import INPUT_LIMIT, read_file_limited, read_limited, write_file_atomically
from secretfs.store.location import StoreLocation
from secretfs.vault import Vault


def _warn(lines: list[str]) -> None:
    for line in lines:
        click.echo(f"warning: {line}", err=True)


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option(
    "--scrub",
    is_flag=True,
    help="Run CMD as a child and replace every resolved value (and any key material in"
    " our environment) in its stdout and stderr with ***.",
)
@click.option(
    "--pass-key-env",
    is_flag=True,
    help="Pass $SECRETFS_KEY / $SECRETFS_PASSWORD on to CMD. Without it CMD never gets the"
    " store's key: it can read only the values its references name.",
)
@click.option(
    "--on-change",
    metavar="SIGNAL|restart",
    help="Keep CMD as a child; when a secret it uses gets a new value, send it SIGNAL"
    " (HUP, USR1, ...) or restart it with the new values (docs: watching for changes).",
)
@click.option(
    "--debounce",
    type=float,
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="With --on-change: act once the store has been quiet this long.",
)
@click.option(
    "--watch",
    "watch",
    multiple=True,
    metavar="REF|SCOPE",
    help="With --on-change: follow this secret or scope too (what CMD reads from the mount).",
)
@store_option
@click.argument(
    "command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD [ARG]..."
)
@handle_errors
def run(
    store: StoreLocation | None,
    scrub: bool,
    pass_key_env: bool,
    on_change: str | None,
    debounce: float,
    watch: tuple[str, ...],
    command: tuple[str, ...],
) -> None:
    """Run CMD with every secret reference in the environment replaced by its value.

    An environment value that is a reference ($S:db, $S:@api/token/field,
    $secret://staging/KEY) becomes the secret's value; {{ $S:ref }} inside a longer value
    is replaced in place. If any reference cannot be resolved, CMD is not run and every
    failing reference is listed. Arguments are never expanded: values reach CMD only
    through its environment. CMD never gets the store's key ($SECRETFS_KEY,
    $SECRETFS_PASSWORD) unless --pass-key-env is given.
    """
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("give the command to run after --, e.g. secretfs run -- env")
    if on_change is not None or watch:
        _run_on_change(store, scrub, pass_key_env, on_change, debounce, watch, argv)
    env = keys.child_environment(os.environb, pass_key=pass_key_env)
    # The store is opened only when there is something to read from it.
    vault = Vault.open(store_path(store), readonly=True) if runner.references_in(env) else None
    try:
        resolver = runner.Resolver(vault) if vault is not None else None
        env, res = runner.resolve_env(env, resolver.resolve if resolver else runner.no_store)
    finally:
        if vault is not None:
            vault.close()
    _warn(res.warnings)
    res.fail_if_any(f"not running {argv[0]}")
    values = [*res.used, *keys.key_material_forms()]
    if not scrub:
        sys.stdout.flush()
        sys.stderr.flush()
        runner.exec_command(argv, env)
    status = runner.run_scrubbed(argv, env, values)
    del values, env
    sys.exit(runner.exit_like(status))


def _run_on_change(
    store: StoreLocation | None,
    scrub: bool,
    pass_key_env: bool,
    on_change: str | None,
    debounce: float,
    watch: tuple[str, ...],
    argv: list[str],
) -> None:
    from secretfs.onchange import run_on_change

    if on_change is None:
        raise UsageError("--watch goes with --on-change SIGNAL|restart")
    if scrub:
        raise UsageError("--scrub and --on-change cannot be used together yet")
    env = keys.child_environment(os.environb, pass_key=pass_key_env)
    status = run_on_change(store_path(store), argv, env, on_change, debounce, watch)
    sys.exit(runner.exit_like(status))


@cli.command()
@click.option(
    "-i",
    "--in-file",
    "template",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default="-",
    show_default="standard input",
    help="The template to render.",
)
@click.option(
    "-o",
    "--out-file",
    "out",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default="-",
    show_default="standard output",
    help="Where to write the result: created with mode 0600 (or --mode).",
)
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@click.option(
    "--mode", "mode_text", default="0600", show_default=True, metavar="OCTAL", help="Mode of FILE."
)
@store_option
@handle_errors
def inject(
    template: Path, out: Path, force: bool, mode_text: str, store: StoreLocation | None
) -> None:
    """Render a template: each {{ $S:ref }} becomes the secret's value.

    {{ $secret://env/KEY }} works too. Nothing is written unless every reference
    resolves; the failing ones are listed with their line numbers. FILE is written to a
    new file (O_EXCL, mode 0600) in its directory and renamed into place, so readers
    never see a partial file; an existing FILE is replaced only with --force.
    """
    mode = parse_mode(mode_text)
    text = _read_template(template)
    if str(out) != "-" and not force and out.exists():
        raise ConflictError(f"{out} exists: use --force to replace it")
    vault = Vault.open(store_path(store), readonly=True)
    try:
        res = runner.Resolution()
        rendered = runner.render(text, runner.Resolver(vault).resolve, res)
    finally:
        vault.close()
    res.fail_if_any(f"not writing {'standard output' if str(out) == '-' else out}")
    if str(out) == "-":
        sys.stdout.buffer.write(rendered)
        sys.stdout.buffer.flush()
    else:
        write_file_atomically(out, rendered, mode=mode, replace=force)
        click.echo(f"wrote {out} ({res.count} references, mode {mode:04o})", err=True)


def _read_template(path: Path) -> bytes:
    if str(path) == "-":
        return read_limited(sys.stdin.buffer, INPUT_LIMIT, "the template")
    return read_file_limited(path, INPUT_LIMIT, f"template {path}")
