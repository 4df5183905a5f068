"""Build the boot images the edges serve; for now the discovery image.

The discovery image is Debian's current amd64 kernel, unmodified (`vmlinuz`), and a small
initramfs (`initrd.gz`): static busybox, the NIC and disk drivers below with the modules they
depend on, and the two scripts of `infra/images/discovery`: `/init` (drivers, DHCP) and the
facts agent (`/bin/tempered-agent`). The agent posts the machine's facts, schema 1:

    {"schema": 1, "boot": int, "architecture": "x86_64", "firmware": "uefi" | "bios",
     "processors": {"count": int, "model": str}, "processor0": str,
     "memory": {"total_bytes": int},
     "disks": [{"name", "size_bytes", "model", "serial", "rotational": bool}],
     "nics": [{"name", "mac", "driver", "speed_mbps", "link": bool, "ipv4"}],
     "pci": [{"slot", "vendor", "device", "class", "driver"}],
     "dmi": {"uuid", "serial", "vendor", "product", "board_serial"}}

(unknown values are null), then polls for its instruction (wait, reboot, poweroff).

Nothing is installed on the build host. The kernel and busybox-static packages are fetched with
`apt-get download` into a cache and unpacked with `dpkg-deb -x`; the module closure is read
from the modules' own `.modinfo`; the initramfs module index is written by the downloaded
busybox's `depmod` (the same busybox whose `modprobe` reads it at boot); the cpio archive
(newc) is written here, deterministically (sorted, owned by root, mtime 0), so the same inputs
give a byte-identical image. The build needs apt-get, apt-cache and dpkg-deb (any Debian or
Ubuntu host on amd64) and about 500 MB of scratch space in the cache directory for a minute.

An image is identified by the hash of its inputs (kernel and busybox package versions, the
recipe files, the module list); `image.json` in the output directory records it, and a build
whose hash is already there does nothing.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from activities.storage import settings as settings_mod

if TYPE_CHECKING:
    from bootedge.images.runtime import RuntimeImageInfo

RECIPE_DIR = Path(__file__).resolve().parents[2] / "infra" / "images" / "discovery"
KERNEL_METAPACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
ARCH = "amd64"

# Drivers of the NICs a discovery boot can use; a module this kernel lacks is skipped. Virtual
# (virtio, e1000/e1000e as QEMU emulates them, Realtek RTL8139 whose C+ revision QEMU emulates
# and 8139cp drives, VMware vmxnet3), Intel (1G igb/igc, 10G ixgbe, 10-40G i40e, 100G ice),
# Realtek r8169, Broadcom (tg3, bnx2, bnx2x, NetXtreme-C/E bnxt_en) and Mellanox/NVIDIA
# ConnectX (mlx4_en; mlx5_core for ConnectX-4 and later). Some need firmware that Debian ships
# in non-free-firmware (bnx2 and bnx2x always, r8169 and tg3 for some chips; ice without its
# DDP package runs in safe mode), which the image does not carry: their NICs still register,
# so their MACs are reported, but they may not carry the discovery traffic.
NIC_MODULES = (
    "virtio_net", "e1000", "e1000e", "8139too", "8139cp", "vmxnet3",
    "igb", "igc", "ixgbe", "i40e", "ice", "r8169", "tg3", "bnx2", "bnx2x", "bnxt_en", "mlx4_en", "mlx5_core",
)
# Disk controllers: virtual, SATA, NVMe, and the common server RAID/HBA families (Dell PERC,
# Broadcom/LSI SAS, HPE Smart Array), so servers report their disks for the preflight check.
DISK_MODULES = (
    "virtio_blk", "virtio_scsi", "sd_mod", "ahci", "ata_piix", "nvme",
    "megaraid_sas", "mpt3sas", "smartpqi",
)
# Bus drivers the others need but do not depend on.
BUS_MODULES = ("virtio_pci",)
MODULES = NIC_MODULES + DISK_MODULES + BUS_MODULES

Progress = Callable[[str], None]
T = TypeVar("T")


class ImageBuildError(RuntimeError):
    """The image could not be built; the message says why and what to do."""


@dataclass(frozen=True)
class ImageInfo:
    kind: str
    output_dir: Path
    hash: str
    kernel_package: str          # linux-image-6.1.0-56-amd64
    kernel_version: str          # its Debian version, 6.1.192-2
    kernel_release: str          # uname -r: 6.1.0-56-amd64
    busybox_version: str
    modules: tuple[str, ...]     # every module in the initramfs (the closure)
    missing: tuple[str, ...]     # wanted modules this kernel has neither as module nor built in
    vmlinuz_bytes: int
    initrd_bytes: int
    initrd_unpacked_bytes: int
    built: bool                  # False: the output already held an image with this hash
    seconds: float = 0.0

    @property
    def vmlinuz(self) -> Path:
        return self.output_dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.output_dir / "initrd.gz"


def default_output_dir(kind: str = "discovery") -> Path:
    """Where the boot edge on this host serves images from ($TEMPERED_HOME/edge/images/KIND)."""
    return settings_mod.load().home / "edge" / "images" / kind


def default_cache_dir() -> Path:
    return settings_mod.load().home / "cache" / "images"


# ---- the build ---------------------------------------------------------------------------


def build_discovery(
    output_dir: Path,
    progress: Progress | None = None,
    cache_dir: Path | None = None,
    force: bool = False,
) -> ImageInfo:
    """Build the discovery image into output_dir (vmlinuz, initrd.gz, image.json).

    Does nothing when output_dir already holds the image of the same inputs (unless force).
    Downloads are kept in cache_dir (default $TEMPERED_HOME/cache/images). When the package
    lists are missing or stale it runs `apt-get update` once, if running as root.
    """
    say = progress or (lambda message: None)
    output_dir = Path(output_dir)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    info = locked_build(cache / "build.lock", lambda: _build(output_dir, cache, say, force), say)
    return _replace_seconds(info, time.monotonic() - started)


class _StalePackageLists(Exception):
    pass


def locked_build(lock: Path, build: Callable[[], T], say: Progress) -> T:
    """Run `build` alone (one build per cache at a time); when it finds apt's package lists
    stale, run `apt-get update` once (as root) and build again."""
    with _locked(lock):
        try:
            return build()
        except _StalePackageLists as e:
            if os.geteuid() != 0:
                raise ImageBuildError(f"{e}; run 'apt-get update' (as root) and build again") from None
            say(f"{e}: running apt-get update")
            _run(["apt-get", "update", "-qq"], what="apt-get update")
        try:
            return build()
        except _StalePackageLists as e:
            raise ImageBuildError(f"{e}; run 'apt-get update' and build again") from None


def _build(output_dir: Path, cache: Path, say: Progress, force: bool) -> ImageInfo:
    _check_host()
    kernel_package, kernel_version, busybox_version = _resolve()
    digest = input_hash(kernel_package, kernel_version, busybox_version)
    existing = _existing(output_dir, digest)
    if existing is not None and not force:
        say(f"discovery image {digest[:12]} is up to date in {output_dir} ({kernel_package} {kernel_version})")
        return existing

    kernel_deb = _download(kernel_package, kernel_version, cache, say)
    busybox_deb = _download(BUSYBOX_PACKAGE, busybox_version, cache, say)
    with tempfile.TemporaryDirectory(prefix="work-", dir=cache) as work_name:
        work = Path(work_name)
        say(f"unpacking {kernel_deb.name}")
        kroot = work / "kernel"
        _run(["dpkg-deb", "-x", str(kernel_deb), str(kroot)], what="dpkg-deb -x")
        say(f"unpacking {busybox_deb.name}")
        broot = work / "busybox"
        _run(["dpkg-deb", "-x", str(busybox_deb), str(broot)], what="dpkg-deb -x")

        release, vmlinuz, moddir = _kernel_tree(kroot)
        busybox = broot / "bin" / "busybox"
        if not busybox.is_file():
            raise ImageBuildError(f"{busybox_deb.name} has no bin/busybox")
        modules, missing, builtin = module_closure(moddir, MODULES)
        say(
            f"kernel {release}: {len(modules)} modules for {', '.join(MODULES)}"
            + (f"; built in: {', '.join(builtin)}" if builtin else "")
            + (f"; not in this kernel: {', '.join(missing)}" if missing else "")
        )

        root = work / "initramfs"
        _populate(root, busybox, moddir, release, modules)
        say("building the initramfs")
        archive = cpio_newc(root)
        initrd = gzip.compress(archive, compresslevel=9, mtime=0)

        kernel_bytes = vmlinuz.read_bytes()
        _write_atomic(output_dir / "vmlinuz", kernel_bytes)
        _write_atomic(output_dir / "initrd.gz", initrd)

    info = ImageInfo(
        kind="discovery",
        output_dir=output_dir,
        hash=digest,
        kernel_package=kernel_package,
        kernel_version=kernel_version,
        kernel_release=release,
        busybox_version=busybox_version,
        modules=tuple(sorted(name for name, _ in modules)),
        missing=tuple(missing),
        vmlinuz_bytes=len(kernel_bytes),
        initrd_bytes=len(initrd),
        initrd_unpacked_bytes=len(archive),
        built=True,
    )
    record = {
        **{k: v for k, v in asdict(info).items() if k not in ("output_dir", "built", "seconds")},
        "files": {
            "vmlinuz": {"bytes": len(kernel_bytes), "sha256": hashlib.sha256(kernel_bytes).hexdigest()},
            "initrd.gz": {"bytes": len(initrd), "sha256": hashlib.sha256(initrd).hexdigest()},
        },
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_atomic(output_dir / "image.json", (json.dumps(record, indent=2) + "\n").encode())
    _prune_cache(cache, keep={kernel_deb.name, busybox_deb.name})
    say(f"discovery image {digest[:12]} written to {output_dir}")
    return info


def input_hash(kernel_package: str, kernel_version: str, busybox_version: str) -> str:
    """The identity of an image: everything that goes into it, hashed."""
    recipe = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (RECIPE_DIR / "init", RECIPE_DIR / "agent", Path(__file__))
    }
    inputs = {
        "kind": "discovery",
        "kernel": [kernel_package, kernel_version],
        "busybox": [BUSYBOX_PACKAGE, busybox_version],
        "modules": sorted(MODULES),
        "recipe": recipe,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def intact_record(output_dir: Path, digest: str) -> dict | None:
    """The image.json in output_dir if it records this hash and every file it lists is intact."""
    try:
        record = json.loads((output_dir / "image.json").read_text())
        if record.get("hash") != digest:
            return None
        for name, meta in record["files"].items():
            if file_digest(output_dir / name) != (meta["bytes"], meta["sha256"]):
                return None
        return record
    except (OSError, ValueError, KeyError, TypeError):
        return None


def file_digest(path: Path) -> tuple[int, str]:
    """(size, sha256) of a file, read in chunks (a root.squashfs is hundreds of MB)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _existing(output_dir: Path, digest: str) -> ImageInfo | None:
    """The image in output_dir if it has this hash and its files are intact."""
    record = intact_record(output_dir, digest)
    if record is None:
        return None
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in ImageInfo.__dataclass_fields__}
    return ImageInfo(**fields, output_dir=output_dir, built=False)


