"""`secretfs import` / `secretfs export` through the real CLI against a real store."""

from __future__ import annotations

import base64
import itertools
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from secretfs import formats
from tests.conftest import Cli

TRICKY = {
    "QUOTES": b'it\'s a "quote"',
    "EQ_HASH": b"a=b #not a comment",
    "NEWLINES": b"line1\nline2\r\nline3\n",
    "UNICODE": "ünïcødé € 😀".encode(),
    "EXPORT": b"export X=1",
    "TRAIL": b"  spaces at both ends  ",
    "BACKSLASH": b"C:\\path\\n\\",
    "EMPTY": b"",
    "DOLLAR": b"$HOME ${USER} `id`",
}


def exported(cli: Cli, *args: str) -> dict[str, bytes]:
    out = cli("export", *args, "--format", "json").stdout
    return {e.name: e.value for e in formats.parse("json", out).entries}


def ls(cli: Cli, scope: str = "deployment") -> dict[str, int]:
    records = json.loads(cli("secret", "ls", scope, "--json").stdout)
    return {r["ref"]: r["version"] for r in records}


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", ["dotenv", "json", "k8s"])
def test_every_format_round_trips_tricky_values_exactly(
    cli: Cli, initialized_store: Path, tmp_path: Path, fmt: str
) -> None:
    source = write(tmp_path, "in", formats.render(fmt, TRICKY))  # type: ignore[arg-type]
    cli("import", "--format", fmt, "--file", str(source))
    assert exported(cli) == TRICKY
    for name in ("NEWLINES", "TRAIL", "EMPTY"):
        assert cli("secret", "get", name).stdout == TRICKY[name]
    if fmt != "k8s":
        out = cli("export", "--format", fmt).stdout
        # Sorted by name, and byte for byte what formats.render gives.
        assert out == formats.render(fmt, dict(sorted(TRICKY.items())))  # type: ignore[arg-type]


def test_binary_values_round_trip_through_json_and_k8s(
    cli: Cli, initialized_store: Path, tmp_path: Path
) -> None:
    blob = bytes(range(256))
    cli("secret", "set", "blob", "--from-stdin", input=blob)
    cli("secret", "set", "text", "--from-stdin", input=b"plain")
    doc = json.loads(cli("export", "--format", "json").stdout)
    assert doc == {"blob": {"base64": base64.b64encode(blob).decode()}, "text": "plain"}
    for fmt, scope in (("json", ":copy-json"), ("k8s", ":copy-k8s")):
        out = tmp_path / f"out.{fmt}"
        cli("export", "--format", fmt, "--file", str(out))
        cli("import", scope, "--format", fmt, "--file", str(out))
        assert cli("secret", "get", f"{scope}/blob").stdout == blob
        assert exported(cli, scope) == {"blob": blob, "text": b"plain"}


def test_dotenv_export_refuses_binary_per_key_and_writes_nothing(
    cli: Cli, initialized_store: Path, tmp_path: Path
) -> None:
    cli("secret", "set", "blob", "--from-stdin", input=b"\xff\xfeSECRET")
    cli("secret", "set", "ok", "--from-stdin", input=b"fine")
    out = tmp_path / "out.env"
    proc = cli("export", "--file", str(out), check=False)
    assert proc.returncode == 2
    assert b"blob: the value is not UTF-8 text" in proc.stderr
    assert b"--format json" in proc.stderr
    assert b"SECRET" not in proc.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- all or nothing


def test_one_bad_line_imports_nothing_and_names_the_line(
    cli: Cli, initialized_store: Path, tmp_path: Path
) -> None:
    source = write(tmp_path, "x.env", "A=1\nB=2\nSECRETVALUE\nC='unterminated\n")
    proc = cli("import", "--file", str(source), check=False)
    assert proc.returncode == 2
    assert b"line 3: missing '='" in proc.stderr
    assert b"line 4: unterminated single-quoted value" in proc.stderr
    assert b"nothing was imported" in proc.stderr
    assert b"SECRETVALUE" not in proc.stderr
    assert ls(cli) == {}


