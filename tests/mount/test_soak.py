"""Soak (issue 6): readers hammer the mount while a writer changes everything under them.

Eight reader processes open random secrets and JSON field files, reading each in chunks
of random sizes, while one writer process sets, rotates, removes and re-creates secrets
and `secretfs key rotate` (plain, then `--reencrypt` in small batches, then plain again)
runs beside it. The writer appends each value to a log *before* committing it, so every
value a reader can see is in the log. Afterwards every read must be the exact bytes of
one value logged for that very file (no torn read, no other secret's value), and no
reader may have met any error but ENOENT on a secret the writer removes.

Values say whose they are (`<ref>|v<n>|<padding>`), so a wrong one is named on the spot;
sizes run to 9 KiB, so many reads take more than one page.

The writer runs for WRITER_SECONDS (12) and on until it has done ENOUGH of each kind of
change and all three key operations have finished, so a slow machine gets a longer run,
not a weaker one. The long form (issue 6 ran 40 s): `SOAK_SECONDS=40 pytest
tests/mount/test_soak.py`.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from secretfs.refs import parse_ref
from tests.conftest import cli_environment, run_cli
from tests.mount.conftest import Mount, wait_for

WRITER_SECONDS = float(os.environ.get("SOAK_SECONDS", "12"))
MAX_SECONDS = WRITER_SECONDS + 60  # a writer that never gets there fails, bounded
ENOUGH = {"writes": 300, "removes": 10, "recreates": 5}  # what the test asserts it did
READERS = 8
RAW = [f"r{i:02d}" for i in range(20)]  # deployment/rNN; the last ten come and go
JSON = [f"@svc/j{i:02d}" for i in range(10)]  # JSON objects; the last five come and go
CHURN = set(RAW[10:] + JSON[5:])
FIELDS = ("password", "v")  # read through <name>.d/<field>
CHUNKS = (97, 1000, 4096, 65536)


def raw_value(rng: random.Random, ref: str, n: int) -> bytes:
    pad = base64.b64encode(rng.randbytes(rng.randint(10, 6800)))
    return f"{ref}|v{n}|".encode() + pad


def json_value(rng: random.Random, ref: str, n: int) -> bytes:
    doc = {
        "ref": ref,
        "v": n,
        "password": f"{ref}/password|v{n}|{rng.randbytes(12).hex()}",
        "pad": base64.b64encode(rng.randbytes(rng.randint(0, 4000))).decode(),
    }
    return json.dumps(doc).encode()


def make_value(rng: random.Random, ref: str, n: int) -> bytes:
    return json_value(rng, ref, n) if ref.startswith("@") else raw_value(rng, ref, n)


def file_paths(ref: str) -> list[str]:
    """The files a secret shows as: itself, and for a JSON one its field files."""
    path = parse_ref(ref).path
    if not ref.startswith("@"):
        return [path]
    return [path, *(f"{path}.d/{f}" for f in FIELDS)]


def contents(ref: str, value: bytes) -> dict[str, bytes]:
    """What each of the secret's files holds when the secret holds `value`."""
    paths = file_paths(ref)
    if len(paths) == 1:
        return {paths[0]: value}
    doc = json.loads(value)
    return {
        paths[0]: value,
        paths[1]: doc["password"].encode(),
        paths[2]: str(doc["v"]).encode(),
    }


def log_value(log: Path, ref: str, value: bytes) -> None:
    with open(log, "ab") as fh:
        fh.write(f"{ref}\t{base64.b64encode(value).decode()}\n".encode())
        fh.flush()
        os.fsync(fh.fileno())


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


# -- the reader and writer processes -----------------------------------------------------


def _owner_of(rel: str) -> str:
    """The reference a file under the mount belongs to (its secret's)."""
    for ref in RAW + JSON:
        if rel in file_paths(ref):
            return ref
    raise AssertionError(rel)


