"""systemd's own way in: `LoadCredential=ID:/run/secretfs/creds.sock` served by the mount.

For an absolute LoadCredential= path that is an AF_UNIX stream socket, systemd (PID 1)
connects to it and reads the credential until EOF, with its own end bound to the
abstract address `\\0<random hex>/unit/<unit name>/<credential id>`
(systemd.exec(5); `load_credential()` in systemd's src/core/exec-credential.c). The
daemon answers a peer that is uid 0 (SO_PEERCRED) and has that address form with the
value of the first secret of

1. `@<unit>/<id>`: the unit's name without its type suffix (`app.service` -> `@app`;
   an instance `app@blue.service` uses its template's, `@app`), then
2. `$S:<id>` (the deployment scope),

that exists, and closes. Anything else is closed without data. Each answer and each
refusal is put in the audit queue (action `credential`, the unit in `detail`).

The socket is root's alone (mode 0600, created so in a private directory and renamed
into place: it is never visible with another mode). Connections are bounded in number
and in time; nothing here blocks the daemon's loop on a slow peer.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from secretfs import audit as _audit
from secretfs.crypto import wipe
from secretfs.errors import NotFoundError, RefError, SecretfsError, StoreError
from secretfs.refs import DEPLOYMENT, Ref, Scope, validate_name
from secretfs.store import SecretMeta
from secretfs.tree import Tree
from secretfs.verified import VerifiedVersions

log = logging.getLogger(__name__)

ACTION = "credential"
MAX_CONNECTIONS = 16  # answered at once; more are closed at once, unanswered
TIMEOUT_SECONDS = 5.0  # for one peer to take its value
#: The address systemd binds its end to: `\0` + random_u64 in hex + /unit/UNIT/ID.
PEER_RE = re.compile(rb"\0[0-9a-f]{1,16}/unit/([^/\0]{1,255})/([^/\0]{1,255})")
_UNIT_RE = re.compile(r"([A-Za-z0-9:_.\\-]+?)(?:@[A-Za-z0-9:_.\\-]*)?\.[a-z]+")
_PEERCRED = struct.Struct("3i")  # pid, uid, gid

Lookup = Callable[[Ref], "tuple[int, bytes] | None"]  # ref -> (version, value), or None


@dataclass(frozen=True, slots=True)
class Request:
    """What systemd asks for: the unit's full name and the credential's id."""

    unit: str
    credential: str


def parse_peer(address: bytes | str) -> Request | None:
    """The request in systemd's peer address, or None if it is not of that form."""
    if not isinstance(address, bytes):
        return None  # a path or no address at all: not systemd's
    m = PEER_RE.fullmatch(address)
    if m is None:
        return None
    try:
        return Request(m.group(1).decode("ascii"), m.group(2).decode("ascii"))
    except UnicodeDecodeError:
        return None


def candidates(req: Request) -> list[Ref]:
    """The secrets that may answer `req`, in order (see the module's doc)."""
    out: list[Ref] = []
    try:
        name = validate_name(req.credential, "credential id")
    except RefError:
        return out
    m = _UNIT_RE.fullmatch(req.unit)
    if m is not None:
        try:
            out.append(Ref(Scope("service", service=m.group(1)), name))
        except RefError:
            pass  # a unit name that is no service name: only the deployment scope
    out.append(Ref(DEPLOYMENT, name))
    return out


def tree_lookup(
    tree: Tree,
    versions: VerifiedVersions,
    catch_up: Callable[[], bool],
    refusal: Callable[[], str | None] = lambda: None,
) -> Lookup:
    """A Lookup over the mount's tree and verified versions: what an open would read,
    refused (StoreError) whenever the mount's opens are (`refusal`)."""

    def lookup(ref: Ref) -> tuple[int, bytes] | None:
        refused = refusal()
        if refused is not None:
            raise StoreError(f"not serving: {refused}")
        catch_up()  # a version written since the last poll is the one served (one cheap query)
        meta = tree.meta(ref.scope.key, ref.name)
        if meta is None:
            return None
        try:
            meta, value = tree.load_current(meta, load, catch_up)
        except NotFoundError:
            if tree.meta(ref.scope.key, ref.name) is None:
                return None  # removed since: as a lookup after the poll would say
            raise
        return meta.version, value

    def load(meta: SecretMeta) -> bytes:
        sealed, value = versions.get(meta.secret_id, meta.version)
        return value if value is not None else sealed.open()

    return lookup


