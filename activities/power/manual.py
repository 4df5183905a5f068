"""`manual` power: a person at the machine. The default for a machine without power settings.

Nothing is sent anywhere. Every command is refused with the sentence a person acts on (the
machine's reason shows the same words while a workflow waits); status is "unknown", since no one
can tell. The workflows never send commands for manual machines (they wait for the machine's PXE
contact instead): this driver exists so that `driver_for` answers for every machine.
"""

from __future__ import annotations

from activities.domain.power import MANUAL_STATUS, PowerState, manual_answer
from activities.power import BmcRefused


class ManualDriver:
    name = "manual"

    def __init__(self) -> None:
        self.answer = MANUAL_STATUS

    def __repr__(self) -> str:
        return "ManualDriver()"

    def power_on(self) -> None:
        raise BmcRefused(manual_answer("on"))

    def power_off(self) -> None:
        raise BmcRefused(manual_answer("off"))

    def cycle(self) -> None:
        raise BmcRefused(manual_answer("cycle"))

    def status(self) -> PowerState:
        return "unknown"

    def pxe_once(self) -> None:
        raise BmcRefused(manual_answer("pxe-once"))
