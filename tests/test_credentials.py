"""Typed credentials: registry logins as a Docker config.json, git tokens and SSH keys."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from secretfs import credentials as creds
from secretfs.errors import ConflictError, NotFoundError, UsageError
from secretfs.refs import parse_ref
from secretfs.vault import Vault
from tests.conftest import Cli

# --------------------------------------------------------------------------- pure logic


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ("ghcr.io", "ghcr.io"),
        ("GHCR.IO/", "ghcr.io"),
        ("https://registry.example.com:5000/", "registry.example.com:5000"),
        ("http://localhost:5000", "localhost:5000"),
        ("quay.io/myorg", "quay.io/myorg"),
        ("[::1]:5000", "[::1]:5000"),
        ("docker.io", creds.DOCKER_HUB_KEY),
        ("index.docker.io", creds.DOCKER_HUB_KEY),
        ("https://index.docker.io/v1/", creds.DOCKER_HUB_KEY),
    ],
)
def test_registry_key(given: str, key: str) -> None:
    assert creds.registry_key(given) == key


@pytest.mark.parametrize("bad", ["", "a b", "-x.io", "x.io:0", "x.io:65536", "x.io/a b", "a@b"])
def test_registry_key_refuses(bad: str) -> None:
    with pytest.raises(UsageError, match="not a registry"):
        creds.registry_key(bad)


def test_login_secret_drops_one_newline_like_docker() -> None:
    assert creds.read_login_secret(b"pa:ss\n", "password") == b"pa:ss"
    assert creds.read_login_secret(b"pass\r\n", "password") == b"pass"
    assert creds.read_login_secret(b"pass\n\n", "password") == b"pass\n"
    with pytest.raises(UsageError, match="empty"):
        creds.read_login_secret(b"\n", "password")


def test_username_rules() -> None:
    assert creds.check_username("robot$ci+bot") == "robot$ci+bot"
    for bad in ("", "a:b", "a\nb"):
        with pytest.raises(UsageError):
            creds.check_username(bad)


def test_docker_config_merge_keeps_everything_else() -> None:
    existing = {
        "auths": {"quay.io": {"auth": "eDp5"}},
        "credHelpers": {"gcr.io": "gcloud"},
        "HttpHeaders": {"User-Agent": "x"},
    }
    doc = creds.load_docker_config(json.dumps(existing).encode(), "$S:x")
    assert creds.set_auth(doc, "ghcr.io", "me", b"p:w") is False
    assert creds.set_auth(doc, "ghcr.io", "me", b"p2") is True
    out = json.loads(creds.dump_docker_config(doc))
    assert out["credHelpers"] == {"gcr.io": "gcloud"}
    assert out["HttpHeaders"] == {"User-Agent": "x"}
    assert out["auths"]["quay.io"] == {"auth": "eDp5"}
    assert base64.b64decode(out["auths"]["ghcr.io"]["auth"]) == b"me:p2"
    creds.remove_auth(doc, "quay.io", "$S:x")
    with pytest.raises(NotFoundError):
        creds.remove_auth(doc, "quay.io", "$S:x")
    assert [x.registry for x in creds.list_logins(doc)] == ["ghcr.io"]


@pytest.mark.parametrize(
    "value", [b"hunter2", b"[1]", b'{"user":"x"}', b'{"auths":[]}', b"", b'"auths"']
)
def test_docker_config_refuses_other_values(value: bytes) -> None:
    with pytest.raises(ConflictError, match=r"not a Docker config\.json"):
        creds.load_docker_config(value, "$S:x")


def test_list_logins_shows_users_never_passwords() -> None:
    doc = {
        "auths": {
            "a.io": {"auth": creds.basic_auth("alice", b"secret-a")},
            "b.io": {"identitytoken": "tok"},
            "c.io": {"auth": "!!notbase64"},
        }
    }
    logins = creds.list_logins(doc)
    assert [(x.registry, x.username, x.kind) for x in logins] == [
        ("a.io", "alice", "basic"),
        ("b.io", None, "identitytoken"),
        ("c.io", None, "basic"),
    ]
    assert "secret-a" not in repr(logins)


def test_ssh_key_checks(tmp_path: Path) -> None:
    key = _ssh_keygen(tmp_path)
    data = key.read_bytes()
    assert creds.check_ssh_private_key(data) == data
    assert creds.check_ssh_private_key(data.rstrip(b"\n")) == data.rstrip(b"\n") + b"\n"
    for bad in (b"", b"ssh-ed25519 AAAA... me@host\n", data.replace(b"-----END", b"-----XND")):
        with pytest.raises(UsageError, match="not an SSH private key"):
            creds.check_ssh_private_key(bad)


def test_token_checks() -> None:
    assert creds.check_token(b"ghp_abc\n") == b"ghp_abc"
    with pytest.raises(UsageError, match="one line"):
        creds.check_token(b"a\nb")


def _ssh_keygen(directory: Path, name: str = "id_ed25519") -> Path:
    key = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "deploy@test", "-f", str(key)],
        check=True,
        capture_output=True,
    )
    return key


# --------------------------------------------------------------------------- CLI


def _value(store: Path, ref: str) -> bytes:
    vault = Vault.open(store, readonly=True)
    try:
        return vault.get_value(parse_ref(ref))
    finally:
        vault.close()


def _auth(config: bytes, key: str) -> bytes:
    return base64.b64decode(json.loads(config)["auths"][key]["auth"])


def test_registry_add_merges_and_ls_rm(cli: Cli, initialized_store: Path) -> None:
    store = initialized_store
    out = cli("registry", "add", "ghcr.io", "-u", "alice", "--token-stdin", input=b"ghp_tok\n")
    assert b"added the login for ghcr.io (user alice) in $S:@registry/config.json" in out.stderr
    cli("registry", "add", "docker.io", "-u", "bob", "--password-stdin", input=b"pw:with:colons")
    config = _value(store, creds.DEFAULT_REGISTRY_REF)
    assert _auth(config, "ghcr.io") == b"alice:ghp_tok"
    assert _auth(config, creds.DOCKER_HUB_KEY) == b"bob:pw:with:colons"

    out = cli("registry", "add", "https://ghcr.io/", "-u", "carol", "--password-stdin", input=b"n")
    assert b"replaced the login for ghcr.io" in out.stderr
    assert _auth(_value(store, creds.DEFAULT_REGISTRY_REF), "ghcr.io") == b"carol:n"

    listing = cli("registry", "ls", "--json").stdout
    assert json.loads(listing) == [
        {"registry": "ghcr.io", "username": "carol", "kind": "basic"},
        {"registry": creds.DOCKER_HUB_KEY, "username": "bob", "kind": "basic"},
    ]
    text = cli("registry", "ls").stdout.decode()
    assert "ghcr.io" in text and "carol" in text and "pw:with" not in text

    cli("registry", "rm", "docker.io")
    config = json.loads(_value(store, creds.DEFAULT_REGISTRY_REF))
    assert list(config["auths"]) == ["ghcr.io"]
    proc = cli("registry", "rm", "docker.io", check=False)
    assert proc.returncode == 3 and b"no login for" in proc.stderr


def test_registry_secret_option_and_refusals(cli: Cli, initialized_store: Path) -> None:
    cli("registry", "add", "quay.io", "-u", "u", "--password-stdin", "--secret", "@ci/pull",
        "--mode", "0440", "--gid", "1234", input=b"p")  # fmt: skip
    meta = {r["ref"]: r for r in json.loads(cli("secret", "ls", "--json").stdout)}
    assert meta["$S:@ci/pull"]["mode"] == "0440" and meta["$S:@ci/pull"]["gid"] == 1234
    assert b"quay.io" in cli("registry", "ls", "--secret", "@ci/pull").stdout

    cli("secret", "set", "plain", "--from-stdin", input=b"not json")
    proc = cli("registry", "add", "quay.io", "-u", "u", "--password-stdin", "--secret", "plain",
               input=b"p", check=False)  # fmt: skip
    assert proc.returncode == 4 and b"not a Docker config.json" in proc.stderr
    assert _value(initialized_store, "plain") == b"not json"

    for args, stdin in [
        (["--password-stdin", "--token-stdin"], b"p"),
        ([], b"p"),
        (["--password-stdin"], b"\n"),
    ]:
        proc = cli("registry", "add", "x.io", "-u", "u", *args, input=stdin, check=False)
        assert proc.returncode == 2, proc.stderr
    proc = cli("registry", "add", "x.io", "-u", "a:b", "--password-stdin", input=b"p", check=False)
    assert proc.returncode == 2 and b"':'" in proc.stderr
    proc = cli("registry", "ls", "--secret", "@nobody/here", check=False)
    assert proc.returncode == 3


def test_git_add(cli: Cli, initialized_store: Path, tmp_path: Path) -> None:
    cli("git", "add", "github", "--pat-stdin", input=b"ghp_secret_token\n")
    assert _value(initialized_store, "@git/github") == b"ghp_secret_token"
    key = _ssh_keygen(tmp_path)
    out = cli("git", "add", "deploy", "--ssh-key-file", str(key))
    assert b"SSH private key $S:@git/deploy" in out.stderr and b"mode 0400" in out.stderr
    assert _value(initialized_store, "@git/deploy") == key.read_bytes()
    meta = {r["ref"]: r for r in json.loads(cli("secret", "ls", "--json").stdout)}
    assert meta["$S:@git/deploy"]["mode"] == "0400"
    assert meta["$S:@git/github"]["mode"] == "0400"

    key.with_suffix(".pub").rename(tmp_path / "pub")
    proc = cli("git", "add", "x", "--ssh-key-file", str(tmp_path / "pub"), check=False)
    assert proc.returncode == 2 and b"not an SSH private key" in proc.stderr
    proc = cli(
        "git", "add", "x", "--pat-stdin", "--ssh-key-file", str(key), input=b"t", check=False
    )
    assert proc.returncode == 2
    proc = cli("git", "add", "bad name", "--pat-stdin", input=b"t", check=False)
    assert proc.returncode == 2
    for out in (proc.stdout, proc.stderr):
        assert b"ghp_secret_token" not in out
