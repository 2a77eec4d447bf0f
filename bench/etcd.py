"""The etcd backend against SQLite on the same data, as ratios (docs/cluster.md).

`python -m bench.etcd` starts a 3-member etcd cluster on loopback (default limits:
--max-txn-ops 128) and measures, in one run:

- `import_etcd_vs_sqlite`: seconds to import N secrets (in-process `write_many`, the
  import's own code path) on etcd divided by the same on a SQLite file (target ≤ 3);
- `mount_ready_etcd_s` / `mount_ready_vs_sqlite`: seconds from `secretfs mount` to the
  first read of a secret, with M secrets in the store (target < 5 s at 100k).

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


def _mount_ready(location: str, root: Path, env: dict[str, str]) -> float:
    """Seconds from `secretfs mount` until a secret reads through the mount."""
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
    subprocess.run(
        [sys.executable, "-m", "secretfs", "umount", str(root)], env=env, check=False, timeout=60
    )
    _wait_gone(pid)
    return took


def measure(import_count: int = 1_000, mount_count: int = 2_000) -> dict[str, Any]:
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

            results = {}
            for kind, location in (
                ("sqlite", str(base / "mount.db")),
                ("etcd", cluster.url("mount")),
            ):
                os.environ["SECRETFS_KEY_FILE"] = str(base / f"{kind}.key")
                env["SECRETFS_KEY_FILE"] = os.environ["SECRETFS_KEY_FILE"]
                _import(location, mount_count)
                root = base / f"mnt-{kind}"
                root.mkdir()
                results[kind] = _mount_ready(location, root, env)
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
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.etcd", description=__doc__)
    parser.add_argument("--import-count", type=int, default=1_000)
    parser.add_argument("--mount-count", type=int, default=2_000)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.import_count, args.mount_count), indent=2))


if __name__ == "__main__":
    main()
