#!/usr/bin/env python3
"""What the suite proves, counted: `assert` statements and `pytest.raises` checks in tests/
(by AST), and the number of tests pytest collects. Compare before and after a test change:
moving or sharing tests must not lower either count."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def count_checks(tests: Path) -> tuple[int, int]:
    asserts = raises = 0
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Assert):
                asserts += 1
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "raises"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "pytest"
            ):
                raises += 1
    return asserts, raises


def count_collected() -> int:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(1 for line in out.splitlines() if "::" in line)


def main() -> None:
    asserts, raises = count_checks(ROOT / "tests")
    print(f"assert statements: {asserts}")
    print(f"pytest.raises:     {raises}")
    print(f"collected tests:   {count_collected()}")


if __name__ == "__main__":
    main()