def _says_whose(rel: str, ref: str, data: bytes) -> str | None:
    """A problem if `data` is not recognisably one of `ref`'s values for file `rel`."""
    if rel.endswith(".d/v"):
        return None if data.isdigit() else f"field v is {data[:40]!r}"
    if rel.endswith(".d/password"):
        ok = data.startswith(f"{ref}/password|v".encode())
        return None if ok else f"field password is {data[:40]!r}"
    if ref.startswith("@"):
        try:
            got = json.loads(data)["ref"]
        except (ValueError, KeyError, TypeError):
            return f"not a whole JSON value ({len(data)} bytes)"
        return None if got == ref else f"holds {got}'s value"
    return None if data.startswith(f"{ref}|v".encode()) else f"holds {data[:20]!r}..."


def reader(root: str, seed: int, stop: Any, count: Any, out: str) -> None:
    rng = random.Random(seed)
    rels = [rel for ref in RAW + JSON for rel in file_paths(ref)]
    seen: set[tuple[str, str]] = set()
    problems: list[str] = []
    reads = enoent = 0
    while not stop.is_set() and len(problems) < 20:
        rel = rng.choice(rels)
        ref = _owner_of(rel)
        try:
            with open(os.path.join(root, rel), "rb", buffering=0) as fh:
                parts = []
                while part := fh.read(rng.choice(CHUNKS)):
                    parts.append(part)
        except OSError as exc:
            if exc.errno == errno.ENOENT and ref in CHURN:
                enoent += 1
            else:
                problems.append(f"{rel}: {errno.errorcode.get(exc.errno or 0)} {exc}")
            continue
        data = b"".join(parts)
        problem = _says_whose(rel, ref, data)
        if problem:
            problems.append(f"{rel}: {problem}")
        seen.add((rel, digest(data)))
        reads += 1
        count.value = reads
    Path(out).write_text(
        json.dumps({"seen": sorted(seen), "problems": problems, "reads": reads, "enoent": enoent})
    )