def _replace_seconds(info: ImageInfo, seconds: float) -> ImageInfo:
    return replace(info, seconds=round(seconds, 2))


# ---- packages ----------------------------------------------------------------------------


def _apt_env() -> dict[str, str]:
    return os.environ | {"LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}


def _run(command: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=_apt_env(), **kwargs)
    except FileNotFoundError:
        raise ImageBuildError(f"{command[0]} is not installed (needed for {what})") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise ImageBuildError(f"{what} failed ({result.returncode}): " + " | ".join(detail))
    return result


def _check_host() -> None:
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise ImageBuildError(f"{tool} is not installed: images are built on a Debian or Ubuntu host")
    arch = _run(["dpkg", "--print-architecture"], what="dpkg --print-architecture").stdout.strip()
    if arch != ARCH:
        raise ImageBuildError(f"the discovery image is built on {ARCH} hosts (this one is {arch})")


def _resolve() -> tuple[str, str, str]:
    """(kernel package, its version, busybox-static version) as apt would install them now.

    The kernel is the linux-image-6.x-amd64 package the linux-image-amd64 metapackage
    depends on (its ABI name changes with security updates). One apt-cache call in the usual
    case, where the metapackage pins the exact version.
    """
    stanzas = _apt_show(KERNEL_METAPACKAGE, BUSYBOX_PACKAGE)
    meta, busybox = stanzas.get(KERNEL_METAPACKAGE), stanzas.get(BUSYBOX_PACKAGE)
    if meta is None or busybox is None:
        raise _StalePackageLists(f"apt-cache does not know {KERNEL_METAPACKAGE} or {BUSYBOX_PACKAGE}")
    match = re.search(r"\b(linux-image-\d[\w.+-]*?)(?:\s*\(=\s*([^)\s]+)\))?\s*(?:,|\||$)", meta.get("Depends", ""))
    if not match:
        raise ImageBuildError(f"{KERNEL_METAPACKAGE} depends on no linux-image-6.x package: {meta.get('Depends')!r}")
    kernel, version = match.group(1), match.group(2)
    if version is None:
        found = _apt_show(kernel).get(kernel)
        if found is None:
            raise _StalePackageLists(f"apt-cache does not know {kernel}")
        version = found["Version"]
    return kernel, version, busybox["Version"]


def _apt_show(*packages: str) -> dict[str, dict[str, str]]:
    """Package -> fields of its candidate version (packages apt does not know are left out)."""
    result = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", *packages], capture_output=True, text=True, env=_apt_env()
    )
    found: dict[str, dict[str, str]] = {}
    for stanza in result.stdout.split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+):[ \t]*(.*)$", stanza, re.MULTILINE))
        if "Package" in fields and "Version" in fields:
            found.setdefault(fields["Package"], fields)
    return found


