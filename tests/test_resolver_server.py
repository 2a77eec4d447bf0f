"""The resolver's transport on a real unix socket, with its limits set small: idle
connections are closed, and past the connection limit clients wait instead of being
served at once or costing memory."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
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
