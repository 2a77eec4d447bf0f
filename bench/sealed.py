"""Sealed read vs plain read through one mount, as a ratio (docs/sealed.md).

`python -m bench.sealed` mounts a small store with one client key and times open, read
and close of the same secrets as plain files and as `.sealed/<key id>/` files, taking
turns every CHUNK_OPS operations; `sealed_vs_plain` is the median over rounds of sealed
ops/s divided by plain ops/s (1.0: sealing costs nothing).
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from nacl.public import PrivateKey

from bench.run import (
    CHUNK_OPS,
    init_store,
    mount_secretfs,
    open_read_close,
    secretfs_cli,
    seed,
    umount_secretfs,
)


def measure(count: int = 200, ops: int = 2_000, rounds: int = 5) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="secretfs-bench-sealed-") as tmp:
        store, root = Path(tmp) / "store.db", Path(tmp) / "mnt"
        root.mkdir()
        init_store(store)
        seed(store, (("deployment", f"s{i}", b"v" * 100) for i in range(count)))
        public = base64.b64encode(bytes(PrivateKey.generate().public_key)).decode()
        key_id = secretfs_cli("client-key", "add", public, "--store", str(store)).stdout
        pid = mount_secretfs(store, root)
        try:
            rels = [f"deployment/s{i}" for i in range(count)]
            plain = [str(root / r) for r in rels]
            sealed = [str(root / ".sealed" / key_id.decode().strip() / r) for r in rels]
            open_read_close(plain + sealed)  # warm: lookups, verified versions
            cycle = list(range(ops))
            ratios, plain_rate, sealed_rate = [], [], []
            for _ in range(rounds):
                spent = {"plain": 0.0, "sealed": 0.0}
                for at in range(0, ops, CHUNK_OPS):
                    picks = [i % count for i in cycle[at : at + CHUNK_OPS]]
                    spent["plain"] += open_read_close([plain[i] for i in picks])
                    spent["sealed"] += open_read_close([sealed[i] for i in picks])
                ratios.append(spent["plain"] / spent["sealed"])
                plain_rate.append(ops / spent["plain"])
                sealed_rate.append(ops / spent["sealed"])
        finally:
            umount_secretfs(root, pid)
    return {
        "sealed_vs_plain": round(statistics.median(ratios), 3),
        "plain_ops_per_s": round(statistics.median(plain_rate)),
        "sealed_ops_per_s": round(statistics.median(sealed_rate)),
        "secrets": count,
        "ops": ops,
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sealed", description=__doc__)
    parser.add_argument("--ops", type=int, default=2_000, help="operations per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print(json.dumps(measure(ops=args.ops, rounds=args.rounds), indent=2))


if __name__ == "__main__":
    main()