def _download(package: str, version: str, cache: Path, say: Progress) -> Path:
    debs = cache / "debs"
    debs.mkdir(exist_ok=True)
    target = debs / f"{package}_{version.replace(':', '%3a')}_{ARCH}.deb"
    if target.is_file():
        say(f"{package} {version}: cached")
        return target
    say(f"downloading {package} {version}")
    with tempfile.TemporaryDirectory(prefix="download-", dir=debs) as tmp:
        command = ["apt-get", "download", "-q"]
        if os.geteuid() == 0:
            command += ["-o", "APT::Sandbox::User=root"]  # the _apt user could not write here
        result = subprocess.run(
            command + [f"{package}={version}"], cwd=tmp, capture_output=True, text=True, env=_apt_env()
        )
        got = list(Path(tmp).glob("*.deb"))
        if result.returncode != 0 or len(got) != 1:
            detail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            if re.search(r"\b404\b|Unable to locate|Can't find a source|Version .* was not found", detail):
                raise _StalePackageLists(f"{package} {version} is no longer in the archive ({detail})")
            raise ImageBuildError(f"apt-get download {package}={version} failed: {detail}")
        os.replace(got[0], target)
    return target


def _prune_cache(cache: Path, keep: set[str]) -> None:
    """Drop superseded kernel and busybox packages (70 MB each)."""
    for deb in (cache / "debs").glob("*.deb"):
        if deb.name not in keep and deb.name.startswith(("linux-image-", f"{BUSYBOX_PACKAGE}_")):
            deb.unlink(missing_ok=True)


