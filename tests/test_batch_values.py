"""Several secrets in one transaction (`secret set-many`, `tls set`, issue 12.1) and safe
input on every value source: --trim, --allow-empty, a hidden prompt on a terminal
(issue 12.3)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.conftest import Cli
from tests.tls_pairs import pairs

pytestmark = pytest.mark.usefixtures("initialized_store")


def get(cli: Cli, ref: str) -> bytes:
    return cli("secret", "get", ref).stdout


def versions(cli: Cli) -> dict[str, int]:
    return {r["ref"]: r["version"] for r in json.loads(cli("secret", "ls", "--json").stdout)}


# --- set-many ---------------------------------------------------------------------------


def test_set_many_writes_every_file_in_one_transaction(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"alpha")
    (tmp_path / "b").write_bytes(b"beta\n")
    out = cli(
        "secret", "set-many", "--json",
        "--from-file", f"a={tmp_path / 'a'}", "--from-file", f"@web/b={tmp_path / 'b'}",
    )  # fmt: skip
    assert json.loads(out.stdout) == [
        {"ref": "$S:a", "action": "created", "version": 1},
        {"ref": "$S:@web/b", "action": "created", "version": 1},
    ]
    assert get(cli, "a") == b"alpha" and get(cli, "@web/b") == b"beta\n"  # exact bytes
    (tmp_path / "a").write_bytes(b"alpha2")
    out = cli(
        "secret", "set-many",
        "--from-file", f"a={tmp_path / 'a'}", "--from-file", f"@web/b={tmp_path / 'b'}",
    )  # fmt: skip
    assert b"updated $S:a version 2" in out.stderr
    assert b"unchanged $S:@web/b version 1" in out.stderr
    # One audit record per secret, in the one transaction.
    records = json.loads(cli("audit", "--json").stdout)
    assert [r["ref"] for r in records if r["action"] == "import"][-1:] == ["$S:a"]


def test_set_many_writes_nothing_when_one_input_is_bad(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"alpha")
    (tmp_path / "empty").write_bytes(b"")
    for extra in (
        ["--from-file", f"b={tmp_path / 'missing'}"],
        ["--from-file", f"b={tmp_path / 'empty'}"],
        ["--from-file", f"a={tmp_path / 'a'}"],  # the same secret twice
        ["--from-file", "no-equals-sign"],
    ):
        proc = cli("secret", "set-many", "--from-file", f"a={tmp_path / 'a'}", *extra, check=False)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert b"Traceback" not in proc.stderr
    assert versions(cli) == {}
    assert cli("secret", "set-many", check=False).returncode == 2
    cli("secret", "set-many", "--allow-empty", "--from-file", f"b={tmp_path / 'empty'}")
    assert get(cli, "b") == b""


def test_set_many_from_stdin_takes_a_json_object(cli: Cli) -> None:
    doc = {"user": "app\n", "@api/config": {"port": 5432}}
    cli("secret", "set-many", "--from-stdin", "--trim", input=json.dumps(doc).encode())
    assert get(cli, "user") == b"app"  # --trim: one trailing newline off
    assert get(cli, "@api/config") == b'{"port":5432}'
    for bad in (b"[1, 2]", b"{", b'{"x": "v", "bad name!": "v"}'):
        proc = cli("secret", "set-many", "--from-stdin", input=bad, check=False)
        assert proc.returncode == 2 and b"Traceback" not in proc.stderr, bad
    assert set(versions(cli)) == {"$S:user", "$S:@api/config"}


# --- tls set ----------------------------------------------------------------------------


def _write_pair(tmp_path: Path, i: int) -> tuple[Path, Path]:
    crt, key = tmp_path / f"{i}.crt", tmp_path / f"{i}.key"
    crt.write_bytes(pairs()[i].cert)
    key.write_bytes(pairs()[i].key.rstrip(b"\n"))  # as some tools write it: no final newline
    return crt, key


def test_tls_set_checks_the_pair_and_writes_it_together(cli: Cli, tmp_path: Path) -> None:
    crt, key = _write_pair(tmp_path, 0)
    ca, _ = _write_pair(tmp_path, 1)
    out = cli("tls", "set", "tls", "--cert", str(crt), "--key", str(key), "--ca", str(ca))
    assert b"valid until" in out.stderr
    assert get(cli, "tls.crt") == pairs()[0].cert
    assert get(cli, "tls.key") == pairs()[0].key and pairs()[0].key.endswith(b"-----\n")
    assert get(cli, "tls.ca.crt") == pairs()[1].cert
    serialization.load_pem_private_key(get(cli, "tls.key"), password=None)


def test_tls_set_refuses_a_key_of_another_certificate(cli: Cli, tmp_path: Path) -> None:
    crt0, key0 = _write_pair(tmp_path, 0)
    crt1, key1 = _write_pair(tmp_path, 1)
    junk = tmp_path / "junk"
    junk.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    cli("tls", "set", "web", "--cert", str(crt0), "--key", str(key0))
    key_lines = [line for p in pairs() for line in p.key.splitlines()[1:-1]]
    for args, message in (
        (["--cert", str(crt1), "--key", str(key0)], b"does not match"),
        (["--cert", str(key1), "--key", str(key1)], b"not a PEM certificate"),
        (["--cert", str(junk), "--key", str(key1)], b"does not parse"),
        (["--cert", str(crt1), "--key", str(crt1)], b"not a PEM private key"),
        (["--cert", str(crt1), "--key", str(key1), "--ca", str(key1)], b"--ca is not a PEM"),
    ):
        proc = cli("tls", "set", "web", *args, check=False)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert not any(line in proc.stderr for line in key_lines), "key material shown"
        assert b"Traceback" not in proc.stderr
    assert versions(cli) == {"$S:web.crt": 1, "$S:web.key": 1}
    assert get(cli, "web.crt") == pairs()[0].cert


def test_tls_set_refuses_an_encrypted_key(cli: Cli, tmp_path: Path) -> None:
    crt, _ = _write_pair(tmp_path, 0)
    private = serialization.load_pem_private_key(pairs()[0].key, password=None)
    enc = tmp_path / "enc.key"
    enc.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    proc = cli("tls", "set", "web", "--cert", str(crt), "--key", str(enc), check=False)
    assert proc.returncode == 2 and b"encrypted" in proc.stderr


# --- safe input -------------------------------------------------------------------------


def test_empty_values_are_refused_unless_allowed(cli: Cli, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    for args in (["--from-stdin"], ["--from-file", str(empty)], ["--from", "cmd://true"]):
        proc = cli("secret", "set", "db", *args, input=b"", check=False)
        assert proc.returncode == 2 and b"is empty" in proc.stderr, args
        assert b"--allow-empty" in proc.stderr
    assert versions(cli) == {}
    cli("secret", "set", "db", "--from-stdin", "--allow-empty", input=b"")
    assert get(cli, "db") == b""


def test_trim_strips_one_newline_on_every_source(
    cli: Cli, cli_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "f").write_bytes(b"file\n\n")
    cases = (
        (["--from-stdin"], b"stdin\n", b"stdin"),
        (["--from-stdin"], b"crlf\r\n", b"crlf"),
        (["--from-file", str(tmp_path / "f")], None, b"file\n"),
        (["--from", "cmd://echo cmd"], None, b"cmd"),
        (["--from", "env://TRIM_TEST"], None, b"env"),
    )
    env = {**cli_env, "TRIM_TEST": "env\n"}
    for args, given, want in cases:
        cli("secret", "set", "db", *args, "--trim", input=given, env=env)
        assert get(cli, "db") == want, args
    # Without --trim: exact bytes, and a note that says how to trim.
    proc = cli("secret", "set", "db", "--from", "cmd://echo cmd")
    assert get(cli, "db") == b"cmd\n" and b"--trim" in proc.stderr
    # A PEM value needs its newline: no note.
    proc = cli("secret", "set", "cert", "--from-stdin", input=pairs()[0].cert)
    assert b"note" not in proc.stderr


def _read_until(fd: int, want: bytes, out: bytearray, deadline: float) -> None:
    while want not in out:
        left = deadline - time.monotonic()
        assert left > 0, f"no {want!r} on the terminal; got {bytes(out)!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                chunk = b""
            assert chunk, f"terminal closed before {want!r}; got {bytes(out)!r}"
            out += chunk


def test_from_stdin_on_a_terminal_prompts_twice_without_echo(
    cli: Cli, cli_env: dict[str, str]
) -> None:
    typed = b"typed-s3cret-value"
    master, slave = os.openpty()
    # setsid -c: the pty becomes the controlling terminal, as in a login shell.
    proc = subprocess.Popen(
        ["setsid", "-c", sys.executable, "-m", "secretfs", "secret", "set", "db", "--from-stdin"],
        stdin=slave, stdout=slave, stderr=slave, env=cli_env,
    )  # fmt: skip
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + 20
    try:
        _read_until(master, b"Value:", out, deadline)
        os.write(master, typed + b"\n")
        _read_until(master, b"Again:", out, deadline)
        os.write(master, typed + b"\n")
        _read_until(master, b"version 1", out, deadline)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    assert typed not in out, bytes(out)
    assert get(cli, "db") == typed  # what was typed, without the Enter
