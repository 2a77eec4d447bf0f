"""One exception hierarchy; the CLI maps it to messages and exit codes, the FS to errnos.

No message built here or by a subclass may contain a secret value.
"""

from __future__ import annotations

import errno


class SecretfsError(Exception):
    """Base of every error secretfs raises on purpose."""

    exit_code: int = 1
    errno: int = errno.EIO


class UsageError(SecretfsError):
    """Bad input from the user: a malformed reference, option or value."""

    exit_code = 2
    errno = errno.EINVAL


class RefError(UsageError):
    """A reference or name that the grammar does not allow."""


class NotFoundError(SecretfsError):
    """No such secret, version, field or scope (HTTP 404-like)."""

    exit_code = 3
    errno = errno.ENOENT


class ConflictError(SecretfsError):
    """The name exists already or is in use (HTTP 409-like)."""

    exit_code = 4
    errno = errno.EEXIST


class KeySourceError(SecretfsError):
    """The key-encryption key is missing or wrong."""

    exit_code = 5
    errno = errno.EACCES


class IntegrityError(SecretfsError):
    """A record failed authentication: tampered, swapped, or under another key."""

    exit_code = 6
    errno = errno.EIO


class StoreError(SecretfsError):
    """The store cannot be opened or used."""

    exit_code = 7
    errno = errno.EIO


class StoreUnavailableError(StoreError):
    """The store cannot be reached now (etcd: no member answered, no quorum): what was
    asked may work later, unchanged."""


class TooLargeError(UsageError):
    """A value is over the configured size limit."""


class WriteConflictError(ConflictError):
    """Another writer committed while this write was being made (a replicated store):
    nothing was written, and the whole write may be tried again."""


class StoreExistsError(StoreError, ConflictError):
    """`init` where a store is already: an existing thing (4), like any other create."""

    exit_code = ConflictError.exit_code
    errno = ConflictError.errno
