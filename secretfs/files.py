"""Writing files that must never be seen half-written or with too-wide permissions."""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import IO

from secretfs.errors import ConflictError, SecretfsError, TooLargeError, UsageError

#: The most any one input (a value, a template, a key) is read into memory: the largest
#: max-value-size a store may have.
INPUT_LIMIT = 64 * 1024 * 1024
#: An import file: as much as one largest value.
IMPORT_LIMIT = INPUT_LIMIT
_READ_CHUNK = 64 * 1024


def read_limited(source: IO[bytes], limit: int, what: str) -> bytes:
    """All of `source`, reading at most `limit` + 1 bytes: over `limit` is refused at
    once, so `/dev/zero` or a runaway command costs `limit` bytes of memory, not all."""
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = source.read(min(_READ_CHUNK, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
    raise too_large(what, limit)


def read_file_limited(path: Path, limit: int, what: str | None = None) -> bytes:
    """A file's bytes (`~` expanded) through read_limited; unreadable is a usage error."""
    try:
        with path.expanduser().open("rb") as fh:
            return read_limited(fh, limit, what or str(path))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def too_large(what: str, limit: int) -> TooLargeError:
    # "the limit is N bytes" as Vault says it, so both refusals read alike.
    return TooLargeError(f"{what} is over {limit} bytes (the limit is {limit} bytes): refused")


def write_file_atomically(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o600,
    replace: bool,
    owner: tuple[int, int] | None = None,
) -> None:
    """Write `data` to `path` all at once: a new O_EXCL file in the same directory, mode
    set before the first byte, fsynced, then renamed into place (or, without `replace`,
    linked so that an existing `path` is never overwritten)."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot create a file in {path.parent}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have taken bits the user asked for
            if owner is not None:
                os.fchown(fd, *owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        _move_into_place(tmp, path, replace)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _move_into_place(tmp: Path, path: Path, replace: bool) -> None:
    try:
        if replace:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise ConflictError(f"{path} exists: use --force to replace it") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # No hard links here (e.g. vfat): check, then rename.
            if os.path.lexists(path):
                raise ConflictError(f"{path} exists: use --force to replace it") from None
            os.rename(tmp, path)
            return
        tmp.unlink()
    except SecretfsError:
        raise
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
