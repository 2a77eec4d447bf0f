"""Key material never reaches a child we start, and our processes cannot dump core.

Real subprocesses throughout: what a child inherits and what the kernel records about a
process are properties of processes, not of functions.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretfs.refs import parse_ref
from secretfs.vault import Vault
from tests.conftest import Cli

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
    cli: Cli, env_key_store: dict[str, str], scrub: list[str]
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
    cli: Cli, env_key_store: dict[str, str]
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
    cli: Cli, env_key_store: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "seen"
    cmd = f'cmd://printf "%s|%s" "${{SECRETFS_KEY-}}" "${{SECRETFS_PASSWORD-}}" > {out}; echo v'
    cli("secret", "set", "new", "--from", cmd, env=env_key_store)
    assert out.read_text() == "|"


# --------------------------------------------------------------------------- cores

BIG = bytes(range(256)) * 1024  # 256 KiB: more than a pipe holds, so `get` blocks


def _unlimited_cores() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _core_limits(pid: int) -> list[str]:
    with open(f"/proc/{pid}/limits", encoding="ascii") as fh:
        line = next(line for line in fh if line.startswith("Max core file size"))
    return line.split()[4:6]


@pytest.fixture
def searchable_checkout() -> Iterator[None]:
    """uid 1000 runs this checkout's `.venv` python: a checkout made in a `mktemp -d`
    directory (0700) is not searchable by others, so each such directory above it gets
    others' search (x, never r) for the test and its mode back after."""
    root = Path(__file__).resolve().parents[1]
    closed = [d for d in (root, *root.parents) if not d.stat().st_mode & 0o001]
    modes = {d: d.stat().st_mode & 0o7777 for d in closed}
    try:
        for d, mode in modes.items():
            d.chmod(mode | 0o001)
        yield
    finally:
        for d, mode in modes.items():
            d.chmod(mode)


@pytest.fixture
def user_store(
    monkeypatch: pytest.MonkeyPatch, searchable_checkout: None
) -> Iterator[dict[str, str]]:
    """A store owned by uid 1000 (outside root's 0700 pytest tmp) holding `big`; returns
    the environment for that user's CLI."""
    home = Path(tempfile.mkdtemp(prefix="secretfs-core-"))
    monkeypatch.setenv("SECRETFS_KEY", KEY_TEXT)
    store = home / "store.db"
    Vault.init(store)
    vault = Vault.open(store)
    try:
        vault.set(parse_ref("big"), BIG)
    finally:
        vault.close()
    for path in (home, *home.iterdir()):
        os.chown(path, 1000, 1000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETFS_")}
    yield {**env, "SECRETFS_STORE": str(store), "SECRETFS_KEY": KEY_TEXT, "HOME": str(home)}
    shutil.rmtree(home)


def test_cli_holding_a_value_cannot_dump_core(user_store: dict[str, str]) -> None:
    """`secret get` blocked on a full pipe: its core limit is 0 and it is not dumpable
    (proc(5): a non-dumpable process's /proc/PID files belong to root, not its uid)."""
    as_user = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups"]
    proc = subprocess.Popen(
        [*as_user, sys.executable, "-m", "secretfs", "secret", "get", "big"],
        env=user_store,
        cwd=user_store["HOME"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_unlimited_cores,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "secret get wrote nothing"
        assert proc.poll() is None  # blocked: the rest of the value is in its memory
        assert os.stat(f"/proc/{proc.pid}/status").st_uid == 0  # dumpable=0
        with open(f"/proc/{proc.pid}/status", encoding="ascii") as fh:
            assert "\nUid:\t1000\t" in fh.read()  # it does run as uid 1000
        assert _core_limits(proc.pid) == ["0", "unlimited"]
        proc.send_signal(signal.SIGABRT)
        assert proc.wait(timeout=30) == -signal.SIGABRT
        assert not [p for p in Path(user_store["HOME"]).iterdir() if p.name.startswith("core")]
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("scrub", [[], ["--scrub"]])
def test_run_child_gets_the_users_core_limit_back(
    cli_env: dict[str, str], scrub: list[str]
) -> None:
    def limit_cores() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (4096, 8192))

    show = "import resource; print(resource.getrlimit(resource.RLIMIT_CORE))"
    proc = subprocess.run(
        [sys.executable, "-m", "secretfs", "run", *scrub, "--", sys.executable, "-c", show],
        env=cli_env,
        capture_output=True,
        preexec_fn=limit_cores,
        timeout=60,
        check=True,
    )
    assert proc.stdout == b"(4096, 8192)\n"


@pytest.mark.parametrize("scrub", [[], ["--scrub"]])
def test_run_child_inherits_no_descriptor_of_ours(
    cli: Cli, env_key_store: dict[str, str], scrub: list[str]
) -> None:
    # The store was opened to resolve $S:db: its file must not stay open in the child.
    show = "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))"
    proc = cli("run", *scrub, "--", sys.executable, "-c", show, env=env_key_store)
    assert proc.stdout == b"[0, 1, 2, 3]\n"  # 3: the listing's own directory
