"""The benchmark (bench/, issue 6) runs whole and says what it measured.

Only that it works end to end, at the smallest size: its figures are for `python -m
bench` on a quiet machine, never for a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.run import ROWS

ROOT = Path(__file__).resolve().parents[2]


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_smoke_run_measures_every_row_and_judges_every_target(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    proc = run_bench("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["rows"]) == {key for key, *_ in ROWS}
    for key, row in result["rows"].items():
        systems = set(row["median"])
        per_operation = key.startswith(("open_", "field", "stat", "ls_l", "readers"))
        assert systems == ({"tmpfs", "floor", "secretfs"} if per_operation else {"secretfs"}), key
        assert all(v > 0 for v in row["median"].values()), key
    verdicts = {t["key"]: t["verdict"] for t in result["targets"]}
    assert len(verdicts) == 12
    assert all(v.startswith(("PASS", "MISS")) for v in verdicts.values()), verdicts
    assert result["meta"]["pinned_to"] == [0] and result["meta"]["config"]["count"] == 300
    # The table and the verdicts are printed too, and nothing is left mounted.
    assert "sf/floor" in proc.stdout and "mount-to-ready" in proc.stdout
    mounts = Path("/proc/self/mountinfo").read_text()
    assert "secretfs-bench-" not in mounts

    again = run_bench("--compare", str(out), str(out))
    assert again.returncode == 0, again.stderr
    assert "secretfs A" in again.stdout and "B/A" in again.stdout
