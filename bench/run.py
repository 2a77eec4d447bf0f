"""Run the benchmark: tmpfs, the floor (bench/floorfs.py) and secretfs, in one run.

Every per-operation figure is measured in rounds in which the three systems take turns
every CHUNK_OPS operations (the order rotates each round), so that ratios hold while a
noisy machine drifts; the table shows medians over the rounds, and each ratio is the
median of the rounds' ratios. Client and daemons are pinned to one CPU (`--cpus`, as
`taskset -c 0` would), as docs/performance.md explains.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from bench import dataset, report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BIG_SCOPES = ("deployment", *(f"@big{i}" for i in range(1, 10)))  # 10 scopes of count / 10


@dataclass(frozen=True)
class Config:
    count: int = 10_000  # secrets in the listed scope (100 B and 4 KiB, alternating)
    cold: int = 2_000  # secrets rotated before each cold round
    warm: int = 1_000  # files each warm measurement cycles through
    rounds: int = 9
    ops: int = 3_000  # timed operations per system per round
    stat_ops: int = 20_000
    readers: int = 8
    reader_seconds: float = 1.0
    reader_rounds: int = 3
    big: int = 100_000  # secrets for mount time, RSS and key rotation
    imports: int = 10_000
    reps: int = 3  # repetitions of the slow, whole-command measurements


QUICK = Config(
    count=2_000,
    cold=400,
    warm=300,
    rounds=3,
    ops=1_000,
    stat_ops=5_000,
    reader_seconds=0.5,
    reader_rounds=2,
    big=10_000,
    imports=2_000,
    reps=2,
)
# Only that everything runs (tests/mount/test_bench.py): its figures mean nothing.
SMOKE = Config(
    count=300,
    cold=40,
    warm=50,
    rounds=1,
    ops=200,
    stat_ops=400,
    reader_seconds=0.2,
    reader_rounds=1,
    big=1_000,
    imports=200,
    reps=1,
)


# -- helpers ------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SECRETFS_")}


def secretfs_cli(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(
        [sys.executable, "-m", "secretfs", *args],
        input=input,
        env=_env(),
        capture_output=True,
        check=False,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"secretfs {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}"
        )
    return proc


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _unmount(path: Path) -> None:
    subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, check=False)


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


def _set_affinity_all_threads(pid: int, cpus: set[int]) -> None:
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task), cpus)


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# -- what one measurement does, through any mount -------------------------------------------


def open_read_close(paths: list[str]) -> float:
    """Seconds to open, read and close each of `paths` once."""
    start = time.perf_counter()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        os.read(fd, 65536)
        os.close(fd)
    return time.perf_counter() - start


def stats(paths: list[str]) -> float:
    """Seconds to stat each of `paths` once."""
    start = time.perf_counter()
    for p in paths:
        os.stat(p)
    return time.perf_counter() - start


CHUNK_OPS = 200  # systems take turns this often, so that each sees the same machine


def interleaved(
    systems: list[System], rels: list[str], ops: int, op: Callable[[list[str]], float]
) -> dict[str, float]:
    """ops/s of `op` on each system, over `ops` operations cycling through `rels`, the
    systems taking turns every CHUNK_OPS operations."""
    cycle = (rels * (ops // len(rels) + 1))[:ops]
    chunks = [cycle[i : i + CHUNK_OPS] for i in range(0, ops, CHUNK_OPS)]
    spent = dict.fromkeys((s.name for s in systems), 0.0)
    for chunk in chunks:
        for s in systems:
            spent[s.name] += op([s.path(r) for r in chunk])
    return {name: ops / seconds for name, seconds in spent.items()}


def ls_l(directory: Path) -> float:
    return _timed(
        lambda: subprocess.run(["ls", "-l", str(directory)], stdout=subprocess.DEVNULL, check=True)
    )


def _reader(paths: list[str], seconds: float, start: Any, counts: Any) -> None:
    start.wait()
    n = 0
    deadline = time.monotonic() + seconds
    while True:
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            os.read(fd, 65536)
            os.close(fd)
        n += len(paths)
        if time.monotonic() >= deadline:
            break
    counts.put((n, time.monotonic() - (deadline - seconds)))


def concurrent_readers(paths: list[str], readers: int, seconds: float) -> float:
    """Total opens/s of `readers` processes, each cycling through its own slice of paths."""
    ctx = multiprocessing.get_context("fork")
    start, counts = ctx.Event(), ctx.Queue()
    chunk = 50
    procs = []
    for i in range(readers):
        mine = [paths[(i * chunk + j) % len(paths)] for j in range(chunk)]
        proc = ctx.Process(target=_reader, args=(mine, seconds, start, counts))
        proc.start()
        procs.append(proc)
    time.sleep(0.2)
    start.set()
    results: list[tuple[int, float]] = [counts.get(timeout=seconds + 60) for _ in procs]
    for proc in procs:
        proc.join()
    return sum(n for n, _ in results) / max(t for _, t in results)


# -- the three systems ----------------------------------------------------------------------


class System:
    name = ""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, rel: str) -> str:
        return str(self.root / rel)

    def rotate(self, names: list[str]) -> None:
        """Make the next open of each of `names` (in dataset.SCOPE) a cold one."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Tmpfs(System):
    name = "tmpfs"

    def __init__(self, root: Path, files: dict[str, bytes]) -> None:
        super().__init__(root)
        root.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "tmpfs", str(root)], check=True)
        self.files = files
        _write_tree(root, files)

    def rotate(self, names: list[str]) -> None:
        # A new inode, as a rotation gives on secretfs (and as a deploy tool would write).
        for name in names:
            rel = f"{dataset.SCOPE}/{name}"
            tmp = self.root / f"{rel}.new"
            tmp.write_bytes(self.files[rel])
            os.rename(tmp, self.root / rel)

    def close(self) -> None:
        subprocess.run(["umount", str(self.root)], check=False)


