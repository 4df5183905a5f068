"""The runtime build's scratch space and .deb cache.

A scratch root made by mmdebstrap may still hold the chroot's bind mounts of /dev, /proc and
/sys when a build is killed; removing it must never follow them into the host's.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bootedge.images.common import ImageBuildError


def swap_cache(fresh: Path, cache: Path) -> None:
    """The .debs of this build become the cache (superseded versions go)."""
    if not fresh.is_dir():
        return
    old = cache.with_name(cache.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if cache.exists():
        cache.rename(old)
    fresh.rename(cache)
    shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(cache: Path, prefix: str) -> None:
    """Scratch trees of builds that were killed (the lock is held: no build is running)."""
    for path in cache.glob(f"{prefix}*"):
        remove_tree(path)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point.startswith(prefix):
            mounts.append(point)
    return mounts


def remove_tree(path: Path) -> None:
    """rm -rf of a scratch root, but never through a mount (a chroot's /dev, /proc or /sys bind
    mount left by a killed mmdebstrap would take the host's with it)."""
    if not path.exists():
        return
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "--recursive", point], capture_output=True)
    left = _mounts_under(path)
    if left:
        raise ImageBuildError(f"{path} still has mounts ({', '.join(left)}): unmount them and remove it")
    shutil.rmtree(path)
