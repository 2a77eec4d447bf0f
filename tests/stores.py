"""One initialized store on each backend, driven through the CLI: the contract suite's
fixtures (tests/test_store_contract.py) and the backend-specific tests' (etcd, SQLite).

SQLite and etcd stores are shared with other processes; a `memory://` store lives in
this process only, so what runs as a process (`run`, concurrent writers) needs one of
the others (`Store.shared`)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretfs.store import location
from secretfs.store.base import Backend
from secretfs.store.memory import MemoryBackend, MemoryLocation
from tests.conftest import cli_environment, run_cli
from tests.etcd_cluster import EtcdCluster

BACKENDS = ["sqlite", "etcd", "memory"]


class Store:
    def __init__(self, kind: str, url: str, env: dict[str, str], cluster: EtcdCluster | None):
        self.kind, self.url, self.env, self.cluster = kind, url, env, cluster

    @property
    def shared(self) -> bool:
        """Whether another process sees this store."""
        return self.kind != "memory"

    def cli(
        self,
        *args: str,
        input: bytes | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        return run_cli(*args, env=env or self.env, input=input, check=check)

    def another_url(self, tmp_path: Path) -> str:
        """A second, empty store on the same backend."""
        return new_url(self.kind, tmp_path / "another.db", self.cluster)

    def raw_bytes(self) -> list[bytes]:
        """Everything the backend holds, as stored."""
        if self.cluster is not None:
            return [k + b"\n" + v for k, v in self.cluster.dump(self.url.rsplit("/", 1)[1])]
        if self.kind == "memory":
            return [k + b"\n" + v for k, v in MemoryLocation.parse(self.url).open().dump()]
        path = Path(self.url)
        return [p.read_bytes() for p in path.parent.glob(path.name + "*")]


def new_url(kind: str, path: Path, cluster: EtcdCluster | None) -> str:
    if kind == "etcd":
        assert cluster is not None
        return cluster.url(f"t{uuid.uuid4().hex[:12]}")
    if kind == "memory":
        return f"memory://t{uuid.uuid4().hex[:12]}"
    return str(path)


def new_store(kind: str, tmp_path: Path, cluster: EtcdCluster | None) -> Store:
    url = new_url(kind, tmp_path / "store.db", cluster)
    env = cli_environment(Path("/nonexistent"))
    env["SECRETFS_STORE"] = url
    env["SECRETFS_KEY_FILE"] = str(tmp_path / "store.key")
    s = Store(kind, url, env, cluster)
    s.cli("init")
    return s


@pytest.fixture(params=BACKENDS)
def each_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An initialized store on each backend in turn."""
    cluster = request.getfixturevalue("etcd_cluster") if request.param == "etcd" else None
    s = new_store(request.param, tmp_path, cluster)
    yield s
    if s.kind == "memory":
        MemoryLocation.parse(s.url).remove()


@pytest.fixture
def etcd_store(etcd_cluster: EtcdCluster, tmp_path: Path) -> Store:
    return new_store("etcd", tmp_path, etcd_cluster)


def new_backend(kind: str, tmp_path: Path, cluster: EtcdCluster | None) -> Backend:
    """An empty store (only its id) opened on `kind`'s backend, no key involved."""
    where = location.parse(new_url(kind, tmp_path / "store.db", cluster))
    where.create(lambda backend: backend.meta_set("store_id", b"contract"))
    return where.open()


@pytest.fixture(params=BACKENDS)
def each_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """An empty store's backend on each backend in turn."""
    cluster = request.getfixturevalue("etcd_cluster") if request.param == "etcd" else None
    backend = new_backend(request.param, tmp_path, cluster)
    yield backend
    backend.close()
    if isinstance(backend, MemoryBackend):
        backend.location.remove()