class Floor(System):
    name = "floor"

    def __init__(self, root: Path, count: int, cold: int) -> None:
        super().__init__(root)
        root.mkdir()
        read_end, write_end = os.pipe()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.floorfs",
                str(root),
                "--count",
                str(count),
                "--cold",
                str(cold),
                "--notify-fd",
                str(write_end),
            ],
            pass_fds=(write_end,),
            cwd=ROOT,
        )
        os.close(write_end)
        self.notify = read_end
        if os.read(read_end, 1) != b"m":
            raise RuntimeError("the floor filesystem did not mount")

    def rotate(self, names: list[str]) -> None:
        # The floor rotates the first `--cold` names, the same ones.
        os.kill(self.proc.pid, signal.SIGUSR1)
        if os.read(self.notify, 1) != b"r":
            raise RuntimeError("the floor filesystem did not rotate")

    def close(self) -> None:
        _unmount(self.root)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self.notify)


def init_store(store: Path) -> None:
    from secretfs.vault import Vault

    Vault.init(store)


def seed(store: Path, items: Iterator[tuple[str, str, bytes]]) -> None:
    """Write every secret in one transaction, in-process (10,000 CLI calls would take
    minutes and measure Python's start-up)."""
    from secretfs.refs import Ref, Scope
    from secretfs.vault import Vault

    vault = Vault.open(store)
    try:
        vault.write_many(
            [(Ref(Scope.from_key(scope), name), value) for scope, name, value in items]
        )
    finally:
        vault.close()


def mount_secretfs(store: Path, root: Path) -> int:
    """Mount; returns the daemon's pid."""
    out = secretfs_cli("mount", str(root), "--store", str(store)).stdout.decode()
    return int(out.rsplit("daemon pid ", 1)[1].split(")")[0])


def umount_secretfs(root: Path, pid: int) -> None:
    secretfs_cli("umount", str(root))
    _wait_gone(pid)


