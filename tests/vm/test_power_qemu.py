"""The power drivers on a real QEMU VM (TCG, no network: `-nic none`), through each way a worker
reaches it: the QMP driver on the VM's socket, the Redfish driver through sushy-tools' emulator
whose System is that VM, and the IPMI driver through the pyghmi BMC whose chassis is that VM.

The VM has no disk and no NIC: SeaBIOS prints its banner on the serial console, finds nothing
to boot and halts (QEMU's default: no reboot after a failed boot). So every "SeaBIOS (version"
in the serial log is one boot, and only a power command makes another: cycle resets it (a new
banner); off stops the vCPUs (QEMU stays, reporting "paused"; nothing printed); on boots it
afresh from the firmware (a new banner, not a resume of the halted one).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from activities.domain.power import PowerSettings
from activities.power import PowerDriver
from activities.power.drivers import driver_for
from activities.power.qmp import QmpDriver
from api.lab.vm import console_text
from tests.bmc.fixtures import ipmi_bmc, redfish_bmc  # noqa: F401  (fixtures used by name)
from tests.servers import stop

QEMU = "qemu-system-x86_64"
BANNER = "SeaBIOS (version"
HALTED = "No bootable device."
RESET_TERMINAL = "\x1bc"  # SeaBIOS's first output on a boot
BOOT_S = 120.0  # TCG on a busy 2-core host: SeaBIOS takes a second or two alone


def _unavailable() -> str | None:
    if shutil.which(QEMU) is None:
        return f"{QEMU} is missing (apt-get install qemu-system-x86)"
    return None


pytestmark = pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or "")


@dataclass
class Vm:
    proc: subprocess.Popen
    qmp_socket: Path
    serial_log: Path

    def console(self) -> str:
        return console_text(self.serial_log)

    def boots(self) -> int:
        return self.console().count(BANNER)

    def wait_boots(self, n: int, what: str) -> None:
        """Until the n-th boot has halted (its banner and its "No bootable device.")."""
        deadline = time.monotonic() + BOOT_S
        while not (self.boots() >= n and self.console().count(HALTED) >= n):
            assert self.proc.poll() is None, f"QEMU exited ({self.proc.returncode})"
            assert time.monotonic() < deadline, f"{what}: not within {BOOT_S:.0f}s\n--- console ---\n{self.console()}"
            time.sleep(0.2)
        assert self.boots() == n, f"{what}: {self.boots()} boots, not {n}\n{self.console()}"


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[Vm]:
    """A QEMU with no disk and no NIC, its serial console in a file, QMP on a socket; started as
    our child and stopped by its PID."""
    sercon = tmp_path / "sercon-port.bin"  # SeaBIOS writes to the serial port only when told which
    sercon.write_bytes((0x3F8).to_bytes(2, "little"))
    qmp, serial = tmp_path / "qmp.sock", tmp_path / "serial.log"
    args = [QEMU, "-accel", "tcg", "-machine", "q35", "-m", "64", "-nic", "none",
            "-display", "none", "-vga", "none", "-monitor", "none", "-no-shutdown",
            "-fw_cfg", f"name=etc/sercon-port,file={sercon}",
            "-chardev", f"file,id=console,path={serial}", "-serial", "chardev:console",
            "-qmp", f"unix:{qmp},server=on,wait=off"]
    with open(tmp_path / "qemu.log", "wb") as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    machine = Vm(proc, qmp, serial)
    try:
        machine.wait_boots(1, "the first boot")
        yield machine
    finally:
        stop(proc)
    assert proc.poll() is not None


def _driver(kind: str, vm: Vm, redfish_bmc, ipmi_bmc) -> PowerDriver:  # noqa: F811
    if kind == "qmp":
        return driver_for(PowerSettings(driver="qmp", address=str(vm.qmp_socket)))
    bmc = redfish_bmc(qmp=vm.qmp_socket) if kind == "redfish" else ipmi_bmc(qmp=vm.qmp_socket)
    return driver_for(bmc.settings())


@pytest.mark.parametrize("kind", ["qmp", "redfish", "ipmi"])
def test_each_driver_resets_stops_and_starts_a_qemu_vm(kind: str, vm: Vm, redfish_bmc, ipmi_bmc):  # noqa: F811
    driver = _driver(kind, vm, redfish_bmc, ipmi_bmc)
    assert driver.name == kind and driver.status() == "on"

    driver.cycle()
    vm.wait_boots(2, f"{kind} cycle: a second boot")

    driver.power_off()
    assert driver.status() == "off"
    assert QmpDriver(vm.qmp_socket).qemu_status() == "paused", "off stops the vCPUs; QEMU stays"
    quiet = vm.console()
    assert driver.status() == "off" and vm.console() == quiet, "nothing runs while off"

    driver.power_on()
    vm.wait_boots(3, f"{kind} on: a fresh boot")
    before_banner = vm.console()[len(quiet):].split(BANNER)[0]
    assert not before_banner.replace(RESET_TERMINAL, "").strip(), f"not a fresh boot: {before_banner!r} came first"
    assert driver.status() == "on" and QmpDriver(vm.qmp_socket).qemu_status() == "running"

    driver.power_on()  # already on: no reset
    driver.pxe_once()  # answers (QMP: nothing to change, the lab's VMs boot the network first)
    assert driver.status() == "on" and vm.boots() == 3 and vm.proc.poll() is None


def test_a_cycle_of_a_stopped_vm_boots_it(vm: Vm):
    driver = QmpDriver(vm.qmp_socket)
    driver.power_off()
    assert driver.status() == "off"
    driver.cycle()
    assert driver.answer == "was off: reset and started"
    vm.wait_boots(2, "a cycle while off: a boot")
    assert driver.status() == "on"
