"""packaging/: the systemd unit, the mount(8) helper, the container recipe and the
Kubernetes manifests, checked with the real tools (systemd-analyze, shellcheck,
hadolint, kubernetes-validate) offline. Real mounts are in tests/mount/."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from dockerfile_parse import DockerfileParser

from secretfs.cli.install import (
    PACKAGED_COMMAND,
    render_mount_helper,
    render_systemd_unit,
)
from tests.conftest import Cli

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
UNIT = PACKAGING / "systemd" / "secretfs@.service"
HELPER = PACKAGING / "mount.fuse.secretfs"
CONTAINERFILE = PACKAGING / "container" / "Containerfile"
DAEMONSET = PACKAGING / "kubernetes" / "daemonset.yaml"
CONSUMER = PACKAGING / "kubernetes" / "consumer-pod.yaml"
BIN = Path(sys.executable).parent

# Each of these gives the service a mount namespace of its own: its FUSE mount
# would never be seen by the host.
NAMESPACE_DIRECTIVES = {
    "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts",
    "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths",
    "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc",
    "ProcSubset", "ProtectHostname", "ProtectClock", "PrivateUsers", "RootDirectory",
    "RootImage", "MountFlags", "MountAPIVFS",
}  # fmt: skip


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value, in order (keys may repeat in a unit file)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def systemd_escape_path(path: Path) -> str:
    return subprocess.run(
        ["systemd-escape", "--path", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


def expand_command(line: str, instance: str, env: dict[str, str]) -> tuple[list[str], bool]:
    """A unit's Exec*= line as argv, the way systemd builds it: specifiers %i %I %f %%,
    `$VAR` split into words, `${VAR}` one word; True if a leading `-` ignores failure."""
    unescaped = subprocess.run(
        ["systemd-escape", "--unescape", "--path", instance],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    specifiers = {"i": instance, "I": unescaped, "f": "/" + unescaped.lstrip("/"), "%": "%"}
    line = re.sub(r"%(.)", lambda m: specifiers[m.group(1)], line)
    ignore_failure = line.startswith("-")
    argv: list[str] = []
    for word in shlex.split(line.lstrip("-@+!:")):
        if re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*", word):
            argv += env.get(word[1:], "").split()
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    return argv, ignore_failure


# --- systemd -------------------------------------------------------------------------


def test_packaged_files_are_what_the_installer_writes() -> None:
    """packaging/ is rendered from secretfs/cli/install.py; regenerate with
    `secretfs install systemd --dir packaging/systemd --command /usr/local/bin/secretfs`
    and `secretfs install mount-helper --dir packaging --command /usr/local/bin/secretfs`."""
    assert UNIT.read_text() == render_systemd_unit([PACKAGED_COMMAND])
    assert HELPER.read_text() == render_mount_helper([PACKAGED_COMMAND])
    assert os.stat(HELPER).st_mode & 0o777 == 0o755


def test_installed_unit_passes_systemd_analyze_verify(cli: Cli, tmp_path: Path) -> None:
    cli("install", "systemd", "--dir", str(tmp_path))
    unit = tmp_path / "secretfs@.service"
    assert f"ExecStart={sys.executable} -m secretfs mount %f --foreground" in unit.read_text()
    instance = systemd_escape_path(Path("/run/secretfs/mnt"))
    for name in ("secretfs@.service", f"secretfs@{instance}.service"):
        proc = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(tmp_path / name)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        # verify exits 0 on unknown keys and the like: any output at all is a finding.
        assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_systemd_analyze_verify_reports_a_mistake(cli: Cli, tmp_path: Path) -> None:
    cli("install", "systemd", "--dir", str(tmp_path))
    text = (tmp_path / "secretfs@.service").read_text()
    bad = tmp_path / "bad@.service"
    bad.write_text(text.replace("UMask=0077", "UMask=0077\nProtectSystm=strict"))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(bad)], capture_output=True, text=True
    )
    assert "ProtectSystm" in proc.stderr


def test_unit_is_type_notify_hardened_and_cleans_up() -> None:
    service = parse_unit(UNIT.read_text())["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    (start,) = service["ExecStart"]
    assert start == f"{PACKAGED_COMMAND} mount %f --foreground $SECRETFS_MOUNT_ARGS"
    assert service["ExecStopPost"] == ["-/bin/fusermount3 -u -z %f"]
    assert service["LimitCORE"] == ["0"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["DeviceAllow"] == ["/dev/fuse rw"]
    assert "@mount" in service["SystemCallFilter"][0].split()
    assert set(service["CapabilityBoundingSet"][0].split()) == {"CAP_SYS_ADMIN", "CAP_IPC_LOCK"}
    assert not NAMESPACE_DIRECTIVES & set(service)


def test_install_refuses_what_a_unit_cannot_hold(cli: Cli, tmp_path: Path) -> None:
    proc = cli(
        "install",
        "systemd",
        "--dir",
        str(tmp_path),
        "--command",
        "'/opt/my dir/secretfs'",
        check=False,
    )
    assert proc.returncode == 2 and b"cannot go into a unit file" in proc.stderr
    proc = cli("install", "systemd", "--dir", str(tmp_path), "--command", "secretfs", check=False)
    assert proc.returncode == 2 and b"absolute path" in proc.stderr
    assert not list(tmp_path.iterdir())
    proc = cli("install", "mount-helper", "--dir", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2 and b"is not a directory" in proc.stderr


# --- the mount(8) helper --------------------------------------------------------------


def test_mount_helper_passes_shellcheck() -> None:
    proc = subprocess.run(
        [str(BIN / "shellcheck"), "--shell=sh", "--severity=style", str(HELPER)],
        capture_output=True,
        text=True,
    )
    assert (proc.returncode, proc.stdout) == (0, "")


def _helper_with(tmp_path: Path, command: list[str]) -> Path:
    helper = tmp_path / "mount.fuse.secretfs"
    helper.write_text(render_mount_helper(command))
    helper.chmod(0o755)
    return helper


def test_mount_helper_maps_mount8_arguments(tmp_path: Path) -> None:
    """`echo` stands in for secretfs here to show the argv it would get; the real mount
    through the helper is in tests/mount/test_packaging_mount.py."""
    helper = _helper_with(tmp_path, ["/bin/echo"])

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(helper), *args], capture_output=True, text=True, cwd=tmp_path)

    proc = run("rel/store.db", "/mnt/x", "-s", "-nv", "-o", "rw,allow_other", "-t", "fuse.secretfs")
    assert proc.stdout == f"mount /mnt/x --store {tmp_path}/rel/store.db -o rw,allow_other\n"
    assert run("secretfs", "/mnt/x", "-v", "-ostore=/s.db").stdout == (
        "mount /mnt/x -o store=/s.db\n"
    )
    assert run("/s.db", "/mnt/x", "-o", "ro").stdout == ""  # quiet unless -v, as mount is
    assert run("/s.db", "/mnt/x", "-f", "-v").stdout == ""  # -f: fake, do nothing
    for args, message in [
        (("/s.db",), "usage:"),
        (("/s.db", "/mnt/x", "-N", "/proc/1/ns/mnt"), "-N"),
        (("/s.db", "/mnt/x", "-x"), "unknown flag -x"),
        (("/s.db", "/mnt/x", "-o"), "-o needs a value"),
        (("/s.db", "/mnt/x", "extra"), "unexpected argument extra"),
    ]:
        proc = run(*args)
        assert proc.returncode != 0 and message in proc.stderr, args


def test_mount_rejects_bad_mount8_options(cli_process: Cli, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for options, message in [
        (["-o", "uid=abc"], b"no user named 'abc' on this host"),
        (["-o", "store="], b"store= needs a value"),
        (["-o", "mode=0400,mode=0440"], b"mode= given twice"),
        (["--store", str(tmp_path / "a.db"), "-o", "store=/b.db"], b"--store and -o store="),
        (["-o", "nosuchoption"], b"unknown mount option 'nosuchoption'"),
    ]:
        proc = cli_process("mount", str(mnt), *options, check=False)
        assert proc.returncode == 2, (options, proc.stderr)
        assert message in proc.stderr, (options, proc.stderr)


# --- container ------------------------------------------------------------------------


def test_containerfile_passes_hadolint() -> None:
    proc = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(CONTAINERFILE)], capture_output=True, text=True
    )
    assert (proc.returncode, proc.stdout) == (0, "")


def test_hadolint_reports_a_mistake(tmp_path: Path) -> None:
    bad = tmp_path / "Containerfile"
    bad.write_text(CONTAINERFILE.read_text().replace("FROM debian:12-slim\n", "FROM debian\n"))
    proc = subprocess.run([str(BIN / "hadolint"), "--no-color", str(bad)], capture_output=True)
    assert proc.returncode != 0 and b"DL3006" in proc.stdout  # untagged base image


def test_containerfile_builds_the_daemon_image() -> None:
    with open(CONTAINERFILE, "rb") as fh:
        structure = DockerfileParser(fileobj=fh).structure
    froms = [i["value"] for i in structure if i["instruction"] == "FROM"]
    assert froms == ["debian:12-slim AS build", "debian:12-slim"]
    final = structure[max(i for i, s in enumerate(structure) if s["instruction"] == "FROM") :]
    runs = " ".join(i["value"] for i in final if i["instruction"] == "RUN")
    assert re.search(r"apt-get install .*\bfuse3\b", runs)
    for copy in (i for i in structure if i["instruction"] == "COPY"):
        if "--from=" not in copy["value"]:
            for source in copy["value"].split()[:-1]:  # the build context is the repo root
                assert (ROOT / source).exists(), source
    entrypoint = [i["value"] for i in final if i["instruction"] == "ENTRYPOINT"]
    assert entrypoint == ['["secretfs", "mount", "--foreground"]']


# --- Kubernetes -----------------------------------------------------------------------


def test_manifests_validate_against_the_kubernetes_schema() -> None:
    tool = BIN / "kubernetes-validate"
    for version in ("1.28.0", "1.37.0"):  # oldest we claim, newest the schemas know
        proc = subprocess.run(
            [str(tool), "--strict", "--kubernetes-version", version, str(DAEMONSET), str(CONSUMER)],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.count("passed") == 3, proc.stdout


def test_kubernetes_validate_reports_a_mistake(tmp_path: Path) -> None:
    bad = tmp_path / "pod.yaml"
    bad.write_text(CONSUMER.read_text().replace("readOnly: true", "readonly: true"))
    proc = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "readonly" in proc.stdout + proc.stderr


def _docs(path: Path) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(path.read_text())}


def test_daemonset_propagates_the_parent_directory() -> None:
    pod = _docs(DAEMONSET)["DaemonSet"]["spec"]["template"]["spec"]
    (daemon,) = pod["containers"]
    assert daemon["securityContext"]["privileged"] is True  # Bidirectional needs it
    volumes = {v["name"]: v for v in pod["volumes"]}
    (shared,) = [m for m in daemon["volumeMounts"] if m.get("mountPropagation")]
    assert shared["mountPropagation"] == "Bidirectional"
    host_dir = volumes[shared["name"]]["hostPath"]["path"]
    mountpoint = Path(daemon["args"][0])
    # The FUSE mount is made *below* the propagated directory, never on it.
    assert mountpoint.parent == Path(shared["mountPath"])
    (init,) = pod["initContainers"]
    assert init["command"] == ["mkdir", "-p", str(mountpoint)]

    consumer = _docs(CONSUMER)["Pod"]["spec"]
    (app,) = consumer["containers"]
    (mount,) = app["volumeMounts"]
    assert mount["mountPropagation"] == "HostToContainer"
    assert mount["readOnly"] is True
    (volume,) = [v for v in consumer["volumes"] if v["name"] == mount["name"]]
    assert volume["hostPath"]["path"] == host_dir  # the parent, not the FUSE mount
    env = {e["name"]: e["value"] for e in app["env"]}
    assert Path(env["DB_PASSWORD_FILE"]).is_relative_to(mountpoint)