def bind(path: Path) -> socket.socket:
    """A listening socket at `path`, mode 0600 from the moment it is there.

    Bound in a private directory beside `path` and renamed into place; a socket left
    at `path` (an earlier daemon's) is replaced, anything else there is refused.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StoreError(f"credential socket {path}: {exc.strerror}") from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise StoreError(f"credential socket {path}: exists and is not a socket")
    try:
        private = tempfile.mkdtemp(prefix=".secretfs-", dir=path.parent)  # mode 0700
    except OSError as exc:
        raise StoreError(f"credential socket {path}: {exc.strerror}") from None
    temp = os.path.join(private, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(temp)
        os.chmod(temp, 0o600)  # no one else can reach it in the 0700 directory yet
        sock.listen(MAX_CONNECTIONS)
        os.rename(temp, path)
    except OSError as exc:
        sock.close()
        raise StoreError(f"credential socket {path}: {exc.strerror}") from None
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        os.rmdir(private)
    return sock


class CredentialServer:
    """Answers systemd's connections on a bound socket from `lookup`."""

    def __init__(
        self,
        sock: socket.socket,
        path: Path,
        lookup: Lookup,
        queue: _audit.AuditQueue,
        *,
        limit: int = MAX_CONNECTIONS,
        timeout: float = TIMEOUT_SECONDS,
    ) -> None:
        self._sock = sock
        self.path = path
        self._inode = os.stat(path).st_ino
        self._lookup = lookup
        self._queue = queue
        self._limit = limit
        self._active = 0
        self._timeout = timeout
        self._names = _audit.ProcessNames()

    async def serve(self) -> None:
        """Accept until cancelled. Nothing a peer does can end it (or the mount)."""
        listener = trio.socket.from_stdlib_socket(self._sock)
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    conn, _ = await listener.accept()
                except OSError as exc:  # out of descriptors, say: wait, then go on
                    log.error("credential socket: accept: %s", exc.strerror)
                    await trio.sleep(0.1)
                    continue
                if self._active >= self._limit:
                    log.warning("credential socket: too many connections, one closed")
                    conn.close()
                    continue
                self._active += 1
                nursery.start_soon(self._one, conn)

    async def _one(self, conn: trio.socket.SocketType) -> None:
        try:
            await self._serve_one(conn)
        except Exception as exc:  # noqa: BLE001 - one connection must not stop the mount
            log.error("credential socket: internal %s", type(exc).__name__)
        finally:
            self._active -= 1

    async def _serve_one(self, conn: trio.socket.SocketType) -> None:
        with conn, trio.move_on_after(self._timeout) as scope:
            value = self._answer(conn)
            if value is not None:
                try:
                    await trio.SocketStream(conn).send_all(value)
                except trio.BrokenResourceError:
                    pass
                finally:
                    wipe(value)
        if scope.cancelled_caught:
            log.warning("credential socket: a peer did not take its value in time")

    def _answer(self, conn: trio.socket.SocketType) -> bytearray | None:
        """The value to send, or None to close without one; audited either way."""
        pid, uid, gid = _PEERCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        req = parse_peer(conn.getpeername())

        def record(ref: str | None, version: int | None, outcome: str, why: str) -> None:
            where = f"unit {req.unit} id {req.credential}" if req else "not systemd's address"
            self._queue.add_mount(
                time.time_ns(), ACTION, ref, version, uid, gid, pid,
                self._names.get(pid), outcome, f"{where}: {why}" if why else where,
            )  # fmt: skip

        if uid != 0:
            record(None, None, _audit.DENIED, f"peer uid {uid} is not root")
            return None
        if req is None:
            record(None, None, _audit.DENIED, "")
            return None
        for ref in candidates(req):
            try:
                found = self._lookup(ref)
            except SecretfsError as exc:
                record(str(ref), None, _audit.ERROR, type(exc).__name__)
                return None
            if found is not None:
                version, value = found
                record(str(ref), version, _audit.ALLOWED, "")
                return bytearray(value)
        record(None, None, _audit.DENIED, "no secret for it")
        return None

    def close(self) -> None:
        """Stop listening; remove the socket file if it is still ours."""
        self._sock.close()
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass
