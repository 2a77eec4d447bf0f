"""Every value source is read with the size limit applied while reading: `/dev/zero`, an
endless command or a huge variable is refused after limit + 1 bytes, in bounded memory.

Each CLI runs under a wrapper that reports its peak RSS (RUSAGE_CHILDREN of a process
that has no other child) and caps its address space, so a regression fails instead of
eating the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Cli

LIMIT = 1024 * 1024  # the store's max-value-size (the default)
MAX_RSS_KB = 100 * 1024  # Python and the CLI take ~40 MB; reading 1 MiB adds ~2 MB
WRAPPER = """
import json, resource, subprocess, sys
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))
p = subprocess.run(sys.argv[1:], capture_output=True, preexec_fn=cap, timeout=60)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": p.returncode, "err": p.stderr.decode(errors="replace"), "kb": peak}))
"""


def measured(env: dict[str, str], *args: str, stdin: Path | None = None) -> dict[str, object]:
    with open(stdin or "/dev/null", "rb") as fh:
        proc = subprocess.run(
            [sys.executable, "-c", WRAPPER, sys.executable, "-m", "secretfs", *args],
            env=env,
            stdin=fh,
            capture_output=True,
            timeout=90,
            check=True,
        )
    result: dict[str, object] = json.loads(proc.stdout)
    return result


@pytest.fixture
def env(cli: Cli, cli_env: dict[str, str]) -> dict[str, str]:
    cli("init")
    return cli_env


@pytest.mark.parametrize(
    ("args", "stdin", "what"),
    [
        (["--from-file", "/dev/zero"], None, "/dev/zero"),
        (["--from-stdin"], Path("/dev/zero"), "standard input"),
        (["--from", "file:///dev/zero"], None, "/dev/zero"),
        (["--from", "cmd://cat /dev/zero"], None, "the cmd:// command's output"),
    ],
)
def test_endless_source_is_refused_in_bounded_memory(
    env: dict[str, str], args: list[str], stdin: Path | None, what: str
) -> None:
    got = measured(env, "secret", "set", "big", *args, stdin=stdin)
    assert got["rc"] == 2, got["err"]
    assert f"{what} is over {LIMIT} bytes" in str(got["err"])
    assert int(str(got["kb"])) < MAX_RSS_KB


def test_limit_is_the_stores_and_exact(cli: Cli, env: dict[str, str]) -> None:
    cli("config", "set", "max-value-size", "10")
    assert cli("secret", "set", "ten", "--from-stdin", input=b"0123456789").returncode == 0
    proc = cli("secret", "set", "eleven", "--from-stdin", input=b"0123456789a", check=False)
    assert proc.returncode == 2
    assert b"standard input is over 10 bytes" in proc.stderr
    proc = cli("secret", "rotate", "ten", "--from", "cmd://yes", check=False)
    assert proc.returncode == 2
    assert b"cmd:// command's output is over 10 bytes" in proc.stderr
    proc = cli("secret", "set", "e", "--from", "env://E", env={**env, "E": "x" * 11}, check=False)
    assert proc.returncode == 2
    assert b"environment variable E is over 10 bytes" in proc.stderr
    assert cli("secret", "get", "ten").stdout == b"0123456789"


def test_import_of_an_endless_file_is_refused(env: dict[str, str]) -> None:
    got = measured(env, "import", "--format", "dotenv", "--file", "/dev/zero")
    assert got["rc"] == 2, got["err"]
    assert "/dev/zero is over 67108864 bytes" in str(got["err"])
    assert int(str(got["kb"])) < 3 * MAX_RSS_KB  # 64 MiB read, then refused
