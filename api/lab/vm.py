"""The lab's machines: QEMU VMs that PXE boot on the lab's bridge, powered through QMP.

Each VM lives in its own directory ($TEMPERED_HOME/lab/vms/<name>/): its disks, its identity
(SMBIOS UUID and serial, so a power cycle brings back the same machine), the OVMF variables
copy, the serial console log, the QMP socket and QEMU's PID file. QEMU runs daemonized inside the
lab's LAN namespace, so it outlives `tempered lab up --detach` and is stopped by its PID.

Measured facts this follows (see the PXE lab notes and tests/vm/test_bootedge_qemu.py): KVM is
unusable on these hosts, so always `-accel tcg`; with no VGA device SeaBIOS and iPXE write to the
serial port; QEMU's default ROM for virtio-net-pci is iPXE (efi-virtio.rom); the runtime OS runs
from RAM (a 165 MiB squashfs) and the cluster's preflight wants 3 GiB and a 10 GB disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid as uuidlib
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from activities.power import PowerError
from activities.power.qmp import Qmp, QmpDriver, QmpError
from api.lab.edge import MAC_PREFIX
from api.lab.standin import SHARE_TAG

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
VIRTIO_ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")  # QEMU's default (iPXE) ROM for virtio-net-pci
MEMORY_MIB = 3200  # above the 3 GiB preflight; TCG allocates it lazily
CPUS = 2
DATA_DISK_BYTES = 11 * 10**9  # the largest disk: the runtime OS keeps its state there (preflight: 10 GB)
OTHER_DISK_BYTES = 4 * 10**9  # a second system disk, smaller, so the data disk stays the largest
SERCON_FILE = "sercon-port.bin"  # SeaBIOS's fw_cfg item: the serial port, 0x3f8 little-endian
STOP_WAIT_S = 10.0

Firmware = Literal["bios", "uefi"]
PowerAction = Literal["on", "off", "cycle", "status"]
_ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_])")


class VmError(RuntimeError):
    """A VM cannot do what was asked; the message is one line for the operator."""


@dataclass(frozen=True)
class VmSpec:
    name: str  # "lab-1"
    mac: str  # "52:54:00:7e:00:01"
    firmware: Firmware
    system_disks: int = 1  # the machine's own disks (facts see them); the first is its data disk


def specs(count: int) -> list[VmSpec]:
    """The lab's mix: 1st BIOS (SeaBIOS), 2nd UEFI (OVMF), 3rd BIOS with two disks, then
    alternating BIOS/UEFI, so every lab of three or more covers both firmwares and a two-disk machine."""
    made = []
    for i in range(1, count + 1):
        firmware: Firmware = "uefi" if i % 2 == 0 else "bios"
        made.append(VmSpec(f"lab-{i}", f"{MAC_PREFIX}:{i >> 8:02x}:{i & 0xFF:02x}", firmware, 2 if i == 3 else 1))
    return made


def disk_files(spec: VmSpec, dir: Path) -> list[tuple[Path, int]]:
    """The machine's disks, in order: the data disk first (the largest, so the rendered
    user-data keeps the node's state there), then any further system disk."""
    disks = [(dir / "data.raw", DATA_DISK_BYTES)]
    disks += [(dir / f"disk{n}.raw", OTHER_DISK_BYTES) for n in range(2, spec.system_disks + 1)]
    return disks


def tap_name(spec: VmSpec) -> str:
    """The VM's tap in the LAN namespace (interface names are at most 15 characters)."""
    return f"tap-{spec.name}"[:15]


