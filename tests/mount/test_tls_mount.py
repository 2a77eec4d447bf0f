"""A certificate and its key changed in one transaction reach the mount's new opens
together: a poller never sees a mismatched pair, and real nginx reloads during
rotations never read one (issue 12.1)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secretfs.refs import parse_ref
from secretfs.vault import Vault
from tests.mount.conftest import Mount, wait_for
from tests.tls_pairs import Pair, pairs

ROTATIONS = 50

# Reads crt, key, crt again; a triple counts only when both crt reads are equal (a
# rotation between two separate opens is inherent). ESTALE twice in a row (two
# rotations during one open) is retried, not counted.
POLLER = r"""
import errno, json, os, sys
crt, key, table, stop = sys.argv[1:5]
want = json.load(open(table))
seen = mismatched = stale = 0
def read(p):
    with open(p, "rb") as f:
        return f.read()
while not os.path.exists(stop):
    try:
        a, k, b = read(crt), read(key), read(crt)
    except OSError as exc:
        if exc.errno != errno.ESTALE:
            raise
        stale += 1
        continue
    if a != b:
        continue
    seen += 1
    if want.get(a.decode()) != k.decode():
        mismatched += 1
print(json.dumps({"seen": seen, "mismatched": mismatched, "stale": stale}))
"""


def _rotate(store: Path, pair: Pair) -> None:
    vault = Vault.open(store)
    try:
        vault.write_many(
            [(parse_ref("web.crt"), pair.cert), (parse_ref("web.key"), pair.key)],
            existing="overwrite",
        )
    finally:
        vault.close()


def test_a_poller_never_sees_a_certificate_with_another_key(
    mount_factory: object, tmp_path: Path
) -> None:
    first = pairs()[0]
    m: Mount = mount_factory(secrets={"web.crt": first.cert, "web.key": first.key})  # type: ignore[operator]
    crt, key = m.path / "deployment/web.crt", m.path / "deployment/web.key"
    table = tmp_path / "pairs.json"
    table.write_text(json.dumps({p.cert.decode(): p.key.decode() for p in pairs()}))
    stop = tmp_path / "stop"
    poller = subprocess.Popen(
        [sys.executable, "-c", POLLER, str(crt), str(key), str(table), str(stop)],
        stdout=subprocess.PIPE,
    )
    try:
        for i in range(1, ROTATIONS + 1):
            pair = pairs()[i % len(pairs())]
            _rotate(m.store, pair)
            # The daemon polls the store every 0.2 s: let each change reach the mount.
            wait_for(lambda p=pair: crt.read_bytes() == p.cert, timeout=5)
        stop.touch()
        out, _ = poller.communicate(timeout=10)
    finally:
        poller.kill()
        poller.wait()
    result = json.loads(out)
    assert result["seen"] > ROTATIONS and result["mismatched"] == 0, result
    assert key.read_bytes() == pairs()[ROTATIONS % len(pairs())].key


NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log notice;
events {{ worker_connections 32; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        location / {{ return 200 "ok"; }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _served_cert(port: int) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return ssl.DER_cert_to_PEM_cert(der).encode()


def _same_cert(pem_a: bytes, pem_b: bytes) -> bool:
    return ssl.PEM_cert_to_DER_cert(pem_a.decode()) == ssl.PEM_cert_to_DER_cert(pem_b.decode())


NGINX_ROTATIONS = 12


def reload(base: list[str], log: Path) -> None:
    """`nginx -s reload`, waiting until the master has reloaded (signals coalesce)."""
    before = log.read_bytes().count(b": reconfiguring\n")
    done = subprocess.run([*base, "-s", "reload"], capture_output=True, timeout=5)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: log.read_bytes().count(b": reconfiguring\n") > before, timeout=5)


def test_nginx_reloads_during_rotations_never_read_a_mismatched_pair(
    mount_factory: object, tmp_path: Path
) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        pytest.fail("this test needs Debian's nginx (scripts/setup.sh installs it)")
    pem = tmp_path / "pem"
    pem.mkdir()
    for i, pair in enumerate(pairs()):
        (pem / f"{i}.crt").write_bytes(pair.cert)
        (pem / f"{i}.key").write_bytes(pair.key.rstrip(b"\n"))  # `tls set` adds it back
    m: Mount = mount_factory()  # type: ignore[operator]
    m.cli("tls", "set", "web", "--cert", str(pem / "0.crt"), "--key", str(pem / "0.key"))
    crt = m.path / "deployment/web.crt"
    wait_for(lambda: crt.exists(), timeout=5)
    port = _free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(tmp=tmp_path, port=port, crt=crt, key=m.path / "deployment/web.key")
    )
    log = tmp_path / "error.log"
    base = [nginx, "-p", str(tmp_path), "-e", str(log), "-c", str(conf)]
    proc = subprocess.Popen(base, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def started() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        return log.exists() and b"start worker process" in log.read_bytes()

    try:
        wait_for(started, timeout=5)
        assert _same_cert(_served_cert(port), pairs()[0].cert)
        last = 0
        for i in range(1, NGINX_ROTATIONS + 1):
            last = i % len(pairs())
            cert_file, key_file = pem / f"{last}.crt", pem / f"{last}.key"
            m.cli("tls", "set", "web", "--cert", str(cert_file), "--key", str(key_file))
            # Reload as a watcher would: once the change is visible (docs/watching.md;
            # reloading while it lands can straddle it between nginx's two opens, as with
            # any file system), at once and at points after.
            want = pairs()[last].cert
            wait_for(lambda: crt.read_bytes() == want, timeout=5)
            time.sleep((i % 4) * 0.02)
            reload(base, log)
        wait_for(lambda: crt.read_bytes() == pairs()[last].cert, timeout=5)
        reload(base, log)
        wait_for(lambda: _same_cert(_served_cert(port), pairs()[last].cert), timeout=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "key values mismatch" not in text and "[emerg]" not in text, text[-2000:]
    # Every reload was done (a reload that fails to load the pair logs [emerg] instead).
    assert text.count(": reconfiguring\n") == NGINX_ROTATIONS + 1
