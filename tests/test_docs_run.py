"""The docs run: every shell block of the quickstart, the README and the how-tos that can
run on this machine is run with bash, in order, in a fresh store, so a page that drifts
from the CLI fails here.

The rules a page follows (also in the note at the top of docs/quickstart.md):
- ```sh/```bash/```shell blocks are run as they are; in a ```console block, the lines
  starting with `$ ` are run and the rest is output (not compared).
- `<!-- docs-run: skip: REASON -->` on the line before a fence leaves that block out
  (for what cannot run here: docker, kubectl, systemctl). Every skip names its reason.
- A command line ending in `# exit N: why` must fail with exactly status N.
- `/run/secretfs` is rewritten to a directory under the test's tmp dir; the store is
  `$SECRETFS_STORE` in the same tmp dir, which is also the working directory and $HOME.
- A how-to starts from the state in PAGES below (a new store, mounted or not).
Whatever happens, every mount under the tmp dir is unmounted at the end.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_LANGS = {"sh", "bash", "shell", "console"}
SKIP = re.compile(r"<!--\s*docs-run:\s*skip:\s*(\S.*?)\s*-->")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*\{?([\w-]*)\}?.*$")  # also in list items
EXPECT_EXIT = re.compile(r"^(?P<cmd>.*\S)\s+# exit (?P<code>\d+): .+$")
DOC_ROOT = "/run/secretfs"  # the documented layout: the daemon mounts at /run/secretfs/mnt

INIT = "secretfs init\n"
MOUNTED = INIT + "mkdir -p /run/secretfs/mnt\nsecretfs mount /run/secretfs/mnt -o allow_other\n"

# page -> what the test sets up before its first block (the page says the same in words).
PAGES = {
    "README.md": "",
    "docs/quickstart.md": "",
    "docs/howto/docker-runc.md": INIT,
    "docs/howto/file-apps.md": MOUNTED,
    "docs/howto/prometheus.md": MOUNTED + "printf tok > token; printf pw > password\n",
}

# Pages whose first block is skipped by rule, not by a marker: the README must open with
# its two set-up commands, nothing before them.
OPENING_SKIPPED = {"README.md": "the set-up commands: install packages, run the whole suite"}


@dataclass
class Block:
    page: str
    line: int
    lang: str
    text: str
    skip: str | None


def blocks(page: str) -> list[Block]:
    """Every fenced block of a page whose language is a shell, with its skip marker."""
    lines = (ROOT / page).read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence))
        before = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        skip = SKIP.search(before)
        if lang in RUN_LANGS:
            body = "\n".join(ln.removeprefix(indent) for ln in lines[i + 1 : end]) + "\n"
            found.append(Block(page, i + 1, lang, body, skip.group(1) if skip else None))
        elif skip:
            raise AssertionError(f"{page}:{i + 1}: a skip marker on a {lang!r} block")
        i = end + 1
    if page in OPENING_SKIPPED and found:
        found[0].skip = found[0].skip or OPENING_SKIPPED[page]
    return found


def _script_line(line: str) -> str:
    m = EXPECT_EXIT.match(line)
    if not m:
        return line
    code = m.group("code")
    return (
        f"if {m.group('cmd')}; then echo 'expected exit {code}, got 0' >&2; false; "
        f'else rc=$?; [ $rc -eq {code} ] || {{ echo "expected exit {code}, got $rc" >&2; '
        "false; }; fi"
    )


def script(page: str, tmp: Path) -> str:
    """The page's runnable blocks as one bash script, in order, paths rewritten."""
    parts = [
        "set -euo pipefail",
        "trap 'echo \"docs-run: failed in $DOC_BLOCK: $BASH_COMMAND\" >&2' ERR",
        "DOC_BLOCK='setup'",
        PAGES[page],
    ]
    for block in blocks(page):
        if block.skip:
            continue
        text = block.text
        if block.lang == "console":
            text = "".join(f"{ln[2:]}\n" for ln in text.splitlines() if ln.startswith("$ "))
        parts.append(f"DOC_BLOCK={shlex.quote(f'{block.page}:{block.line}')}")
        parts.append("\n".join(_script_line(ln) for ln in text.splitlines()))
    return "\n".join(parts).replace(DOC_ROOT, str(tmp / "run" / "secretfs")) + "\n"


def _mounts_under(tmp: Path) -> list[str]:
    """Mount points below tmp, deepest first (mountinfo escapes spaces as \\040)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(tmp) or point.startswith(f"{tmp}/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def _processes_of(tmp: Path) -> list[int]:
    """Processes this test started: their command line names its unique tmp dir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(tmp).encode() in argv:
                pids.append(int(entry.name))
    return pids


def cleanup(tmp: Path) -> None:
    for point in _mounts_under(tmp):
        if subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True)
    deadline = time.monotonic() + 5
    while _processes_of(tmp) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in _processes_of(tmp):
        os.kill(pid, signal.SIGKILL)
    assert not _mounts_under(tmp)


