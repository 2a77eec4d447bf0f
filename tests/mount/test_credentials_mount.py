"""Typed credentials through a real mount: the files work as their consumers read them."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Cli
from tests.mount.conftest import Mount, wait_for


def _auths(path: Path) -> dict[str, bytes]:
    with path.open(encoding="utf-8") as fh:
        doc = json.load(fh)  # exactly what docker, podman and the kubelet parse
    return {k: base64.b64decode(v["auth"]) for k, v in doc["auths"].items()}


def test_registry_config_json_in_the_mount(cli: Cli, mount_factory: Callable[..., Mount]) -> None:
    cli("init")
    cli("registry", "add", "ghcr.io", "-u", "alice", "--token-stdin", input=b"ghp_tok\n")
    cli("registry", "add", "docker.io", "-u", "bob", "--password-stdin", input=b"p@ss:w0rd")
    m = mount_factory()
    config = m.path / "@registry/config.json"
    assert _auths(config) == {
        "ghcr.io": b"alice:ghp_tok",
        "https://index.docker.io/v1/": b"bob:p@ss:w0rd",
    }
    assert stat.S_IMODE(config.stat().st_mode) == 0o400
    # Its fields are files too (keys with '/' such as Docker Hub's are left out).
    auth_file = m.path / "@registry/config.json.d/auths/ghcr.io/auth"
    assert base64.b64decode(auth_file.read_bytes()) == b"alice:ghp_tok"

    # A login added while mounted reaches new opens of the same file.
    cli("registry", "add", "quay.io", "-u", "carol", "--password-stdin", input=b"q")
    wait_for(lambda: "quay.io" in _auths(config))
    assert _auths(config)["quay.io"] == b"carol:q"
    assert _auths(config)["ghcr.io"] == b"alice:ghp_tok"


def test_git_credentials_in_the_mount(
    cli: Cli, mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "deploy@test", "-f", str(key)],
        check=True,
        capture_output=True,
    )
    cli("init")
    cli("git", "add", "deploy", "--ssh-key-file", str(key))
    cli("git", "add", "github", "--pat-stdin", input=b"ghp_exact_token\n")
    m = mount_factory()

    mounted_key = m.path / "@git/deploy"
    assert stat.S_IMODE(mounted_key.stat().st_mode) == 0o400
    # ssh-keygen refuses a key file others can read, and one it cannot parse.
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(mounted_key)], capture_output=True, check=False
    )
    assert derived.returncode == 0, derived.stderr
    public = key.with_suffix(".pub").read_bytes().split()[:2]
    assert derived.stdout.split()[:2] == public

    token = m.path / "@git/github"
    assert token.read_bytes() == b"ghp_exact_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o400
