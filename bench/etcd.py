"""The etcd backend against SQLite on the same data, as ratios (docs/cluster.md).

`python -m bench.etcd` starts a 3-member etcd cluster on loopback (default limits:
--max-txn-ops 128) and measures, in one run:

- `import_etcd_vs_sqlite`: seconds to import N secrets (in-process `write_many`, the
  import's own code path) on etcd divided by the same on a SQLite file (target ≤ 3);
- `mount_ready_etcd_s` / `mount_ready_vs_sqlite`: seconds from `secretfs mount` to the
  first read of a secret, with M secrets in the store (target < 5 s at 100k);
- `read_p99_etcd_vs_sqlite`: p99 of open+read+close through that mount while one
  secret is rotated every second (target ≤ 3).

Sizes are arguments (`--import-count 10000 --mount-count 100000` for the issue's
targets); the defaults are small so a run takes seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.run import _wait_gone


def _items(count: int, tag: str) -> list[tuple[Any, bytes]]:
    from secretfs.refs import Ref, Scope

    scope = Scope.from_key("deployment")
    return [(Ref(scope, f"s{i:06d}"), f"{tag}-{i}-{'x' * 40}".encode()) for i in range(count)]


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _import(location: str, count: int) -> float:
    from secretfs.store import location as loc
    from secretfs.vault import Vault

    where = loc.parse(location)
    Vault.init(where)
    vault = Vault.open(where)
    try:
        items = _items(count, "import")
        return _timed(lambda: vault.write_many(items))
    finally:
        vault.close()


def _read_p99(location: str, root: Path, count: int, seconds: float) -> float:
    """p99 seconds of open+read+close through the mount while one secret is rotated
    every second (in-process, as the CLI would)."""
    from secretfs.refs import Ref, Scope
    from secretfs.store import location as loc
    from secretfs.vault import Vault

    vault = Vault.open(loc.parse(location))
    ref = Ref(Scope.from_key("deployment"), "s000001")
    latencies: list[float] = []
    try:
        end = time.perf_counter() + seconds
        next_rotation = time.perf_counter()
        i = 0
        while time.perf_counter() < end:
            if time.perf_counter() >= next_rotation:
                vault.update(ref, lambda _old: os.urandom(16).hex().encode())
                next_rotation += 1.0
            path = root / "deployment" / f"s{(i * 7919) % count:06d}"
            started = time.perf_counter()
            path.read_bytes()
            latencies.append(time.perf_counter() - started)
            i += 1
    finally:
        vault.close()
    latencies.sort()
    return latencies[int(len(latencies) * 0.99)]


def _mount_ready(
    location: str, root: Path, env: dict[str, str], then: Callable[[], object] = lambda: None
) -> float:
    """Seconds from `secretfs mount` until a secret reads through the mount; `then`
    runs while it is still mounted."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "secretfs", "mount", str(root), "--store", location],
        env=env,
        capture_output=True,
        check=True,
        timeout=600,
    ).stdout.decode()
    while True:
        try:
            (root / "deployment" / "s000000").read_bytes()
            break
        except OSError:
            if time.perf_counter() - started > 600:
                raise
            time.sleep(0.01)
    took = time.perf_counter() - started
    pid = int(out.rsplit("daemon pid ", 1)[1].split(")")[0])
    try:
        then()
    finally:
        subprocess.run(
            [sys.executable, "-m", "secretfs", "umount", str(root)],
            env=env,
            check=False,
            timeout=60,
        )
        _wait_gone(pid)
    return took


def measure(
    import_count: int = 1_000, mount_count: int = 2_000, seconds: float = 5.0
) -> dict[str, Any]:
    from tests.etcd_cluster import EtcdCluster

    with tempfile.TemporaryDirectory(prefix="secretfs-bench-etcd-") as tmp:
        base = Path(tmp)
        os.environ["SECRETFS_KEY_FILE"] = str(base / "store.key")
        env = dict(os.environ)
        (base / "etcd").mkdir()
        cluster = EtcdCluster(base / "etcd")
        try:
            imp_sqlite = _import(str(base / "import.db"), import_count)
            os.unlink(base / "store.key")
            imp_etcd = _import(cluster.url("import"), import_count)

            results: dict[str, float] = {}
            p99: dict[str, float] = {}
            for kind, location in (
                ("sqlite", str(base / "mount.db")),
                ("etcd", cluster.url("mount")),
            ):
                os.environ["SECRETFS_KEY_FILE"] = str(base / f"{kind}.key")
                env["SECRETFS_KEY_FILE"] = os.environ["SECRETFS_KEY_FILE"]
                _import(location, mount_count)
                root = base / f"mnt-{kind}"
                root.mkdir()

                def reads(kind: str = kind, location: str = location, root: Path = root) -> None:
                    p99[kind] = _read_p99(location, root, mount_count, seconds)

                results[kind] = _mount_ready(location, root, env, reads)
        finally:
            cluster.close()
            os.environ.pop("SECRETFS_KEY_FILE", None)
    return {
        "import_etcd_vs_sqlite": round(imp_etcd / imp_sqlite, 2),
        "import_etcd_s": round(imp_etcd, 2),
        "import_sqlite_s": round(imp_sqlite, 2),
        "import_count": import_count,
        "mount_ready_etcd_s": round(results["etcd"], 2),
        "mount_ready_vs_sqlite": round(results["etcd"] / results["sqlite"], 2),
        "mount_count": mount_count,
        "read_p99_etcd_ms": round(p99["etcd"] * 1000, 2),
        "read_p99_etcd_vs_sqlite": round(p99["etcd"] / p99["sqlite"], 2),
        "rotation_seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.etcd", description=__doc__)
    parser.add_argument("--import-count", type=int, default=1_000)
    parser.add_argument("--mount-count", type=int, default=2_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="of reads and rotations")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.import_count, args.mount_count, args.seconds), indent=2))


if __name__ == "__main__":
    main()
