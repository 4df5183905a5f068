"""`tempered lab console` and `lab power` on a lab VM's directory (no QEMU: the VM is off)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from api.lab import vm_cli
from api.lab.vm import Vm, specs


@pytest.fixture
def lab(tmp_path: Path, monkeypatch) -> typer.Typer:
    monkeypatch.setenv("TEMPERED_HOME", str(tmp_path))
    for spec in specs(2):
        Vm(spec, tmp_path / "lab" / "vms" / spec.name).prepare()
    (tmp_path / "lab" / "vms" / "lab-2" / "serial.log").write_text("\r\n".join(f"line {n}" for n in range(100)) + "\r\n")
    app = typer.Typer()
    vm_cli.register(app)
    return app


def test_console_shows_the_last_lines_by_name_or_mac(lab: typer.Typer):
    shown = CliRunner().invoke(lab, ["console", "lab-2", "-n", "3"])
    assert shown.exit_code == 0 and shown.output.split() == ["line", "97", "line", "98", "line", "99"]
    by_mac = CliRunner().invoke(lab, ["console", specs(2)[1].mac.upper(), "-n", "1"])
    assert by_mac.exit_code == 0 and by_mac.output.strip() == "line 99"


def test_an_unknown_machine_names_the_lab_vms(lab: typer.Typer):
    shown = CliRunner().invoke(lab, ["console", "lab-9"])
    assert shown.exit_code == 2 and "no lab VM 'lab-9'" in shown.output and "lab-1, lab-2" in shown.output


@pytest.mark.skipif(os.geteuid() != 0, reason="lab power needs root")
def test_power_status_of_a_vm_that_is_off(lab: typer.Typer):
    shown = CliRunner().invoke(lab, ["power", "lab-1", "status"])
    assert shown.exit_code == 0 and "lab-1 (52:54:00:7e:00:01, bios): off" in shown.output
    never = CliRunner().invoke(lab, ["power", "lab-1", "on"])
    assert never.exit_code == 1 and "was never started" in never.output
    wrong = CliRunner().invoke(lab, ["power", "lab-1", "reboot"])
    assert wrong.exit_code == 2
