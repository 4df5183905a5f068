"""Real firmware against the real boot edge and the real discovery image: QEMU PXE clients
(SeaBIOS + iPXE ROM, OVMF + iPXE EFI ROM, OVMF's own EDK2 PXE chainloading snponly.efi) boot on
a bridge where dnsmasq is the site's ordinary DHCP server (addresses only) and `tempered
bootedge` answers as proxyDHCP, TFTP, iPXE script and image server. Each VM boots the discovery
image built by `tempered image build discovery`, whose agent posts its facts through the edge,
is admitted (post-discover), and is told to reboot. The stored facts are checked against the
VM's real UUID, serial, disk, NIC and memory. Everything lives in private network namespaces;
the edge talks to the session's control plane over a unix socket.

Timings are printed (run with `pytest -s` to see them). Cases run one at a time: every TCG
guest keeps the cores busy.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from activities.domain.machine import MachineStatus
from api import temporal
from tests.conftest import catch_all_edge
from tests.netlab import Lab, ip, lab_available
from tests.servers import VENV_BIN, stop

QEMU = shutil.which("qemu-system-x86_64")
DNSMASQ = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None)
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
VIRTIO_ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")  # QEMU's default ROM for virtio-net-pci
SNPONLY = Path("/usr/lib/ipxe/snponly.efi")
PREFIX = "52:54:00:7e"
DEADLINE_S = 240.0
VM_MEMORY_MIB = 3200  # above the 3 GiB preflight; TCG allocates it lazily
DISK_BYTES = 11 * 10**9


def _unavailable() -> str | None:
    if (reason := lab_available()) is not None:
        return reason
    if QEMU is None:
        return "qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"
    if DNSMASQ is None:
        return "dnsmasq is missing (apt-get install dnsmasq-base)"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing: QEMU needs a tap device"
    return None


def _missing(*paths: Path) -> str | None:
    gone = [str(p) for p in paths if not p.exists()]
    return f"missing {', '.join(gone)}" if gone else None


pytestmark = pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or "")

_ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_])")
_SCRIPT = re.compile(r"boot script for (\S+): (\S+) \(machine (\S+), boot (\d+), (\S+)\)")


def _text(path: Path) -> str:
    """A log as text, with carriage returns and terminal escapes removed."""
    if not path.exists():
        return ""
    return _ANSI.sub("", path.read_text(errors="replace")).replace("\r", "")


def _tail(path: Path, lines: int = 40, skip: str | None = None) -> str:
    kept = [line for line in _text(path).splitlines() if skip is None or skip not in line]
    return "\n".join(kept[-lines:]) or "(empty)"


@dataclass(frozen=True)
class Firmware:
    name: str
    uefi: bool
    native_pxe: bool  # the firmware's own PXE client first (no iPXE ROM), then TFTP snponly.efi

    def args(self, vars_copy: Path) -> list[str]:
        args = []
        if self.uefi:
            args += [
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
            ]
        return args


@dataclass
class PxeLab:
    lab: Lab
    lan: str
    site: str
    edge: str
    cluster: str
    tmp: Path
    vms: list[subprocess.Popen] = field(default_factory=list)

    @property
    def edge_ip(self) -> str:
        return self.lab.address(3)

    @property
    def edge_log(self) -> Path:
        return self.tmp / "edge.log"

    @property
    def site_log(self) -> Path:
        return self.tmp / "site-dhcp.log"

    @property
    def tftp_log(self) -> Path:
        return self.tmp / "edge-state" / "tftp.log"

    def start_site_dhcp(self) -> None:
        """The site's own DHCP server: addresses only, plus an IPv6 RA so iPXE does not wait ~16 s."""
        subnet = self.lab.subnet
        ip("addr", "add", "fd00:213::2/64", "dev", "eth0", "nodad", netns=self.site)
        proc = self.lab.run(
            self.site,
            [DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--port=0", "--interface=eth0", "--bind-interfaces",
             f"--dhcp-range=10.213.{subnet}.100,10.213.{subnet}.150,255.255.255.0,1h", "--no-ping",
             "--enable-ra", "--dhcp-range=fd00:213::,ra-only,64",
             f"--dhcp-leasefile={self.tmp / 'site.leases'}", "--pid-file=", "--log-facility=-"],
            self.site_log,
        )
        time.sleep(0.5)
        assert proc.poll() is None, f"the site DHCP server exited:\n{_tail(self.site_log)}"

    def start_edge(self, control_plane: str, token_file: Path, images: Path) -> None:
        state = self.tmp / "edge-state"
        proc = self.lab.run(
            self.edge,
            [str(VENV_BIN / "tempered"), "bootedge", "--interface", "eth0", "--control-plane", control_plane,
             "--token-file", str(token_file), "--state-dir", str(state), "--policy-refresh", "1",
             "--images-dir", str(images)],
            self.edge_log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            up = self.lab.exec(self.site, ["curl", "-sf", "--max-time", "5", f"http://{self.edge_ip}:8080/boot.ipxe"])
            if up.returncode == 0 and (state / "config.json").exists():
                return
            assert proc.poll() is None, f"the edge exited:\n{_tail(self.edge_log)}"
            time.sleep(0.2)
        raise AssertionError(f"the edge did not come up:\n{_tail(self.edge_log)}")

    def boot(
        self, firmware: Firmware, mac: str, machine_uuid: str, serial: str, fresh_disk: bool = True
    ) -> subprocess.Popen:
        """Power the VM on (it exits instead of rebooting); `fresh_disk=False` keeps the disk of
        the previous power-on, as a real machine would."""
        vars_copy = self.tmp / "OVMF_VARS.fd"
        if firmware.uefi and (fresh_disk or not vars_copy.exists()):
            shutil.copyfile(OVMF_VARS, vars_copy)
        nic = f"virtio-net-pci,netdev=n0,mac={mac},bootindex=1" + (",romfile=" if firmware.native_pxe else "")
        if fresh_disk or not self.disk.exists():
            self.disk.unlink(missing_ok=True)
            with open(self.disk, "wb") as disk:  # sparse: preflight wants 10 GB on one disk
                disk.truncate(DISK_BYTES)
        proc = self.lab.run(
            self.lan,
            [QEMU, "-accel", "tcg", "-machine", "q35", "-m", str(VM_MEMORY_MIB), "-smp", "2",
             *firmware.args(vars_copy),
             "-uuid", machine_uuid, "-smbios", f"type=1,serial={serial}",
             "-drive", f"file={self.disk},if=none,id=d0,format=raw",
             "-device", "virtio-blk-pci,drive=d0,serial=TEMPERED-DISK",
             "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no", "-device", nic,
             "-nographic", "-vga", "none", "-serial", f"file:{self.serial_log}", "-monitor", "none", "-no-reboot"],
            self.tmp / "qemu.log",
        )
        self.vms.append(proc)
        self._wait_for_tap(proc)
        return proc

    def _wait_for_tap(self, proc: subprocess.Popen) -> None:
        """QEMU opened the tap on the bridge (not a tap of its own making elsewhere)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            shown = self.lab.exec(self.lan, ["ip", "-j", "link", "show", "dev", "tap0"], timeout=10)
            link = json.loads(shown.stdout or "[{}]")[0]
            if link.get("master") == "br0" and "LOWER_UP" in link.get("flags", []):
                return
            assert proc.poll() is None, f"QEMU exited ({proc.returncode}):\n{_tail(self.tmp / 'qemu.log')}"
            time.sleep(0.1)
        raise AssertionError(f"tap0 never came up on br0: {shown.stdout}{shown.stderr}")

    @property
    def disk(self) -> Path:
        return self.tmp / "disk.raw"

    @property
    def serial_log(self) -> Path:
        return self.tmp / "serial.log"

    def diagnostics(self) -> str:
        ports = self.lab.exec(self.lan, ["ip", "-o", "-s", "link", "show"], timeout=10).stdout
        return "\n".join(
            [
                "--- LAN ports ---", ports.strip(),
                "--- serial console (tail) ---", _tail(self.serial_log),
                "--- qemu ---", _tail(self.tmp / "qemu.log", 10),
                "--- edge (tail, without its policy polls) ---", _tail(self.edge_log, skip="INFO httpx:"),
                "--- edge TFTP (tail) ---", _tail(self.tftp_log, 10),
                "--- site DHCP (tail) ---", _tail(self.site_log, 15),
            ]
        )


@pytest.fixture(scope="module")
def discovery_images(tmp_path_factory, pytestconfig) -> Path:
    """The discovery image, built once for the module (packages cached across runs), in the
    layout an edge serves: images/discovery/{vmlinuz,initrd.gz}."""
    from bootedge.images import discovery as images

    root = tmp_path_factory.mktemp("images")
    cache = Path(os.environ.get("TEMPERED_IMAGE_CACHE") or pytestconfig.cache.mkdir("tempered-images"))
    started = time.monotonic()
    info = images.build_discovery(root / "discovery", cache_dir=cache)
    print(f"\n[discovery image] built in {time.monotonic() - started:.1f}s: {info}")
    return root


@pytest.fixture
def lab_join_method() -> str:
    """How the lab cluster's machines join: reported from outside (no kubeadm on these VMs). A
    module whose VMs get the kubeadm stand-in overrides it with "ansible"."""
    return "external"


@pytest.fixture
def pxe_lab(api_server, uds_api, tmp_path, unique, discovery_images, lab_join_method):
    """LAN namespace with br0 and tap0; the site DHCP and the edge on the bridge. The edge is
    catch-all into a fresh cluster for MACs under PREFIX, on a segment of its own."""
    token_file = tmp_path / "edge-token"
    cluster, name = catch_all_edge(api_server, unique, PREFIX, token_file, lab_join_method)
    lab = Lab()
    names: list[str] = []
    try:
        lan, site, edge = lab.netns("lan"), lab.netns("site"), lab.netns("edge")
        names = list(lab.namespaces)
        lab.bridge(lan)
        lab.attach(lan, site, "site-p", 2)
        lab.attach(lan, edge, "edge-p", 3)
        ip("tuntap", "add", "dev", "tap0", "mode", "tap", netns=lan)
        ip("link", "set", "tap0", "master", "br0", "up", netns=lan)
        setup = PxeLab(lab, lan, site, edge, cluster, tmp_path)
        setup.start_site_dhcp()
        setup.start_edge(uds_api, token_file, discovery_images)
        yield setup
    finally:
        lab.close()
        (tmp_path / "OVMF_VARS.fd").unlink(missing_ok=True)
        with api_server.client() as http:
            http.delete(f"/v1/edges/{name}")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    left = [ns for ns in names if ns in listed.split()]
    assert not left, f"namespaces left behind: {left}"
    assert all(vm.poll() is not None for vm in setup.vms), "a QEMU process outlived the test"


CASES = [
    pytest.param(Firmware("bios", uefi=False, native_pxe=False), id="bios-ipxe-rom",
                 marks=pytest.mark.skipif(_missing(VIRTIO_ROM) is not None, reason=_missing(VIRTIO_ROM) or "")),
    pytest.param(Firmware("uefi", uefi=True, native_pxe=False), id="uefi-ipxe-rom",
                 marks=pytest.mark.skipif(_missing(OVMF_CODE, OVMF_VARS, VIRTIO_ROM) is not None,
                                          reason=_missing(OVMF_CODE, OVMF_VARS, VIRTIO_ROM) or "")),
    pytest.param(Firmware("uefi-pxe", uefi=True, native_pxe=True), id="uefi-native-pxe-snponly",
                 marks=pytest.mark.skipif(_missing(OVMF_CODE, OVMF_VARS, SNPONLY) is not None,
                                          reason=_missing(OVMF_CODE, OVMF_VARS, SNPONLY) or "")),
]


@pytest.mark.parametrize("firmware", CASES)
async def test_a_qemu_machine_network_boots_into_discovery(
    pxe_lab: PxeLab, firmware: Firmware, client, api_server, settings
):
    mac = f"{PREFIX}:{secrets.token_hex(1)}:{secrets.token_hex(1)}"
    machine_uuid = str(uuidlib.uuid4())
    serial = f"SN-{secrets.token_hex(4)}"
    started = time.monotonic()
    vm = pxe_lab.boot(firmware, mac, machine_uuid, serial)
    marks: dict[str, float] = {}

    def note(what: str, seen: bool) -> None:
        if seen and what not in marks:
            marks[what] = time.monotonic() - started

    script_url = f"Filename: http://{pxe_lab.edge_ip}:8080/boot.ipxe"  # iPXE's console, from the proxy answer
    script = None
    while time.monotonic() - started < DEADLINE_S:
        edge = _text(pxe_lab.edge_log)
        note("site DHCP lease", re.search(rf"DHCPACK\(eth0\) \S+ {mac}", _text(pxe_lab.site_log)) is not None)
        note("proxyDHCP -> firmware PXE", f"answered {mac} (efi)" in edge)
        note("TFTP snponly.efi", re.search(r"sent \S*/snponly\.efi", _text(pxe_lab.tftp_log)) is not None)
        note("iPXE got the script URL", script_url in _text(pxe_lab.serial_log))
        served = [m for m in _SCRIPT.finditer(edge) if m.group(1) == mac]
        if served:
            note("boot script", True)
            script = served[0]
            break
        if vm.poll() is not None:
            break
        await asyncio.sleep(0.25)
    if script is None:
        stop(vm)
        raise AssertionError(
            f"{firmware.name}: no boot script for {mac} within {time.monotonic() - started:.0f}s "
            f"(QEMU exit code {vm.poll()}; seen: {marks})\n{pxe_lab.diagnostics()}"
        )
    try:
        action, machine_id, boot, state = script.group(2), script.group(3), int(script.group(4)), script.group(5)
        assert (action, boot, state) == ("discovery", 1, "boot-1"), script.group(0)
        assert machine_id == machine_uuid.lower(), f"machine id {machine_id} is not the SMBIOS UUID {machine_uuid}"
        status = await temporal.machine(client, machine_uuid).query("status", result_type=MachineStatus)
        assert (status.machine_id, status.state, status.boot, status.mac, status.cluster) == (
            machine_uuid, "boot-1", 1, mac, pxe_lab.cluster
        )
        with api_server.client() as http:
            view = http.get(f"/v1/machines/{machine_uuid}").raise_for_status().json()
        assert (view["uuid"], view["serial"], view["macs"]) == (machine_uuid, serial, [mac])
        assert re.search(rf"DHCPACK\(eth0\) 10\.213\.\S+ {mac}", _text(pxe_lab.site_log)), "no lease from the site"
        # The VM ran the script: its console shows the echo line, then the (still missing) kernel.
        shown = f"Tempered: booting the discovery image for {machine_uuid}"
        while shown not in _text(pxe_lab.serial_log) and time.monotonic() - started < DEADLINE_S:
            await asyncio.sleep(0.25)
        note("script echoed on the console", shown in _text(pxe_lab.serial_log))
        console, edge = _text(pxe_lab.serial_log), _text(pxe_lab.edge_log)
        assert shown in console, f"the console never showed {shown!r}"
        assert script_url in console
        if firmware.native_pxe:
            # EDK2 got snponly.efi (proxyDHCP, then TFTP); iPXE on SNP then got the script URL.
            assert f"answered {mac} (efi) with snponly.efi" in edge
            assert re.search(r"sent \S*/snponly\.efi to 10\.213\.", _text(pxe_lab.tftp_log)), _tail(pxe_lab.tftp_log)
            assert "NBP file downloaded successfully" in console and "using SNP" in console
            assert console.index("NBP file downloaded successfully") < console.index(script_url)
        else:
            assert f"answered {mac} (ipxe) with http://{pxe_lab.edge_ip}:8080/boot.ipxe" in edge
            assert f"answered {mac} (efi)" not in edge and f"answered {mac} (bios)" not in edge

        # The discovery image runs: its agent posts the facts through the edge, the machine is
        # admitted, and the agent reboots it when told (QEMU runs with -no-reboot: it exits).
        handle = temporal.machine(client, machine_uuid)
        while time.monotonic() - started < DEADLINE_S:
            status = await handle.query("status", result_type=MachineStatus)
            note("facts posted", status.facts_digest is not None)
            if status.state in ("post-discover", "holding"):
                note(status.state, True)
                break
            await asyncio.sleep(0.5)
        assert (status.state, status.role) == ("post-discover", "master-prime"), (status.state, status.reason)
        _assert_facts_match_the_vm(settings, machine_uuid, serial, mac, firmware)
        while vm.poll() is None and time.monotonic() - started < DEADLINE_S:
            await asyncio.sleep(0.25)
        note("rebooted when told", vm.poll() is not None)
        assert vm.poll() is not None, "the agent did not reboot the machine when told to"
        assert "tempered-agent: facts posted" in _text(pxe_lab.serial_log)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{pxe_lab.diagnostics()}") from None
    finally:
        stop(vm)
        print(f"\n[{firmware.name}] from QEMU start: " + ", ".join(f"{k} {v:.1f}s" for k, v in marks.items()))
    assert vm.poll() is not None


def _assert_facts_match_the_vm(settings, machine_uuid: str, serial: str, mac: str, firmware: Firmware) -> None:
    """The stored facts describe the VM QEMU was started as: its SMBIOS identity, disk, NIC,
    memory and CPUs."""
    from sqlmodel import select

    from activities.storage import db
    from activities.storage.models import Facts

    with db.session(settings.database_url) as s:
        row = s.exec(select(Facts).where(Facts.machine_id == machine_uuid, Facts.boot == 1)).one()
    facts = row.data
    assert (facts["dmi"]["uuid"].lower(), facts["dmi"]["serial"]) == (machine_uuid, serial)
    assert facts["firmware"] == ("uefi" if firmware.uefi else "bios")
    assert facts["processors"]["count"] == 2 and facts["architecture"] == "x86_64"
    assert 3000 << 20 <= facts["memory"]["total_bytes"] <= VM_MEMORY_MIB << 20
    disks = {d["name"]: d for d in facts["disks"]}
    assert disks["vda"]["size_bytes"] == DISK_BYTES and disks["vda"]["serial"] == "TEMPERED-DISK"
    nic = next(n for n in facts["nics"] if n["mac"] == mac)
    assert nic["driver"] == "virtio_net" and nic["ipv4"].startswith("10.213.")
    assert any(d["class"] == "0x020000" and d["vendor"] == "0x1af4" for d in facts["pci"])
