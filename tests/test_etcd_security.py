"""etcd with mutual TLS and with user/password auth, for real: 3-member clusters that
ask for a client certificate or a user, and the errors when they refuse."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretfs.store.etcd import EtcdBackend
from secretfs.store.etcd.gateway import AuthError, Gateway, prefix_end
from secretfs.store.location import EtcdLocation, parse
from tests.conftest import cli_environment, run_cli
from tests.etcd_cluster import ETCD, EtcdCluster, Tls

PASSWORD = "pw-5be1-not-a-secret-value"


def _env(cluster: EtcdCluster, tmp_path: Path, prefix: str) -> dict[str, str]:
    env = cli_environment(tmp_path / "unused.db")
    env["SECRETFS_STORE"] = cluster.url(prefix)
    env["SECRETFS_KEY_FILE"] = str(tmp_path / f"{prefix}.key")
    env["SECRETFS_ETCD_TIMEOUT"] = "2"
    return env


def _grpc_load(where: EtcdLocation) -> dict[bytes, bytes]:
    """Every key of the store as a mount loads it, asserting it came over gRPC."""
    gw = Gateway(where)
    try:
        kv, _ = gw.load(
            [(where.key_prefix, prefix_end(where.key_prefix))], deadline=time.monotonic() + 30
        )
        assert gw.grpc, "the load fell back to the JSON gateway"
        return kv
    finally:
        gw.close()


@pytest.fixture
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    base = tmp_path_factory.mktemp("etcd-tls")
    cluster = EtcdCluster(base, tls=Tls.make(base))
    try:
        yield cluster
    finally:
        cluster.close()


def test_mutual_tls(
    tls_cluster: EtcdCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = tls_cluster.tls
    assert tls is not None
    env = _env(tls_cluster, tmp_path, "mtls")
    env["SECRETFS_ETCD_CACERT"] = str(tls.ca)
    env["SECRETFS_ETCD_CERT"] = str(tls.client_cert)
    env["SECRETFS_ETCD_KEY"] = str(tls.client_key)
    run_cli("init", env=env)
    run_cli("secret", "set", "db", "--from-stdin", env=env, input=b"over-mtls")
    assert run_cli("secret", "get", "db", env=env).stdout == b"over-mtls"

    # No client certificate: refused, and said so (not "cannot reach the cluster").
    bare = {k: v for k, v in env.items() if k not in ("SECRETFS_ETCD_CERT", "SECRETFS_ETCD_KEY")}
    proc = run_cli("secret", "get", "db", env=bare, check=False)
    assert proc.returncode == 7
    message = proc.stderr.decode()
    assert "refused our TLS client certificate" in message and "SECRETFS_ETCD_CERT" in message
    # A CA that did not sign the server's certificate: said so.
    (tmp_path / "other").mkdir()
    other = Tls.make(tmp_path / "other")
    wrong = dict(env, SECRETFS_ETCD_CACERT=str(other.ca))
    proc = run_cli("secret", "get", "db", env=wrong, check=False)
    assert proc.returncode == 7 and "cannot verify the certificate" in proc.stderr.decode()

    # A mount's load (gRPC over HTTP/2) with the same certificate; refused without it.
    where = parse(env["SECRETFS_STORE"])
    assert isinstance(where, EtcdLocation)
    for name in ("SECRETFS_ETCD_CACERT", "SECRETFS_ETCD_CERT", "SECRETFS_ETCD_KEY"):
        monkeypatch.setenv(name, env[name])
    assert any(key.endswith(b"d/meta/store_id") for key in _grpc_load(where))
    monkeypatch.delenv("SECRETFS_ETCD_CERT")
    monkeypatch.delenv("SECRETFS_ETCD_KEY")
    with pytest.raises(AuthError, match="refused our TLS client certificate"):
        _grpc_load(where)


@pytest.fixture
def auth_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A cluster with auth enabled (user root), simple tokens that expire after 1 s."""
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-auth"), extra=("--auth-token-ttl=1",))
    try:
        ctl = [str(Path(str(ETCD)).with_name("etcdctl")), f"--endpoints={cluster.endpoints[0]}"]
        for args in (
            ["user", "add", "root", f"--new-user-password={PASSWORD}"],
            ["user", "grant-role", "root", "root"],
            ["auth", "enable"],
        ):
            subprocess.run([*ctl, *args], check=True, capture_output=True, timeout=20)
        yield cluster
    finally:
        cluster.close()


def test_user_and_password_auth(
    auth_cluster: EtcdCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(auth_cluster, tmp_path, "auth")
    password = tmp_path / "etcd-password"
    password.write_text(PASSWORD + "\n")
    env["SECRETFS_ETCD_USER"] = "root"
    env["SECRETFS_ETCD_PASSWORD_FILE"] = str(password)
    run_cli("init", env=env)
    run_cli("secret", "set", "db", "--from-stdin", env=env, input=b"with-auth")
    assert run_cli("secret", "get", "db", env=env).stdout == b"with-auth"

    # No user: the cluster asks for one, and the message says so.
    anonymous = {k: v for k, v in env.items() if not k.startswith("SECRETFS_ETCD_PASS")}
    anonymous.pop("SECRETFS_ETCD_USER")
    proc = run_cli("secret", "get", "db", env=anonymous, check=False)
    assert proc.returncode == 7
    message = proc.stderr.decode()
    assert "refused the request (no user)" in message and "SECRETFS_ETCD_USER" in message
    assert "cannot reach" not in message
    # A wrong password: refused, naming the user, never the password.
    password.write_text("wrong\n")
    proc = run_cli("secret", "get", "db", env=env, check=False)
    assert proc.returncode == 7
    message = proc.stderr.decode()
    assert "refused user 'root'" in message and "wrong" not in message
    assert PASSWORD not in message
    password.write_text(PASSWORD)

    # The token expires (1 s here): the next request gets a new one by itself.
    monkeypatch.setenv("SECRETFS_ETCD_USER", "root")
    monkeypatch.setenv("SECRETFS_ETCD_PASSWORD_FILE", str(password))
    where = parse(env["SECRETFS_STORE"])
    assert isinstance(where, EtcdLocation)
    backend = EtcdBackend.open(where)
    try:
        assert backend.meta_get("store_id") is not None
        time.sleep(2.5)
        assert backend.meta_get("store_id") is not None
        # A mount's load over gRPC carries the token too, and renews it once expired.
        assert any(key.endswith(b"d/meta/store_id") for key in _grpc_load(where))
        time.sleep(1.5)
        gw = Gateway(where)
        try:
            gw.call("/v3/kv/range", {"key": "AA=="})  # a token, which then expires
            time.sleep(1.5)
            kv, _ = gw.load(
                [(where.key_prefix, prefix_end(where.key_prefix))], deadline=time.monotonic() + 30
            )
            assert kv and gw.grpc
        finally:
            gw.close()
    finally:
        backend.close()
