"""Key material never reaches a child we start, and our processes cannot dump core.

Real subprocesses throughout: what a child inherits and what the kernel records about a
process are properties of processes, not of functions.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

from secretfs.refs import parse_ref
from secretfs.vault import Vault
from tests.conftest import CliRunner

KEY = bytes(range(32))
KEY_TEXT = base64.b64encode(KEY).decode()  # given as base64; --scrub also hides its hex
PASSWORD = "correct horse battery staple"

DUMP_ENV = (
    "import json, os; print(json.dumps({k: v for k, v in os.environ.items()"
    " if k.startswith('SECRETFS_') or k == 'DB'}))"
)


@pytest.fixture
def env_key_store(
    store_path: Path, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """A store whose KEK is $SECRETFS_KEY (no key file), with `db` and `other`; returns
    the CLI environment that unlocks it (the password is set too, and must not leak)."""
    monkeypatch.setenv("SECRETFS_KEY", KEY_TEXT)
    Vault.init(store_path)
    vault = Vault.open(store_path)
    try:
        vault.set(parse_ref("db"), b"db-value-1")
        vault.set(parse_ref("other"), b"other-value-2")
    finally:
        vault.close()
    assert not store_path.with_name(store_path.name + ".key").exists()
    return {**cli_env, "SECRETFS_KEY": KEY_TEXT, "SECRETFS_PASSWORD": PASSWORD, "DB": "$S:db"}


@pytest.mark.parametrize("scrub", [[], ["--scrub"]])
def test_run_child_cannot_read_other_secrets(
    cli: CliRunner, env_key_store: dict[str, str], scrub: list[str]
) -> None:
    # The child is given $S:db only; it tries the whole store with the CLI.
    script = (
        "import subprocess, sys; p = subprocess.run([sys.executable, '-m', 'secretfs',"
        " 'secret', 'get', 'other'], capture_output=True);"
        " print(p.returncode, p.stdout, p.stderr)"
    )
    proc = cli("run", *scrub, "--", sys.executable, "-c", script, env=env_key_store)
    assert b"other-value-2" not in proc.stdout
    assert proc.stdout.startswith(b"5 b''")  # a key error: no key reached the child
    proc = cli("run", *scrub, "--", sys.executable, "-c", DUMP_ENV, env=env_key_store)
    seen = json.loads(proc.stdout)
    assert "SECRETFS_KEY" not in seen and "SECRETFS_PASSWORD" not in seen
    assert seen["DB"] == ("***" if scrub else "db-value-1")
    assert seen["SECRETFS_STORE"] == env_key_store["SECRETFS_STORE"]


def test_pass_key_env_is_explicit_and_scrub_masks_every_key_form(
    cli: CliRunner, env_key_store: dict[str, str]
) -> None:
    proc = cli("run", "--pass-key-env", "--", sys.executable, "-c", DUMP_ENV, env=env_key_store)
    assert json.loads(proc.stdout)["SECRETFS_KEY"] == KEY_TEXT
    script = (
        "import base64, os; k = os.environ['SECRETFS_KEY'];"
        " raw = base64.b64decode(k);"
        " print(k, raw.hex(), raw.hex().upper(), base64.urlsafe_b64encode(raw).decode(),"
        " os.environ['SECRETFS_PASSWORD'], os.environ['DB'])"
    )
    proc = cli(
        "run", "--scrub", "--pass-key-env", "--", sys.executable, "-c", script, env=env_key_store
    )
    assert proc.stdout == b"*** *** *** *** *** ***\n"


def test_cmd_source_child_gets_no_key(
    cli: CliRunner, env_key_store: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "seen"
    cmd = f'cmd://printf "%s|%s" "${{SECRETFS_KEY-}}" "${{SECRETFS_PASSWORD-}}" > {out}; echo v'
    cli("secret", "set", "new", "--from", cmd, env=env_key_store)
    assert out.read_text() == "|"
