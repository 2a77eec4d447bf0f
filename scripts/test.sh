#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the linters and the whole test suite, real FUSE
# mounts included (needs root or /dev/fuse access), on one pytest-xdist worker per core
# (at most 4), idle workers taking tests from busy ones. Extra arguments go to pytest
# (`-n 0` runs it in one process). docs/architecture.md "Tests" says where the time goes.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "== ruff" >&2
.venv/bin/ruff check secretfs tests bench
.venv/bin/ruff format --check secretfs tests bench
echo "== mypy --strict" >&2
.venv/bin/mypy --strict secretfs
echo "== pytest" >&2
# Byte-code for what every `python -m secretfs` of the suite imports: where
# PYTHONDONTWRITEBYTECODE is set (as in many containers) each would compile it again.
.venv/bin/python -m compileall -q secretfs bench >/dev/null
exec .venv/bin/python -m pytest -n auto --maxprocesses=4 --dist worksteal --durations=15 "$@"
