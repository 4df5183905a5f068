"""The lab VMs' QEMU command line, without starting QEMU: the firmware mix, TCG, network boot
first, the data disk (the largest, kept) and any further system disk, serial log and QMP."""

from __future__ import annotations

import os
from pathlib import Path

from api.lab.vm import DATA_DISK_BYTES, OTHER_DISK_BYTES, OVMF_CODE, Vm, VmSpec, disk_files, qemu_args, specs, tap_name

IDENTITY = {"uuid": "8d6f1c1e-0000-4000-8000-000000000001", "serial": "LAB-TEST"}


def _option_values(args: list[str], option: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == option]


def test_the_mix_is_bios_uefi_then_a_two_disk_bios_then_alternating():
    made = specs(5)
    assert [(s.name, s.firmware, s.system_disks) for s in made] == [
        ("lab-1", "bios", 1), ("lab-2", "uefi", 1), ("lab-3", "bios", 2), ("lab-4", "uefi", 1), ("lab-5", "bios", 1),
    ]
    assert [s.mac for s in made[:3]] == ["52:54:00:7e:00:01", "52:54:00:7e:00:02", "52:54:00:7e:00:03"]
    assert len({s.mac for s in specs(300)}) == 300


def test_a_bios_vm_runs_under_tcg_network_first_with_its_data_disk(tmp_path: Path):
    spec = specs(1)[0]
    args = qemu_args(spec, tmp_path, IDENTITY)
    assert _option_values(args, "-accel") == ["tcg"]
    assert "pflash" not in " ".join(args)
    assert f"name=etc/sercon-port,file={tmp_path / 'sercon-port.bin'}" in _option_values(args, "-fw_cfg")
    devices = _option_values(args, "-device")
    assert f"virtio-net-pci,netdev=n0,mac={spec.mac},bootindex=1" in devices
    assert devices.count("virtio-blk-pci,drive=d0,serial=TEMPERED-DATA") == 1 and len(devices) == 2
    assert f"file={tmp_path / 'data.raw'},if=none,id=d0,format=raw" in _option_values(args, "-drive")
    assert _option_values(args, "-netdev") == [f"tap,id=n0,ifname={tap_name(spec)},script=no,downscript=no"]
    assert _option_values(args, "-uuid") == [IDENTITY["uuid"]]
    assert _option_values(args, "-qmp") == [f"unix:{tmp_path / 'qmp.sock'},server=on,wait=off"]
    assert f"path={tmp_path / 'serial.log'},append=on" in _option_values(args, "-chardev")[0]
    assert "-daemonize" in args and _option_values(args, "-pidfile") == [str(tmp_path / "qemu.pid")]
    assert "-no-shutdown" in args  # a guest's poweroff leaves QEMU, so the qmp power driver can power it on


def test_a_uefi_vm_boots_ovmf_with_its_own_vars_copy(tmp_path: Path):
    args = qemu_args(specs(2)[1], tmp_path, IDENTITY)
    drives = _option_values(args, "-drive")
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}" in drives
    assert f"if=pflash,format=raw,unit=1,file={tmp_path / 'OVMF_VARS.fd'}" in drives
    assert "-fw_cfg" not in args


def test_the_two_disk_vm_has_a_second_smaller_disk(tmp_path: Path):
    spec = specs(3)[2]
    assert disk_files(spec, tmp_path) == [(tmp_path / "data.raw", DATA_DISK_BYTES), (tmp_path / "disk2.raw", OTHER_DISK_BYTES)]
    assert OTHER_DISK_BYTES < DATA_DISK_BYTES  # the rendered user-data keeps state on the largest disk
    devices = _option_values(qemu_args(spec, tmp_path, IDENTITY), "-device")
    assert "virtio-blk-pci,drive=d1,serial=TEMPERED-DISK2" in devices


def test_prepare_makes_sparse_disks_once_and_keeps_the_identity(tmp_path: Path):
    vm = Vm(VmSpec("lab-3", "52:54:00:7e:00:03", "bios", 2), tmp_path / "lab-3")
    vm.prepare()
    data = tmp_path / "lab-3" / "data.raw"
    assert data.stat().st_size == DATA_DISK_BYTES and data.stat().st_blocks == 0
    data.write_bytes(b"kept")  # what a node wrote survives the next power-on's preparation
    identity = vm.identity()
    again = Vm.load(tmp_path / "lab-3")
    again.prepare()
    assert data.read_bytes() == b"kept" and again.identity() == identity and again.spec == vm.spec
    assert (tmp_path / "lab-3" / "disk2.raw").stat().st_size == OTHER_DISK_BYTES
    assert vm.pid() is None and vm.power("status") == "off"


def test_a_stale_pid_file_naming_another_process_is_not_our_qemu(tmp_path: Path):
    """`stop` kills by PID only when /proc/PID/cmdline is this VM's QEMU: a reused PID is left alone."""
    vm = Vm(specs(1)[0], tmp_path / "lab-1")
    vm.prepare()
    (vm.dir / "qemu.pid").write_text(str(os.getpid()))
    assert vm.pid() is None
    vm.stop()  # nothing to stop: this test's own process survives


def test_the_kubeadm_standin_share_is_a_9p_device_when_given(tmp_path: Path):
    """Every lab VM gets the host's stand-in cluster directory under the tag the fragment mounts."""
    from api.lab.standin import SHARE_TAG

    assert "-virtfs" not in qemu_args(specs(1)[0], tmp_path, IDENTITY)
    share = tmp_path / "a,b" / "kubeadm-standin"
    args = qemu_args(specs(2)[1], tmp_path, IDENTITY, share)
    assert _option_values(args, "-virtfs") == [
        f"local,path={tmp_path}/a,,b/kubeadm-standin,mount_tag={SHARE_TAG},security_model=none,id=standin"]
