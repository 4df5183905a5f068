"""Power drivers: one small interface over a machine's BMC (Redfish, IPMI), a QEMU VM's QMP socket,
or a person (`manual`).

The drivers are blocking (sushy and pyghmi are), so activities run them in a thread. Every
driver raises `PowerError` with the BMC's own answer; `BmcUnreachable` when nothing answered
(retried), `BmcRefused` when it answered no (wrong credentials, an error: not retried).
"""

from __future__ import annotations

from typing import Protocol

from activities.domain.power import PowerState


class PowerError(Exception):
    """A power command failed; the message is what the operator reads (the BMC's answer)."""


class BmcUnreachable(PowerError):
    """Nothing answered (timeout, connection refused): worth trying again."""


class BmcRefused(PowerError):
    """The BMC answered and said no (wrong credentials, an error answer): trying again will not help."""


class PowerDriver(Protocol):
    """What every driver does. `cycle` is a hard reset (or off, then on, where the BMC has no
    reset); `pxe_once` makes the next boot (only) a network boot."""

    name: str

    def power_on(self) -> None: ...

    def power_off(self) -> None: ...

    def cycle(self) -> None: ...

    def status(self) -> PowerState: ...

    def pxe_once(self) -> None: ...
