"""The shutdown watchdog never aborts a FUSE connection whose number another mount now
has: a stuck daemon's device number is freed by its unmount and reused at once."""

from __future__ import annotations

from pathlib import Path

from secretfs.daemon import device_elsewhere, mount_device


def test_a_device_mounted_elsewhere_is_not_ours_to_abort(tmp_path: Path) -> None:
    root = mount_device(Path("/"))
    assert root is not None
    # The same number on another mount point: someone else's now.
    assert device_elsewhere(root, tmp_path / "gone-mount")
    # Still on our own mount point (or nowhere): ours.
    assert not device_elsewhere(root, Path("/"))
    assert not device_elsewhere((0, 999_999), tmp_path / "gone-mount")
    assert not device_elsewhere(None, tmp_path)
