"""The resolver's transport: Connect unary over HTTP/1.1 (h11) on unix sockets, in the
mount daemon's trio loop.

Who asks is who the kernel says: SO_PEERCRED's uid, gid and pid of the connecting
process, and its supplementary groups from /proc/<pid>/status, read when it connects.
Everything is bounded so a client can neither stall the loop nor grow the daemon:
header bytes and count, body bytes, connections at once (more wait in the kernel's
backlog), and the time a connection may sit idle or take over one request.

Routes (the engine's): POST /resolver.v1.ResolverService/GetSecrets, POST
/health.v1.VersionService/GetVersion, GET /health.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import socket
import stat
import struct
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import h11
import trio

from secretfs import sealing
from secretfs.access import Caller
from secretfs.errors import NotFoundError, StoreError, UsageError
from secretfs.resolver import messages
from secretfs.resolver.messages import JSON, PROTO, BadMessage
from secretfs.resolver.service import ConnectError, RequestOptions, Resolver
from secretfs.sealing import ClientKeyRevokedError
from secretfs.store import ClientKeyRecord

if TYPE_CHECKING:
    from secretfs.audit import AuditQueue
    from secretfs.tree import Tree
    from secretfs.verified import VerifiedVersions

log = logging.getLogger(__name__)

GET_SECRETS = "/resolver.v1.ResolverService/GetSecrets"
GET_VERSION = "/health.v1.VersionService/GetVersion"
HEALTH = "/health"
ACCEPT_POST = "application/json, application/json; charset=utf-8, application/proto"
DEFAULT_MODE = 0o660
ROOT_DEFAULT = Path("/run/secretfs-resolver.sock")  # beside /run/secretfs, not under it


def abstract_name(uid: int) -> str:
    """Where Docker's client looks on Linux (secrets-engine x/api/defaults_linux.go)."""
    return f"@docker-secrets-engine/{uid}/daemon.sock"


def default_socket() -> Path:
    """/run/secretfs-resolver.sock for root, else $XDG_RUNTIME_DIR/secretfs-resolver.sock."""
    if os.getuid() == 0:
        return ROOT_DEFAULT
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime:
        raise UsageError("no default resolver socket: XDG_RUNTIME_DIR is not set; give a path")
    return Path(runtime) / "secretfs-resolver.sock"


@dataclass(frozen=True, slots=True)
class Limits:
    max_body: int = 64 * 1024
    max_header_bytes: int = 16 * 1024
    max_headers: int = 64
    max_connections: int = 64
    idle_seconds: float = 10.0  # between requests, and between bytes of one
    request_seconds: float = 30.0  # from a request's first byte to its response sent
    # After an answer sent before the body was read whole (too large, a bad head): what is
    # read and dropped, so that a client still sending gets the answer and not EPIPE.
    drain_bytes: int = 1024 * 1024
    drain_seconds: float = 2.0


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    """Where to listen: a path (None: none), and abstract sockets for Docker's uids."""

    path: Path | None = None
    mode: int = DEFAULT_MODE
    abstract_uids: tuple[int, ...] = ()
    limits: Limits = field(default_factory=Limits)


@dataclass(slots=True)
class Listeners:
    sockets: list[socket.socket]
    path: Path | None = None
    inode: int = 0  # the socket file we made: removed on exit only if still ours

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                if os.lstat(self.path).st_ino == self.inode:
                    os.unlink(self.path)


def listen(config: ResolverConfig) -> Listeners:
    """Bind every socket now, before the mount answers (StoreError if one cannot be)."""
    out = Listeners([])
    try:
        if config.path is not None:
            sock, out.inode = _bind_path(config.path, config.mode)
            out.sockets.append(sock)
            out.path = config.path
        for uid in config.abstract_uids:
            out.sockets.append(_bind_abstract(abstract_name(uid)))
    except BaseException:
        out.close()
        raise
    return out