def test_partial_keeps_the_good_lines_and_fails(
    cli: Cli, initialized_store: Path, tmp_path: Path
) -> None:
    source = write(tmp_path, "x.env", "A=1\n-bad=2\nB=3\nno equals\n")
    proc = cli("import", "--file", str(source), "--partial", "--json", check=False)
    assert proc.returncode == 2
    report = json.loads(proc.stdout)
    assert report["created"] == ["$S:A", "$S:B"]
    assert [f["line"] for f in report["failed"]] == [2, 4]
    assert b"line 2: invalid secret name: it starts with '-'" in proc.stderr
    assert b"line 4: missing '='" in proc.stderr
    assert exported(cli) == {"A": b"1", "B": b"3"}


def test_existing_names_conflict_unless_overwrite_or_skip(
    cli: Cli, initialized_store: Path, tmp_path: Path
) -> None:
    cli("secret", "set", "A", "--from-stdin", input=b"old")
    cli("secret", "set", "B", "--from-stdin", input=b"same")
    source = write(tmp_path, "x.env", "A=new\nB=same\nC=fresh\n")

    proc = cli("import", "--file", str(source), check=False)
    assert proc.returncode == 4
    assert b"$S:A" in proc.stderr and b"nothing was written" in proc.stderr
    assert exported(cli) == {"A": b"old", "B": b"same"}  # C not written either

    proc = cli("import", "--file", str(source), "--partial", check=False)
    assert proc.returncode == 4
    assert b"line 1: 'A' exists already (409)" in proc.stderr
    assert b"line 2: 'B' exists already (409)" in proc.stderr
    assert exported(cli) == {"A": b"old", "B": b"same", "C": b"fresh"}

    report = json.loads(cli("import", "--file", str(source), "--skip-existing", "--json").stdout)
    assert report["skipped"] == ["$S:A", "$S:B", "$S:C"]

    report = json.loads(cli("import", "--file", str(source), "--overwrite", "--json").stdout)
    assert (report["updated"], report["unchanged"]) == (["$S:A"], ["$S:B", "$S:C"])
    assert exported(cli) == {"A": b"new", "B": b"same", "C": b"fresh"}
    assert ls(cli) == {"$S:A": 2, "$S:B": 1, "$S:C": 1}  # an equal value is no new version

    proc = cli("import", "--file", str(source), "--overwrite", "--skip-existing", check=False)
    assert proc.returncode == 2


def test_too_large_value_is_a_line_error(cli: Cli, store_path: Path, tmp_path: Path) -> None:
    cli("init", "--max-value-size", "16")
    source = write(tmp_path, "x.json", '{\n  "ok": "short",\n  "big": "' + "x" * 17 + '"\n}')
    proc = cli("import", "--file", str(source), check=False)
    assert proc.returncode == 2
    assert b"line 3: 'big': value is 17 bytes; the limit is 16 bytes" in proc.stderr
    assert ls(cli) == {}


def test_import_is_audited_per_secret(cli: Cli, initialized_store: Path, tmp_path: Path) -> None:
    cli("import", "--file", str(write(tmp_path, "x.env", "A=1\nB=2\n")))
    cli("export", "--format", "json")
    records = json.loads(cli("audit", "--json").stdout)
    seen = [(r["action"], r["ref"], r["outcome"]) for r in records]
    assert ("import", "$S:A", "ok") in seen and ("import", "$S:B", "ok") in seen
    assert ("export", "deployment", "ok") in seen


# --------------------------------------------------------------------------- input and output


def test_import_reads_stdin_and_k8s_manifests(
    cli: Cli, initialized_store: Path, tmp_path: Path
) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db"},
        "data": {"user": base64.b64encode(b"admin").decode()},
        "stringData": {"password": "p@ss'w\"rd\n"},
    }
    cli("import", "@db", "--format", "k8s", input=yaml.safe_dump(manifest).encode())
    assert exported(cli, "@db") == {"user": b"admin", "password": b"p@ss'w\"rd\n"}
    # The format comes from the file name when --format is not given.
    cli("import", ":e", "--file", str(write(tmp_path, "s.yaml", yaml.safe_dump(manifest))))
    assert exported(cli, ":e") == {"user": b"admin", "password": b"p@ss'w\"rd\n"}
    proc = cli("import", "--file", str(write(tmp_path, "s.txt", "A=1")), check=False)
    assert proc.returncode == 2 and b"give --format" in proc.stderr