def writer(store: str, log: str, env: dict[str, str], out: str) -> None:
    """Change every secret again and again; run the key rotations beside the writes."""
    from secretfs.vault import Vault

    rng = random.Random(6)
    vault = Vault.open(Path(store))
    counter = {ref: 1 for ref in RAW + JSON}
    present = set(RAW + JSON)
    done = {"writes": 0, "removes": 0, "recreates": 0, "key_ops": []}
    key_ops = [
        (0.2, ["key", "rotate"]),
        (0.4, ["key", "rotate", "--reencrypt", "--batch-size", "15"]),
        (0.75, ["key", "rotate"]),
    ]
    running: subprocess.Popen[bytes] | None = None
    start = time.monotonic()

    def more_to_do() -> bool:
        if time.monotonic() - start > MAX_SECONDS:
            return False
        short = any(done[kind] <= n for kind, n in ENOUGH.items())  # type: ignore[operator]
        return time.monotonic() - start < WRITER_SECONDS or short or bool(key_ops) or bool(running)

    while more_to_do():
        elapsed = (time.monotonic() - start) / WRITER_SECONDS
        if running is None and key_ops and elapsed >= key_ops[0][0]:
            args = key_ops.pop(0)[1]
            running = subprocess.Popen(
                [sys.executable, "-m", "secretfs", *args, "--store", store],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            done["key_ops"].append(" ".join(args))  # type: ignore[attr-defined]
        if running is not None and running.poll() is not None:
            _out, stderr = running.communicate()
            assert running.returncode == 0, stderr.decode()[-1000:]
            running = None
        ref = rng.choice(RAW + JSON)
        action = rng.random()
        if ref in CHURN and ref in present and action < 0.15:
            vault.remove(parse_ref(ref), force=True)
            present.discard(ref)
            done["removes"] += 1  # type: ignore[operator]
        else:
            counter[ref] += 1
            value = make_value(rng, ref, counter[ref])
            log_value(Path(log), ref, value)  # logged before it commits
            if ref not in present:
                vault.write(parse_ref(ref), value, how="create")
                present.add(ref)
                done["recreates"] += 1  # type: ignore[operator]
            elif action < 0.5:
                vault.write(parse_ref(ref), value, how="rotate")
            else:
                vault.set(parse_ref(ref), value)
            done["writes"] += 1  # type: ignore[operator]
        time.sleep(rng.uniform(0.002, 0.02))
    if running is not None:
        _out, stderr = running.communicate(timeout=120)
        assert running.returncode == 0, stderr.decode()[-1000:]
    final = {}
    for ref in RAW + JSON:
        final[ref] = (
            base64.b64encode(vault.get_value(parse_ref(ref))).decode() if ref in present else None
        )
    vault.close()
    done["final"] = final
    Path(out).write_text(json.dumps(done))


# -- the test ----------------------------------------------------------------------------


@pytest.mark.timeout(MAX_SECONDS + 90)
def test_readers_see_only_committed_whole_values_while_everything_changes(
    mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    rng = random.Random(1)
    log = tmp_path / "written.log"
    initial = {ref: make_value(rng, ref, 1) for ref in RAW + JSON}
    for ref, value in initial.items():
        log_value(log, ref, value)
    m = mount_factory("--log-file", str(tmp_path / "daemon.log"), secrets=initial)
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    outs = [tmp_path / f"reader{i}.json" for i in range(READERS)]
    counts = [ctx.Value("q", 0) for _ in range(READERS)]
    readers = [
        ctx.Process(target=reader, args=(str(m.path), i, stop, counts[i], str(out)))
        for i, out in enumerate(outs)
    ]
    for proc in readers:
        proc.start()
    writer_out = tmp_path / "writer.json"
    env = cli_environment(m.store)
    proc = ctx.Process(target=writer, args=(str(m.store), str(log), env, str(writer_out)))
    proc.start()
    proc.join(timeout=MAX_SECONDS + 30)
    # The readers take in the last changes too: each reads on after the last write (a
    # reader that stopped on a problem says so below).
    after = [c.value + 50 for c in counts]
    wait_for(
        lambda: all(
            c.value >= n or not r.is_alive() for c, n, r in zip(counts, after, readers, strict=True)
        ),
        timeout=30,
    )
    stop.set()
    for r in readers:
        r.join(timeout=30)
    assert proc.exitcode == 0, "the writer failed (see its traceback above)"
    assert all(r.exitcode == 0 for r in readers)
    assert m.daemon_pids(), "the daemon died"

    # Everything that was ever written, by file: the only bytes a read may return.
    allowed: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        ref, b64 = line.split("\t")
        for rel, data in contents(ref, base64.b64decode(b64)).items():
            allowed.setdefault(rel, set()).add(digest(data))
    results = [json.loads(out.read_text()) for out in outs]
    problems = [p for r in results for p in r["problems"]]
    assert problems == []
    unknown = [(rel, d) for r in results for rel, d in r["seen"] if d not in allowed[rel]]
    assert unknown == [], f"{len(unknown)} reads returned bytes never written to that file"

    done = json.loads(writer_out.read_text())
    assert done["key_ops"] == [
        "key rotate",
        "key rotate --reencrypt --batch-size 15",
        "key rotate",
    ]
    assert done["writes"] > 300 and done["removes"] > 10 and done["recreates"] > 5
    # The readers really read, all kinds of file, and saw versions change under them.
    assert all(r["reads"] > 200 for r in results)
    seen_files = {rel for r in results for rel, _ in r["seen"]}
    assert seen_files == set(allowed)
    versions_seen = {rel: {d for r in results for x, d in r["seen"] if x == rel} for rel in allowed}
    assert sum(len(v) > 3 for v in versions_seen.values()) > len(allowed) // 2

    # The end state reaches new opens within a second.
    for ref, b64 in done["final"].items():
        path = m.path / parse_ref(ref).path
        if b64 is None:
            wait_for(lambda p=path: not p.exists())
        else:
            value = base64.b64decode(b64)
            wait_for(lambda p=path, v=value: p.read_bytes() == v)
    keys = json.loads(run_cli("key", "status", "--json", env=env).stdout)
    # The re-encryption finished: one data key generation (the new one) seals everything.
    assert [g["generation"] for g in keys["data_keys"]] == [2]
    assert keys["unlocks"] and keys["reencryption"] is None and keys["kek_rotation"] is None
