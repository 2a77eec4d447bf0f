"""A real container: runc runs busybox as uid 1000 and 1001 with a scope directory of the
mount bind-mounted read-only at /run/secrets. The granted uid reads the exact bytes, the
other gets "Permission denied", and both show in `secretfs audit`.

Needs `runc` and `busybox-static` (scripts/setup.sh installs both, as CI does).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.mount.conftest import Mount, wait_for

BUSYBOX = Path("/bin/busybox")
VALUE = b"s3cr3t \x00\xff bytes\nwith a newline and no trailing one"


def _tools() -> str:
    runc = shutil.which("runc")
    if runc is None or not BUSYBOX.exists():
        pytest.fail("the container test needs runc and busybox-static: run scripts/setup.sh")
    return runc


def _bundle(directory: Path, runc: str, uid: int, secrets_dir: Path) -> Path:
    """An OCI bundle: a busybox rootfs and `runc spec`'s config with our user, command
    and a read-only bind of `secrets_dir` at /run/secrets."""
    rootfs = directory / "rootfs"
    for sub in ("bin", "proc", "dev", "sys", "tmp", "run/secrets"):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
    for applet in ("sh", "cat", "id"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    subprocess.run([runc, "spec"], cwd=directory, check=True, capture_output=True)
    config_path = directory / "config.json"
    config: dict[str, Any] = json.loads(config_path.read_text())
    config["process"]["terminal"] = False
    config["process"]["user"] = {"uid": uid, "gid": uid}
    config["process"]["args"] = ["cat", "/run/secrets/token"]
    config["root"] = {"path": "rootfs", "readonly": True}
    config["mounts"].append(
        {
            "destination": "/run/secrets",
            "type": "bind",
            "source": str(secrets_dir),
            "options": ["rbind", "ro"],
        }
    )
    config_path.write_text(json.dumps(config, indent=2))
    return directory


def _run(runc: str, state: Path, bundle: Path, name: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            [runc, "--root", str(state), "run", "--bundle", str(bundle), name],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
    finally:
        subprocess.run([runc, "--root", str(state), "delete", "--force", name], capture_output=True)


def test_runc_containers_read_only_what_they_are_granted(
    mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    runc = _tools()
    m = mount_factory("-o", "allow_other", secrets={"@api/token": VALUE, "@api/other": b"o"})
    m.cli("grant", "@api/token", "--uid", "1000")
    scope_dir = m.path / "@api"
    state = tmp_path / "runc-state"
    state.mkdir()
    granted = _bundle(tmp_path / "granted", runc, 1000, scope_dir)
    refused = _bundle(tmp_path / "refused", runc, 1001, scope_dir)

    ok = _run(runc, state, granted, f"secretfs-test-{tmp_path.name}-1000")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == VALUE

    denied = _run(runc, state, refused, f"secretfs-test-{tmp_path.name}-1001")
    assert denied.returncode != 0
    assert denied.stdout == b""
    assert b"Permission denied" in denied.stderr

    def container_opens() -> list[dict[str, Any]]:
        out = m.cli("audit", "--json", "--ref", "@api/token").stdout
        return [r for r in json.loads(out) if r["source"] == "mount" and r["process"] == "cat"]

    wait_for(lambda: len(container_opens()) >= 2, timeout=3)
    outcomes = {(r["uid"], r["outcome"]) for r in container_opens()}
    assert outcomes == {(1000, "allowed"), (1001, "denied")}
    assert all(r["ref"] == "$S:@api/token" and r["version"] == 1 for r in container_opens())
