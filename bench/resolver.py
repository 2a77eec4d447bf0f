"""The resolver socket against the mount, in one run: `python -m bench.resolver`.

- GetSecrets of one ID (binary protobuf, as Docker's Go client sends it, over one
  keep-alive connection) against a warm open+read+close of the same secret through the
  mount: one client, then CLIENTS processes at once. Target: resolver >= 0.5x the mount.
- GetSecrets of `**` over every secret (`--count`, 10,000 by default), binary and JSON.
  Target: under 0.5 s.

Both sides take turns every CHUNK operations so a drifting machine hits both alike;
the figures are ratios, medians over the rounds, with client and daemon on one CPU, so
the client's CPU counts against each side, as the mount's client's syscalls do. Two
resolver clients: one speaking HTTP through h11 (a Python client: it costs about as
much CPU as the server) and a lean one (one write of a request made once, read up to
its Content-Length: what a compiled client such as Docker's costs). The target is
judged on the lean one; both are printed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import h11

from bench import dataset
from bench.run import _set_affinity_all_threads, init_store, secretfs_cli, seed

CHUNK = 200
TARGET_RATIO = 0.5
TARGET_ALL_SECONDS = 0.5
PATH = "/resolver.v1.ResolverService/GetSecrets"


class Client:
    """One keep-alive connection to the resolver, HTTP by h11 (http.client's header
    parsing alone costs more than the server's whole answer)."""

    def __init__(self, sock: str) -> None:
        from secretfs.resolver import messages

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sock)
        self.conn = h11.Connection(h11.CLIENT)
        self._messages = messages

    def get(self, pattern: str, codec: str = "proto") -> bytes:
        if codec == "proto":
            req = self._messages.GetSecretsRequest(pattern=pattern).SerializeToString()
        else:
            req = json.dumps({"pattern": pattern}).encode()
        headers = [
            ("host", "localhost"),
            ("content-type", f"application/{codec}"),
            ("content-length", str(len(req))),
        ]
        conn = self.conn
        out = conn.send(h11.Request(method="POST", target=PATH, headers=headers)) or b""
        out += conn.send(h11.Data(data=req)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        self.sock.sendall(out)
        status, body = 0, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(self.sock.recv(1 << 20))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise RuntimeError(f"unexpected {event!r}")
        conn.start_next_cycle()
        if status != 200:
            raise RuntimeError(f"GetSecrets {pattern!r}: HTTP {status}: {bytes(body[:200])!r}")
        return bytes(body)


def _mount_reads(path: str, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 65536)
        os.close(fd)
    return time.perf_counter() - start


def _resolver_reads(client: Client, secret_id: str, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        client.get(secret_id)
    return time.perf_counter() - start


def single(path: str, client: Client, secret_id: str, ops: int, rounds: int) -> dict[str, Any]:
    _mount_reads(path, CHUNK)  # warm: verified, kept, in the page cache
    _resolver_reads(client, secret_id, CHUNK)
    ratios, mount_rates, api_rates = [], [], []
    for _ in range(rounds):
        spent = {"mount": 0.0, "resolver": 0.0}
        for _ in range(max(1, ops // CHUNK)):
            spent["mount"] += _mount_reads(path, CHUNK)
            spent["resolver"] += _resolver_reads(client, secret_id, CHUNK)
        mount_rate, api_rate = ops / spent["mount"], ops / spent["resolver"]
        mount_rates.append(mount_rate)
        api_rates.append(api_rate)
        ratios.append(api_rate / mount_rate)
    return {
        "mount_per_s": statistics.median(mount_rates),
        "resolver_per_s": statistics.median(api_rates),
        "ratio": statistics.median(ratios),
    }


def _worker(
    kind: str, path: str, sock: str, secret_id: str, seconds: float, start: Any, out: Any
) -> None:
    client = Client(sock) if kind == "resolver" else None
    start.wait()
    n, began = 0, time.monotonic()
    while time.monotonic() - began < seconds:
        if client is not None:
            _resolver_reads(client, secret_id, 20)
        else:
            _mount_reads(path, 20)
        n += 20
    out.put(n / (time.monotonic() - began))


def concurrent(
    kind: str, path: str, sock: str, secret_id: str, clients: int, seconds: float
) -> float:
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(kind, path, sock, secret_id, seconds, start, out))
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    time.sleep(0.3)
    start.set()
    total = sum(out.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join()
    return float(total)


def everything(client: Client, count: int, codec: str, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        body = client.get("**", codec)
        times.append(time.perf_counter() - start)
    if codec == "json" and len(json.loads(body)["envelopes"]) != count + 2:
        raise RuntimeError("** did not return every secret")
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.resolver", description=__doc__)
    parser.add_argument("--count", type=int, default=10_000, help="secrets in the store")
    parser.add_argument("--ops", type=int, default=2_000, help="requests per side per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1.0, help="for the concurrent runs")
    parser.add_argument("--cpu", type=int, default=0, help="pin client and daemon to this CPU")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="secretfs-bench-resolver-", dir="/tmp"))
    store, root, sock = work / "store.db", work / "mnt", work / "resolver.sock"
    root.mkdir()
    init_store(store)
    seed(store, dataset.secrets(args.count))
    out = secretfs_cli("mount", str(root), "--store", str(store), "--resolver-socket", str(sock))
    pid = int(out.stdout.decode().rsplit("daemon pid ", 1)[1].split(")")[0])
    # One CPU for both, as bench/run.py does: the ratios then hold on a busy machine.
    _set_affinity_all_threads(pid, {args.cpu})
    os.sched_setaffinity(0, {args.cpu})
    try:
        name = dataset.name(0)
        path, secret_id = str(root / dataset.SCOPE / name), f"{dataset.SCOPE}/{name}"
        client = Client(str(sock))
        one = single(path, client, secret_id, args.ops, args.rounds)
        many = {
            kind: concurrent(kind, path, str(sock), secret_id, args.clients, args.seconds)
            for kind in ("mount", "resolver")
        }
        all_proto = everything(client, args.count, "proto", 3)
        all_json = everything(client, args.count, "json", 3)
    finally:
        secretfs_cli("umount", str(root))
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "count": args.count,
        "single": one,
        "concurrent": {**many, "clients": args.clients, "ratio": many["resolver"] / many["mount"]},
        "all_seconds": {"proto": all_proto, "json": all_json},
    }
    ratio_ok = one["ratio"] >= TARGET_RATIO
    all_ok = max(all_proto, all_json) < TARGET_ALL_SECONDS
    c = result["concurrent"]
    rows = [
        ("one ID, 1 client", one["mount_per_s"], one["resolver_per_s"], one["ratio"]),
        (f"one ID, {args.clients} clients", c["mount"], c["resolver"], c["ratio"]),
    ]
    print(f"{'':22} {'mount/s':>10} {'resolver/s':>10} {'resolver/mount':>15}")
    for label, mount_rate, api_rate, ratio in rows:
        print(f"{label:22} {mount_rate:10.0f} {api_rate:10.0f} {ratio:15.2f}")
    verdict = "PASS" if ratio_ok else "MISS"
    print(f"target: one ID at >= {TARGET_RATIO}x the mount (1 client): {verdict}")
    verdict = "PASS" if all_ok else "MISS"
    print(
        f"** over {args.count} secrets: proto {all_proto:.3f} s, json {all_json:.3f} s;"
        f" target < {TARGET_ALL_SECONDS} s: {verdict}"
    )
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
