"""`manual` power: a person at the machine. The default for a machine without power settings.

Nothing is sent anywhere. Every command is refused with the sentence a person acts on (the
machine's reason shows the same words while a workflow waits); status is "unknown", since no one
can tell. The workflows never send commands for manual machines (they wait for the machine's PXE
contact instead): this driver exists so that `driver_for` answers for every machine.
"""

from __future__ import annotations

from activities.domain.power import MANUAL_CYCLE, PowerState
from activities.power import BmcRefused

MANUAL_ON = "power on this machine now"
MANUAL_OFF = "power off this machine now"
MANUAL_PXE_ONCE = "make this machine's next boot a network boot (its firmware's boot menu), then power-cycle it now"


class ManualDriver:
    name = "manual"

    def __init__(self) -> None:
        self.answer = "nobody to ask: a person powers this machine"

    def __repr__(self) -> str:
        return "ManualDriver()"

    def power_on(self) -> None:
        raise BmcRefused(f"manual power: {MANUAL_ON}")

    def power_off(self) -> None:
        raise BmcRefused(f"manual power: {MANUAL_OFF}")

    def cycle(self) -> None:
        raise BmcRefused(f"manual power: {MANUAL_CYCLE}")

    def status(self) -> PowerState:
        return "unknown"

    def pxe_once(self) -> None:
        raise BmcRefused(f"manual power: {MANUAL_PXE_ONCE}")