def qemu_args(spec: VmSpec, dir: Path, identity: dict[str, str], standin_share: Path | None = None) -> list[str]:
    """QEMU's command line: TCG, network boot first (iPXE ROM on virtio-net), the disks, the
    serial console appended to serial.log, QMP on a unix socket, daemonized with a PID file;
    `-no-shutdown`: a guest that powers itself off (a decommissioned machine) leaves its QEMU
    waiting, so QMP alone (the `qmp` power driver) can power it on again; and
    `standin_share`, the host directory all the lab's VMs share as the kubeadm stand-in's cluster
    state (virtio-9p, mounted by the stand-in's fragment)."""
    args = [QEMU, "-name", spec.name, "-accel", "tcg", "-machine", "q35", "-m", str(MEMORY_MIB), "-smp", str(CPUS)]
    if spec.firmware == "uefi":
        args += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={dir / 'OVMF_VARS.fd'}"]
    else:  # SeaBIOS writes to the serial port only when told which (-nographic would, but cannot daemonize)
        args += ["-fw_cfg", f"name=etc/sercon-port,file={dir / SERCON_FILE}"]
    args += ["-uuid", identity["uuid"], "-smbios", f"type=1,serial={identity['serial']}"]
    for n, (path, _) in enumerate(disk_files(spec, dir)):
        serial = "TEMPERED-DATA" if n == 0 else f"TEMPERED-DISK{n + 1}"
        args += ["-drive", f"file={path},if=none,id=d{n},format=raw",
                 "-device", f"virtio-blk-pci,drive=d{n},serial={serial}"]
    args += [
        "-netdev", f"tap,id=n0,ifname={tap_name(spec)},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={spec.mac},bootindex=1",
        "-display", "none", "-vga", "none", "-monitor", "none", "-no-shutdown",
        "-chardev", f"file,id=console,path={dir / 'serial.log'},append=on", "-serial", "chardev:console",
        "-qmp", f"unix:{dir / 'qmp.sock'},server=on,wait=off",
        "-pidfile", str(dir / "qemu.pid"), "-daemonize",
    ]
    if standin_share is not None:  # security_model=none: files are QEMU's (root's), as the guest's root wrote them
        path = str(standin_share).replace(",", ",,")  # QEMU's option syntax escapes a comma by doubling it
        args += ["-virtfs", f"local,path={path},mount_tag={SHARE_TAG},security_model=none,id=standin"]
    return args


def console_text(path: Path) -> str:
    """A serial log as text: carriage returns and terminal escapes removed."""
    if not path.exists():
        return ""
    return _ANSI.sub("", path.read_text(errors="replace")).replace("\r", "")