def _bind_path(path: Path, mode: int) -> tuple[socket.socket, int]:
    """Bind in a fresh 0700 directory beside `path`, set the mode, then rename into place:
    no one can connect before the mode is what was asked."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    _refuse_live(path)
    private = Path(tempfile.mkdtemp(prefix=".secretfs-resolver-", dir=path.parent))
    staged = private / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(staged))
        os.chmod(staged, mode)
        sock.listen(128)
        os.rename(staged, path)
        inode = os.lstat(path).st_ino
    except OSError as exc:
        sock.close()
        raise StoreError(f"cannot listen on {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            staged.unlink()
        with contextlib.suppress(OSError):
            private.rmdir()
    return sock, inode


def _refuse_live(path: Path) -> None:
    """A socket someone answers on is not ours to replace; a dead one is; nothing else is."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StoreError(f"cannot listen on {path}: it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return  # left behind by a daemon that is gone
        raise StoreError(f"cannot listen on {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise StoreError(f"cannot listen on {path}: another process is serving there")


def _bind_abstract(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind("\0" + name.removeprefix("@"))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = " (Docker's own secrets engine?)" if exc.errno == errno.EADDRINUSE else ""
        raise StoreError(f"cannot listen on {name}: {exc.strerror}{hint}") from None
    return sock


# -- who is asking -------------------------------------------------------------------------


def peer_caller(sock: socket.socket) -> Caller:
    """The connecting process as the kernel saw it at connect()."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    groups = _groups(pid)
    return Caller(uid, gid, pid, lambda: groups)


def _groups(pid: int) -> frozenset[int]:
    """Supplementary groups from /proc (none if the process is gone: fewer rights)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


# -- serving -------------------------------------------------------------------------------


async def serve(listeners: Listeners, resolver: Resolver, limits: Limits) -> None:
    """Accept on every listener until cancelled; at most `max_connections` at once."""
    slots = trio.Semaphore(limits.max_connections)
    app = _App(resolver, limits)
    async with trio.open_nursery() as nursery:
        for sock in listeners.sockets:
            nursery.start_soon(_accept_loop, trio.socket.from_stdlib_socket(sock), slots, app)


async def _accept_loop(listener: trio.socket.SocketType, slots: trio.Semaphore, app: _App) -> None:
    async with trio.open_nursery() as nursery:
        while True:
            # Taken before accept(): past the limit, clients wait in the kernel's backlog.
            await slots.acquire()
            try:
                conn, _ = await listener.accept()
            except OSError as exc:
                slots.release()
                log.warning("resolver: accept: %s", exc.strerror)
                await trio.sleep(0.1)  # EMFILE and the like: do not spin
                continue
            nursery.start_soon(_connection, conn, slots, app)


async def _connection(conn: trio.socket.SocketType, slots: trio.Semaphore, app: _App) -> None:
    stream = trio.SocketStream(conn)
    try:
        caller = peer_caller(conn)  # type: ignore[arg-type]
        await app.handle(stream, caller)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the client went away
    except Exception as exc:  # noqa: BLE001 - one bad request must not end the mount
        # Only the type: a message could quote what the client sent.
        log.error("resolver: internal %s; connection closed", type(exc).__name__)
    finally:
        slots.release()
        with trio.CancelScope(shield=True):
            await stream.aclose()


class _Timer:
    """Moves a connection's deadline: the next bytes within `idle_seconds`, and the
    whole request by its own deadline."""

    __slots__ = ("end", "idle", "scope")

    def __init__(self, scope: trio.CancelScope, end: float, limits: Limits) -> None:
        self.scope = scope
        self.end = end
        self.idle = limits.idle_seconds

    def arm(self) -> None:
        self.scope.deadline = min(self.end, trio.current_time() + self.idle)


@dataclass(slots=True)
class _Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    close: bool = False


class _App:
    def __init__(self, resolver: Resolver, limits: Limits) -> None:
        self.resolver = resolver
        self.limits = limits
        try:
            self.version = "v" + metadata.version("secretfs")
        except metadata.PackageNotFoundError:
            self.version = "v0.0.0"

    async def handle(self, stream: trio.SocketStream, caller: Caller) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        # One cancel scope whose deadline moves: a scope per wait would cost more than
        # the request. Any deadline passed ends the connection.
        with trio.CancelScope() as scope:
            while await self._cycle(conn, stream, caller, scope):
                pass

    async def _cycle(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        caller: Caller,
        scope: trio.CancelScope,
    ) -> bool:
        """Serve one request; whether the connection can take another."""
        timer = _Timer(scope, trio.current_time() + self.limits.request_seconds, self.limits)
        try:
            reply = await self._one(conn, stream, caller, timer)
        except h11.RemoteProtocolError as exc:
            reply = _text(exc.error_status_hint, "bad request", close=True)
        if reply is None or conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return False  # (h11 lets a server answer a request it could not parse)
        scope.deadline = trio.current_time() + self.limits.request_seconds
        await self._send(conn, stream, reply)
        if conn.their_state in (h11.SEND_BODY, h11.ERROR):
            await self._drain(stream)  # answered early: the client may still be sending
            return False  # a body we did not read whole: the connection cannot be reused
        done = conn.states[h11.SERVER] is h11.DONE and conn.their_state is h11.DONE
        if reply.close or not done:
            return False
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            return False
        return True

    async def _drain(self, stream: trio.SocketStream) -> None:
        """Read and drop what the client still sends, until it closes, up to `drain_bytes`
        and `drain_seconds`: closing on unread bytes would break its pipe before it reads
        the answer. Our end of the stream is shut first, so it sees the answer end."""
        left = self.limits.drain_bytes
        with trio.move_on_after(self.limits.drain_seconds):
            await stream.send_eof()
            while left > 0:
                data = await stream.receive_some(min(left, 64 * 1024))
                if not data:
                    return
                left -= len(data)

    async def _event(
        self, conn: h11.Connection, stream: trio.SocketStream, timer: _Timer
    ) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            timer.arm()
            conn.receive_data(await stream.receive_some(64 * 1024))

    async def _one(
        self, conn: h11.Connection, stream: trio.SocketStream, caller: Caller, timer: _Timer
    ) -> _Reply | None:
        event = await self._event(conn, stream, timer)
        if not isinstance(event, h11.Request):
            return None  # the client closed between requests
        if len(event.headers) > self.limits.max_headers:
            return _text(431, "too many header fields", close=True)
        # h11 bounds only a head that arrives in pieces: bound one that came whole too.
        size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
        if size > self.limits.max_header_bytes:
            return _text(431, "header fields too large", close=True)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.max_body:
            return _error(ConnectError("resource_exhausted", self._too_big()), close=True)
        body = bytearray()
        while True:
            part = await self._event(conn, stream, timer)
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > self.limits.max_body:
                    return _error(ConnectError("resource_exhausted", self._too_big()), close=True)
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                return None
        method = event.method.decode("latin-1")
        target = event.target.decode("latin-1").split("?", 1)[0]
        return await self._route(method, target, headers, bytes(body), caller)

    def _too_big(self) -> str:
        return f"message is larger than the configured max {self.limits.max_body} bytes"

    async def _route(
        self, method: str, target: str, headers: dict[str, str], body: bytes, caller: Caller
    ) -> _Reply:
        if target == HEALTH:
            if method != "GET":
                return _Reply(405, [("allow", "GET")])
            return _text(200, "ok")
        if target not in (GET_SECRETS, GET_VERSION):
            return _text(404, "404 page not found")
        if method != "POST":
            return _Reply(405, [("allow", "POST")])
        codec = _codec(headers.get("content-type", ""))
        if codec is None:
            return _Reply(415, [("accept-post", ACCEPT_POST)])
        try:
            _check_connect_headers(headers)
            if target == GET_VERSION:
                messages.decode(messages.GetVersionRequest, body, codec)
                answer = messages.encode(messages.version_response(self.version, "", ""), codec)
            else:
                request = messages.decode(messages.GetSecretsRequest, body, codec)
                envelopes = await self.resolver.get_secrets(
                    caller,
                    messages.request_pattern(request),
                    request_options(headers, self.resolver.tree.client_key_records),
                )
                answer = messages.envelopes_body(envelopes, codec)
        except BadMessage as exc:
            return _error(ConnectError("invalid_argument", str(exc)))
        except ConnectError as exc:
            return _error(exc)
        content_type = "application/json" if codec == JSON else "application/proto"
        return _Reply(200, [("content-type", content_type)], answer)

    async def _send(self, conn: h11.Connection, stream: trio.SocketStream, reply: _Reply) -> None:
        headers = [*reply.headers, ("content-length", str(len(reply.body)))]
        if reply.close:
            headers.append(("connection", "close"))
        reason = _REASONS.get(reply.status, "")
        response = h11.Response(status_code=reply.status, headers=headers, reason=reason)
        out = conn.send(response) or b""
        if reply.body:
            out += conn.send(h11.Data(data=reply.body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(out)  # one write: each write wakes the client once


_REASONS = {s.value: s.phrase for s in HTTPStatus}


def request_options(
    headers: dict[str, str], keys: Iterable[ClientKeyRecord] = ()
) -> RequestOptions:
    """What a request asks for beyond its pattern: each request convention (a header, a
    metadata key) is read here into RequestOptions. `Secretfs-Sealed-To: ck_…` (and
    `Secretfs-Sealed-Bound: 1`) seal every value to a registered client key."""
    try:
        sealed = sealing.sealed_request(headers, keys)
    except ClientKeyRevokedError as exc:
        raise ConnectError("permission_denied", str(exc)) from None
    except NotFoundError as exc:
        raise ConnectError("failed_precondition", str(exc)) from None
    except UsageError as exc:
        raise ConnectError("invalid_argument", str(exc)) from None
    if sealed is None:
        return RequestOptions()
    return RequestOptions(sealed_to=sealed[0], bound=sealed[1])


def _codec(content_type: str) -> str | None:
    """application/json (charset utf-8 only) or application/proto; anything else None."""
    kind, _, params = content_type.partition(";")
    kind = kind.strip().lower()
    if kind == "application/proto" and not params.strip():
        return PROTO
    if kind != "application/json":
        return None
    params = params.strip().lower().replace(" ", "")
    return JSON if params in ("", "charset=utf-8") else None


def _check_connect_headers(headers: dict[str, str]) -> None:
    version = headers.get("connect-protocol-version")
    if version is not None and version.strip() != "1":
        raise ConnectError(
            "invalid_argument", f'connect-protocol-version must be "1": got "{version[:40]}"'
        )
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise ConnectError(
            "unimplemented",
            f'unknown compression "{encoding[:40]}": supported encodings are identity',
        )


def _text(status: int, text: str, close: bool = False) -> _Reply:
    return _Reply(status, [("content-type", "text/plain; charset=utf-8")], text.encode(), close)


def _error(exc: ConnectError, close: bool = False) -> _Reply:
    body = json.dumps({"code": exc.code, "message": exc.message}).encode()
    return _Reply(exc.status, [("content-type", "application/json")], body, close)


class Changes(Protocol):
    """What the resolver needs of the mount's watcher (`daemon.Watcher`), named here so
    that this module does not import the daemon."""

    @property
    def versions(self) -> VerifiedVersions: ...

    def catch_up(self) -> bool: ...


def resolver_task(
    config: ResolverConfig,
    tree: Tree,
    watcher: Changes,
    queue: AuditQueue,
    refusal: Callable[[], str | None] = lambda: None,
) -> tuple[Callable[[], Awaitable[None]], Callable[[], None]]:
    """For the daemon: bind now; return the task to run in its nursery and the cleanup."""
    listeners = listen(config)
    resolver = Resolver(tree, watcher.versions, queue, watcher.catch_up, refusal=refusal)
    return functools.partial(serve, listeners, resolver, config.limits), listeners.close
