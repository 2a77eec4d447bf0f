"""Where a value for `create`/`set`/`rotate` comes from: exactly one source."""

from __future__ import annotations

import os
import secrets
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from secretfs import keys
from secretfs.errors import UsageError

GENERATE_ALPHABET = string.ascii_letters + string.digits
DEFAULT_GENERATE_LENGTH = 32


def value_options(fn: click.decorators.FC) -> click.decorators.FC:
    """The value-source options every write command shares."""
    for decorator in reversed(
        [
            click.argument("value", required=False),
            click.option("--from-stdin", is_flag=True, help="Read the value from standard input."),
            click.option(
                "--from-file",
                type=click.Path(dir_okay=False, path_type=Path),
                help="Read the value from a file (exact bytes).",
            ),
            click.option(
                "--from",
                "from_uri",
                metavar="URI",
                help="env://VAR, file://PATH, cmd://COMMAND (stdout of `sh -c`) or"
                " vault://MOUNT/PATH#FIELD (Vault/OpenBao; see docs/providers.md).",
            ),
            click.option(
                "--generate",
                type=click.IntRange(1, 4096),
                is_flag=False,
                flag_value=DEFAULT_GENERATE_LENGTH,
                default=None,
                metavar="[LEN]",
                help=f"Generate LEN random letters and digits (default {DEFAULT_GENERATE_LENGTH}).",
            ),
        ]
    ):
        fn = decorator(fn)
    return fn


def parse_mode(text: str, what: str = "--mode") -> int:
    """An octal file mode for the mount, such as 0400 or 440."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise UsageError(f"{what} takes an octal mode such as 0400 or 440, not {text!r}") from None
    if not 0 <= mode <= 0o777:
        raise UsageError(f"{what} {text} is out of range: 000 to 777 (octal)")
    return mode


def parse_optional_mode(text: str | None, what: str = "--mode") -> int | None:
    return None if text is None else parse_mode(text, what)


def take_value(options: dict[str, Any]) -> bytes:
    """Read the value that `value_options` describes, taking those options out of `options`."""
    return read_value(
        options.pop("value"),
        options.pop("from_stdin"),
        options.pop("from_file"),
        options.pop("from_uri"),
        options.pop("generate"),
    )


def read_value(
    value: str | None,
    from_stdin: bool,
    from_file: Path | None,
    from_uri: str | None,
    generate: int | None,
) -> bytes:
    chosen = [
        name
        for name, given in (
            ("VALUE", value is not None),
            ("--from-stdin", from_stdin),
            ("--from-file", from_file is not None),
            ("--from", from_uri is not None),
            ("--generate", generate is not None),
        )
        if given
    ]
    if len(chosen) != 1:
        raise UsageError(
            "give the value with exactly one of --from-stdin, --from-file PATH, --from URI,"
            " --generate [LEN] or a VALUE argument"
            + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    if value is not None:
        click.echo(
            "warning: a value on the command line is visible to other users in the process"
            " list and in shell history; prefer --from-stdin or --from-file",
            err=True,
        )
        data = os.fsencode(value)
    elif from_stdin:
        data = sys.stdin.buffer.read()
    elif from_file is not None:
        data = _read_file(from_file)
    elif from_uri is not None:
        data = resolve_uri(from_uri)
    else:
        assert generate is not None
        return "".join(secrets.choice(GENERATE_ALPHABET) for _ in range(generate)).encode()
    if data.endswith(b"\n"):
        click.echo(
            "note: the value ends in a newline; it is stored as given (exact bytes)", err=True
        )
    return data


def _read_file(path: Path) -> bytes:
    try:
        return path.expanduser().read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def resolve_uri(uri: str) -> bytes:
    scheme, sep, rest = uri.partition("://")
    if not sep or not rest:
        raise UsageError(
            "--from takes env://VAR, file://PATH, cmd://COMMAND or vault://MOUNT/PATH#FIELD,"
            f" not {uri[:40]!r}"
        )
    if scheme == "env":
        found = os.environb.get(os.fsencode(rest))
        if found is None:
            raise UsageError(f"environment variable {rest} is not set")
        return found
    if scheme == "file":
        return _read_file(Path(rest))
    if scheme == "cmd":
        proc = subprocess.run(
            ["/bin/sh", "-c", rest],
            capture_output=True,
            check=False,
            env=keys.child_environment(os.environ),
            close_fds=True,
        )
        if proc.returncode != 0:
            # Its output may hold the secret: report only the exit status.
            raise UsageError(f"cmd:// command exited with status {proc.returncode}")
        return proc.stdout
    if scheme == "vault":
        from secretfs.providers import read_vault

        return read_vault(uri)
    raise UsageError(
        f"unknown value source {scheme[:20]}://: use env://, file://, cmd:// or vault://"
    )