def test_export_file_is_created_0600_and_never_replaced_without_force(
    cli_env: dict[str, str], cli: Cli, initialized_store: Path, tmp_path: Path
) -> None:
    cli("secret", "set", "A", "--from-stdin", input=b"1")
    out = tmp_path / "out.env"
    # With umask 0 the mode can only be 0600 if the file was created with it.
    subprocess.run(
        [sys.executable, "-m", "secretfs", "export", "--file", str(out)],
        env=cli_env,
        check=True,
        capture_output=True,
        preexec_fn=lambda: os.umask(0),
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_bytes() == b"A=1\n"

    proc = cli("export", "--file", str(out), check=False)
    assert proc.returncode == 4 and b"--force" in proc.stderr

    loose = tmp_path / "loose.json"
    loose.write_text("old")
    loose.chmod(0o644)
    hold = tmp_path / "hold"
    os.link(loose, hold)  # keeps the old inode alive, so it cannot be reused
    cli("export", "--file", str(loose), "--force")
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600
    # A new file: the old one was neither chmod'ed nor written to.
    assert loose.stat().st_ino != hold.stat().st_ino
    assert stat.S_IMODE(hold.stat().st_mode) == 0o644 and hold.read_text() == "old"
    assert json.loads(loose.read_text()) == {"A": "1"}

    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "link.env"
    link.symlink_to(victim)
    proc = cli("export", "--file", str(link), check=False)
    assert proc.returncode == 4
    cli("export", "--file", str(link), "--force")  # replaces the link, not its target
    assert victim.read_text() == "keep"
    assert not link.is_symlink() and link.read_bytes() == b"A=1\n"


def test_export_of_one_scope_and_bad_scope(cli: Cli, initialized_store: Path) -> None:
    cli("secret", "set", "@api/token", "--from-stdin", input=b"t")
    cli("secret", "set", "other", "--from-stdin", input=b"o")
    assert exported(cli, "@api") == {"token": b"t"}
    assert exported(cli, "$S:@api") == {"token": b"t"}
    assert exported(cli, ":nothing-here") == {}
    proc = cli("export", "not a scope", "--format", "json", check=False)
    assert proc.returncode == 2 and b"invalid scope" in proc.stderr


# --------------------------------------------------------------------------- property, end to end

_fresh = itertools.count()
names = st.from_regex(r"[A-Za-z]([A-Za-z0-9_]{0,7}[A-Za-z0-9])?", fullmatch=True)
text_values = st.lists(
    st.one_of(
        st.sampled_from(
            ["'", '"', "=", "#", " #", "\n", "\r\n", "\\", " ", "$X", "export ", "ü😀"]
        ),
        st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=6),
    ),
    max_size=6,
).map("".join)


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # shrinking subprocess runs: too slow
)
@given(
    text=st.dictionaries(names, text_values, min_size=1, max_size=6),
    binary=st.dictionaries(names, st.binary(max_size=24), min_size=1, max_size=4),
)
def test_cli_round_trips_random_values_through_every_format(
    cli: Cli,
    initialized_store: Path,
    tmp_path: Path,
    text: dict[str, str],
    binary: dict[str, bytes],
) -> None:
    values = {k: v.encode() for k, v in text.items()}
    for fmt, data in (("dotenv", values), ("json", binary | values), ("k8s", binary | values)):
        scope = f":prop{next(_fresh)}"  # a new, empty scope for every run
        source = tmp_path / f"in.{fmt}"
        source.write_bytes(formats.render(fmt, data))  # type: ignore[arg-type]
        cli("import", scope, "--format", fmt, "--file", str(source))
        out = cli("export", scope, "--format", fmt).stdout
        got = {e.name: e.value for e in formats.parse(fmt, out).entries}  # type: ignore[arg-type]
        assert got == data