@pytest.fixture
def doc_tmp() -> Iterator[Path]:
    """A tmp dir other uids can traverse (pytest's is 0700): pages run `runuser -u`."""
    path = Path(tempfile.mkdtemp(prefix="secretfs-docs-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        cleanup(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("page", list(PAGES))
def test_page_runs_top_to_bottom(page: str, doc_tmp: Path) -> None:
    tmp_path = doc_tmp
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HOME": str(home),
        "SECRETFS_STORE": str(tmp_path / "store.db"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT)),
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    text = script(page, tmp_path)
    (tmp_path / "doc.sh").write_text(text)
    try:
        proc = subprocess.run(
            ["bash", str(tmp_path / "doc.sh")],
            cwd=home,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        cleanup(tmp_path)
    assert proc.returncode == 0, f"{page}:\n{proc.stderr[-3000:]}\n--- script ---\n{text}"


def test_skips_are_explicit_and_rare() -> None:
    """Each skipped block names its reason, and most blocks do run."""
    found = [b for page in PAGES for b in blocks(page)]
    skipped = [b for b in found if b.skip]
    assert all(len(b.skip or "") > 10 for b in skipped)
    assert len(skipped) * 3 < len(found), [(b.page, b.line, b.skip) for b in skipped]


def test_extractor_rules(tmp_path: Path) -> None:
    """The rules above do what they say: a rewritten path, an expected exit, a skip."""
    assert _script_line("false   # exit 1: why").startswith("if false; then")
    assert _script_line("true  # a comment") == "true  # a comment"
    page = tmp_path / "page.md"
    page.write_text(
        "```sh\necho /run/secretfs/mnt\n```\n\n<!-- docs-run: skip: needs docker -->\n"
        "```sh\ndocker run x\n```\n- a list item:\n\n  ```bash\n  echo indented\n  ```\n"
        "```console\n$ echo hi\nhi\n```\n```yaml\na: 1\n```\n"
    )
    found = blocks(str(page))  # ROOT / an absolute path is that path
    assert [(b.lang, b.skip) for b in found] == [
        ("sh", None),
        ("sh", "needs docker"),
        ("bash", None),
        ("console", None),
    ]
    assert found[2].text == "echo indented\n"


def test_a_drifted_page_fails(tmp_path: Path) -> None:
    """A block that fails, or a command that should fail but succeeds, fails the run."""
    for body in ("secretfs secret get nosuch\n", "true   # exit 3: not found\n"):
        text = "set -euo pipefail\n" + "\n".join(_script_line(ln) for ln in body.splitlines())
        proc = subprocess.run(
            ["bash", "-c", text],
            env={**os.environ, "SECRETFS_STORE": str(tmp_path / "none.db")},
            capture_output=True,
        )
        assert proc.returncode != 0


def test_the_documented_git_credential_helper_works_and_store_does_not(doc_tmp: Path) -> None:
    """docs/credentials.md's helper block, run as written, gives git the mounted token;
    `credential.helper store --file=<mount>` (the pitfall it warns about) hits EROFS."""
    (block,) = [b for b in blocks("docs/credentials.md") if "credential.https://" in b.text]
    mnt = doc_tmp / "run" / "secretfs" / "mnt"
    mnt.mkdir(parents=True)
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HOME": str(doc_tmp),
        "SECRETFS_STORE": str(doc_tmp / "store.db"),
        "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT)),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
    }

    def run(argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, input=stdin, env=env, cwd=doc_tmp, capture_output=True, text=True, timeout=30
        )

    try:
        setup = "secretfs init && printf ghp_tok | secretfs git add github --pat-stdin"
        assert run(["bash", "-c", f"{setup} && secretfs mount {mnt}"]).returncode == 0
        text = block.text.replace(DOC_ROOT, str(doc_tmp / "run" / "secretfs"))
        assert run(["bash", "-euo", "pipefail", "-c", text]).returncode == 0
        query = "protocol=https\nhost=github.com\n"
        fill = run(["git", "credential", "fill"], query)
        assert fill.returncode == 0, fill.stderr
        assert "username=x-access-token\npassword=ghp_tok\n" in fill.stdout
        # git's store/erase calls reach the helper and are ignored, without an error.
        approve = run(["git", "credential", "approve"], fill.stdout)
        assert (approve.returncode, approve.stderr) == (0, "")

        (doc_tmp / ".gitconfig").unlink()
        store = f"store --file={mnt}/@git/github"
        assert run(["git", "config", "--global", "credential.helper", store]).returncode == 0
        approve = run(["git", "credential", "approve"], query + "username=u\npassword=p\n")
        assert "Read-only file system" in approve.stderr
        assert run(["git", "credential", "fill"], query).returncode != 0  # no password
    finally:
        cleanup(doc_tmp)
