"""Crash safety of `secretfs import` (issue 4, item 5): SIGKILL at many points.

One store is imported into again and again, each round with new values for the same
3000 names, and each round's CLI process is SIGKILLed after a random delay spread over
the whole run (start-up, parsing, the transaction, the commit). After every kill the
store must open, pass `PRAGMA integrity_check`, be reported healthy by `secretfs doctor`
(which also decrypts every stored version), and hold either every value of the last
completed round or every value of the killed one: never a mix, never a partial secret.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secretfs import formats
from tests.conftest import Cli

N_SECRETS = 3000
KILLS = 12


def round_values(round_no: int, rng: random.Random) -> dict[str, bytes]:
    return {
        f"S{i:04d}": f"r{round_no}-{i}-{rng.getrandbits(48):x}".encode() for i in range(N_SECRETS)
    }


def import_command(path: Path) -> list[str]:
    return [sys.executable, "-m", "secretfs", "import", "--file", str(path), "--overwrite"]


def store_state(cli: Cli, store: Path) -> tuple[dict[str, bytes], set[int]]:
    """Every value (each one decrypted) and the set of current version numbers."""
    db = sqlite3.connect(store)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = db.execute("SELECT DISTINCT version FROM secrets WHERE deleted = 0").fetchall()
    finally:
        db.close()
    doctor = cli("doctor", "--json", check=False)
    report = json.loads(doctor.stdout)
    assert doctor.returncode == 0 and report["healthy"] is True, [
        c for c in report["checks"] if c["status"] not in ("ok", "skip")
    ]
    parsed = formats.parse("json", cli("export", "--format", "json").stdout)
    assert parsed.problems == []
    return {e.name: e.value for e in parsed.entries}, {int(v) for (v,) in rows}


@pytest.mark.timeout(360)  # 12 kills into a 3000-secret import, a full doctor after each
def test_import_killed_at_any_point_is_all_or_nothing(
    cli: Cli, cli_env: dict[str, str], initialized_store: Path, tmp_path: Path
) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")  # shown on failure: rerun with random.Random(seed) to reproduce
    rng = random.Random(seed)

    # How long one whole import takes here, measured on a store of its own.
    calib_env = {**cli_env, "SECRETFS_STORE": str(tmp_path / "calib.db")}
    cli("init", env=calib_env)
    source = tmp_path / "round.env"
    source.write_bytes(formats.render_dotenv(round_values(-1, rng)))
    started = time.monotonic()
    subprocess.run(import_command(source), env=calib_env, check=True, capture_output=True)
    full_run = time.monotonic() - started

    # Kill points spread over the whole run (updates take longer than that first import):
    # one random point in each of KILLS slices.
    delays = [full_run * 1.8 * (i + rng.random()) / KILLS for i in range(KILLS)]
    rng.shuffle(delays)

    committed: dict[str, bytes] = {}  # the last round known complete ({}: none yet)
    committed_rounds = 0
    outcomes = {"old": 0, "new": 0}
    for round_no, delay in enumerate(delays):
        new = round_values(round_no, rng)
        source.write_bytes(formats.render_dotenv(new))
        proc = subprocess.Popen(
            import_command(source),
            env=cli_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

        values, versions = store_state(cli, initialized_store)
        if values == new:
            committed, committed_rounds = new, committed_rounds + 1
            outcomes["new"] += 1
        else:
            assert values == committed, (
                f"round {round_no} (killed after {delay:.3f}s of ~{full_run:.3f}s): the store "
                f"holds neither the old nor the new values ({len(values)} secrets; "
                f"{sum(values.get(k) == v for k, v in new.items())} new,"
                f" {sum(values.get(k) == v for k, v in committed.items())} old)"
            )
            assert proc.returncode == -signal.SIGKILL, (
                "an import that ran to the end changed nothing"
            )
            outcomes["old"] += 1
        # Every completed round gave every secret one new version; a killed one none.
        assert versions == ({committed_rounds} if committed else set())

    print(f"{KILLS} kills over ~{full_run:.2f}s runs: {outcomes}")
    # The store still takes writes after all that.
    final = round_values(KILLS, rng)
    source.write_bytes(formats.render_dotenv(final))
    cli(*import_command(source)[3:])
    assert store_state(cli, initialized_store) == (final, {committed_rounds + 1})
