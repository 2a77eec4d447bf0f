"""A real 3-member etcd cluster (Debian's etcd-server) on 127.0.0.1, for the tests.

Free ports, data dirs under a temp dir, short election timeouts; every process it
starts is killed at the end, and starting or waiting is bounded in time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from secretfs.store.base import Backend, Following

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


@dataclass(frozen=True)
class Tls:
    """openssl-made CA, a server certificate for 127.0.0.1 and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def make(cls, base: Path) -> Tls:
        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        ca, ca_key = base / "ca.crt", base / "ca.key"
        run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-subj", "/CN=t-ca",
            "-days", "2")  # fmt: skip
        # etcd's gateway dials its own gRPC with the server certificate: clientAuth too.
        for name, usage in (("server", "serverAuth,clientAuth"), ("client", "clientAuth")):
            ext = base / f"{name}.ext"
            ext.write_text(f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n")
            csr = base / f"{name}.csr"
            run("req", *ec, "-keyout", str(base / f"{name}.key"), "-out", str(csr),
                "-subj", f"/CN={name}")  # fmt: skip
            run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                "-CAcreateserial", "-out", str(base / f"{name}.crt"), "-days", "2",
                "-extfile", str(ext))  # fmt: skip
        return cls(
            ca, base / "server.crt", base / "server.key", base / "client.crt", base / "client.key"
        )

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


class EtcdCluster:
    def __init__(
        self,
        base: Path,
        size: int = 3,
        tls: Tls | None = None,
        extra: tuple[str, ...] = (),
        progress: str | None = "500ms",
    ) -> None:
        self.tls = tls
        self.progress = progress
        self.extra = extra
        self.scheme = "https" if tls else "http"
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
        scheme = "etcd+https" if self.tls else "etcd"
        return f"{scheme}://{','.join(self.endpoints)}/{prefix}"

    def _client(self) -> httpx.Client:
        return httpx.Client(verify=self.tls.context() if self.tls else False, trust_env=False)

    def start(self, i: int) -> None:
        assert ETCD is not None
        client = f"{self.scheme}://127.0.0.1:{self.client_ports[i]}"
        tls = self.tls
        tls_args = (
            [
                f"--cert-file={tls.server_cert}",
                f"--key-file={tls.server_key}",
                "--client-cert-auth",
                f"--trusted-ca-file={tls.ca}",
            ]
            if tls
            else []
        )
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
                    *(
                        [f"--experimental-watch-progress-notify-interval={self.progress}"]
                        if self.progress
                        else []
                    ),
                    "--log-level=warn",
                    "--logger=zap",
                    *tls_args,
                    *self.extra,
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
        with self._client() as client:
            self._wait(client, pending, deadline, timeout)

    def _wait(
        self, client: httpx.Client, pending: set[int], deadline: float, timeout: float
    ) -> None:
        while pending:
            for i in list(pending):
                proc = self.procs[i]
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"etcd member {i} exited: {self.log(i)[-2000:]}")
                try:
                    r = client.get(f"{self.scheme}://{self.endpoints[i]}/health", timeout=0.5)
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
        with self._client() as client:
            r = client.post(
                f"{self.scheme}://{self.endpoints[0]}/v3/kv/range",
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
        # Each member preallocates 2 x 64 MB of WAL: ~5 GB a run if kept. The logs stay.
        for name in self.names:
            shutil.rmtree(self.base / name, ignore_errors=True)


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


@contextmanager
def followed(backend: Backend) -> Iterator[Following]:
    """`backend` followed as a mount follows it: its loops children of a trio nursery
    (`daemon.follow_store`) in a thread of the test's own, cancelled on leaving."""
    from secretfs.daemon import follow_store

    following = backend.follow()
    assert following is not None, "this backend has nothing to follow"
    leave = threading.Event()

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow_store, following)
            await trio.to_thread.run_sync(leave.wait)
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(run,), name="followed")
    thread.start()
    try:
        yield following
    finally:
        leave.set()
        thread.join(timeout=5)
        assert not thread.is_alive(), "the follower's nursery did not end"
