"""`secretfs run` (a real process: it execs, forwards signals) and `inject`, on a real store."""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import stat
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from secretfs.refs import parse_ref
from secretfs.vault import Vault
from tests.conftest import Cli

SECRETS: dict[str, bytes] = {
    "db": b"hunter2",
    "@api/config": b'{"user":"app","password":"pw-9f3k","port":5432,"nested":{"k":"v"}}',
    ":staging/token": b"  staging-tok\n",
    "shop:prod/stripe": "sk_live_ünï".encode(),
}

# Prints its environment as JSON (hex values, so any byte survives) and its argv.
DUMP_ENV = (
    "import json, os, sys; "
    "print(json.dumps({'env': {k.decode(): v.hex() for k, v in os.environb.items()},"
    " 'argv': sys.argv}))"
)


def make_store(path: Path, secrets: dict[str, bytes]) -> Path:
    """A store with a key file beside it, filled in-process (the CLI is what is tested)."""
    Vault.init(path)
    vault = Vault.open(path)
    try:
        for ref, value in secrets.items():
            vault.set(parse_ref(ref), value)
    finally:
        vault.close()
    return path


@pytest.fixture
def store(store_path: Path) -> Path:
    return make_store(store_path, SECRETS)


def env_with(cli_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = dict(cli_env)
    env.update(extra)
    return env


def child_env(out: bytes) -> dict[str, bytes]:
    return {k: bytes.fromhex(v) for k, v in json.loads(out)["env"].items()}


# --------------------------------------------------------------------------- run


def test_run_resolves_every_form(cli_process: Cli, cli_env: dict[str, str], store: Path) -> None:
    env = env_with(
        cli_env,
        DB="$S:db",
        PW="$S:@api/config/password",
        PORT="$S:@api/config/port",
        NESTED="$S:@api/config/nested",
        TOKEN="$secret://staging/token",
        STRIPE="$S:shop:prod/stripe",
        DSN="postgres://app:{{ $S:db }}@db:5432/{{$S:@api/config/user}}",
        PLAIN="no reference here {{ .Go }}",
    )
    proc = cli_process("run", "--", sys.executable, "-c", DUMP_ENV, env=env)
    got = child_env(proc.stdout)
    assert got["DB"] == b"hunter2"
    assert got["PW"] == b"pw-9f3k"
    assert got["PORT"] == b"5432"
    assert got["NESTED"] == b'{"k":"v"}'
    assert got["TOKEN"] == b"  staging-tok\n"  # exact bytes, whitespace kept
    assert got["STRIPE"] == "sk_live_ünï".encode()
    assert got["DSN"] == b"postgres://app:hunter2@db:5432/app"
    assert got["PLAIN"] == b"no reference here {{ .Go }}"
    assert got["SECRETFS_STORE"] == str(store).encode()


def test_values_never_reach_argv(cli_process: Cli, cli_env: dict[str, str], store: Path) -> None:
    env = env_with(cli_env, DB="$S:db")
    proc = cli_process("run", "--", sys.executable, "-c", DUMP_ENV, "$S:db", "$DB", env=env)
    assert json.loads(proc.stdout)["argv"][1:] == ["$S:db", "$DB"]  # not expanded
    # With --scrub, secretfs stays as the parent: its own argv holds no value either.
    show_parent = "import os; print(open(f'/proc/{os.getppid()}/cmdline','rb').read().hex())"
    proc = cli_process("run", "--scrub", "--", sys.executable, "-c", show_parent, env=env)
    parent_argv = bytes.fromhex(proc.stdout.decode().strip())
    assert b"secretfs" in parent_argv and b"hunter2" not in parent_argv


def test_unresolvable_refs_are_all_listed_and_nothing_runs(
    cli_process: Cli, cli_env: dict[str, str], store: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    env = env_with(
        cli_env,
        A_MISSING="$S:nope",
        B_FIELD="$S:@api/config/nofield",
        C_BAD="$S:my db",
        D_TEMPLATE="x{{ $S::staging/absent }}y",
        E_RAW_FIELD="$S:db/x",
        OK="$S:db",
    )
    proc = cli_process("run", "--", "touch", str(marker), env=env, check=False)
    assert proc.returncode == 3
    err = proc.stderr.decode()
    assert "5 references could not be resolved" in err
    for name, ref in [
        ("A_MISSING", "$S:nope"),
        ("B_FIELD", "$S:@api/config/nofield"),
        ("C_BAD", "$S:my db"),
        ("D_TEMPLATE", "$S::staging/absent"),
        ("E_RAW_FIELD", "$S:db/x"),
    ]:
        assert f"${name}: {ref!r}" in err
    assert "hunter2" not in err and "pw-9f3k" not in err
    assert not marker.exists()


def test_no_references_needs_no_store(
    cli_process: Cli, cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = env_with(cli_env, SECRETFS_STORE=str(tmp_path / "absent.db"), X="plain")
    proc = cli_process("run", "--", sys.executable, "-c", DUMP_ENV, env=env)
    assert child_env(proc.stdout)["X"] == b"plain"


def test_embedded_bare_reference_warns(
    cli_process: Cli, cli_env: dict[str, str], store: Path
) -> None:
    env = env_with(cli_env, URL="postgres://app:$S:db@host")
    proc = cli_process("run", "--", sys.executable, "-c", DUMP_ENV, env=env)
    assert child_env(proc.stdout)["URL"] == b"postgres://app:$S:db@host"
    assert b"$URL holds '$S:' inside a longer value" in proc.stderr


def test_exit_status_and_missing_command(
    cli_process: Cli, cli_env: dict[str, str], store: Path
) -> None:
    env = env_with(cli_env, DB="$S:db")
    for scrub in ([], ["--scrub"]):
        proc = cli_process("run", *scrub, "--", "sh", "-c", "exit 7", env=env, check=False)
        assert proc.returncode == 7
        proc = cli_process("run", *scrub, "--", "no-such-command-xyz", env=env, check=False)
        assert proc.returncode == 127
        assert b"command not found: no-such-command-xyz" in proc.stderr
    proc = cli_process("run", "--", env=env, check=False)
    assert proc.returncode == 2


def test_scrub_hides_values_split_across_writes(
    cli_process: Cli, cli_env: dict[str, str], store: Path
) -> None:
    env = env_with(cli_env, DB="$S:db", PW="$S:@api/config/password", TOK="$S::staging/token")
    script = (
        "import os, sys, time\n"
        "def w(fd, b):\n"
        "    os.write(fd, b); time.sleep(0.02)\n"
        "w(1, b'db=hun'); w(1, b'ter2 pw='); w(1, os.environb[b'PW'][:3]);"
        " w(1, os.environb[b'PW'][3:] + b'\\n')\n"
        "w(2, b'err hunter'); w(2, b'2 and hunte'); w(2, b'r and ')\n"
        "w(1, b'tok=' + os.environb[b'TOK'].strip() + b' raw=' + os.environb[b'TOK'])\n"
        "w(1, b'hhunter2unter2\\n')\n"
    )
    proc = cli_process("run", "--scrub", "--", sys.executable, "-c", script, env=env)
    assert proc.stdout == b"db=*** pw=***\ntok=*** raw=***h***unter2\n"
    assert proc.stderr == b"err *** and hunter and "


def test_scrub_dies_of_the_childs_signal(
    cli_process: Cli, cli_env: dict[str, str], store: Path
) -> None:
    env = env_with(cli_env, DB="$S:db")
    script = "import os, signal; print('bye', flush=True); os.kill(os.getpid(), signal.SIGTERM)"
    proc = cli_process("run", "--scrub", "--", sys.executable, "-c", script, env=env, check=False)
    assert proc.returncode == -signal.SIGTERM
    assert proc.stdout == b"bye\n"


def test_scrub_reader_going_away_ends_the_child(cli_env: dict[str, str], store: Path) -> None:
    env = env_with(cli_env, DB="$S:db")
    proc = subprocess.Popen(
        [sys.executable, "-m", "secretfs", "run", "--scrub", "--", "sh", "-c", 'exec yes "$DB"'],
        env=env,
        stdout=subprocess.PIPE,
    )
    try:
        assert _read_line(proc) == b"***\n"
        assert proc.stdout is not None
        proc.stdout.close()  # like `| head -1`: the child meets a closed pipe and dies of it
        assert proc.wait(timeout=30) == -signal.SIGPIPE
    finally:
        proc.kill()


HANDLER = """
import os, signal, sys, time
seen = []
def handle(sig, frame):
    seen.append(sig)
signal.signal(signal.SIGTERM, handle)
signal.signal(signal.SIGUSR1, handle)
signal.signal(signal.SIGINT, handle)
if os.environ.get("OWN_GROUP"):
    os.setpgid(0, 0)  # out of the terminal's foreground group: it sees only what is forwarded
print("ready", os.environ["DB"], flush=True)
deadline = time.monotonic() + 20
while time.monotonic() < deadline and signal.SIGTERM not in seen:
    time.sleep(0.01)
time.sleep(0.3)  # a duplicate, if any was sent, arrives well within this
print("seen", ",".join(signal.Signals(s).name for s in seen), flush=True)
sys.exit(42)
"""


def _start_scrubbed(
    cli_env: dict[str, str], own_group: bool = False, **kw: object
) -> subprocess.Popen[bytes]:
    env = env_with(cli_env, DB="$S:db", OWN_GROUP="1" if own_group else "")
    return subprocess.Popen(
        [sys.executable, "-m", "secretfs", "run", "--scrub", "--", sys.executable, "-c", HANDLER],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,  # type: ignore[call-overload]
    )


def _read_line(proc: subprocess.Popen[bytes], timeout: float = 30) -> bytes:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output from the child"
    return proc.stdout.readline()


def test_scrub_forwards_signals(cli_env: dict[str, str], store: Path) -> None:
    proc = _start_scrubbed(cli_env)
    try:
        assert _read_line(proc) == b"ready ***\n"
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)  # sent by kill(), not a terminal: forwarded
        time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert out == b"seen SIGUSR1,SIGINT,SIGTERM\n"
    assert proc.returncode == 42


def _run_under_terminal(cli_env: dict[str, str], own_group: bool) -> bytes:
    """Ctrl-C typed on a terminal where `secretfs run --scrub` is in the foreground."""
    master, slave = os.openpty()

    def take_terminal() -> None:  # a new session whose controlling terminal is the pty
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = _start_scrubbed(
        cli_env, own_group, stdin=slave, start_new_session=True, preexec_fn=take_terminal
    )
    os.close(slave)
    try:
        assert _read_line(proc) == b"ready ***\n"
        os.write(master, b"\x03")  # the terminal sends SIGINT to its foreground group
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        os.close(master)
    assert proc.returncode == 42
    return out


def test_terminal_ctrl_c_reaches_the_child(cli_env: dict[str, str], store: Path) -> None:
    assert _run_under_terminal(cli_env, own_group=False) == b"seen SIGINT,SIGTERM\n"


def test_terminal_ctrl_c_is_not_forwarded_again(cli_env: dict[str, str], store: Path) -> None:
    # The child shares our process group, so the terminal gave it the Ctrl-C already; a
    # child that left the group shows that we do not send a second copy.
    assert _run_under_terminal(cli_env, own_group=True) == b"seen SIGTERM\n"


# --------------------------------------------------------------------------- inject

TEMPLATE = b"""# app config
db_password: {{ $S:db }}
api: "{{$S:@api/config/password}}"   # inline
token: {{ $secret://staging/token }}
unicode: {{ $S:shop:prod/stripe }} and {{ not a ref }}
"""

RENDERED = (
    b"# app config\n"
    b"db_password: hunter2\n"
    b'api: "pw-9f3k"   # inline\n'
    b"token:   staging-tok\n\n"
    b"unicode: " + "sk_live_ünï".encode() + b" and {{ not a ref }}\n"
)


def test_inject_writes_0600_file(cli: Cli, store: Path, tmp_path: Path) -> None:
    tpl = tmp_path / "app.tpl"
    tpl.write_bytes(TEMPLATE)
    out = tmp_path / "out" / "app.yaml"
    out.parent.mkdir()
    old = os.umask(0)
    try:
        proc = cli("inject", "-i", str(tpl), "-o", str(out))
    finally:
        os.umask(old)
    assert out.read_bytes() == RENDERED
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert b"(4 references, mode 0600)" in proc.stderr
    assert os.listdir(out.parent) == ["app.yaml"]  # no temp file left


def test_inject_refuses_to_replace_without_force(cli: Cli, store: Path, tmp_path: Path) -> None:
    out = tmp_path / "app.yaml"
    out.write_bytes(b"old")
    out.chmod(0o644)
    proc = cli("inject", "-o", str(out), input=b"x={{ $S:db }}", check=False)
    assert proc.returncode == 4
    assert b"--force" in proc.stderr
    assert out.read_bytes() == b"old"
    cli("inject", "-o", str(out), "--force", input=b"x={{ $S:db }}")
    assert out.read_bytes() == b"x=hunter2"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    cli("inject", "-o", str(tmp_path / "g.conf"), "--mode", "0640", input=b"{{ $S:db }}")
    assert stat.S_IMODE((tmp_path / "g.conf").stat().st_mode) == 0o640


def test_inject_lists_every_failure_and_writes_nothing(
    cli: Cli, store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "app.yaml"
    template = b"a: {{ $S:db }}\nb: {{ $S:missing }}\n\nc: {{ $S:@api/config/nope }} {{ $S:db }}\n"
    proc = cli("inject", "-o", str(out), input=template, check=False)
    assert proc.returncode == 3
    err = proc.stderr.decode()
    assert "line 2: '$S:missing'" in err
    assert "line 4: '$S:@api/config/nope'" in err
    assert "2 references could not be resolved" in err
    assert "hunter2" not in err
    assert not out.exists()
    assert os.listdir(tmp_path) == [p.name for p in tmp_path.iterdir()]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_inject_to_stdout(cli: Cli, store: Path) -> None:
    proc = cli("inject", input=b"pw={{ $S:@api/config/password }}")
    assert proc.stdout == b"pw=pw-9f3k"
