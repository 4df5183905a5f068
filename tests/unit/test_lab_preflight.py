"""`tempered lab up` refuses before it starts anything, in one line that says exactly what is
missing: root, or the Debian packages (named, with the command that installs them)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from api.lab import lab, vm

REAL_WHICH = shutil.which


def _without(monkeypatch: pytest.MonkeyPatch, *programs: str) -> None:
    """This machine as if `programs` were not installed (everything else as it is, or present)."""
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name in programs else REAL_WHICH(name) or f"/usr/bin/{name}")


def test_without_root_it_says_so_and_how(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(lab.LabError) as refused:
        lab.preflight(lab.Options(machines=3))
    assert str(refused.value) == "tempered lab needs root (network namespaces, a bridge, QEMU taps): run it with sudo"


def test_without_qemu_it_names_the_packages_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    _without(monkeypatch, "qemu-system-x86_64", "ssh", "mksquashfs")
    monkeypatch.setattr(lab, "IPXE_ROM", tmp_path / "efi-virtio.rom")
    monkeypatch.setattr(vm, "OVMF_CODE", tmp_path / "OVMF_CODE_4M.fd")
    assert lab.missing_packages(lab.Options(machines=1)) == ["qemu-system-x86", "ipxe-qemu", "openssh-client", "squashfs-tools"]
    assert lab.missing_packages(lab.Options(machines=0)) == []  # no VMs: no QEMU needed
    with pytest.raises(lab.LabError) as refused:
        lab.preflight(lab.Options(machines=2))  # lab-2 is UEFI: OVMF too
    assert str(refused.value) == (
        "missing Debian packages: qemu-system-x86 ipxe-qemu openssh-client squashfs-tools ovmf (apt-get install "
        "--no-install-recommends qemu-system-x86 ipxe-qemu openssh-client squashfs-tools ovmf, or run make demo, "
        "which installs them)"
    )


def test_the_stop_command_is_the_program_that_was_run_with_sudo_when_it_was(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("sys.argv", [".venv/bin/tempered", "lab", "up"])
    monkeypatch.setenv("SUDO_USER", "newcomer")
    assert lab.stop_command() == "sudo .venv/bin/tempered lab down"
    monkeypatch.delenv("SUDO_USER")
    monkeypatch.setattr("sys.argv", ["/usr/lib/python3/x/__main__.py", "lab", "up"])
    assert lab.stop_command() == "tempered lab down"
