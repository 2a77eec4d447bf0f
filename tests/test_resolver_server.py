"""The resolver's transport on a real unix socket, with its limits set small: idle
connections are closed, and past the connection limit clients wait instead of being
served at once or costing memory."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from secretfs.audit import AuditQueue
from secretfs.daemon import Watcher
from secretfs.refs import parse_ref
from secretfs.resolver.server import Limits, ResolverConfig, listen, serve
from secretfs.resolver.service import Resolver
from secretfs.tree import Owner, Tree
from secretfs.vault import Vault

HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def resolver(tmp_path: Path) -> Iterator[Resolver]:
    Vault.init(tmp_path / "store.db")
    vault = Vault.open(tmp_path / "store.db")
    vault.set(parse_ref("db"), b"hunter2")
    tree = Tree(Owner(0, 0), vault.read_version, time.time_ns())
    watcher = Watcher(vault, tree)
    watcher.refresh()
    yield Resolver(tree, watcher.versions, AuditQueue(), watcher.catch_up)
    vault.close()


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(str(path))
    return s


def test_idle_connections_close_and_the_limit_makes_clients_wait(
    resolver: Resolver, tmp_path: Path
) -> None:
    limits = Limits(max_connections=2, idle_seconds=0.5, request_seconds=2)
    path = tmp_path / "r.sock"
    config = ResolverConfig(path=path, mode=0o600, limits=limits)
    listeners = listen(config)
    seen: dict[str, object] = {}

    def clients() -> None:
        a, b = _connect(path), _connect(path)
        time.sleep(0.1)
        c = _connect(path)  # waits in the backlog
        c.sendall(HEALTH)
        c.settimeout(0.3)
        try:
            c.recv(100)
            seen["third_before"] = True
        except TimeoutError:
            seen["third_before"] = False
        # a and b sent nothing: closed after idle_seconds; then c is served.
        c.settimeout(5)
        seen["third_after"] = c.recv(100)
        seen["a_closed"] = a.recv(100) == b""
        for s in (a, b, c):
            s.close()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, listeners, resolver, limits)
            await trio.to_thread.run_sync(clients)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        listeners.close()
    assert seen["third_before"] is False
    assert isinstance(seen["third_after"], bytes) and seen["third_after"].startswith(
        b"HTTP/1.1 200"
    )
    assert seen["a_closed"] is True
    assert not path.exists()


def _serving(
    resolver: Resolver, tmp_path: Path, limits: Limits, client: Callable[[Path], None]
) -> None:
    """Serve on a fresh socket while `client(path)` runs in a thread."""
    path = tmp_path / "r.sock"
    listeners = listen(ResolverConfig(path=path, mode=0o600, limits=limits))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, listeners, resolver, limits)
            await trio.to_thread.run_sync(client, path)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        listeners.close()


def _wait_answered(s: socket.socket) -> None:
    """Until the server has shut (old code: closed) its end after its answer."""
    poller = select.poll()
    poller.register(s, select.POLLRDHUP)
    assert poller.poll(5000), "no answer within 5 s"


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


POST = "POST /resolver.v1.ResolverService/GetSecrets HTTP/1.1\r\nHost: x\r\n"
EARLY = {
    # declared too large: refused on the head
    "too-large": (POST + "Content-Length: 300000\r\n\r\n", 300_000, b"HTTP/1.1 429 "),
    # chunked: refused once the body read so far is over the limit
    "too-large-chunked": (
        POST + "Transfer-Encoding: chunked\r\n\r\n493e0\r\n" + "x" * 2000,
        298_000,
        b"HTTP/1.1 429 ",
    ),
    "too-many-fields": (
        POST + "".join(f"X-{i}: 1\r\n" for i in range(70)) + "Content-Length: 3000\r\n\r\n",
        3000,
        b"HTTP/1.1 431 ",
    ),
    # h11 cannot parse it: the body's end is unknown, read until the client closes
    "bad-head": (POST + "Content-Length: 3000\r\nBad Header\r\n\r\n", 3000, b"HTTP/1.1 400 "),
}


@pytest.mark.parametrize("case", sorted(EARLY))
def test_an_early_answer_reaches_a_client_still_sending(
    resolver: Resolver, tmp_path: Path, case: str
) -> None:
    """The server answers before it read the body: the client, which sends the rest only
    after the answer was written, must not get EPIPE/ECONNRESET and must read it whole."""
    head, rest, status = EARLY[case]
    seen: dict[str, bytes] = {}

    def client(path: Path) -> None:
        s = _connect(path)
        s.sendall(head.encode())
        _wait_answered(s)
        s.sendall(b"x" * rest)  # the old server had closed: BrokenPipeError here
        s.shutdown(socket.SHUT_WR)
        seen["answer"] = _read_all(s)
        s.close()

    _serving(resolver, tmp_path, Limits(max_body=1024), client)
    assert seen["answer"].startswith(status)
    assert b"connection: close" in seen["answer"].lower()
    if status == b"HTTP/1.1 429 ":
        body = json.loads(seen["answer"].partition(b"\r\n\r\n")[2])
        assert body["code"] == "resource_exhausted"


def test_the_drain_is_bounded_in_bytes_and_time(resolver: Resolver, tmp_path: Path) -> None:
    """A client that sends on and on, or never closes, does not hold the connection."""
    limits = Limits(max_body=1024, drain_bytes=200_000, drain_seconds=0.5)
    seen: dict[str, object] = {}

    def client(path: Path) -> None:
        endless = _connect(path)
        endless.sendall((POST + "Content-Length: 100000000\r\n\r\n").encode())
        sent, start = 0, time.monotonic()
        try:
            while time.monotonic() - start < 5:
                sent += endless.send(b"x" * 65536)
        except OSError as exc:  # EPIPE or ECONNRESET: cut off
            seen["endless_error"] = type(exc).__name__
        seen["endless_sent"] = sent
        endless.close()

        silent = _connect(path)  # sends the head only, then waits without closing
        silent.sendall((POST + "Content-Length: 100000\r\n\r\n").encode())
        start = time.monotonic()
        seen["silent_answer"] = _read_all(silent)
        seen["silent_seconds"] = time.monotonic() - start
        silent.close()

    _serving(resolver, tmp_path, limits, client)
    assert "endless_error" in seen
    # what was read and dropped, plus what the kernel's socket buffers hold
    assert isinstance(seen["endless_sent"], int) and seen["endless_sent"] < 200_000 + 4_000_000
    assert isinstance(seen["silent_answer"], bytes)
    assert seen["silent_answer"].startswith(b"HTTP/1.1 429 ")
    assert isinstance(seen["silent_seconds"], float) and seen["silent_seconds"] < 4