# ---- kernel modules ----------------------------------------------------------------------

_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz")


def _kernel_tree(kroot: Path) -> tuple[str, Path, Path]:
    """(release, vmlinuz, /lib/modules/RELEASE) of an unpacked linux-image package."""
    kernels = sorted((kroot / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ImageBuildError(f"expected one boot/vmlinuz-* in the kernel package, found {len(kernels)}")
    release = kernels[0].name.removeprefix("vmlinuz-")
    for base in ("lib/modules", "usr/lib/modules"):
        moddir = kroot / base / release
        if moddir.is_dir():
            return release, kernels[0], moddir
    raise ImageBuildError(f"the kernel package has no lib/modules/{release}")


def _module_name(path: Path) -> str:
    name = path.name
    for suffix in _MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def modinfo(elf: bytes) -> dict[str, list[str]]:
    """The .modinfo section of a kernel module: key -> values (alias, depends, softdep...)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise ImageBuildError("not a 64-bit ELF kernel module")
    endian = "<" if elf[5] == 1 else ">"
    (shoff,) = struct.unpack_from(endian + "Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", elf, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(endian + "IIQQQQ", elf, shoff + index * shentsize)
        return name, offset, size

    _, names, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        if elf[names + name : elf.index(b"\0", names + name)] == b".modinfo":
            info: dict[str, list[str]] = {}
            for item in elf[offset : offset + size].split(b"\0"):
                key, sep, value = item.decode("utf-8", "replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
            return info
    return {}


def module_closure(
    moddir: Path, wanted: Iterable[str]
) -> tuple[list[tuple[str, Path]], list[str], list[str]]:
    """The modules to ship for `wanted`, with everything they depend on.

    Returns ([(name, path relative to moddir)], missing, built_in). Hard dependencies come
    from each module's `depends=`; `softdep=` modules are added too when they exist.
    """
    index: dict[str, Path] = {}
    for path in (moddir / "kernel").rglob("*.ko*"):
        if path.name.endswith(_MODULE_SUFFIXES):
            index[_module_name(path)] = path.relative_to(moddir)
    builtin = set()
    builtin_list = moddir / "modules.builtin"
    if builtin_list.exists():
        builtin = {_module_name(Path(line.strip())) for line in builtin_list.read_text().splitlines() if line.strip()}

    chosen: dict[str, Path] = {}
    missing: list[str] = []
    built_in: list[str] = []
    queue = [name.replace("-", "_") for name in wanted]
    requested = set(queue)
    while queue:
        name = queue.pop(0)
        if name in chosen:
            continue
        if name not in index:
            if name in requested:
                (built_in if name in builtin else missing).append(name)
            continue
        chosen[name] = index[name]
        info = modinfo(_read_module(moddir / index[name]))
        for depends in info.get("depends", []):
            queue += [d.replace("-", "_") for d in depends.split(",") if d]
        for softdep in info.get("softdep", []):
            queue += [d.replace("-", "_") for d in softdep.split() if not d.endswith(":") and d.replace("-", "_") in index]
    return sorted(chosen.items()), sorted(set(missing)), sorted(set(built_in))


# ---- the initramfs -----------------------------------------------------------------------


def _populate(root: Path, busybox: Path, moddir: Path, release: str, modules: list[tuple[str, Path]]) -> None:
    for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp", "etc", "root", "var"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "var" / "run").symlink_to("../run")
    shutil.copy2(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    # One relative symlink per applet, where busybox would install it (bin/sh, sbin/modprobe...).
    applets = _run([str(busybox), "--list-full"], what="busybox --list-full").stdout.split()
    for applet in applets:
        link = root / applet
        if link.name == "busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(root / "bin" / "busybox", link.parent))
    if not (root / "bin" / "sh").is_symlink():
        raise ImageBuildError("busybox has no sh applet")

    shutil.copyfile(RECIPE_DIR / "init", root / "init")
    shutil.copyfile(RECIPE_DIR / "agent", root / "bin" / "tempered-agent")
    (root / "init").chmod(0o755)
    (root / "bin" / "tempered-agent").chmod(0o755)

    target = root / "lib" / "modules" / release
    for _, relative in modules:
        data = _read_module(moddir / relative)
        dest = target / str(relative).removesuffix(".xz").removesuffix(".gz")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    for name in ("modules.builtin", "modules.order"):
        if (moddir / name).exists():
            shutil.copyfile(moddir / name, target / name)
    # modules.dep and modules.alias, written by the busybox whose modprobe reads them at boot.
    _run([str(busybox), "depmod", "-b", str(root), release], what="busybox depmod")
    for name in ("modules.dep", "modules.alias"):
        if not (target / name).exists():
            raise ImageBuildError(f"busybox depmod wrote no {name}")


def cpio_newc(root: Path) -> bytes:
    """An initramfs archive ("newc" cpio) of the tree at root, plus /dev/console.

    Deterministic: sorted names, owner 0:0, mtime 0. /dev/console is needed by the kernel
    before /init runs (it opens it as init's stdio), so it is added as a device node
    without needing root to mknod it.
    """
    entries: list[tuple[str, int, bytes, int]] = []  # name, mode, data, rdev(major, minor packed)
    for path in sorted(_walk(root)):
        name = path.relative_to(root).as_posix()
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode):
            entries.append((name, stat.S_IFDIR | 0o755, b"", 0))
        elif stat.S_ISLNK(st.st_mode):
            entries.append((name, stat.S_IFLNK | 0o777, os.readlink(path).encode(), 0))
        elif stat.S_ISREG(st.st_mode):
            mode = 0o755 if st.st_mode & 0o111 else 0o644
            entries.append((name, stat.S_IFREG | mode, path.read_bytes(), 0))
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", os.makedev(5, 1)))
    entries.sort(key=lambda entry: entry[0])

    out = bytearray()

    def add(name: str, mode: int, data: bytes, rdev: int, ino: int) -> None:
        encoded = name.encode() + b"\0"
        header = "070701" + "".join(
            f"{value:08x}"
            for value in (
                ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
                0, 0, os.major(rdev), os.minor(rdev), len(encoded), 0,
            )
        )
        out.extend(header.encode() + encoded)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        add(name, mode, data, rdev, ino)
    add("TRAILER!!!", 0, b"", 0, 0)
    out.extend(b"\0" * (-len(out) % 512))
    return bytes(out)


def _walk(root: Path) -> Iterator[Path]:
    for directory, dirnames, filenames in os.walk(root):
        base = Path(directory)
        for name in dirnames + filenames:
            yield base / name


# ---- files -------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace path in one step: the edge may be serving the previous version right now."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)


class _locked:
    """An exclusive flock on a file: one build at a time per cache directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


# ---- command line ------------------------------------------------------------------------

KINDS = ("discovery", "runtime")


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def build_command(kind: str, output: Path | None = None, force: bool = False) -> ImageInfo | RuntimeImageInfo:
    """`tempered image build KIND [--output DIR]`: build with a progress display, then report sizes.

    Raises typer.Exit(1) with a printed reason when the build fails.
    """
    import typer
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True, soft_wrap=True)
    if kind not in KINDS:
        raise typer.BadParameter(f"unknown image kind {kind!r}; known: {', '.join(KINDS)}", param_hint="KIND")
    output_dir = output or default_output_dir(kind)
    try:
        with console.status(f"building the {kind} image", spinner="dots") as status:
            def progress(message: str) -> None:
                console.print(f"[dim]•[/dim] {message}")
                status.update(f"[bold]{kind} image[/bold]: {message}")

            if kind == "runtime":
                from bootedge.images.runtime import build_runtime

                info = build_runtime(output_dir, progress=progress, force=force)
            else:
                info = build_discovery(output_dir, progress=progress, force=force)
    except ImageBuildError as e:
        console.print(f"[red]cannot build the {kind} image[/red]: {e}")
        raise typer.Exit(1) from None
    if kind == "runtime":
        from bootedge.images.runtime import report

        report(info)
        return info

    table = Table(
        title=f"{kind} image {info.hash[:12]}" + ("" if info.built else " (already up to date)"),
        caption=str(info.output_dir),
    )
    table.add_column("file")
    table.add_column("size", justify="right")
    table.add_column("unpacked", justify="right")
    table.add_row("vmlinuz", _size(info.vmlinuz_bytes), "")
    table.add_row("initrd.gz", _size(info.initrd_bytes), _size(info.initrd_unpacked_bytes))
    Console(soft_wrap=True).print(table)
    console.print(
        f"kernel {info.kernel_release} ({info.kernel_package} {info.kernel_version}), busybox {info.busybox_version}, "
        f"{len(info.modules)} modules" + (f"; not in this kernel: {', '.join(info.missing)}" if info.missing else "")
        + f"; {info.seconds:.1f} s"
    )
    return info


def main(argv: list[str] | None = None) -> None:
    """python -m bootedge.images.discovery [discovery|runtime] [--output DIR] [--force]"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bootedge.images.discovery", description="Build a Tempered boot image.")
    parser.add_argument("kind", nargs="?", default="discovery", choices=KINDS)
    parser.add_argument("--output", type=Path, default=None, help="default $TEMPERED_HOME/edge/images/KIND")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    import click

    try:
        build_command(args.kind, args.output, force=args.force)
    except click.exceptions.Exit as e:
        raise SystemExit(e.exit_code) from None


if __name__ == "__main__":
    main()
