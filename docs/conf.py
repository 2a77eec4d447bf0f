"""The secretfs documentation site: Sphinx with MyST markdown, furo and sphinx-click.

Build it (offline; warnings are errors, as in tests/test_docs.py):
    .venv/bin/sphinx-build -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout builds as is

from secretfs import __version__
from secretfs.cli import commands

commands()  # register every command on secretfs.cli:cli, which docs/cli.md renders

project = "secretfs"
author = "the secretfs authors"
project_copyright = "the secretfs authors"
version = release = __version__

extensions = ["myst_parser", "sphinx_click"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"secretfs {release}"

# Pages being written as this site grows: index.md lists them, and the build leaves out
# those that do not exist yet instead of failing on them.
OPTIONAL_PAGES = (
    "run-inject", "import-export", "credentials", "providers", "security", "operations"
)


def _leave_out_missing_pages(app: Any, docname: str, source: list[str]) -> None:
    if docname != root_doc:
        return
    missing = {p for p in OPTIONAL_PAGES if not (Path(app.srcdir) / f"{p}.md").exists()}
    source[0] = "\n".join(
        line for line in source[0].split("\n") if line.strip() not in missing
    )


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", _leave_out_missing_pages)
    return {"parallel_read_safe": True}
