"""The discovery image: build it from Debian's packages, then boot it in QEMU and check the facts.

The image is built once per module (the downloaded packages are kept in pytest's cache
directory, or $TEMPERED_IMAGE_CACHE, across runs). Each VM boots the kernel directly
(`-kernel`, no PXE) with QEMU user networking: the guest reaches this test's HTTP server on
127.0.0.1 as 10.0.2.2, which plays the control plane: it takes the facts (Bearer token
checked) and answers the agent's instruction polls, finally with "poweroff". Timings are
printed (run with `pytest -s` to see them). Every TCG guest keeps a core busy, so the boots
run one at a time.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from bootedge.images import discovery as images
from bootedge.images.build import build_command

QEMU = shutil.which("qemu-system-x86_64")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
MiB = 1024 * 1024
FACTS_DEADLINE_S = 240.0


def _mirror_unreachable() -> str | None:
    """Why the Debian archive cannot be reached (None when it can), asking apt for the URL."""
    try:
        result = subprocess.run(
            ["apt-get", "download", "--print-uris", images.BUSYBOX_PACKAGE],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"apt-get cannot resolve packages: {e}"
    uris = [line.split()[0].strip("'") for line in result.stdout.splitlines() if line.startswith("'")]
    if result.returncode != 0 or not uris:
        return f"apt-get cannot resolve {images.BUSYBOX_PACKAGE}: {result.stderr.strip()[-200:]}"
    target = urlsplit(uris[0])
    proxy = os.environ.get(f"{target.scheme}_proxy") or os.environ.get(f"{target.scheme.upper()}_PROXY")
    if not proxy:
        proxy = subprocess.run(
            ["apt-config", "shell", "P", f"Acquire::{target.scheme}::Proxy"], capture_output=True, text=True
        ).stdout.partition("=")[2].strip().strip("'")
    host = urlsplit(proxy) if proxy else target
    port = host.port or (443 if host.scheme == "https" else 80)
    try:
        socket.create_connection((host.hostname, port), timeout=5).close()
    except OSError as e:
        return f"no network to the Debian mirror {host.hostname}:{port}: {e}"
    return None


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "building the discovery image needs root (apt-get update when the lists are stale)"
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return "not a Debian host: apt-get and dpkg-deb are needed"
    return _mirror_unreachable()


_UNAVAILABLE = _unavailable()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or "")


@dataclass
class Built:
    info: images.ImageInfo
    seconds: float
    cache: Path


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Built:
    if os.environ.get("TEMPERED_IMAGE_CACHE"):
        cache = Path(os.environ["TEMPERED_IMAGE_CACHE"])
    elif getattr(pytestconfig, "cache", None) is not None:
        cache = pytestconfig.cache.mkdir("tempered-images")
    else:
        cache = tmp_path_factory.mktemp("image-cache")
    output = tmp_path_factory.mktemp("discovery-image")
    steps: list[str] = []
    started = time.monotonic()
    info = images.build_discovery(output, progress=steps.append, cache_dir=cache)
    seconds = time.monotonic() - started
    print(
        f"\n[discovery image] built in {seconds:.1f} s: vmlinuz {info.vmlinuz_bytes / MiB:.2f} MiB, "
        f"initrd.gz {info.initrd_bytes / MiB:.2f} MiB ({info.initrd_unpacked_bytes / MiB:.1f} MiB unpacked), "
        f"{len(info.modules)} modules, kernel {info.kernel_release}"
    )
    for step in steps:
        print(f"  - {step}")
    return Built(info, seconds, cache)


def unpack_newc(archive: bytes, into: Path) -> dict[str, int]:
    """Extract a newc cpio archive (regular files, directories, symlinks); name -> mode."""
    modes: dict[str, int] = {}
    offset = 0
    while True:
        header = archive[offset : offset + 110]
        assert header[:6] == b"070701", f"bad cpio magic at {offset}"
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = archive[offset + 110 : offset + 110 + namesize - 1].decode()
        offset += 110 + namesize
        offset += -offset % 4
        data = archive[offset : offset + size]
        offset += size
        offset += -offset % 4
        if name == "TRAILER!!!":
            return modes
        modes[name] = mode
        path = into / name
        if stat.S_ISDIR(mode):
            path.mkdir(parents=True, exist_ok=True)
        elif stat.S_ISLNK(mode):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(data.decode())
        elif stat.S_ISREG(mode):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(stat.S_IMODE(mode))


# ---- the build ---------------------------------------------------------------------------


def test_the_image_holds_a_kernel_busybox_the_drivers_and_the_agent(image: Built, tmp_path: Path) -> None:
    info = image.info
    assert info.vmlinuz.stat().st_size == info.vmlinuz_bytes > 4 * MiB
    assert info.initrd.stat().st_size == info.initrd_bytes
    assert info.initrd_bytes < 14 * MiB, "the discovery initramfs should stay small (ipmitool and its libraries are 5.5 MiB)"
    record = json.loads((info.output_dir / "image.json").read_text())
    assert record["hash"] == info.hash and record["kernel_release"] == info.kernel_release
    assert set(record["files"]) == {"vmlinuz", "initrd.gz"}
    assert info.kernel_package.startswith("linux-image-6") and info.kernel_release in info.kernel_package

    modes = unpack_newc(gzip.decompress(info.initrd.read_bytes()), tmp_path)
    assert stat.S_ISCHR(modes["dev/console"])
    assert modes["init"] & 0o111 and modes["bin/tempered-agent"] & 0o111
    assert (tmp_path / "init").read_bytes() == (images.RECIPE_DIR / "init").read_bytes()
    assert os.readlink(tmp_path / "bin" / "sh") == "busybox"
    moddir = tmp_path / "lib" / "modules" / info.kernel_release
    dep = (moddir / "modules.dep").read_text()
    virtio_net = next(line for line in dep.splitlines() if line.startswith("kernel/drivers/net/virtio_net.ko:"))
    assert "virtio_ring.ko" in virtio_net and "net_failover.ko" in virtio_net
    aliases = (moddir / "modules.alias").read_text()
    assert "alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci" in aliases
    assert "virtio:d00000001v* virtio_net" in aliases
    for wanted in ("virtio_net", "virtio_pci", "virtio_blk", "e1000", "e1000e", "igb", "ahci", "sd_mod", "nvme"):
        assert wanted in info.modules
    shipped = {p.name.removesuffix(".ko").replace("-", "_") for p in moddir.rglob("*.ko")}
    assert shipped == set(info.modules)
    # the BMC: its system interface driver bound by ACPI alias, and ipmitool with every library it loads
    assert {"ipmi_si", "ipmi_devintf", "ipmi_msghandler"} <= set(info.modules)
    assert "alias acpi*:IPI0001:* ipmi_si" in aliases
    assert info.ipmi_packages[0].startswith("ipmitool ")
    version = subprocess.run(["chroot", str(tmp_path), "/usr/bin/ipmitool", "-V"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("ipmitool version"), version


# Common NICs by PCI ID (the modalias a device publishes, as the init's modprobe reads it) and
# the driver that must bind it from the initramfs.
NICS = [
    ("QEMU rtl8139 (RTL8139C+)", "pci:v000010ECd00008139sv00001AF4sd00001100bc02sc00i00", "8139cp"),
    ("RTL8139", "pci:v000010ECd00008139sv000010ECsd00008139bc02sc00i00", "8139too"),
    ("QEMU e1000 (82540EM)", "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00", "e1000"),
    ("QEMU e1000e (82574L)", "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00", "e1000e"),
    ("Intel 82576 (QEMU igb)", "pci:v00008086d000010C9sv00008086sd0000A03Cbc02sc00i00", "igb"),
    ("Intel 82599 10G", "pci:v00008086d000010FBsv00008086sd00000003bc02sc00i00", "ixgbe"),
    ("Intel X710 10G", "pci:v00008086d00001572sv00008086sd00000001bc02sc00i00", "i40e"),
    ("Intel E810 25G", "pci:v00008086d0000159Bsv00008086sd00000003bc02sc00i00", "ice"),
    ("Broadcom BCM57414 25G", "pci:v000014E4d000016D7sv000014E4sd00001402bc02sc00i00", "bnxt_en"),
    ("Mellanox ConnectX-3", "pci:v000015B3d00001007sv000015B3sd00000006bc02sc00i00", "mlx4_core"),
    ("Mellanox ConnectX-5", "pci:v000015B3d00001017sv000015B3sd00000007bc02sc00i00", "mlx5_core"),
    ("Realtek RTL8111", "pci:v000010ECd00008168sv00001043sd00008677bc02sc00i00", "r8169"),
    ("VMware vmxnet3", "pci:v000015ADd000007B0sv000015ADsd000007B0bc02sc00i00", "vmxnet3"),
]


@pytest.mark.parametrize("device, modalias, driver", NICS, ids=[n[2] + "-" + n[0].split()[0] for n in NICS])
def test_the_image_drives_the_common_nics(image: Built, tmp_path: Path, device: str, modalias: str, driver: str) -> None:
    """Each common NIC's modalias resolves, through the initramfs's own modules.alias, to its
    driver, and the driver and every module it depends on are in the initramfs, so the init's
    `modprobe -qa <modalias>` loads it (mlx4_core then loads mlx4_en itself)."""
    import fnmatch

    unpack_newc(gzip.decompress(image.info.initrd.read_bytes()), tmp_path)
    moddir = tmp_path / "lib" / "modules" / image.info.kernel_release
    aliases = [line.split()[1:3] for line in (moddir / "modules.alias").read_text().splitlines() if line.startswith("alias ")]
    matched = {module for pattern, module in aliases if fnmatch.fnmatchcase(modalias, pattern)}
    assert driver in matched, f"{device}: {modalias} matches {sorted(matched)} only"
    deps = {
        line.split(":", 1)[0]: line.split(":", 1)[1].split()
        for line in (moddir / "modules.dep").read_text().splitlines() if ":" in line
    }
    path = next(p for p in deps if Path(p).name == f"{driver}.ko")
    for needed in (path, *deps[path]):
        assert (moddir / needed).is_file(), f"{device}: {needed} is not in the initramfs"
    assert driver in image.info.modules and not image.info.missing
    if driver == "mlx4_core":
        assert "mlx4_en" in image.info.modules


def test_a_second_build_is_a_noop(image: Built, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    info = image.info
    before = {name: (info.output_dir / name).stat().st_mtime_ns for name in ("vmlinuz", "initrd.gz", "image.json")}
    said: list[str] = []
    started = time.monotonic()
    again = images.build_discovery(info.output_dir, progress=said.append, cache_dir=image.cache)
    seconds = time.monotonic() - started
    print(f"\n[discovery image] up-to-date check: {seconds:.2f} s (first build {image.seconds:.1f} s)")
    assert again.built is False and again.hash == info.hash
    assert again.initrd_bytes == info.initrd_bytes and again.modules == info.modules
    assert any("up to date" in line for line in said), said
    assert seconds < 10
    assert before == {name: (info.output_dir / name).stat().st_mtime_ns for name in before}

    # The CLI entry point says the same, with its size report.
    monkeypatch.setenv("TEMPERED_HOME", str(tmp_path))
    assert build_command("discovery", info.output_dir).built is False
    import typer

    with pytest.raises(typer.BadParameter):
        build_command("nonesuch", info.output_dir)


def test_the_agent_writes_valid_json_from_odd_sysfs_values(image: Built, tmp_path: Path) -> None:
    """`tempered-agent facts` on a fake /sys and /proc: quotes, backslashes, junk bytes, gaps."""
    root = tmp_path / "initramfs"
    unpack_newc(gzip.decompress(image.info.initrd.read_bytes()), root)
    sys_ = tmp_path / "sys"
    proc = tmp_path / "proc"

    def put(path: Path, content: str | bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    put(proc / "cpuinfo", "".join(
        f"processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon(R) \"Gold\" 6{i}30\n\n" for i in range(3)
    ))
    put(proc / "meminfo", "MemTotal:       16318480 kB\nMemFree:         1000 kB\n")
    put(proc / "cmdline", "console=ttyS0 tempered.boot=07 tempered.url=http://x BOOTIF=01-aa-bb-cc-dd-ee-ff\n")
    (sys_ / "firmware" / "efi").mkdir(parents=True)
    dmi = sys_ / "class" / "dmi" / "id"
    put(dmi / "product_uuid", "4C4C4544-0042-3510-8051-B4C04F4E4B32\n")
    put(dmi / "product_serial", 'S"1\\2\n')
    put(dmi / "sys_vendor", b"Dell\tInc.\xc3\xa9  \n")
    put(dmi / "product_name", "PowerEdge R650\n")
    put(dmi / "board_serial", "\n")
    block = sys_ / "block"
    put(block / "sda" / "size", "3907029168\n")
    put(block / "sda" / "queue" / "rotational", "1\n")
    put(block / "sda" / "device" / "model", "ST2000NM0055-1V4\n")
    put(block / "sda" / "device" / "vpd_pg80", b"\x00\x80\x00\x14     ZBS1ABCD\x00\x01")
    put(block / "nvme0n1" / "size", "1000215216\n")
    put(block / "nvme0n1" / "queue" / "rotational", "0\n")
    put(block / "nvme0n1" / "device" / "model", "Samsung SSD 980 PRO 1TB                 \n")
    put(block / "nvme0n1" / "device" / "serial", "S5GXNF0R123456    \n")
    put(block / "loop0" / "size", "2048\n")
    put(block / "sr0" / "size", "2048\n")
    put(block / "vdb" / "size", "0\n")
    pci = sys_ / "bus" / "pci" / "devices" / "0000:3b:00.0"
    put(pci / "vendor", "0x8086\n")
    put(pci / "device", "0x1572\n")
    put(pci / "class", "0x020000\n")
    (sys_ / "bus" / "pci" / "drivers" / "i40e").mkdir(parents=True)
    (pci / "driver").symlink_to(sys_ / "bus" / "pci" / "drivers" / "i40e")
    put(sys_ / "bus" / "pci" / "devices" / "0000:00:1f.0" / "vendor", "0x8086\n")
    put(sys_ / "bus" / "pci" / "devices" / "0000:00:1f.0" / "device", "0xa1c8\n")
    put(sys_ / "bus" / "pci" / "devices" / "0000:00:1f.0" / "class", "0x060100\n")
    net = sys_ / "class" / "net"
    put(net / "eno1" / "address", "3c:fd:fe:aa:bb:cc\n")
    put(net / "eno1" / "carrier", "1\n")
    put(net / "eno1" / "speed", "10000\n")
    (net / "eno1" / "device").symlink_to(pci)
    put(net / "eno2" / "address", "3c:fd:fe:aa:bb:cd\n")
    (net / "eno2" / "device").mkdir()   # down: no carrier or speed files readable
    put(net / "lo" / "address", "00:00:00:00:00:00\n")
    put(net / "br0" / "address", "3c:fd:fe:aa:bb:cc\n")

    path = ":".join(str(root / d) for d in ("bin", "sbin", "usr/bin", "usr/sbin"))
    result = subprocess.run(
        [str(root / "bin" / "busybox"), "sh", str(root / "bin" / "tempered-agent"), "facts"],
        env={"PATH": path, "TEMPERED_SYSFS": str(sys_), "TEMPERED_PROCFS": str(proc), "TMPDIR": str(tmp_path),
             "TEMPERED_IPMI_DEVICE": str(tmp_path / "no-ipmi0")},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["bmc"] is None
    assert facts["schema"] == 1 and facts["boot"] == 7 and facts["firmware"] == "uefi"
    assert facts["architecture"] == os.uname().machine
    assert facts["processors"] == {"count": 3, "model": 'Xeon(R) "Gold" 6030'}
    assert facts["processor0"] == 'Xeon(R) "Gold" 6030'
    assert facts["memory"] == {"total_bytes": 16318480 * 1024}
    assert facts["dmi"] == {
        "uuid": "4c4c4544-0042-3510-8051-b4c04f4e4b32",
        "serial": 'S"1\\2',
        "vendor": "Dell Inc.",
        "product": "PowerEdge R650",
        "board_serial": None,
    }
    assert facts["disks"] == [
        {"name": "nvme0n1", "size_bytes": 1000215216 * 512, "model": "Samsung SSD 980 PRO 1TB",
         "serial": "S5GXNF0R123456", "rotational": False},
        {"name": "sda", "size_bytes": 3907029168 * 512, "model": "ST2000NM0055-1V4",
         "serial": "ZBS1ABCD", "rotational": True},
    ]
    assert facts["nics"] == [
        {"name": "eno1", "mac": "3c:fd:fe:aa:bb:cc", "driver": "i40e", "speed_mbps": 10000, "link": True, "ipv4": None},
        {"name": "eno2", "mac": "3c:fd:fe:aa:bb:cd", "driver": None, "speed_mbps": None, "link": False, "ipv4": None},
    ]
    assert facts["pci"] == [
        {"slot": "0000:00:1f.0", "vendor": "0x8086", "device": "0xa1c8", "class": "0x060100", "driver": None},
        {"slot": "0000:3b:00.0", "vendor": "0x8086", "device": "0x1572", "class": "0x020000", "driver": "i40e"},
    ]


def test_a_bmc_without_a_lan_address_is_reported_as_none_with_the_reason_on_the_console(
    image: Built, tmp_path: Path
) -> None:
    """A BMC whose LAN channel has no address yet (0.0.0.0, as after a factory reset): `bmc` is
    null, and the console says what ipmitool said."""
    root = tmp_path / "initramfs"
    unpack_newc(gzip.decompress(image.info.initrd.read_bytes()), root)
    device = tmp_path / "ipmi0"
    device.touch()
    ipmitool = tmp_path / "ipmitool"
    ipmitool.write_text(
        "#!/bin/sh\necho 'IANA PEN registry open failed: No such file or directory' >&2\n"
        "echo 'Get Channel Cipher Suites failed' >&2\n"
        "printf 'IP Address Source       : DHCP Address\\nIP Address              : 0.0.0.0\\n'\n"
    )
    ipmitool.chmod(0o755)
    path = ":".join(str(root / d) for d in ("bin", "sbin", "usr/bin", "usr/sbin"))
    result = subprocess.run(
        [str(root / "bin" / "busybox"), "sh", str(root / "bin" / "tempered-agent"), "facts"],
        env={"PATH": path, "TMPDIR": str(tmp_path), "TEMPERED_SYSFS": str(tmp_path / "sys"),
             "TEMPERED_PROCFS": str(tmp_path / "proc"), "TEMPERED_IPMI_DEVICE": str(device),
             "TEMPERED_IPMITOOL": str(ipmitool)},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["bmc"] is None
    assert "tempered-agent: the BMC reports no LAN address: Get Channel Cipher Suites failed (0.0.0.0)" in result.stderr
    assert "IANA" not in result.stderr


def test_the_agent_long_polls_and_sleeps_what_the_answer_says(image: Built, tmp_path: Path) -> None:
    """The agent's loop on this host, with the image's busybox, against the fake control plane:
    every poll asks `?wait=20`; it sleeps `poll_after` (at least 1 s, never a busy loop), and its
    own 10 s when the answer has none (a control plane that does not hold polls). The plane only
    ever answers `wait`: the agent's reboot/poweroff must never run on this host."""
    root = tmp_path / "initramfs"
    unpack_newc(gzip.decompress(image.info.initrd.read_bytes()), root)
    plane = ControlPlane(machine="m-loop", token=f"tok-{uuidlib.uuid4().hex}", wait_polls=1000,
                         poll_after=[0, 3, None]).start()
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cmdline").write_text(
        f"tempered.url=http://127.0.0.1:{plane.port} tempered.machine={plane.machine} tempered.token={plane.token}\n"
    )
    path = ":".join(str(root / d) for d in ("bin", "sbin", "usr/bin", "usr/sbin"))
    console = tmp_path / "console.log"
    agent = subprocess.Popen(
        [str(root / "bin" / "busybox"), "sh", str(root / "bin" / "tempered-agent")],
        env={"PATH": path, "TEMPERED_SYSFS": str(tmp_path / "sys"), "TEMPERED_PROCFS": str(proc),
             "TMPDIR": str(tmp_path), "TEMPERED_IPMI_DEVICE": str(tmp_path / "no-ipmi0")},
        stdout=open(console, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    said = [f"tempered-agent: instruction: wait: the cluster is not ready: \"quorum\" \\ 1 of 3 (asking again in {n} s)"
            for n in (1, 3, 10)]
    try:
        deadline = time.monotonic() + 60
        while not all(line in console.read_text() for line in said) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait(timeout=10)
        plane.stop()
    log = console.read_text()
    assert all(line in log for line in said), log
    assert plane.facts is not None and plane.rejected == 0
    assert plane.waits[:3] == ["20"] * 3


# ---- booting it --------------------------------------------------------------------------


@dataclass
class ControlPlane:
    """The two endpoints the agent calls, on 127.0.0.1 (10.0.2.2 from the guest)."""

    machine: str
    token: str
    fail_first_posts: int = 0        # answer 503 to this many facts POSTs first
    wait_polls: int = 0              # answer "wait" to this many instruction polls after the facts
    poll_after: list = field(default_factory=list)  # what the wait answers say in turn (None: nothing), then 1
    waits: list[str] = field(default_factory=list)  # each poll's ?wait= (a long poll)
    posts: list[tuple[float, int]] = field(default_factory=list)   # (time, status)
    polls: list[tuple[float, str]] = field(default_factory=list)   # (time, action)
    facts: dict | None = None
    facts_at: float | None = None
    rejected: int = 0

    def start(self) -> ControlPlane:
        plane = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {plane.token}":
                    return True
                plane.rejected += 1
                self._answer(401, {"detail": "bad token"})
                return False

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != f"/machines/{plane.machine}/facts":
                    return self._answer(404, {"detail": "no such machine"})
                if not self._authorized():
                    return None
                if self.headers.get("Content-Type") != "application/json":
                    return self._answer(415, {"detail": "application/json only"})
                if len([p for p in plane.posts if p[1] == 503]) < plane.fail_first_posts:
                    plane.posts.append((time.monotonic(), 503))
                    return self._answer(503, {"detail": "try again"})
                plane.facts = json.loads(body)
                plane.facts_at = time.monotonic()
                plane.posts.append((plane.facts_at, 202))
                return self._answer(202, {"accepted": True})

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path != f"/machines/{plane.machine}/instruction":
                    return self._answer(404, {"detail": "no such machine"})
                if not self._authorized():
                    return None
                waited = sum(1 for _, action in plane.polls if action == "wait" and plane.facts is not None)
                if plane.facts is None or waited < plane.wait_polls:
                    answer = {"action": "wait", "reason": 'the cluster is not ready: "quorum" \\ 1 of 3'}
                    after = plane.poll_after[len(plane.waits)] if len(plane.waits) < len(plane.poll_after) else 1
                    if after is not None:
                        answer["poll_after"] = after
                else:
                    answer = {"action": "poweroff", "reason": "test done"}
                plane.waits.append(dict(parse_qsl(url.query)).get("wait", ""))
                plane.polls.append((time.monotonic(), answer["action"]))
                return self._answer(200, answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Vm:
    firmware: str
    workdir: Path
    mac: str
    uuid: str
    serial: str
    disk_bytes: int
    args: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    started: float = 0.0
    milestones: dict[str, float] = field(default_factory=dict)   # first seen on the console

    MILESTONES = {
        "kernel": "Linux version", "/init": "Run /init", "drivers": "tempered-init: drivers loaded",
        "network": "tempered-init: network up", "facts": "tempered-agent: facts posted",
    }

    def note_milestones(self) -> None:
        log = self.serial_log()
        for name, text in self.MILESTONES.items():
            if name not in self.milestones and text in log:
                self.milestones[name] = time.monotonic() - self.started

    def start(self) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=open(self.workdir / "qemu.out", "wb"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def serial_log(self) -> str:
        try:
            text = self.log.read_bytes().decode("utf-8", "replace").replace("\r", "")
        except FileNotFoundError:
            return ""
        return text

    def diagnostics(self) -> str:
        qemu = (self.workdir / "qemu.out").read_text(errors="replace")[-2000:]
        tail = "\n".join(self.serial_log().splitlines()[-60:])
        return f"--- qemu ---\n{qemu}\n--- serial (tail) ---\n{tail}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


IPMI_SIM = shutil.which("ipmi_sim")
BMC_ADDRESS, BMC_MAC = "192.0.2.41", "52:54:00:b3:c0:29"


class IpmiSim:
    """OpenIPMI's BMC simulator, the BMC behind a VM's KCS interface (QEMU's `ipmi-bmc-extern`
    connects to its serial port). Its LAN channel 1 listens on loopback only; the channel's
    IP and MAC addresses come from a `lan_config_program`, as a real BMC's come from its NIC."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.serial_port = _free_port()
        lanctl = workdir / "lanctl"
        lanctl.write_text(
            "#!/bin/sh\n# lanctl DEVICE get PARAM...: 'param:value' lines\nshift 2\nfor p in \"$@\"; do\n"
            f"  case $p in ip_addr) echo ip_addr:{BMC_ADDRESS};; ip_addr_src) echo ip_addr_src:static;;\n"
            f"    mac_addr) echo mac_addr:{BMC_MAC};; subnet_mask) echo subnet_mask:255.255.255.0;; esac\ndone\n"
        )
        lanctl.chmod(0o755)
        (workdir / "lan.conf").write_text(
            'name "tempered-test"\nset_working_mc 0x20\n'
            f"  startlan 1\n    addr 127.0.0.1 {_free_port()}\n    priv_limit admin\n"
            "    allowed_auths_admin md5\n"
            f'    lan_config_program "{lanctl} eth0"\n  endlan\n'
            f"  serial kcs 127.0.0.1 {self.serial_port} codec VM\n  startnow false\n"
            '  user 2 true "admin" "not-a-secret" admin 10 md5\n'
        )
        (workdir / "emu.cmd").write_text(
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n"
        )
        self.proc = subprocess.Popen(
            [IPMI_SIM, "-c", "lan.conf", "-f", "emu.cmd", "-n", "-s", str(workdir / "state")], cwd=workdir,
            stdin=subprocess.DEVNULL, stdout=open(workdir / "ipmi_sim.out", "wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not _listening(self.serial_port):
            assert self.proc.poll() is None and time.monotonic() < deadline, (workdir / "ipmi_sim.out").read_text()
            time.sleep(0.1)

    def qemu_args(self) -> list[str]:
        return [
            "-chardev", f"socket,id=ipmi0,host=127.0.0.1,port={self.serial_port},reconnect=10",
            "-device", "ipmi-bmc-extern,chardev=ipmi0,id=bmc0", "-device", "isa-ipmi-kcs,bmc=bmc0",
        ]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listening(port: int) -> bool:
    """Whether a socket listens on 127.0.0.1:port, read from /proc/net/tcp: connecting to find
    out would take ipmi_sim's one serial connection, which it does not listen for again."""
    wanted = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(fields[1] == wanted and fields[3] == "0A" for fields in (line.split() for line in lines))


def _vm(
    firmware: str, info: images.ImageInfo, plane: ControlPlane, workdir: Path, nic: str = "virtio-net-pci",
    bmc: IpmiSim | None = None,
) -> Vm:
    """A VM booting the image; `nic` is the QEMU model of its one NIC on BIOS (UEFI has two);
    `bmc` puts a KCS interface to that BMC in the VM."""
    machine_uuid = str(uuidlib.uuid4()).upper()          # the agent must report it lower case
    serial = f"TMP-{firmware.upper()}-{os.getpid()}"
    mac = "52:54:00:5e:%02x:%02x" % (os.getpid() % 256, 1 if firmware == "bios" else 2)
    disk = workdir / "disk.raw"
    disk_bytes = 10 * 1024 * MiB + 3 * MiB               # sparse
    with open(disk, "wb") as f:
        f.truncate(disk_bytes)
    bootif = "01-" + mac.replace(":", "-")
    kargs = (
        f"console=ttyS0 tempered.url=http://10.0.2.2:{plane.port} tempered.machine={plane.machine} "
        f"tempered.boot=1 tempered.token={plane.token} BOOTIF={bootif}"
    )
    log = workdir / "serial.log"
    args = [
        QEMU, "-accel", "tcg", "-m", "1024", "-smp", "2",
        "-kernel", str(info.vmlinuz), "-initrd", str(info.initrd), "-append", kargs,
        "-uuid", machine_uuid,
        # QEMU doubles commas to escape them: the vendor is 'Acme "Metal" \ Works, Inc.'
        "-smbios", f'type=1,serial={serial},manufacturer=Acme "Metal" \\ Works,, Inc.,product=Tempered Lab VM',
        "-drive", f"file={disk},if=none,id=d0,format=raw",
        "-device", "virtio-blk-pci,drive=d0,serial=VDISK-1",
        "-nographic", "-vga", "none", "-serial", f"file:{log}", "-monitor", "none", "-no-reboot",
    ]
    if firmware == "uefi":
        vars_copy = workdir / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        nvme = workdir / "nvme.raw"
        with open(nvme, "wb") as f:
            f.truncate(2 * 1024 * MiB)
        args += [
            "-machine", "q35",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
            # An e1000 first, without DHCP behind it: BOOTIF must pick the virtio NIC.
            "-netdev", "user,id=n1,restrict=on,dhcpstart=10.0.2.99",
            "-device", "e1000,netdev=n1,mac=52:54:00:5f:00:01,romfile=",
            "-netdev", "user,id=n0",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=",
            "-drive", f"file={nvme},if=none,id=d2,format=raw",
            "-device", "nvme,drive=d2,serial=NVME-SN-7",
        ]
    else:
        sata = workdir / "sata.raw"
        with open(sata, "wb") as f:
            f.truncate(1024 * MiB)
        args += [
            "-netdev", "user,id=n0",
            "-device", f"{nic},netdev=n0,mac={mac},romfile=",
            "-device", "ahci,id=ahci0",
            "-drive", f"file={sata},if=none,id=d1,format=raw",
            "-device", "ide-hd,drive=d1,bus=ahci0.0,serial=SATA-SN-42,model=TMP-SSD-1,rotation_rate=1",
        ]
    if bmc is not None:
        args += bmc.qemu_args()
    return Vm(firmware, workdir, mac, machine_uuid, serial, disk_bytes, args, log)


def _firmware_params() -> list:
    no_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is missing (apt-get install qemu-system-x86)")
    no_ovmf = pytest.mark.skipif(
        not (OVMF_CODE.exists() and OVMF_VARS.exists()), reason=f"{OVMF_CODE} is missing (apt-get install ovmf)"
    )
    no_ipmi_sim = pytest.mark.skipif(IPMI_SIM is None, reason="ipmi_sim is missing (apt-get install openipmi)")
    return [pytest.param("bios", marks=[no_qemu, no_ipmi_sim]), pytest.param("uefi", marks=[no_qemu, no_ovmf])]


@pytest.mark.parametrize("firmware", _firmware_params())
def test_a_vm_boots_the_image_and_posts_its_facts(image: Built, firmware: str, tmp_path: Path) -> None:
    # BIOS: the first POST is refused (the agent retries in 5 s); the VM has an IPMI BMC. UEFI:
    # the agent is told to wait once before it is told to power off; no BMC.
    plane = ControlPlane(
        machine=f"m-{firmware}-{os.getpid()}", token=f"tok-{uuidlib.uuid4().hex}",
        fail_first_posts=1 if firmware == "bios" else 0, wait_polls=1 if firmware == "uefi" else 0,
    ).start()
    bmc = IpmiSim(tmp_path) if firmware == "bios" else None
    vm = _vm(firmware, image.info, plane, tmp_path, bmc=bmc)
    try:
        vm.start()
        deadline = vm.started + FACTS_DEADLINE_S
        while plane.facts is None and time.monotonic() < deadline and vm.proc.poll() is None:
            vm.note_milestones()
            time.sleep(0.2)
        assert plane.facts is not None, f"no facts within {FACTS_DEADLINE_S:.0f} s\n{vm.diagnostics()}"
        try:
            vm.proc.wait(timeout=90)     # the agent powers the VM off when told to
        except subprocess.TimeoutExpired:
            pytest.fail(f"the VM did not power off after the instruction\n{vm.diagnostics()}")
        ended = time.monotonic()
    finally:
        vm.kill()
        plane.stop()
        if bmc is not None:
            bmc.stop()

    facts = plane.facts
    first_post = plane.posts[0][0] - vm.started
    print(
        f"\n[{firmware}] boot to first facts POST {first_post:.1f} s, to accepted facts "
        f"{plane.facts_at - vm.started:.1f} s, to poweroff {ended - vm.started:.1f} s "
        f"(POSTs {[status for _, status in plane.posts]}, polls {[a for _, a in plane.polls]})"
    )
    print(f"[{firmware}] serial console milestones: " + ", ".join(f"{k} {v:.1f} s" for k, v in vm.milestones.items()))
    print(f"[{firmware}] facts: {json.dumps(facts, separators=(',', ':'))}")

    log = vm.serial_log()
    assert "tempered-agent: facts posted" in log, vm.diagnostics()
    assert "tempered-agent: instruction: poweroff: test done" in log
    assert "tempered-agent: powering off" in log
    assert vm.proc.returncode == 0
    assert plane.rejected == 0

    assert facts["schema"] == 1 and facts["boot"] == 1
    assert facts["architecture"] == "x86_64"
    assert facts["firmware"] == firmware
    assert facts["processors"]["count"] == 2 and facts["processors"]["model"]
    assert facts["processor0"] == facts["processors"]["model"]
    assert 900 * MiB <= facts["memory"]["total_bytes"] <= 1024 * MiB
    assert facts["dmi"]["uuid"] == vm.uuid.lower()
    assert facts["dmi"]["serial"] == vm.serial
    assert facts["dmi"]["vendor"] == 'Acme "Metal" \\ Works, Inc.'
    assert facts["dmi"]["product"] == "Tempered Lab VM"

    disks = {d["name"]: d for d in facts["disks"]}
    assert disks["vda"] == {
        "name": "vda", "size_bytes": vm.disk_bytes, "model": None, "serial": "VDISK-1", "rotational": True,
    }
    assert [d for d in facts["disks"] if d["size_bytes"] == vm.disk_bytes] == [disks["vda"]]
    nics = {n["mac"]: n for n in facts["nics"]}
    assert nics[vm.mac]["driver"] == "virtio_net"
    assert nics[vm.mac]["link"] is True and nics[vm.mac]["ipv4"] == "10.0.2.15"
    pci = facts["pci"]
    assert any(p["class"] == "0x020000" and p["vendor"] == "0x1af4" for p in pci), pci
    assert all(p["slot"].count(":") == 2 for p in pci)

    if firmware == "bios":
        assert [status for _, status in plane.posts] == [503, 202]
        assert "tempered-agent: facts POST failed: wget: server returned error: HTTP/1.0 503" in log
        assert disks["sda"] == {
            "name": "sda", "size_bytes": 1024 * MiB, "model": "TMP-SSD-1", "serial": "SATA-SN-42", "rotational": False,
        }
        assert len(facts["nics"]) == 1
        # ipmi_si bound the KCS interface, ipmitool asked the BMC for its LAN configuration
        assert facts["bmc"] == {"driver": "ipmi", "address": BMC_ADDRESS, "mac": BMC_MAC}, vm.diagnostics()
    else:
        assert facts["bmc"] is None
        assert 'tempered-agent: instruction: wait: the cluster is not ready: "quorum" \\ 1 of 3 (asking again in 1 s)' in log
        assert plane.waits == ["20"] * len(plane.polls)  # every poll a long poll
        assert disks["nvme0n1"]["size_bytes"] == 2 * 1024 * MiB
        assert disks["nvme0n1"]["serial"] == "NVME-SN-7"
        assert disks["nvme0n1"]["rotational"] is False
        e1000 = nics["52:54:00:5f:00:01"]
        assert e1000["driver"] == "e1000" and e1000["ipv4"] is None


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is missing (apt-get install qemu-system-x86)")
def test_a_vm_whose_only_nic_is_an_rtl8139_posts_its_facts(image: Built, tmp_path: Path) -> None:
    """QEMU's rtl8139 (an RTL8139C+, driven by 8139cp) as the machine's only NIC: the image
    loads its driver, brings it up by DHCP and posts the facts over it."""
    plane = ControlPlane(machine=f"m-rtl-{os.getpid()}", token=f"tok-{uuidlib.uuid4().hex}").start()
    vm = _vm("bios", image.info, plane, tmp_path, nic="rtl8139")
    try:
        vm.start()
        deadline = vm.started + FACTS_DEADLINE_S
        while plane.facts is None and time.monotonic() < deadline and vm.proc.poll() is None:
            time.sleep(0.2)
        assert plane.facts is not None, f"no facts within {FACTS_DEADLINE_S:.0f} s\n{vm.diagnostics()}"
    finally:
        vm.kill()
        plane.stop()
    print(f"\n[rtl8139] boot to accepted facts {plane.facts_at - vm.started:.1f} s; nics {plane.facts['nics']}")
    nics = {n["mac"]: n for n in plane.facts["nics"]}
    assert nics[vm.mac]["driver"] in ("8139cp", "8139too"), nics
    assert nics[vm.mac]["link"] is True and nics[vm.mac]["ipv4"] == "10.0.2.15"
    assert any(p["vendor"] == "0x10ec" and p["device"] == "0x8139" and p["driver"] == nics[vm.mac]["driver"]
               for p in plane.facts["pci"]), plane.facts["pci"]
