"""Where a value for `create`/`set`/`rotate` comes from: exactly one source."""

from __future__ import annotations

import os
import secrets
import string
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from secretfs import keys
from secretfs.cli.params import bounded_int
from secretfs.errors import UsageError
from secretfs.files import read_file_limited, read_limited, too_large

GENERATE_ALPHABET = string.ascii_letters + string.digits
DEFAULT_GENERATE_LENGTH = 32


def value_options(fn: click.decorators.FC) -> click.decorators.FC:
    """The value-source options every write command shares."""
    for decorator in reversed(
        [
            click.argument("value", required=False),
            click.option(
                "--from-stdin",
                is_flag=True,
                help="Read the value from standard input (on a terminal: asked twice, not"
                " shown); a VALUE of - does the same.",
            ),
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
                type=bounded_int(1, 4096),
                is_flag=False,
                flag_value=DEFAULT_GENERATE_LENGTH,
                default=None,
                metavar="[LEN]",
                help=f"Generate LEN random letters and digits (default {DEFAULT_GENERATE_LENGTH}).",
            ),
            *input_options(),
        ]
    ):
        fn = decorator(fn)
    return fn


def input_options() -> list[Callable[[click.decorators.FC], click.decorators.FC]]:
    """--trim and --allow-empty: shared by every command that reads values."""
    return [
        click.option(
            "--trim",
            is_flag=True,
            help="Strip one trailing newline (as `echo` and `pass show` add it);"
            " default: exact bytes.",
        ),
        click.option(
            "--allow-empty", is_flag=True, help="Store an empty value (refused otherwise)."
        ),
    ]


def finish_value(data: bytes, what: str, *, trim: bool, allow_empty: bool) -> bytes:
    """Apply --trim (one trailing "\n" or "\r\n") and refuse an empty value unless
    --allow-empty: an empty pipe or a failed `cmd://` is rarely what was meant."""
    if trim and data.endswith(b"\n"):
        data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
    if not data and not allow_empty:
        raise UsageError(f"{what} is empty: refused (give --allow-empty to store an empty value)")
    return data


def _is_pem(data: bytes) -> bool:
    # PEM and OpenSSH keys need their final newline: no note for them.
    return data.lstrip().startswith(b"-----BEGIN ")


def prompt_value(limit: int) -> bytes:
    """A value typed on the terminal: echo off, asked twice (click reads /dev/tty)."""
    text: str = click.prompt(
        "Value", hide_input=True, confirmation_prompt="Again", err=True, show_default=False
    )
    data = os.fsencode(text)
    if len(data) > limit:
        raise too_large("the typed value", limit)
    return data


def read_stdin(limit: int, what: str) -> bytes:
    """A value on stdin: typed at a hidden prompt on a terminal, else read (bounded)."""
    if sys.stdin.isatty():
        return prompt_value(limit)
    return read_limited(sys.stdin.buffer, limit, what)


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


@dataclass(frozen=True, slots=True)
class ValueSource:
    """The one value source a command was given: checked at once, read later with the
    store's size limit applied while reading (`read`)."""

    value: str | None
    from_stdin: bool
    from_file: Path | None
    from_uri: str | None
    generate: int | None
    trim: bool = False
    allow_empty: bool = False

    def read(self, limit: int) -> bytes:
        """The value, reading at most `limit` + 1 bytes of any source; over is refused."""
        if self.value is not None:
            click.echo(
                "warning: a value on the command line is visible to other users in the"
                " process list and in shell history; prefer --from-stdin or --from-file",
                err=True,
            )
            data = os.fsencode(self.value)
            if len(data) > limit:
                raise too_large("the VALUE argument", limit)
        elif self.from_stdin:
            data = read_stdin(limit, "standard input")
        elif self.from_file is not None:
            data = read_file_limited(self.from_file, limit)
        elif self.from_uri is not None:
            data = resolve_uri(self.from_uri, limit)
        else:
            assert self.generate is not None
            return "".join(secrets.choice(GENERATE_ALPHABET) for _ in range(self.generate)).encode()
        data = finish_value(data, self._what(), trim=self.trim, allow_empty=self.allow_empty)
        if data.endswith(b"\n") and not _is_pem(data):
            click.echo(
                "note: the value ends in a newline; it is stored as given (exact bytes;"
                " --trim strips it)",
                err=True,
            )
        return data

    def _what(self) -> str:
        if self.value is not None:
            return "the VALUE argument"
        if self.from_stdin:
            return "the value from standard input"
        if self.from_file is not None:
            return str(self.from_file)
        return f"the value from {(self.from_uri or '').partition('://')[0]}://"


def take_value(options: dict[str, Any]) -> ValueSource:
    """The source `value_options` describes, taking those options out of `options`;
    exactly one must be given (a usage error before the store is opened)."""
    value, from_stdin = options.pop("value"), options.pop("from_stdin")
    dash = value == "-"  # standard input, as `docker secret create NAME -`: never the byte "-"
    source = ValueSource(
        None if dash else value,
        from_stdin or dash,
        options.pop("from_file"),
        options.pop("from_uri"),
        options.pop("generate"),
        options.pop("trim"),
        options.pop("allow_empty"),
    )
    chosen = [
        name
        for name, given in (
            ("VALUE", source.value is not None),
            ("- (standard input)", dash),
            ("--from-stdin", from_stdin),
            ("--from-file", source.from_file is not None),
            ("--from", source.from_uri is not None),
            ("--generate", source.generate is not None),
        )
        if given
    ]
    if len(chosen) != 1:
        raise UsageError(
            "give the value with exactly one of --from-stdin (or -), --from-file PATH,"
            " --from URI, --generate [LEN] or a VALUE argument"
            + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    return source


def resolve_uri(uri: str, limit: int) -> bytes:
    """The bytes `uri` names; more than `limit` is refused while reading."""
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
        if len(found) > limit:
            raise too_large(f"environment variable {rest}", limit)
        return found
    if scheme == "file":
        return read_file_limited(Path(rest), limit)
    if scheme == "cmd":
        return _run_command(rest, limit)
    if scheme == "vault":
        from secretfs.hashicorp import read_hashicorp

        return read_hashicorp(uri, limit=limit)
    raise UsageError(
        f"unknown value source {scheme[:20]}://: use env://, file://, cmd:// or vault://"
    )


def _run_command(command: str, limit: int) -> bytes:
    """stdout of `sh -c command` (no key in its environment); stopped and refused as soon
    as it has written more than `limit` bytes."""
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # its errors may hold the secret: shown nowhere
        env=keys.child_environment(os.environ),
        close_fds=True,
    )
    assert proc.stdout is not None
    try:
        with proc.stdout:
            data = read_limited(proc.stdout, limit, "the cmd:// command's output")
    except BaseException:
        proc.kill()  # what it starts meets a closed pipe at its next write
        proc.wait()
        raise
    status = proc.wait()
    if status != 0:
        # Its output may hold the secret: report only the exit status.
        raise UsageError(f"cmd:// command exited with status {status}")
    return data
