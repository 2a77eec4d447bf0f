"""Fault points (secretfs/testhooks.py): armed by the environment a process has when it
first reaches one, not when the module is imported; unarmed, they do nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import cli_environment


def _python(script: str) -> subprocess.CompletedProcess[bytes]:
    env = cli_environment(Path("/nonexistent"))  # no SECRETFS_* of ours
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=30)


def test_the_environment_is_read_at_the_first_checkpoint_not_at_import() -> None:
    proc = _python(
        "import os\n"
        "from secretfs import testhooks\n"
        "os.environ['SECRETFS_TEST_KILL'] = 'here:2'\n"
        "testhooks.checkpoint('here'); print('first', flush=True)\n"
        "testhooks.checkpoint('here'); print('second', flush=True)\n"
    )
    assert (proc.returncode, proc.stdout) == (-signal.SIGKILL, b"first\n"), proc.stderr


def test_unarmed_at_the_first_checkpoint_stays_unarmed() -> None:
    proc = _python(
        "import os\n"
        "from secretfs import testhooks\n"
        "testhooks.checkpoint('here')\n"
        "os.environ['SECRETFS_TEST_KILL'] = 'here'\n"
        "testhooks.checkpoint('here'); print('alive', flush=True)\n"
    )
    assert (proc.returncode, proc.stdout) == (0, b"alive\n"), proc.stderr