class Vm:
    """One lab machine. Its directory is its whole state; a fresh `Vm` on the same directory
    (another `tempered lab` command) sees the same machine, running or not."""

    def __init__(self, spec: VmSpec, dir: Path) -> None:
        self.spec = spec
        self.dir = dir

    @classmethod
    def load(cls, dir: Path) -> "Vm":
        """The VM a previous `start` left in `dir` (its spec is saved there)."""
        spec_file = dir / "spec.json"
        if not spec_file.exists():
            raise VmError(f"no lab VM in {dir}")
        return cls(VmSpec(**json.loads(spec_file.read_text())), dir)

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    @property
    def qmp_socket(self) -> Path:
        return self.dir / "qmp.sock"

    def pid(self) -> int | None:
        """QEMU's PID, if it runs and is this VM's QEMU (its command line names our directory)."""
        try:
            pid = int((self.dir / "qemu.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        ours = cmdline[0].endswith(QEMU.encode()) and str(self.dir / "qemu.pid").encode() in cmdline
        return pid if ours else None

    def identity(self) -> dict[str, str]:
        """The SMBIOS UUID and serial, made once and kept with the disks: the same machine after
        every power cycle, a new one only after `lab down --purge`."""
        path = self.dir / "identity.json"
        if not path.exists():
            made = {"uuid": str(uuidlib.uuid4()), "serial": f"LAB-{uuidlib.uuid4().hex[:8].upper()}"}
            path.write_text(json.dumps(made))
        return json.loads(path.read_text())

    def prepare(self, standin_share: Path | None = None) -> list[str]:
        """Create what is missing (directory, sparse disks, OVMF variables); keep what exists."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "spec.json").write_text(json.dumps(asdict(self.spec)))
        for path, size in disk_files(self.spec, self.dir):
            if not path.exists():
                with open(path, "wb") as disk:
                    disk.truncate(size)
        if self.spec.firmware == "bios":
            (self.dir / SERCON_FILE).write_bytes((0x3F8).to_bytes(2, "little"))
        elif not (self.dir / "OVMF_VARS.fd").exists():
            shutil.copyfile(OVMF_VARS, self.dir / "OVMF_VARS.fd")
        if len(str(self.qmp_socket)) > 107:
            raise VmError(f"{self.qmp_socket} is too long for a unix socket: use a shorter TEMPERED_HOME")
        return qemu_args(self.spec, self.dir, self.identity(), standin_share)

    def start(self, netns: str, bridge: str, standin_share: str | None = None) -> int:
        """Power on inside `netns` with a tap on `bridge` (and the stand-in's share, if given:
        kept in network.json with the rest, so `power on` brings it back); a running VM is left alone."""
        if (pid := self.pid()) is not None:
            return pid
        args = self.prepare(Path(standin_share) if standin_share else None)
        (self.dir / "network.json").write_text(
            json.dumps({"netns": netns, "bridge": bridge, "standin_share": standin_share}))
        self.qmp_socket.unlink(missing_ok=True)
        _tap(netns, bridge, tap_name(self.spec))
        self.record_power_on()
        done = subprocess.run(["ip", "netns", "exec", netns, *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0 or (pid := self.pid()) is None:
            raise VmError(f"QEMU for {self.spec.name} did not start: {(done.stderr or done.stdout).strip()}")
        return pid

    def power(self, action: PowerAction) -> str:
        """The power button: on, off (pull the plug: QEMU quits), cycle (reset), status (QEMU's
        own run state: running; paused, stopped by the `qmp` power driver; shutdown, the guest
        powered itself off; or off, no QEMU). On or cycle with no QEMU starts it where it last
        ran; on a paused or shut-down VM, they boot it afresh through QMP."""
        if action == "status":
            return self._status()
        if action == "off":
            self.stop()
            return "off"
        if self.pid() is None:  # on or cycle when off: power on where it last ran
            network = self.dir / "network.json"
            if not network.exists():
                raise VmError(f"{self.spec.name} was never started: run 'tempered lab up'")
            self.start(**json.loads(network.read_text()))
            return self._status()
        driver = QmpDriver(self.qmp_socket)
        try:
            if action == "cycle" or driver.qemu_status() != "running":
                self.record_power_on()
            if action == "cycle":
                driver.cycle()
            else:
                driver.power_on()
        except PowerError as e:
            raise VmError(str(e)) from None
        return self._status()

    def record_power_on(self) -> None:
        """When the power button was last pressed (on, or cycle): `tempered lab timings` counts from it."""
        (self.dir / "powered-on").write_text(datetime.now(timezone.utc).isoformat() + "\n")

    def powered_on(self) -> datetime | None:
        """The last power-on recorded by `record_power_on`, or None (never started)."""
        try:
            return datetime.fromisoformat((self.dir / "powered-on").read_text().strip())
        except (OSError, ValueError):
            return None

    def _status(self) -> str:
        if self.pid() is None:
            return "off"
        try:
            return QmpDriver(self.qmp_socket).qemu_status() or "off"
        except PowerError as e:
            raise VmError(str(e)) from None

    def stop(self) -> None:
        """QMP quit; if QEMU lingers, kill it by its PID (checked to be this VM's QEMU)."""
        pid = self.pid()
        if pid is None:
            return
        try:
            with Qmp(self.qmp_socket, timeout=5) as qmp:
                qmp.execute("quit")
        except (OSError, ConnectionError, QmpError):
            pass
        if not _exited(pid, STOP_WAIT_S) and self.pid() == pid:
            os.kill(pid, signal.SIGKILL)
            _exited(pid, STOP_WAIT_S)
        network = self.dir / "network.json"
        if network.exists():
            netns = json.loads(network.read_text())["netns"]
            subprocess.run(["ip", "-n", netns, "link", "del", tap_name(self.spec)], capture_output=True)

    def console_tail(self, lines: int = 40) -> str:
        """The serial console's last lines."""
        return "\n".join(console_text(self.serial_log).splitlines()[-lines:])


def _tap(netns: str, bridge: str, tap: str) -> None:
    """A tap for QEMU in `netns`, on `bridge` (made inside the namespace: nothing in the root one)."""
    def ip(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True)

    if ip("link", "show", "dev", tap).returncode != 0:
        made = ip("tuntap", "add", "dev", tap, "mode", "tap")
        if made.returncode != 0:
            raise VmError(f"cannot make {tap} in {netns}: {made.stderr.strip()}")
    ip("link", "set", tap, "master", bridge, "up").check_returncode()


def _exited(pid: int, wait_s: float) -> bool:
    """Wait for a process (not our child: QEMU daemonized) to be gone."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()
