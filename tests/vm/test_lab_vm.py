"""The lab's VMs for real: QEMU (TCG) started in a namespace on a bridge with no DHCP server, so
the firmware keeps trying to PXE boot (and the live table gives up on it); powered through QMP
(status, cycle, off, on) and stopped by its PID. The data disk and the machine's identity survive every power state. One VM at a time.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from rich.console import Console

from api.lab.vm import OVMF_CODE, OVMF_VARS, VIRTIO_ROM, Vm, specs
from api.lab.watch import watch
from tests.netlab import Lab, lab_available
from tests.vm.test_bootedge_qemu import (  # noqa: F401  (fixtures used by name)
    PREFIX,
    discovery_images,
    lab_join_method,
    pxe_lab,
)

DEADLINE_S = 120.0


def _unavailable() -> str | None:
    if (reason := lab_available()) is not None:
        return reason
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing: QEMU needs a tap device"
    gone = [str(p) for p in (VIRTIO_ROM, OVMF_CODE, OVMF_VARS) if not p.exists()]
    return f"missing {', '.join(gone)}" if gone else None


pytestmark = pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or "")


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[str]:
    """A namespace with br0 and nothing else on it: no DHCP answers the VM."""
    lab = Lab()
    name = ""
    try:
        name = lab.netns("lan")
        lab.bridge(name)
        yield name
    finally:
        lab.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert name not in listed.split(), f"namespace {name} left behind"


def _until(what: str, check, vm: Vm, deadline_s: float = DEADLINE_S) -> None:
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {deadline_s:.0f}s\n--- console ---\n{vm.console_tail()}")


def _count(vm: Vm, text: str) -> int:
    return vm.console_tail(10_000).count(text)


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_a_bios_vm_pxe_boots_and_is_powered_through_qmp(lan: str, tmp_path: Path):
    vm = Vm(specs(1)[0], tmp_path / "vms" / "lab-1")
    started = time.monotonic()
    try:
        pid = vm.start(lan, "br0")
        assert vm.start(lan, "br0") == pid, "a running VM is left alone"
        _until("iPXE trying DHCP", lambda: f"Configuring (net0 {vm.spec.mac})" in vm.console_tail(), vm)
        print(f"\n[lab vm] power-on to iPXE DHCP: {time.monotonic() - started:.1f}s")
        assert _count(vm, "SeaBIOS (version") == 1
        assert vm.power("status") == "running"
        data = vm.dir / "data.raw"
        inode = data.stat().st_ino

        assert vm.power("cycle") == "running"
        _until("a second boot banner", lambda: _count(vm, "SeaBIOS (version") == 2, vm)
        assert vm.pid() == pid, "a reset is not a new QEMU"

        assert vm.power("off") == "off"
        assert _gone(pid) and vm.pid() is None and vm.power("status") == "off"
        assert data.stat().st_ino == inode and data.stat().st_size == 11 * 10**9

        assert vm.power("on") == "running"
        assert vm.pid() not in (None, pid)
        _until("a third boot banner", lambda: _count(vm, "SeaBIOS (version") == 3, vm)
        assert data.stat().st_ino == inode, "the data disk was replaced"
    finally:
        vm.stop()
    assert vm.pid() is None
    assert subprocess.run(["ip", "-n", lan, "link", "show", "tap-lab-1"], capture_output=True).returncode != 0


def test_a_uefi_vm_starts_under_ovmf(lan: str, tmp_path: Path):
    vm = Vm(specs(2)[1], tmp_path / "vms" / "lab-2")
    try:
        pid = vm.start(lan, "br0")
        _until("OVMF's iPXE trying DHCP", lambda: f"Configuring (net0 {vm.spec.mac})" in vm.console_tail(), vm)
        assert "Features:" in vm.console_tail(200) and "EFI" in vm.console_tail(200)
        assert (vm.dir / "OVMF_VARS.fd").stat().st_size == OVMF_VARS.stat().st_size
        assert vm.power("status") == "running"
        # No edge on this bridge: the live table gives up on it at --pxe-timeout, naming it.
        console = Console(record=True, width=250)
        assert watch([vm], lambda: [], console, interval_s=0.1, timeout_s=3600, pxe_timeout_s=1) == 1
        shown = console.export_text()
        assert f"lab-2 ({vm.spec.mac}) made no PXE contact within 1s of power-on (its QEMU runs)" in shown
        assert f"Configuring (net0 {vm.spec.mac})" in shown.split("serial console (last lines)")[-1]
    finally:
        vm.stop()
    assert _gone(pid) and vm.pid() is None


def test_the_live_table_reads_the_machines_from_the_api(api_server, unique, tmp_path: Path, monkeypatch):
    """The table's rows come from the real API: a machine registered with a lab VM's MAC shows in
    its row with state, time in state and Web UI link; the watch gives up (1) at its timeout."""
    from api.lab.vm import VmSpec
    from api.lab.watch import api_fetch, rows

    monkeypatch.setenv("TEMPERED_API", api_server.url)
    monkeypatch.setenv("TEMPERED_TOKEN", api_server.token)
    cluster, mac = unique("lab"), f"52:54:00:7f:{secrets.token_hex(1)}:{secrets.token_hex(1)}"
    spec = VmSpec("lab-1", mac, "bios")
    with api_server.client() as http:
        http.post("/v1/clusters", json={"name": cluster, "quorum_count": 1}).raise_for_status()
        http.post("/v1/machines", json={"cluster": cluster, "mac": mac}).raise_for_status()
    fetch = api_fetch(cluster)
    deadline = time.monotonic() + 30
    while not (views := fetch()) and time.monotonic() < deadline:  # the list reads Temporal's visibility
        time.sleep(0.25)
    [row] = rows(views, [spec], datetime.now(timezone.utc))
    assert (row.machine, row.mac, row.firmware, row.state) == ("lab-1", mac, "bios", "new")
    assert row.seconds_in_state is not None and 0 <= row.seconds_in_state < 60
    assert row.web_ui.endswith(f"/workflows/machine:{mac}")
    console = Console(record=True, width=250)
    assert watch([Vm(spec, tmp_path / "lab-1")], fetch, console, interval_s=0.1, timeout_s=0) == 1
    shown = console.export_text()
    assert "not every machine was ready" in shown and mac in shown and "first seen" in shown
    with api_server.client() as http:
        http.post(f"/v1/machines/{mac}/decommission").raise_for_status()


async def test_the_two_disk_lab_vm_runs_discovery_and_reboots_into_the_next_boot(pxe_lab, client, settings):
    """A lab VM on the real edge: it PXE boots the discovery image, whose facts show both its
    disks (the data disk the largest); told to reboot, it comes back to the firmware in the same
    QEMU (no -no-reboot: the lab's machines go on to their runtime boot)."""
    from sqlmodel import select

    from activities.domain.machine import MachineStatus
    from activities.storage import db
    from activities.storage.models import Facts
    from api import temporal
    from api.lab.vm import DATA_DISK_BYTES, OTHER_DISK_BYTES, VmSpec
    from temporalio.service import RPCError

    spec = VmSpec("lab-3", f"{PREFIX}:{secrets.token_hex(1)}:{secrets.token_hex(1)}", "bios", system_disks=2)
    vm = Vm(spec, pxe_lab.tmp / "vms" / "lab-3")
    started = time.monotonic()
    pid = vm.start(pxe_lab.lan, "br0")
    handle = temporal.machine(client, vm.identity()["uuid"])
    try:
        state = None
        while state not in ("post-discover", "holding") and time.monotonic() - started < 300:
            try:
                status = await handle.query("status", result_type=MachineStatus)
                state = status.state
            except RPCError:  # no PXE contact yet: no workflow
                pass
            await asyncio.sleep(0.5)
        assert state == "post-discover", f"{state}\n{pxe_lab.diagnostics()}\n--- lab VM console ---\n{vm.console_tail()}"
        print(f"\n[lab vm] power-on to post-discover: {time.monotonic() - started:.1f}s")
        with db.session(settings.database_url) as s:
            facts = s.exec(select(Facts).where(Facts.machine_id == status.machine_id)).one().data
        disks = {d["name"]: (d["size_bytes"], d["serial"]) for d in facts["disks"]}
        assert disks == {"vda": (DATA_DISK_BYTES, "TEMPERED-DATA"), "vdb": (OTHER_DISK_BYTES, "TEMPERED-DISK2")}
        assert (facts["firmware"], facts["dmi"]["serial"]) == ("bios", vm.identity()["serial"])
        while _count(vm, "SeaBIOS (version") < 2 and time.monotonic() - started < 400:
            await asyncio.sleep(0.5)
        assert _count(vm, "SeaBIOS (version") == 2, f"no reboot after discovery\n{vm.console_tail()}"
        assert vm.pid() == pid and "tempered-agent: facts posted" in vm.console_tail(10_000)
    finally:
        vm.stop()
    assert _gone(pid)