class Secretfs(System):
    name = "secretfs"
    SETTLE = 0.8  # the daemon polls every 0.2 s and re-verifies after a flush (0.5 s)

    def __init__(self, root: Path, store: Path, count: int) -> None:
        from secretfs.vault import Vault

        super().__init__(root)
        root.mkdir()
        init_store(store)
        seed(store, dataset.secrets(count))
        self.pid = mount_secretfs(store, root)
        self.vault = Vault.open(store)
        self.rng = random.Random(7)

    def rotate(self, names: list[str]) -> None:
        from secretfs.refs import Ref, Scope

        scope = Scope.from_key(dataset.SCOPE)
        items = [
            (Ref(scope, name), dataset.value(self.rng, dataset.size_of(int(name[1:]))))
            for name in names
        ]
        # Written last, so its new inode says the whole batch reached the kernel.
        sentinel = self.path(dataset.sentinel_path())
        before = os.stat(sentinel).st_ino
        items.append(
            (
                Ref(Scope.from_key(dataset.JSON_SCOPE), dataset.SENTINEL),
                dataset.value(self.rng, dataset.SMALL),
            )
        )
        self.vault.write_many(items, existing="overwrite")
        deadline = time.monotonic() + 10
        while os.stat(sentinel).st_ino == before:
            if time.monotonic() > deadline:
                raise RuntimeError("a rotation did not reach the mount within 10 s")
            time.sleep(0.01)
        time.sleep(self.SETTLE)

    def close(self) -> None:
        self.vault.close()
        umount_secretfs(self.root, self.pid)


# -- the benchmark --------------------------------------------------------------------------


ROWS: list[tuple[str, str, str, bool]] = [
    ("open_warm_100", "open+read+close, warm, 100 B", "ops/s", True),
    ("open_warm_4k", "open+read+close, warm, 4 KiB", "ops/s", True),
    ("open_cold_100", "open+read+close, cold (after a rotation), 100 B", "ops/s", True),
    ("open_cold_4k", "open+read+close, cold (after a rotation), 4 KiB", "ops/s", True),
    ("field_warm", "read a JSON field file (open+read+close), warm", "ops/s", True),
    ("stat", "stat (kernel attribute cache)", "ops/s", True),
    ("ls_l", "ls -l of the {count:,}-entry scope", "s", False),
    ("readers_1", "1 reader process, warm 100 B, total (all CPUs)", "ops/s", True),
    ("readers_8", "{readers} reader processes, warm 100 B, total (all CPUs)", "ops/s", True),
    ("mount_ready", "mount-to-ready, {big_k}k secrets (key file)", "s", False),
    ("argon2", "Argon2id, default parameters (password stores add this)", "s", False),
    ("rss_ready", "daemon RSS, {big_k}k secrets, just mounted", "MB", False),
    ("rss_used", "daemon RSS, {big_k}k secrets, after ls -lR and reading all", "MB", False),
    ("import", "secretfs import of {imports_k}k secrets (dotenv, stdin)", "s", False),
    ("key_rotate_small", "secretfs key rotate, {count_k}k secrets", "s", False),
    ("key_rotate_big", "secretfs key rotate, {big_k}k secrets", "s", False),
    ("reencrypt_big", "secretfs key rotate --reencrypt, {big_k}k secrets", "s", False),
]


