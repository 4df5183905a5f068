"""Build the discovery image: what an unknown or rebooted machine PXE boots to report its facts.

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
     "dmi": {"uuid", "serial", "vendor", "product", "board_serial"},
     "bmc": {"driver": "ipmi", "address": str, "mac": str} | null}

(unknown values are null), then polls for its instruction (wait, reboot, poweroff). `bmc` is
the BMC's LAN address as the BMC itself reports it over the system interface (`ipmitool lan
print` on /dev/ipmi0, which the IPMI drivers create when the firmware describes a BMC): the
control plane keeps it as the machine's discovered power address.

Debian ships no static ipmitool, so the image carries ipmitool with the shared libraries it
loads (libc, OpenSSL's libcrypto, libfreeipmi...), copied from their packages by reading each
ELF file's imports (see initramfs.install_program): about 5.5 MB of the compressed initramfs.

Nothing is installed on the build host. The kernel, busybox-static and ipmitool packages are fetched with
`apt-get download` into a cache and unpacked with `dpkg-deb -x`; the module closure is read
from the modules' own `.modinfo`; the initramfs module index is written by the downloaded
busybox's `depmod` (the same busybox whose `modprobe` reads it at boot); the cpio archive
(newc) is written deterministically (sorted, owned by root, mtime 0), so the same inputs
give a byte-identical image (see initramfs.py). The build needs apt-get, apt-cache and dpkg-deb (any Debian or
Ubuntu host on amd64) and about 500 MB of scratch space in the cache directory for a minute.

An image is identified by the hash of its inputs (kernel and busybox package versions, the
recipe files, the module list); `image.json` in the output directory records it, and a build
whose hash is already there does nothing (see common.py).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
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
    missing_tools,
    print_sizes,
    run,
    run_build,
    silent,
    write_atomic,
    write_record,
)
from bootedge.images import initramfs
from bootedge.images.initramfs import cpio_newc, install_program, kernel_tree, module_closure, populate

RECIPE_DIR = Path(__file__).resolve().parents[2] / "infra" / "images" / "discovery"
KERNEL_METAPACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"

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
# The BMC's system interface (KCS, SMIC, BT; bound through its ACPI or SMBIOS description)
# and /dev/ipmi0, through which ipmitool reads the BMC's LAN address.
IPMI_MODULES = ("ipmi_si", "ipmi_devintf")
MODULES = NIC_MODULES + DISK_MODULES + BUS_MODULES + IPMI_MODULES
# ipmitool and the packages holding the libraries it loads (see initramfs.install_program).
IPMITOOL = "usr/bin/ipmitool"
IPMI_PACKAGES = ("ipmitool", "libfreeipmi17", "libgcrypt20", "libgpg-error0", "libreadline8", "libtinfo6", "libssl3", "libc6")
FILES = ("vmlinuz", "initrd.gz")


@dataclass(frozen=True)
class ImageInfo:
    kind: str
    output_dir: Path
    hash: str
    kernel_package: str          # linux-image-6.1.0-56-amd64
    kernel_version: str          # its Debian version, 6.1.192-2
    kernel_release: str          # uname -r: 6.1.0-56-amd64
    busybox_version: str
    ipmi_packages: tuple[str, ...]   # "package version" of ipmitool and its libraries' packages
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
    say = progress or silent
    return run_build(Path(output_dir), cache_dir, "build.lock", lambda out, cache: _build(out, cache, say, force), say)


def _build(output_dir: Path, cache: Path, say: Progress, force: bool) -> ImageInfo:
    _check_host()
    kernel_package, kernel_version, busybox_version, ipmi = _resolve()
    digest = input_hash(kernel_package, kernel_version, busybox_version, ipmi)
    existing = existing_image(ImageInfo, output_dir, digest, FILES)
    if existing is not None and not force:
        say(f"discovery image {digest[:12]} is up to date in {output_dir} ({kernel_package} {kernel_version})")
        return existing

    kernel_deb = _download(kernel_package, kernel_version, cache, say)
    busybox_deb = _download(BUSYBOX_PACKAGE, busybox_version, cache, say)
    ipmi_debs = [_download(package, version, cache, say) for package, version in ipmi.items()]
    with tempfile.TemporaryDirectory(prefix="work-", dir=cache) as work_name:
        work = Path(work_name)
        kroot, broot = _unpack(kernel_deb, work / "kernel", say), _unpack(busybox_deb, work / "busybox", say)
        for deb in ipmi_debs:
            _unpack(deb, work / "ipmi", say)
        release, vmlinuz, moddir = kernel_tree(kroot)
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
        scripts = {"init": RECIPE_DIR / "init", "bin/tempered-agent": RECIPE_DIR / "agent"}
        populate(root, busybox, moddir, release, modules, scripts)
        libraries = install_program(root, work / "ipmi", IPMITOOL)
        say(f"ipmitool {ipmi['ipmitool']} with {len(libraries)} libraries: {', '.join(libraries)}")
        say("building the initramfs")
        archive = cpio_newc(root)
        initrd = gzip.compress(archive, compresslevel=9, mtime=0)

        kernel_bytes = vmlinuz.read_bytes()
        write_atomic(output_dir / "vmlinuz", kernel_bytes)
        write_atomic(output_dir / "initrd.gz", initrd)

    info = ImageInfo(
        kind="discovery",
        output_dir=output_dir,
        hash=digest,
        kernel_package=kernel_package,
        kernel_version=kernel_version,
        kernel_release=release,
        busybox_version=busybox_version,
        ipmi_packages=tuple(f"{package} {version}" for package, version in ipmi.items()),
        modules=tuple(sorted(name for name, _ in modules)),
        missing=tuple(missing),
        vmlinuz_bytes=len(kernel_bytes),
        initrd_bytes=len(initrd),
        initrd_unpacked_bytes=len(archive),
        built=True,
    )
    write_record(info, FILES)
    _prune_cache(cache, keep={kernel_deb.name, busybox_deb.name, *(deb.name for deb in ipmi_debs)})
    say(f"discovery image {digest[:12]} written to {output_dir}")
    return info


def input_hash(kernel_package: str, kernel_version: str, busybox_version: str, ipmi: dict[str, str]) -> str:
    """The identity of an image: everything that goes into it, hashed (this module and
    initramfs.py, which writes the archive, count as recipe; common.py does not: it locks,
    downloads the packages named here and writes image.json, and shapes no byte of the image)."""
    recipe = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (RECIPE_DIR / "init", RECIPE_DIR / "agent", Path(__file__), Path(initramfs.__file__))
    }
    inputs = {
        "kind": "discovery",
        "kernel": [kernel_package, kernel_version],
        "busybox": [BUSYBOX_PACKAGE, busybox_version],
        "ipmi": sorted(ipmi.items()),
        "modules": sorted(MODULES),
        "recipe": recipe,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


# ---- packages ----------------------------------------------------------------------------


def _check_host() -> None:
    missing = missing_tools(("apt-get", "apt-cache", "dpkg-deb"))
    if missing:
        raise ImageBuildError(f"{missing[0]} is not installed: images are built on a Debian or Ubuntu host")
    check_arch("discovery")


def _resolve() -> tuple[str, str, str, dict[str, str]]:
    """(kernel package, its version, busybox-static version, {IPMI package: version}) as apt
    would install them now.

    The kernel is the linux-image-6.x-amd64 package the linux-image-amd64 metapackage
    depends on (its ABI name changes with security updates). One apt-cache call in the usual
    case, where the metapackage pins the exact version.
    """
    stanzas = apt_show(KERNEL_METAPACKAGE, BUSYBOX_PACKAGE, *IPMI_PACKAGES)
    unknown = [name for name in (KERNEL_METAPACKAGE, BUSYBOX_PACKAGE, *IPMI_PACKAGES) if name not in stanzas]
    if unknown:
        raise StalePackageLists(f"apt-cache does not know {', '.join(unknown)}")
    meta, busybox = stanzas[KERNEL_METAPACKAGE], stanzas[BUSYBOX_PACKAGE]
    ipmi = {name: stanzas[name]["Version"] for name in IPMI_PACKAGES}
    match = re.search(r"\b(linux-image-\d[\w.+-]*?)(?:\s*\(=\s*([^)\s]+)\))?\s*(?:,|\||$)", meta.get("Depends", ""))
    if not match:
        raise ImageBuildError(f"{KERNEL_METAPACKAGE} depends on no linux-image-6.x package: {meta.get('Depends')!r}")
    kernel, version = match.group(1), match.group(2)
    if version is None:
        found = apt_show(kernel).get(kernel)
        if found is None:
            raise StalePackageLists(f"apt-cache does not know {kernel}")
        version = found["Version"]
    return kernel, version, busybox["Version"], ipmi


def _unpack(deb: Path, into: Path, say: Progress) -> Path:
    say(f"unpacking {deb.name}")
    run(["dpkg-deb", "-x", str(deb), str(into)], what="dpkg-deb -x")
    return into


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
            command + [f"{package}={version}"], cwd=tmp, capture_output=True, text=True, env=apt_env()
        )
        got = list(Path(tmp).glob("*.deb"))
        if result.returncode != 0 or len(got) != 1:
            detail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            if re.search(r"\b404\b|Unable to locate|Can't find a source|Version .* was not found", detail):
                raise StalePackageLists(f"{package} {version} is no longer in the archive ({detail})")
            raise ImageBuildError(f"apt-get download {package}={version} failed: {detail}")
        os.replace(got[0], target)
    return target


def _prune_cache(cache: Path, keep: set[str]) -> None:
    """Drop superseded versions of the packages this image is built from (the kernel's is 70 MB)."""
    prefixes = ("linux-image-", f"{BUSYBOX_PACKAGE}_", *(f"{package}_" for package in IPMI_PACKAGES))
    for deb in (cache / "debs").glob("*.deb"):
        if deb.name not in keep and deb.name.startswith(prefixes):
            deb.unlink(missing_ok=True)


# ---- command line ------------------------------------------------------------------------


def report(info: ImageInfo) -> None:
    """The size table and what went in, as `tempered image build discovery` prints them."""
    print_sizes(
        "discovery", info,
        [("vmlinuz", info.vmlinuz_bytes, None), ("initrd.gz", info.initrd_bytes, info.initrd_unpacked_bytes)],
        f"kernel {info.kernel_release} ({info.kernel_package} {info.kernel_version}), busybox {info.busybox_version}, "
        f"{info.ipmi_packages[0] if info.ipmi_packages else 'no ipmitool'}, {len(info.modules)} modules" + (f"; not in this kernel: {', '.join(info.missing)}" if info.missing else ""),
    )
