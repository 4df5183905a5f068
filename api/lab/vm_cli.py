"""`tempered lab console MACHINE` and `tempered lab power MACHINE on|off|cycle|status`.

The lab's CLI (api/lab/cli.py) adds these with `register(app)`. MACHINE is a lab VM's name
(`lab-1`) or its MAC; each VM's state is its directory under $TEMPERED_HOME/lab/vms/, so these
commands work from any shell while the lab runs, as a BMC's console and power button would.
"""

from __future__ import annotations

import os
import time
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from activities.storage import settings as settings_mod
from api.lab.vm import Vm, VmError, console_text

# Its own consoles, as api/cli/client.py's: importing that would import the whole CLI, which
# imports this module (the lab's commands register these).
out, err = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)


class Power(str, Enum):
    on = "on"
    off = "off"
    cycle = "cycle"
    status = "status"


def vms_dir() -> Path:
    return settings_mod.load().home / "lab" / "vms"


def find(machine: str) -> Vm:
    """The lab VM named `machine` (or with that MAC); exit 2 with the names there are if none."""
    root = vms_dir()
    known = sorted(p.parent for p in root.glob("*/spec.json")) if root.exists() else []
    for dir in known:
        vm = Vm.load(dir)
        if machine.lower() in (vm.spec.name.lower(), vm.spec.mac.lower()):
            return vm
    names = ", ".join(d.name for d in known) or "none: run 'tempered lab up'"
    err.print(f"[red]no lab VM {machine!r}[/red] in {root} (lab VMs: {names})")
    raise typer.Exit(2)


def console(
    machine: str = typer.Argument(..., help="The lab VM's name (lab-1) or MAC."),
    lines: int = typer.Option(40, "--lines", "-n", help="How many of the last lines to show."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing what the console writes (Ctrl-C stops)."),
) -> None:
    """Show a lab VM's serial console: firmware, iPXE, kernels, cloud-init."""
    vm = find(machine)
    out.print(vm.console_tail(lines), markup=False, highlight=False)
    if follow:
        _follow(vm)


def _follow(vm: Vm) -> None:
    """Print the console as it grows (from the end of what was shown) until Ctrl-C."""
    shown = len(console_text(vm.serial_log))
    try:
        while True:
            text = console_text(vm.serial_log)
            if len(text) < shown:  # the log was replaced (lab down --purge, then up)
                shown = 0
            if len(text) > shown:
                out.print(text[shown:], end="", markup=False, highlight=False)
                shown = len(text)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


def power(
    machine: str = typer.Argument(..., help="The lab VM's name (lab-1) or MAC."),
    action: Power = typer.Argument(..., help="on, off (pull the plug), cycle (reset) or status."),
) -> None:
    """Press a lab VM's power button (through QEMU's QMP): on, off, cycle, status."""
    if os.geteuid() != 0:
        err.print("[red]tempered lab power needs root[/red]: the VMs run in the lab's network namespace")
        raise typer.Exit(2)
    vm = find(machine)
    try:
        state = vm.power(action.value)
    except VmError as e:
        err.print(f"[red]{vm.spec.name}[/red]: {e}")
        raise typer.Exit(1) from None
    out.print(f"{vm.spec.name} ({vm.spec.mac}, {vm.spec.firmware}): {state}")


def register(app: typer.Typer) -> None:
    """Add `console` and `power` to the lab's command group."""
    app.command("console")(console)
    app.command("power")(power)
