"""The Docker secrets-engine resolver API from the mount daemon, against real clients:
curl over the unix socket and Docker's abstract socket, protoc for binary protobuf, and
other uids through setpriv. Same access rules and audit as the mount's opens."""

from __future__ import annotations

import base64
import codecs
import json
import os
import random
import re
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.mount.conftest import AS_1000, Mount, wait_for

PROTO_DIR = Path(__file__).resolve().parents[2] / "secretfs" / "resolver" / "proto"
GET_SECRETS = "http://localhost/resolver.v1.ResolverService/GetSecrets"
SECRETS = {
    "db": b"hunter2",
    "@api/token": b"tok\n",
    "@api/config": b'{"user":"app","password":"pw","a b":1}',
    ":staging/db": b"staging",
    "shop:prod/db": bytes(range(256)),
}


class Api:
    def __init__(self, mount: Mount, sock: Path, uid: int) -> None:
        self.mount = mount
        self.sock = sock
        self.abstract_uid = uid

    def curl(
        self,
        *args: str,
        body: str | bytes | None = None,
        as_user: list[str] | None = None,
        where: list[str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Run curl; give back the status, the headers (lower-cased) and the body."""
        target = where or ["--unix-socket", str(self.sock)]
        cmd = [*(as_user or []), "curl", "-sS", "--max-time", "10", "-i", *target, *args]
        if body is not None:
            cmd += ["--data-binary", "@-"]
        raw = body.encode() if isinstance(body, str) else body
        proc = subprocess.run(cmd, input=raw, capture_output=True, timeout=20, check=True)
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }
        return status, headers, payload

    def get(
        self, pattern: str, as_user: list[str] | None = None, where: list[str] | None = None
    ) -> tuple[int, Any]:
        status, _, payload = self.curl(
            "-X",
            "POST",
            GET_SECRETS,
            "-H",
            "Content-Type: application/json",
            body=json.dumps({"pattern": pattern}),
            as_user=as_user,
            where=where,
        )
        return status, json.loads(payload)


@pytest.fixture
def api(open_dir: Path, mount_factory: Callable[..., Mount]) -> Api:
    sock = open_dir / "resolver.sock"
    uid = random.randrange(3_000_000_000, 4_000_000_000)  # its own abstract name
    m = mount_factory(
        "-o",
        "allow_other",
        "--resolver-socket",
        str(sock),
        "--resolver-socket-mode",
        "0666",
        "--docker-abstract-uid",
        str(uid),
        secrets=SECRETS,
        parent=open_dir,
    )
    return Api(m, sock, uid)


def audit(m: Mount) -> list[dict[str, Any]]:
    return [r for r in json.loads(m.cli("audit", "--json").stdout) if r["source"] == "resolver"]


def test_json_over_the_socket_and_dockers_abstract_socket(api: Api) -> None:
    st = os.lstat(api.sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666
    status, answer = api.get("**")
    assert status == 200
    envelopes = answer["envelopes"]
    assert [e["id"] for e in envelopes] == [
        "deployment/db",
        "env/staging/db",
        "project/shop/prod/db",
        "service/api/config",
        "service/api/token",
    ]
    by_id = {e["id"]: e for e in envelopes}
    shop = by_id["project/shop/prod/db"]
    assert base64.b64decode(shop["value"], validate=True) == bytes(range(256))
    assert shop["provider"] == "secretfs" and shop["version"] == "1"
    assert shop["metadata"] == {"ref": "$S:shop:prod/db"}
    assert shop["expiresAt"] == "0001-01-01T00:00:00Z"
    assert shop["createdAt"].endswith("Z") and shop["resolvedAt"] >= shop["createdAt"]

    # Docker's client on Linux dials @docker-secrets-engine/<uid>/daemon.sock.
    where = ["--abstract-unix-socket", f"docker-secrets-engine/{api.abstract_uid}/daemon.sock"]
    status, answer = api.get("service/api/config/user", where=where)
    assert status == 200
    (field,) = answer["envelopes"]
    assert field["id"] == "service/api/config/user"
    assert base64.b64decode(field["value"]) == b"app"
    assert field["metadata"]["ref"] == "$S:@api/config/user"

    # `*` is one component, `**` zero or more; wildcards reach secrets, not fields.
    assert [e["id"] for e in api.get("*/*/db")[1]["envelopes"]] == ["env/staging/db"]
    ids = [e["id"] for e in api.get("service/api/config/**")[1]["envelopes"]]
    assert ids == ["service/api/config"]
    assert api.get("**/db")[1]["envelopes"][0]["id"] == "deployment/db"

    # A new version is served at once, with its number.
    api.mount.cli("secret", "set", "db", "--from-stdin", input=b"hunter3")
    (db,) = api.get("deployment/db")[1]["envelopes"]
    assert base64.b64decode(db["value"]) == b"hunter3" and db["version"] == "2"

    want = {"$S:shop:prod/db", "$S:@api/config/user", "$S:db"}
    wait_for(lambda: {r["ref"] for r in audit(api.mount)} >= want, timeout=3)  # batched
    records = audit(api.mount)
    assert all(r["outcome"] == "allowed" and r["process"] == "curl" for r in records)
    assert all(r["action"] == "open" and r["pid"] and r["version"] for r in records)


def test_protocol_errors_are_connects(api: Api) -> None:
    status, headers, _ = api.curl(GET_SECRETS)
    assert status == 405 and headers["allow"] == "POST"
    status, headers, _ = api.curl("-X", "POST", GET_SECRETS, "-H", "Content-Type: text/plain")
    assert status == 415
    assert "application/proto" in headers["accept-post"]
    assert "application/json" in headers["accept-post"]

    def error(*extra: str, body: str = '{"pattern":"**"}') -> tuple[int, dict[str, str]]:
        status, headers, payload = api.curl(
            "-X", "POST", GET_SECRETS, "-H", "Content-Type: application/json", *extra, body=body
        )
        assert headers["content-type"] == "application/json"
        return status, json.loads(payload)

    assert error("-H", "Connect-Protocol-Version: 2")[0] == 400
    assert error("-H", "Connect-Protocol-Version: 2")[1]["code"] == "invalid_argument"
    assert error(body='{"pattern":"foo//bar"}') == (
        400,
        {"code": "invalid_argument", "message": 'invalid pattern "foo//bar": invalid pattern'},
    )
    assert error(body='{"pattern":""}')[0] == 400
    assert error(body='{"pattern":"deployment/nope"}') == (
        404,
        {"code": "not_found", "message": "secret not found"},
    )
    assert error(body='{"pattern":"nothing/**"}')[0] == 404
    assert error(body='{"pattern":"deployment/db/user"}')[0] == 404  # not JSON: no fields
    assert error(body="{not json")[1]["code"] == "invalid_argument"
    assert error(body='{"pattern":"' + "a" * 70_000 + '"}')[0] == 429  # over 64 KiB

    # Also accepted: a charset, the protocol header, fields it does not know.
    status, _, payload = api.curl(
        "-X",
        "POST",
        GET_SECRETS,
        "-H",
        "Content-Type: application/json; charset=utf-8",
        "-H",
        "Connect-Protocol-Version: 1",
        body='{"pattern":"deployment/db","future":{"x":1}}',
    )
    assert status == 200 and json.loads(payload)["envelopes"][0]["id"] == "deployment/db"

    status, _, payload = api.curl("http://localhost/health")
    assert (status, payload) == (200, b"ok")
    status, headers, payload = api.curl(
        "-X",
        "POST",
        "http://localhost/health.v1.VersionService/GetVersion",
        "-H",
        "Content-Type: application/json",
        body="{}",
    )
    version = json.loads(payload)
    assert status == 200 and version["version"].startswith("v")
    assert version["version"][1:].split(".")[0].isdigit()
    assert set(version) == {"version", "date", "commitHash"}
    assert api.curl("http://localhost/nope")[0] == 404


def test_binary_protobuf_round_trip_with_protoc(api: Api) -> None:
    protoc = ["protoc", f"-I{PROTO_DIR}", "-I/usr/include", "resolver.proto"]
    request = subprocess.run(
        [*protoc, "--encode=resolver.v1.GetSecretsRequest"],
        input=b'pattern: "project/shop/prod/db"',
        capture_output=True,
        check=True,
    ).stdout
    status, headers, payload = api.curl(
        "-X", "POST", GET_SECRETS, "-H", "Content-Type: application/proto", body=request
    )
    assert status == 200 and headers["content-type"] == "application/proto"
    text = subprocess.run(
        [*protoc, "--decode=resolver.v1.GetSecretsResponse"],
        input=payload,
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert 'id: "project/shop/prod/db"' in text
    assert 'provider: "secretfs"' in text and 'version: "1"' in text
    assert "expires_at {\n    seconds: -62135596800\n  }" in text  # Go's zero time
    assert 'key: "ref"\n    value: "$S:shop:prod/db"' in text
    # protoc prints bytes C-escaped (octal, \t, \", ...): undo that and compare.
    (escaped,) = re.findall(r'^  value: "(.*)"$', text, flags=re.MULTILINE)
    assert codecs.escape_decode(escaped.encode())[0] == bytes(range(256))


def test_other_uids_get_exactly_what_the_mount_lets_them_open(api: Api) -> None:
    m = api.mount
    status, answer = api.get("deployment/db", as_user=AS_1000)
    assert (status, answer["code"]) == (403, "permission_denied")
    assert api.get("**", as_user=AS_1000)[0] == 404  # nothing it may read: not found
    m.cli("secret", "chmod", "@api/token", "0404")
    m.cli("grant", ":staging/db", "--gid", "3000")
    wait_for(lambda: api.get("**", as_user=AS_1000)[0] == 200, timeout=3)
    ids = [e["id"] for e in api.get("**", as_user=AS_1000)[1]["envelopes"]]
    assert ids == ["service/api/token"]
    # Supplementary groups count, read from /proc for the connecting process.
    in_3000 = ["setpriv", "--reuid=1000", "--regid=1000", "--groups=3000"]
    ids = [e["id"] for e in api.get("**", as_user=in_3000)[1]["envelopes"]]
    assert ids == ["env/staging/db", "service/api/token"]
    # The mount agrees, file by file.
    for secret_id, path in (
        ("service/api/token", "@api/token"),
        ("deployment/db", "deployment/db"),
    ):
        via_mount = subprocess.run([*AS_1000, "cat", str(m.path / path)], capture_output=True)
        via_api = api.get(secret_id, as_user=AS_1000)[0]
        assert (via_mount.returncode == 0) == (via_api == 200), secret_id

    def denied() -> list[dict[str, Any]]:
        return [r for r in audit(m) if r["outcome"] == "denied"]

    wait_for(lambda: len(denied()) >= 2, timeout=3)
    record = denied()[0]
    assert record["ref"] == "$S:db" and record["uid"] == 1000 and record["gid"] == 1000
    assert record["process"] == "curl" and record["detail"] == "EACCES"


CLIENT = textwrap.dedent(
    """
    import http.client, json, socket, sys

    class Unix(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(sys.argv[1])

    conn = Unix("localhost", timeout=10)
    body = json.dumps({"pattern": "deployment/db"})
    statuses = set()
    for _ in range(int(sys.argv[2])):
        conn.request("POST", "/resolver.v1.ResolverService/GetSecrets", body,
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        statuses.add(resp.status)
    print(sorted(statuses))
    """
)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_denied_requests_in_a_loop_do_not_grow_the_daemon(api: Api) -> None:
    (pid,) = api.mount.daemon_pids()

    def hammer(n: int) -> None:
        out = subprocess.run(
            [*AS_1000, sys.executable, "-c", CLIENT, str(api.sock), str(n)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert out.stdout.strip() == "[403]"  # one keep-alive connection, every one denied

    hammer(300)
    before = _rss_kb(pid)
    hammer(1000)
    time.sleep(1)  # the audit queue is written out every 0.5 s
    assert _rss_kb(pid) - before < 4096


def _raw(sock_path: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock_path))
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_bad_and_stalled_clients_neither_crash_nor_stall_the_mount(api: Api) -> None:
    assert _raw(api.sock, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400")
    many = b"".join(b"X-%d: y\r\n" % i for i in range(100))
    answer = _raw(api.sock, b"POST /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431")
    huge = b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 40_000 + b"\r\n\r\n"
    assert _raw(api.sock, huge).startswith(b"HTTP/1.1 431")
    # Clients that send half a request and wait hold a connection each, and nothing else.
    stalled = []
    for _ in range(20):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(api.sock))
        s.sendall(b"POST /resolver.v1.ResolverService/GetSecrets HTTP/1.1\r\nHost: x\r\n")
        stalled.append(s)
    try:
        start = time.monotonic()
        assert (api.mount.path / "deployment" / "db").read_bytes() == b"hunter2"
        assert api.get("deployment/db")[0] == 200
        assert time.monotonic() - start < 2
    finally:
        for s in stalled:
            s.close()
    assert api.get("deployment/db")[0] == 200


def test_the_socket_is_bound_with_its_mode_and_not_taken_from_a_live_server(
    open_dir: Path, mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    sock = open_dir / "run" / "r.sock"
    sock.parent.mkdir()
    dead = socket.socket(socket.AF_UNIX)  # left behind by a daemon that is gone: replaced
    dead.bind(str(sock))
    dead.close()
    m = mount_factory("--resolver-socket", str(sock), secrets={"db": b"x"}, parent=open_dir)
    assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o660  # the default
    assert [p.name for p in sock.parent.iterdir()] == ["r.sock"]  # no staging dir left
    other = tmp_path / "mnt2"
    other.mkdir()
    proc = m.cli("mount", str(other), "--resolver-socket", str(sock), check=False)
    assert proc.returncode != 0 and b"another process is serving there" in proc.stderr
    m.cli("umount", str(m.path))
    wait_for(lambda: not sock.exists(), timeout=5)


def test_sealed_envelopes_for_a_key_and_a_sealed_only_grantee(api: Api) -> None:
    """`Secretfs-Sealed-To` seals every value to a registered client key (docs/sealed.md):
    PyNaCl opens it; a sealed-only grantee gets it sealed and never plain; a revoked or
    unknown key is refused; the bound form carries ref and version inside the box."""
    from nacl.exceptions import CryptoError
    from nacl.public import PrivateKey, SealedBox

    from secretfs.sealing import parse_bound

    m = api.mount
    key = PrivateKey.generate()
    public = base64.b64encode(bytes(key.public_key)).decode()
    key_id = m.cli("client-key", "add", public).stdout.decode().strip()
    m.cli("grant", "db", "--uid", "1000", "--sealed-only")

    def sealed_get(pattern: str, *extra: str, as_user: list[str] | None = None) -> Any:
        status, _, payload = api.curl(
            "-X", "POST", GET_SECRETS, "-H", "Content-Type: application/json",
            "-H", f"Secretfs-Sealed-To: {key_id}", *extra,
            body=json.dumps({"pattern": pattern}), as_user=as_user,
        )  # fmt: skip
        return status, json.loads(payload)

    def opened(answer: Any) -> bytes:
        box = base64.b64decode(answer["envelopes"][0]["value"])
        return SealedBox(key).decrypt(box)

    # A sealed-only grantee: plain is refused, sealed is served (once the grant is seen).
    assert api.get("deployment/db", as_user=AS_1000)[0] == 403
    wait_for(lambda: sealed_get("deployment/db", as_user=AS_1000)[0] == 200, timeout=3)
    status, answer = sealed_get("deployment/db", as_user=AS_1000)
    assert opened(answer) == SECRETS["db"]
    meta = answer["envelopes"][0]["metadata"]
    assert meta["secretfs.sealed-to"] == key_id and meta["ref"] == "$S:db"
    assert api.get("deployment/db", as_user=AS_1000)[0] == 403
    # Two requests seal afresh; a flipped byte does not open.
    again = sealed_get("deployment/db")[1]
    assert again["envelopes"][0]["value"] != answer["envelopes"][0]["value"]
    box = bytearray(base64.b64decode(again["envelopes"][0]["value"]))
    box[-1] ^= 1
    with pytest.raises(CryptoError):
        SealedBox(key).decrypt(bytes(box))
    # The bound form: ref and version authenticated inside the box.
    status, answer = sealed_get("deployment/db", "-H", "Secretfs-Sealed-Bound: 1")
    assert status == 200
    assert parse_bound(opened(answer)) == ("$S:db", 1, SECRETS["db"])
    # Unknown and revoked keys are refused; nothing is served in the clear instead.
    status, _, payload = api.curl(
        "-X", "POST", GET_SECRETS, "-H", "Content-Type: application/json",
        "-H", "Secretfs-Sealed-To: ck_" + "0" * 32, body=json.dumps({"pattern": "**"}),
    )  # fmt: skip
    assert status == 400 and json.loads(payload)["code"] == "failed_precondition"
    m.cli("client-key", "rm", key_id)
    wait_for(lambda: sealed_get("deployment/db")[0] == 403, timeout=3)
    assert "revoked" in sealed_get("deployment/db")[1]["message"]
    # Audited with the key it was sealed to (and the writer records the key's last use).
    wait_for(
        lambda: any(
            r["outcome"] == "allowed" and (r["detail"] or "").startswith("sealed to " + key_id)
            for r in audit(m)
        ),
        timeout=3,
    )