class Bench:
    def __init__(self, cfg: Config, work: Path, cpus: set[int], log: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.cpus = cpus
        self.work = work
        self.log = log
        # Labels say the sizes actually measured (--quick runs smaller).
        sizes = {
            "count": cfg.count,
            "count_k": cfg.count // 1000,
            "big_k": cfg.big // 1000,
            "imports_k": cfg.imports // 1000,
            "readers": cfg.readers,
        }
        self.rows = {
            k: report.Row(k, label.format(**sizes), unit, hib) for k, label, unit, hib in ROWS
        }

    def add(self, key: str, system: str, value: float) -> None:
        self.rows[key].samples.setdefault(system, []).append(value)

    # -- per-operation rounds --------------------------------------------------------------

    def per_operation(self, stack: contextlib.ExitStack) -> Path:
        cfg = self.cfg
        files = dataset.files(cfg.count)
        self.log(f"setting up tmpfs, the floor and secretfs with {cfg.count:,} secrets")
        tmpfs = stack.enter_context(_closing(Tmpfs(self.work / "tmpfs", files)))
        floor = stack.enter_context(_closing(Floor(self.work / "floor", cfg.count, cfg.cold)))
        store = self.work / "store.db"
        sfs = stack.enter_context(_closing(Secretfs(self.work / "secretfs", store, cfg.count)))
        systems: list[System] = [tmpfs, floor, sfs]
        cold = dataset.cold_names(cfg.cold)
        warm_idx = range(cfg.cold, cfg.count)
        small = [f"{dataset.SCOPE}/{dataset.name(i)}" for i in warm_idx if i % 2 == 0]
        large = [f"{dataset.SCOPE}/{dataset.name(i)}" for i in warm_idx if i % 2 == 1]
        small, large = small[: cfg.warm], large[: cfg.warm]
        field = [dataset.field_path()]

        def paths(s: System, rels: list[str]) -> list[str]:
            return [s.path(r) for r in rels]

        cold_small = [f"{dataset.SCOPE}/{n}" for n in cold[0::2]]
        cold_large = [f"{dataset.SCOPE}/{n}" for n in cold[1::2]]
        for r in range(cfg.rounds):
            self.log(f"round {r + 1}/{cfg.rounds}")
            order = systems[r % 3 :] + systems[: r % 3]
            for s in order:  # warm: each file opened once before (the mount verified it)
                open_read_close(paths(s, small + large + field))
            for key, rels in (("open_warm_100", small), ("open_warm_4k", large)):
                for name, value in interleaved(order, rels, cfg.ops, open_read_close).items():
                    self.add(key, name, value)
            for name, value in interleaved(order, field, cfg.ops, open_read_close).items():
                self.add("field_warm", name, value)
            for name, value in interleaved(order, small, cfg.stat_ops, stats).items():
                self.add("stat", name, value)
            for s in order:
                self.add("ls_l", s.name, ls_l(s.root / dataset.SCOPE))
            for s in order:
                s.rotate(cold)
            for key, rels in (("open_cold_100", cold_small), ("open_cold_4k", cold_large)):
                # Each file once: its first open since the rotation.
                for name, value in interleaved(order, rels, len(rels), open_read_close).items():
                    self.add(key, name, value)
        # Concurrency needs more than one CPU: daemons and readers go unpinned for this.
        everywhere = set(range(os.cpu_count() or 1))
        os.sched_setaffinity(0, everywhere)
        for pid in (floor.proc.pid, sfs.pid):
            _set_affinity_all_threads(pid, everywhere)
        for r in range(cfg.reader_rounds):
            self.log(f"concurrent readers, round {r + 1}/{cfg.reader_rounds}")
            for s in systems[r % 3 :] + systems[: r % 3]:
                # 1, then N, then 1 again: N is compared with the 1s on either side of it.
                one = concurrent_readers(paths(s, small), 1, cfg.reader_seconds)
                many = concurrent_readers(paths(s, small), cfg.readers, cfg.reader_seconds)
                one += concurrent_readers(paths(s, small), 1, cfg.reader_seconds)
                self.add("readers_1", s.name, one / 2)
                self.add("readers_8", s.name, many)
        os.sched_setaffinity(0, self.cpus)
        return store

    # -- whole commands, secretfs only -----------------------------------------------------

    def whole_commands(self, small_store: Path) -> None:
        cfg = self.cfg
        big = self.work / "big.db"
        per_scope = cfg.big // len(BIG_SCOPES)
        self.log(f"seeding a store with {cfg.big:,} secrets")
        init_store(big)
        rng = random.Random(100)
        seed(
            big,
            (
                (scope, dataset.name(i), dataset.value(rng, dataset.SMALL))
                for scope in BIG_SCOPES
                for i in range(per_scope)
            ),
        )
        root = self.work / "big"
        root.mkdir()
        for rep in range(cfg.reps):
            self.log(f"mount-to-ready with {cfg.big:,} secrets, {rep + 1}/{cfg.reps}")
            start = time.perf_counter()
            pid = mount_secretfs(big, root)
            self.add("mount_ready", "secretfs", time.perf_counter() - start)
            try:
                self.add("rss_ready", "secretfs", _rss_mb(pid))
                if rep == 0:
                    subprocess.run(["ls", "-lR", str(root)], stdout=subprocess.DEVNULL, check=True)
                    for scope in BIG_SCOPES:
                        for entry in os.scandir(root / scope):
                            with open(entry.path, "rb") as fh:
                                fh.read()
                    self.add("rss_used", "secretfs", _rss_mb(pid))
            finally:
                umount_secretfs(root, pid)
        self.log("Argon2id with the default parameters")
        from secretfs import crypto

        for _ in range(cfg.reps):
            self.add(
                "argon2",
                "secretfs",
                _timed(
                    lambda: crypto.derive_kek(
                        b"benchmark password", os.urandom(16), crypto.KdfParams()
                    )
                ),
            )
        for rep in range(cfg.reps):
            self.log(f"key rotate at {cfg.count:,} and {cfg.big:,} secrets, {rep + 1}/{cfg.reps}")
            self.add(
                "key_rotate_small",
                "secretfs",
                _timed(lambda: secretfs_cli("key", "rotate", "--store", str(small_store))),
            )
            self.add(
                "key_rotate_big",
                "secretfs",
                _timed(lambda: secretfs_cli("key", "rotate", "--store", str(big))),
            )
        self.log(f"key rotate --reencrypt at {cfg.big:,} secrets")
        self.add(
            "reencrypt_big",
            "secretfs",
            _timed(lambda: secretfs_cli("key", "rotate", "--reencrypt", "--store", str(big))),
        )
        rng = random.Random(200)
        text = b"".join(
            f"S{i:05d}=".encode() + dataset.value(rng, dataset.SMALL) + b"\n"
            for i in range(cfg.imports)
        )
        for rep in range(cfg.reps):
            self.log(f"import of {cfg.imports:,} secrets, {rep + 1}/{cfg.reps}")
            store = self.work / f"import{rep}.db"
            init_store(store)
            self.add(
                "import",
                "secretfs",
                _timed(
                    lambda s=store: secretfs_cli(  # type: ignore[misc]
                        "import",
                        "deployment",
                        "--format",
                        "dotenv",
                        "--file",
                        "-",
                        "--store",
                        str(s),
                        input=text,
                    )
                ),
            )


_S = TypeVar("_S", bound=System)


@contextlib.contextmanager
def _closing(system: _S) -> Iterator[_S]:
    try:
        yield system
    finally:
        system.close()


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return proc.stdout.strip()


def _meta(cfg: Config, cpus: set[int], started: str) -> dict[str, Any]:
    import pyfuse3

    return {
        "started": started,
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus_online": os.cpu_count(),
        "pinned_to": sorted(cpus),
        "python": platform.python_version(),
        "pyfuse3": getattr(pyfuse3, "__version__", "?"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "config": asdict(cfg),
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="fewer secrets and rounds: a minute, to try it out"
    )
    parser.add_argument(
        "--cpus", default="0", help="CPUs to pin the client and daemons to (default 0; 'all': none)"
    )
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="result file (default bench/results/<time>.json)")
    parser.add_argument(
        "--only",
        choices=("ops", "commands"),
        help="only the per-operation rounds, or only the whole commands",
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("A.json", "B.json"),
        help="print two earlier results side by side, run nothing",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.compare:
        print(report.compare(*args.compare))
        return
    if os.geteuid() != 0:
        sys.exit("the benchmark mounts tmpfs and FUSE filesystems: run it as root")
    for name in list(os.environ):
        if name.startswith("SECRETFS_"):
            del os.environ[name]  # the stores here use their own key files
    cfg = SMOKE if args.smoke else QUICK if args.quick else Config()
    cpus = (
        set(range(os.cpu_count() or 1))
        if args.cpus == "all"
        else {int(c) for c in args.cpus.split(",")}
    )
    os.sched_setaffinity(0, cpus)  # inherited by the floor and the secretfs daemons
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    begin = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - begin:6.1f}s] {text}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="secretfs-bench-") as tmp:
        bench = Bench(cfg, Path(tmp), cpus, log)
        with contextlib.ExitStack() as stack:
            small_store = None
            if args.only != "commands":
                small_store = bench.per_operation(stack)
        if args.only != "ops":
            if small_store is None:
                small_store = Path(tmp) / "small.db"
                init_store(small_store)
                seed(small_store, dataset.secrets(cfg.count))
            bench.whole_commands(small_store)
    rows = {k: r for k, r in bench.rows.items() if r.samples}
    found = report.targets(rows)
    print()
    print(report.table(rows))
    print()
    if cfg != Config():
        print("(a smaller run than the targets name: its verdicts are only indicative)")
    print(report.verdicts(found))
    out = args.out or RESULTS / f"{started.replace(':', '').replace('-', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = _meta(cfg, cpus, started)
    meta["seconds"] = round(time.monotonic() - begin, 1)
    out.write_text(json.dumps(report.to_json(rows, found, meta), indent=2) + "\n")
    print(f"\nresults: {out}  (compare runs: python -m bench --compare A.json B.json)")
