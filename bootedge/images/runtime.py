"""Build the runtime image: the Debian the machines run, from RAM, as Kubernetes nodes.

The boot edge serves three files from `images/runtime/`, and iPXE boots them with
`activities.domain.boot.runtime_image_args()` plus the machine's own (BOOTIF, the NoCloud seed, ...):

    vmlinuz        Debian's kernel (linux-image-amd64), unmodified
    initrd.img     initramfs-tools with Debian's live-boot: it takes a DHCP lease on the boot NIC
                   (the one BOOTIF names), downloads root.squashfs with wget into RAM, mounts it
                   under a tmpfs overlay and switches to it
    root.squashfs  the root file system (zstd), everything but /boot

One machine, one DHCP lease: iPXE, the initramfs (klibc's ipconfig) and the running system
(dhclient, run by ifupdown) all ask the site's DHCP server for the same lease, so the node keeps
the address the control plane recorded when it PXE booted (where Ansible and DNS go), boot after
boot. iPXE sends client identifier 01 + MAC; the image's dhclient.conf sends the same (hooks/
customize), instead of `dhclient -i`'s identifier from a DUID a RAM-resident system makes anew
on each boot; ipconfig sends none, and servers match it to the lease by MAC.

Nothing of the system is on the machine's disks: a reboot is a fresh system, and the data disk
is the machine's to use (cloud-init mounts it, containerd keeps its state there). cloud-init
(NoCloud datasource only) configures each boot from the seed the edge serves; see
`infra/images/runtime/` for the package list, the files copied into the image and the hooks.

The root file system is made by `mmdebstrap` (Debian bookworm, the "apt" variant plus the
listed packages, no recommends, no docs), run as root; the hooks run inside its phases:
`essential` copies `includes/` before the packages are installed (their maintainer scripts
build the initramfs with that configuration), `customize` strips the machine identity and sets
the services. The .deb files are kept in the cache directory, so a rebuild downloads only what
changed. The build needs root, the Debian packages mmdebstrap and squashfs-tools, the Debian
mirror, about 2 GB of scratch space in the cache directory and a few minutes.

An image is identified by the hash of its inputs: the recipe files, this module and the
candidate version of every listed package as the build host's apt sees it (so a security update
of any of them makes a new image). `image.json` in the output directory records it with the
installed versions and the files' sizes and sha256; a build whose hash is already there, with
intact files, does nothing. The image is not byte-for-byte reproducible.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from bootedge.images.common import (
    ARCH,
    ImageBuildError,
    Progress,
    StalePackageLists,
    apt_env,
    apt_show,
    check_arch,
    existing_image,
    mib,
    missing_tools,
    print_sizes,
    run,
    run_build,
    silent,
    write_atomic,
    write_record,
)
from bootedge.images.scratch import remove_leftovers, remove_tree, swap_cache

KIND = "runtime"
REPO = Path(__file__).resolve().parents[2]
RECIPE_DIR = REPO / "infra" / "images" / KIND
FILES = ("vmlinuz", "initrd.img", "root.squashfs")
SUITE = "bookworm"
# The image's apt sources (they stay in it, for what Ansible installs later).
SOURCES = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
# zstd at 15. Measured on a 2-core build host with an early 840 MiB root: zstd 15 packed it to
# 204 MB in 54 s, zstd 19 to 201 MB in 147 s, xz to 182 MB in 93 s (xz -Xbcj x86: 179 MB, 181 s).
# zstd unpacks several times faster than xz, and every file the node reads is unpacked from RAM;
# the current root (629 MiB) packs to 165 MiB in about 34 s.
SQUASHFS_COMPRESSION = ("-comp", "zstd", "-Xcompression-level", "15")
# The installed versions image.json records (besides the kernel package itself).
KEY_PACKAGES = (
    "linux-image-amd64", "systemd", "cloud-init", "containerd", "runc", "openssh-server", "python3", "live-boot",
)
HOST_PACKAGES = "mmdebstrap squashfs-tools"
SCRATCH_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class RuntimeImageInfo:
    output_dir: Path
    hash: str
    kernel_release: str              # uname -r: 6.1.0-56-amd64
    kernel_package: str              # linux-image-6.1.0-56-amd64
    versions: dict[str, str]         # installed version of the KEY_PACKAGES and the kernel package
    vmlinuz_bytes: int
    initrd_bytes: int
    squashfs_bytes: int
    rootfs_bytes: int                # the root file system unpacked (regular files, without /boot)
    packages: int                    # installed packages
    built: bool                      # False: the output already held an image with this hash
    seconds: float = 0.0
    candidates: dict[str, str] = field(default_factory=dict)   # listed package -> version hashed

    @property
    def vmlinuz(self) -> Path:
        return self.output_dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.output_dir / "initrd.img"

    @property
    def squashfs(self) -> Path:
        return self.output_dir / "root.squashfs"


# ---- the build ---------------------------------------------------------------------------


def build_runtime(
    output_dir: Path,
    progress: Progress | None = None,
    cache_dir: Path | None = None,
    force: bool = False,
) -> RuntimeImageInfo:
    """Build the runtime image into output_dir (vmlinuz, initrd.img, root.squashfs, image.json).

    Does nothing when output_dir already holds the image of the same inputs (unless force).
    The .debs are kept in cache_dir/runtime-debs (default $TEMPERED_HOME/cache/images), the
    scratch root file system is made and removed there. Needs root. When the package lists are
    missing or stale it runs `apt-get update` once.
    """
    say = progress or silent
    output_dir = Path(output_dir)
    _refuse_other_kind(output_dir)
    return run_build(output_dir, cache_dir, "runtime.lock", lambda out, cache: _build(out, cache, say, force), say)


def _build(output_dir: Path, cache: Path, say: Progress, force: bool) -> RuntimeImageInfo:
    _check_host(cache)
    packages = read_packages()
    say(f"resolving the versions of {len(packages)} packages")
    candidates = _resolve(packages)
    digest = input_hash(candidates)
    existing = existing_image(RuntimeImageInfo, output_dir, digest, FILES)
    if existing is not None and not force:
        say(f"runtime image {digest[:12]} is up to date in {output_dir} (kernel {existing.kernel_release})")
        return existing

    remove_leftovers(cache, "runtime-work-")
    work = Path(tempfile.mkdtemp(prefix="runtime-work-", dir=cache))
    try:
        root = work / "root"
        fresh_debs = work / "debs"
        _bootstrap(root, packages, cache / "runtime-debs", fresh_debs, say)
        info = _publish(root, output_dir, digest, candidates, say)
        swap_cache(fresh_debs, cache / "runtime-debs")
    finally:
        remove_tree(work)
    say(f"runtime image {digest[:12]} written to {output_dir}")
    return info


def read_packages() -> list[str]:
    """The packages of `packages` (one a line, '#' starts a comment)."""
    lines = (line.partition("#")[0].strip() for line in (RECIPE_DIR / "packages").read_text().splitlines())
    return [line for line in lines if line]


def read_dpkg_options() -> list[str]:
    """The options of `dpkg.cfg` (path-exclude=..., in order)."""
    lines = (line.strip() for line in (RECIPE_DIR / "dpkg.cfg").read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def recipe_files() -> list[Path]:
    """Every file that shapes the image besides the packages: the recipe directory and this module."""
    return sorted(p for p in RECIPE_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts) + [
        Path(__file__).resolve()
    ]


def input_hash(candidates: dict[str, str]) -> str:
    """The identity of an image: the recipe (file names, modes and contents) and the package versions."""
    recipe = {
        str(path.relative_to(REPO)): [hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode & 0o111 != 0]
        for path in recipe_files()
    }
    inputs = {"kind": KIND, "suite": SUITE, "sources": list(SOURCES), "packages": candidates, "recipe": recipe}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _refuse_other_kind(output_dir: Path) -> None:
    """Never overwrite another kind of image (a mistaken --output pointing at images/discovery)."""
    try:
        kind = json.loads((output_dir / "image.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return
    if kind not in (None, KIND):
        raise ImageBuildError(f"{output_dir} holds the {kind} image; the runtime image needs a directory of its own")


def _check_host(cache: Path) -> None:
    if os.geteuid() != 0:
        raise ImageBuildError("building the runtime image needs root (mmdebstrap --mode=root installs into a chroot)")
    missing = missing_tools(("mmdebstrap", "mksquashfs", "apt-get", "apt-cache", "dpkg-query"))
    if missing:
        raise ImageBuildError(
            f"{', '.join(missing)} not found: install the Debian packages {HOST_PACKAGES} "
            f"(apt-get install --no-install-recommends {HOST_PACKAGES})"
        )
    check_arch(KIND)
    free = shutil.disk_usage(cache).free
    if free < SCRATCH_BYTES:
        raise ImageBuildError(f"{cache} has {free / 1024**3:.1f} GiB free; the build needs about 2 GiB")


def _resolve(packages: list[str]) -> dict[str, str]:
    """Package -> the version apt would install now (the host's apt sources are Debian's)."""
    found = apt_show(*packages)
    unknown = [p for p in packages if p not in found]
    if unknown:
        raise StalePackageLists(f"apt-cache does not know {', '.join(unknown)}")
    return {p: found[p]["Version"] for p in packages}


# ---- mmdebstrap --------------------------------------------------------------------------


def mmdebstrap_command(root: Path, packages: list[str], debs: Path, fresh_debs: Path) -> list[str]:
    """The mmdebstrap invocation: root file system into `root`, .debs linked in from `debs` and
    out to `fresh_debs`, the hooks of the recipe in their phases."""
    hooks, q = RECIPE_DIR / "hooks", shlex.quote
    return [
        "mmdebstrap", "--mode=root", "--variant=apt", "--format=directory", f"--architectures={ARCH}",
        "--include=" + ",".join(packages),
        *(f"--dpkgopt={option}" for option in read_dpkg_options()),
        '--aptopt=Acquire::Retries "3"',
        # Keep the downloaded .debs (also the Essential ones) in the chroot until the cache takes them.
        "--skip=download/empty", "--skip=essential/unlink",
        f'--setup-hook=sh {q(str(hooks / "debs"))} in "$1" {q(str(debs))}',
        f'--essential-hook=sh {q(str(hooks / "essential"))} "$1" {q(str(RECIPE_DIR / "includes"))}',
        f'--customize-hook=sh {q(str(hooks / "debs"))} out "$1" {q(str(fresh_debs))}',
        f'--customize-hook=sh {q(str(hooks / "customize"))} "$1"',
        SUITE, str(root), *SOURCES,
    ]


def _bootstrap(root: Path, packages: list[str], debs: Path, fresh_debs: Path, say: Progress) -> None:
    debs.mkdir(exist_ok=True)
    cached = len(list(debs.glob("*.deb")))
    say(f"bootstrapping Debian {SUITE} with {len(packages)} packages and their dependencies "
        f"(mmdebstrap; {cached} .debs cached)")
    _stream(mmdebstrap_command(root, packages, debs, fresh_debs), say, what="mmdebstrap")


# Lines of mmdebstrap's output worth showing as progress: its own steps, the hooks', the initramfs
# (not the hook command lines and its architecture chatter).
_SHOWN = re.compile(r"^(I: (?!running --|chroot architecture|finding correct)|tempered: |update-initramfs: Generating)")


def _stream(command: list[str], say: Progress, what: str) -> None:
    """Run command, passing its step lines to say; on failure, raise with the last lines."""
    tail: deque[str] = deque(maxlen=25)
    try:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", env=apt_env(),
        )
    except FileNotFoundError:
        raise ImageBuildError(f"{command[0]} is not installed (install {HOST_PACKAGES})") from None
    with proc:
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            if _SHOWN.match(line):
                say(re.sub(r"^(I|tempered): ", "", line).rstrip("."))
    if proc.returncode != 0:
        errors = [line for line in tail if line.startswith(("E: ", "W: "))] or list(tail)[-8:]
        raise ImageBuildError(f"{what} failed ({proc.returncode}): " + " | ".join(errors[-8:]))


# ---- the output --------------------------------------------------------------------------


def _publish(root: Path, output_dir: Path, digest: str, candidates: dict[str, str], say: Progress) -> RuntimeImageInfo:
    """Squash the root, then put the three files and image.json in place, each atomically."""
    release = _kernel_release(root)
    rootfs_bytes, count = _tree_size(root, skip="boot")
    say(f"compressing root.squashfs: {rootfs_bytes / 1024**2:.0f} MiB in {count} files (zstd)")
    squashfs_tmp = output_dir / f".root.squashfs.{os.getpid()}.tmp"
    try:
        run(
            ["mksquashfs", str(root), str(squashfs_tmp), *SQUASHFS_COMPRESSION, "-noappend", "-no-progress",
             "-quiet", "-wildcards", "-e", "boot/*"],
            what="mksquashfs",
        )
        squashfs_tmp.chmod(0o644)
        kernel = (root / "boot" / f"vmlinuz-{release}").read_bytes()
        initrd = (root / "boot" / f"initrd.img-{release}").read_bytes()
        write_atomic(output_dir / "vmlinuz", kernel)
        write_atomic(output_dir / "initrd.img", initrd)
        os.replace(squashfs_tmp, output_dir / "root.squashfs")
    finally:
        squashfs_tmp.unlink(missing_ok=True)

    installed = _installed(root)
    kernel_package = f"linux-image-{release}"
    info = RuntimeImageInfo(
        output_dir=output_dir, hash=digest, kernel_release=release, kernel_package=kernel_package,
        versions={p: installed[p] for p in (*KEY_PACKAGES, kernel_package) if p in installed},
        vmlinuz_bytes=len(kernel), initrd_bytes=len(initrd),
        squashfs_bytes=(output_dir / "root.squashfs").stat().st_size, rootfs_bytes=rootfs_bytes,
        packages=len(installed), built=True, candidates=candidates,
    )
    say(f"vmlinuz {mib(info.vmlinuz_bytes)}, initrd.img {mib(info.initrd_bytes)}, root.squashfs "
        f"{mib(info.squashfs_bytes)} ({mib(rootfs_bytes)} unpacked, {len(installed)} packages)")
    _note_drift(candidates, installed, say)
    write_record(info, FILES, kind=KIND, cloud_init=info.versions.get("cloud-init"),
                 compression=" ".join(SQUASHFS_COMPRESSION))
    return info


def _note_drift(candidates: dict[str, str], installed: dict[str, str], say: Progress) -> None:
    """The image's versions come from the mirror, the hash from the host's apt lists: when those
    are older, say so (the hash then lags behind, and a later update is not noticed until
    `apt-get update` runs on the build host)."""
    drift = [f"{p} {v} (lists: {candidates[p]})" for p, v in installed.items()
             if p in candidates and v != candidates[p]]
    if drift:
        say(f"the build host's apt lists are older than the mirror; installed {', '.join(drift)}: run apt-get update")


def _kernel_release(root: Path) -> str:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1 or not (root / "boot" / kernels[0].name.replace("vmlinuz-", "initrd.img-")).is_file():
        found = sorted(p.name for p in (root / "boot").iterdir())
        raise ImageBuildError(f"expected one kernel and its initrd in /boot, found {found}")
    return kernels[0].name.removeprefix("vmlinuz-")


def _installed(root: Path) -> dict[str, str]:
    """Package -> version of every package installed in root."""
    result = run(
        ["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W",
         "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n"],
        what="dpkg-query",
    )
    rows = (line.split("\t") for line in result.stdout.splitlines())
    return {row[0]: row[1] for row in rows if len(row) == 3 and row[2].startswith("ii")}


def _tree_size(root: Path, skip: str) -> tuple[int, int]:
    """(bytes, count) of the regular files under root, but not under root/skip."""
    total = count = 0
    for directory, dirnames, filenames in os.walk(root):
        if Path(directory) == root and skip in dirnames:
            dirnames.remove(skip)
        for name in filenames:
            st = os.lstat(os.path.join(directory, name))
            if not os.path.islink(os.path.join(directory, name)):
                total += st.st_size
                count += 1
    return total, count


# ---- command line ------------------------------------------------------------------------


def report(info: RuntimeImageInfo) -> None:
    """The size table and the key versions, as `tempered image build runtime` prints them."""
    versions = ", ".join(f"{name} {version}" for name, version in info.versions.items())
    print_sizes(
        KIND, info,
        [("vmlinuz", info.vmlinuz_bytes, None), ("initrd.img", info.initrd_bytes, None),
         ("root.squashfs", info.squashfs_bytes, info.rootfs_bytes)],
        f"kernel {info.kernel_release}; {info.packages} packages: {versions}",
    )
