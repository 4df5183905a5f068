"""BMC emulators for the power tests, each a process of its own started and stopped by PID:

- `redfish_qmp`: sushy-tools' Redfish emulator, with a systems driver of ours that presses a
  QEMU VM's buttons through the QMP driver (or sushy-tools' own fake driver);
- `ipmi_qmp`: an IPMI BMC built on pyghmi's server class (`pyghmi.ipmi.bmc.Bmc`), backed by the
  QMP driver or by `MemoryPower` (no QEMU).

`fixtures` starts them for a test. A real power command through either one really resets a VM.
"""

from __future__ import annotations

import json
from pathlib import Path

from activities.domain.power import PowerState


class MemoryPower:
    """A machine that is only a power state: the emulators' backend where no QEMU runs. It
    writes what happened to `state_file` ({"power", "boots", "next_boot"}), so a test can see a
    reset that leaves the power on (a cycle) and a one-time network boot."""

    name = "memory"

    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file
        self.power, self.boots, self.next_boot = "off", 0, "default"
        self._save()

    def _save(self) -> None:
        self.state_file.write_text(json.dumps({"power": self.power, "boots": self.boots, "next_boot": self.next_boot}))

    def _boot(self) -> None:
        self.power, self.boots, self.next_boot = "on", self.boots + 1, "default"  # a one-time device is used up
        self._save()

    def status(self) -> PowerState:
        return "on" if self.power == "on" else "off"

    def power_on(self) -> None:
        if self.power != "on":
            self._boot()

    def power_off(self) -> None:
        self.power = "off"
        self._save()

    def cycle(self) -> None:
        self._boot()

    def pxe_once(self) -> None:
        self.next_boot = "network"
        self._save()


def read_memory(state_file: Path) -> dict:
    """What a MemoryPower machine last wrote."""
    return json.loads(state_file.read_text())
