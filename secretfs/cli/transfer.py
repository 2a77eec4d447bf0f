"""`secretfs import` and `secretfs export`: dotenv, JSON and Kubernetes Secret files.

Formats are parsed and rendered by `secretfs.formats` (pure); this module reads and
writes the files and the store. An import is one transaction: all of it, or (without
`--partial`) none of it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from secretfs import formats
from secretfs.cli.common import cli, emit_json, handle_errors, open_vault, store_option
from secretfs.cli.completion import SCOPE
from secretfs.errors import ConflictError, TooLargeError, UsageError
from secretfs.files import IMPORT_LIMIT, read_file_limited, read_limited, write_file_atomically
from secretfs.formats import Format, FormatError, Problem
from secretfs.refs import DEPLOYMENT, Ref, Scope, parse_scope
from secretfs.store.location import StoreLocation
from secretfs.vault import BulkOutcome, ExistingPolicy, Writable

_STDIO = Path("-")


def _scope(text: str | None) -> Scope:
    return parse_scope(text) if text else DEPLOYMENT


def _format(fmt: str | None, path: Path | None, allowed: tuple[Format, ...]) -> Format:
    if fmt is not None:
        return fmt  # type: ignore[return-value]  # click.Choice checked it
    guessed = formats.format_for_path(str(path)) if path not in (None, _STDIO) else None
    if guessed is None or guessed not in allowed:
        raise UsageError(f"give --format ({'|'.join(allowed)})")
    return guessed


def _read_input(path: Path | None) -> bytes:
    if path is None or path == _STDIO:
        if sys.stdin.isatty():
            raise UsageError("no input: give --file FILE, or pipe the file to standard input")
        return read_limited(sys.stdin.buffer, IMPORT_LIMIT, "standard input")
    return read_file_limited(path, IMPORT_LIMIT)


class ImportFailed(UsageError):
    """Some lines were not imported (exit 2; 4 when every failure was a name conflict)."""

    def __init__(self, message: str, *, conflicts_only: bool) -> None:
        super().__init__(message)
        if conflicts_only:
            self.exit_code = ConflictError.exit_code


@cli.command(name="import")
@click.argument("scope", type=SCOPE, required=False)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(formats.IMPORT_FORMATS),
    help="Input format (default: from the file name: .env, .json, .yaml/.yml).",
)
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Read this file ('-' or none: standard input).",
)
@click.option(
    "--partial",
    is_flag=True,
    help="Import the good lines and report the bad ones (exit non-zero if any failed).",
)
@click.option(
    "--overwrite", is_flag=True, help="Add a new version to secrets that exist (unless equal)."
)
@click.option("--skip-existing", is_flag=True, help="Leave secrets that exist as they are.")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@click.option("--dry-run", is_flag=True, help="Only say what would be created, updated or skipped.")
@store_option
@handle_errors
def import_(
    store: StoreLocation | None,
    scope: str | None,
    fmt: str | None,
    path: Path | None,
    partial: bool,
    overwrite: bool,
    skip_existing: bool,
    as_json: bool,
    dry_run: bool = False,
) -> None:
    """Import secrets into SCOPE (default: deployment) from a dotenv, JSON or
    Kubernetes Secret file: all of them in one transaction, or none (on etcd, in
    batches that each commit whole: docs/cluster.md).

    A name that exists already is an error unless --overwrite or --skip-existing.
    Errors name the line (`line 7: missing '='`), never a value.
    """
    if overwrite and skip_existing:
        raise UsageError("give at most one of --overwrite and --skip-existing")
    existing: ExistingPolicy = "overwrite" if overwrite else "skip" if skip_existing else "fail"
    target = _scope(scope)
    parsed = formats.parse(_format(fmt, path, formats.IMPORT_FORMATS), _read_input(path))
    problems = list(parsed.problems)
    with open_vault(store) as vault:
        items: list[Writable] = []
        lines: dict[str, int] = {}
        for entry in parsed.entries:
            ref = Ref(target, entry.name)
            try:
                items.append(vault.check_writable(ref, entry.value))
            except TooLargeError as exc:
                problems.append(Problem(entry.line, f"{entry.name!r}: {exc}"))
                continue
            lines[entry.name] = entry.line
        if problems and not partial:
            problems.sort(key=lambda p: p.line or 0)
            if dry_run:
                raise FormatError(problems, f"{len(problems)} problem(s): would import nothing")
            with vault.refusals_recorded("import", target):
                raise FormatError(problems, f"{len(problems)} problem(s), nothing was imported")
        write = vault.plan_many if dry_run else vault.write_many
        outcomes = write(items, existing=existing, partial=partial) if items else []
    conflicts = [
        Problem(
            lines[o.ref.name],
            f"{o.ref.name!r} exists already (409): use --overwrite or --skip-existing",
        )
        for o in outcomes
        if o.action == "conflict"
    ]
    failed = sorted(problems + conflicts, key=lambda p: p.line or 0)
    counts = {a: 0 for a in ("created", "updated", "unchanged", "skipped")}
    for o in outcomes:
        if o.action in counts:
            counts[o.action] += 1
    summary = (
        ("would import into " if dry_run else "imported into ")
        + f"{target}: "
        + ", ".join(f"{n} {a}" for a, n in counts.items())
        + (f"; {len(failed)} failed" if failed else "")
    )
    if as_json:
        emit_json(_report(target, outcomes, failed))
    click.echo(summary + ("; nothing was changed (--dry-run)" if dry_run else ""), err=True)
    if failed:
        raise ImportFailed(
            str(FormatError(failed, f"{len(failed)} line(s) not imported")),
            conflicts_only=not problems,
        )


def _report(target: Scope, outcomes: list[BulkOutcome], failed: list[Problem]) -> dict[str, Any]:
    report: dict[str, Any] = {"scope": target.key}
    for action in ("created", "updated", "unchanged", "skipped"):
        report[action] = [str(o.ref) for o in outcomes if o.action == action]
    report["failed"] = [{"line": p.line, "message": p.message} for p in failed]
    return report


@cli.command(name="export")
@click.argument("scope", type=SCOPE, required=False)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(formats.EXPORT_FORMATS),
    help="Output format (default: from the file name: .env, .json, .yaml/.yml).",
)
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Write this new file, mode 0600 ('-' or none: standard output).",
)
@click.option("--force", is_flag=True, help="Replace --file if it exists.")
@click.option(
    "--name",
    "k8s_name",
    default="secretfs",
    show_default=True,
    help="metadata.name of the Kubernetes Secret (--format k8s).",
)
@store_option
@handle_errors
def export(
    store: StoreLocation | None,
    scope: str | None,
    fmt: str | None,
    path: Path | None,
    force: bool,
    k8s_name: str,
) -> None:
    """Write every secret of SCOPE (default: deployment), current versions, as a
    dotenv, JSON or Kubernetes Secret file. Values are exact; see docs/import-export.md.
    """
    target = _scope(scope)
    chosen = _format(fmt, path, formats.EXPORT_FORMATS)
    to_file = path is not None and path != _STDIO
    if to_file and path is not None and not force and os.path.lexists(path.expanduser()):
        raise ConflictError(f"{path} exists: give --force to replace it")
    with open_vault(store) as vault:
        with vault.refusals_recorded("export", target):
            with vault.backend.snapshot():
                values = {
                    m.name: vault.read_version(m.secret_id, m.version)
                    for m in vault.list_secrets(target.key)
                }
            data = formats.render(chosen, values, k8s_name=k8s_name)
        with vault.recorded("export", target) as trail:
            trail.record(detail=f"{len(values)} secret(s) as {chosen}")
    if to_file and path is not None:
        write_file_atomically(path.expanduser(), data, replace=force)
        where = str(path)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        where = "standard output"
    click.echo(f"exported {len(values)} secret(s) from {target} to {where}", err=True)
