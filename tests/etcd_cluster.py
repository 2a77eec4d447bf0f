"""A real 3-member etcd cluster (Debian's etcd-server) on 127.0.0.1, for the tests.

Free ports, data dirs under a temp dir, short election timeouts; every process it
starts is killed at the end, and starting or waiting is bounded in time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ETCD = shutil.which("etcd")
START_SECONDS = 20.0


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class EtcdCluster:
    def __init__(self, base: Path, size: int = 3) -> None:
        if ETCD is None:
            pytest.fail("these tests need etcd (Debian: etcd-server; scripts/setup.sh installs it)")
        self.base = base
        ports = _free_ports(2 * size)
        self.client_ports = ports[:size]
        self.peer_ports = ports[size:]
        self.names = [f"m{i}" for i in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self.token = f"secretfs-test-{os.getpid()}-{ports[0]}"
        for i in range(size):
            self.start(i)
        self.wait_healthy()

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    def url(self, prefix: str) -> str:
        return f"etcd://{','.join(self.endpoints)}/{prefix}"

    def start(self, i: int) -> None:
        assert ETCD is not None
        client = f"http://127.0.0.1:{self.client_ports[i]}"
        peer = f"http://127.0.0.1:{self.peer_ports[i]}"
        cluster = ",".join(
            f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True)
        )
        data = self.base / self.names[i]
        log = open(self.base / f"{self.names[i]}.log", "ab")
        try:
            self.procs[i] = subprocess.Popen(
                [
                    ETCD,
                    f"--name={self.names[i]}",
                    f"--data-dir={data}",
                    f"--listen-client-urls={client}",
                    f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster={cluster}",
                    f"--initial-cluster-token={self.token}",
                    "--initial-cluster-state=new",
                    "--heartbeat-interval=50",
                    "--election-timeout=500",
                    # Progress notifications every 0.5 s: an idle watch still hears
                    # from its member, so a hung one shows (docs/cluster.md).
                    "--experimental-watch-progress-notify-interval=500ms",
                    "--log-level=warn",
                    "--logger=zap",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()

    def stop(self, i: int) -> None:
        """Kill one member outright (a crashed node)."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self.procs[i] = None

    def pause(self, i: int) -> None:
        """SIGSTOP one member (a hung node: it accepts connections, answers nothing)."""
        proc = self.procs[i]
        assert proc is not None
        os.killpg(proc.pid, signal.SIGSTOP)

    def resume(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)

    def wait_healthy(
        self, members: list[int] | None = None, timeout: float = START_SECONDS
    ) -> None:
        """Until each member (default: all running) says it has a leader."""
        wanted = [i for i in range(len(self.names)) if self.procs[i] is not None]
        wanted = members if members is not None else wanted
        deadline = time.monotonic() + timeout
        pending = set(wanted)
        while pending:
            for i in list(pending):
                proc = self.procs[i]
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"etcd member {i} exited: {self.log(i)[-2000:]}")
                try:
                    r = httpx.get(f"http://{self.endpoints[i]}/health", timeout=0.5)
                    if r.status_code == 200 and r.json().get("health") == "true":
                        pending.discard(i)
                except (httpx.HTTPError, ValueError):
                    pass
            if pending and time.monotonic() > deadline:
                raise AssertionError(f"etcd members {sorted(pending)} not healthy in {timeout}s")
            if pending:
                time.sleep(0.05)

    def log(self, i: int) -> str:
        path = self.base / f"{self.names[i]}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def dump(self, prefix: str) -> list[tuple[bytes, bytes]]:
        """Every key and value under /prefix/ as etcd holds them (via the gateway)."""
        import base64

        key = f"/{prefix}/".encode()
        end = key[:-1] + bytes([key[-1] + 1])
        r = httpx.post(
            f"http://{self.endpoints[0]}/v3/kv/range",
            json={
                "key": base64.b64encode(key).decode(),
                "range_end": base64.b64encode(end).decode(),
            },
            timeout=5,
        )
        r.raise_for_status()
        return [
            (base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", "")))
            for kv in r.json().get("kvs", [])
        ]

    def close(self) -> None:
        for i in range(len(self.procs)):
            self.resume(i)
            self.stop(i)


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One cluster for the session; each test takes a prefix of its own."""
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def own_etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A cluster of this test's own, for tests that stop and start its members."""
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-own"))
    try:
        yield cluster
    finally:
        cluster.close()
