"""The driver for a machine's power settings: one call, whatever the driver.

`driver_for` checks what each driver cannot work without (an address; a user for the BMCs)
and refuses with a sentence naming it, so a machine with half its settings fails at its
first power command with the reason, not deep inside a library.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from activities.domain.power import PowerSettings
from activities.power import BmcRefused, PowerDriver
from activities.power.ipmi import IpmiDriver
from activities.power.manual import ManualDriver
from activities.power.qmp import QmpDriver
from activities.power.redfish import RedfishDriver

NEEDS_ADDRESS = {
    "redfish": "the BMC's URL (https://10.0.9.21)",
    "ipmi": "the BMC's host[:port] (10.0.9.22:623)",
    "qmp": "the VM's QMP socket path",
}


def driver_for(settings: PowerSettings) -> PowerDriver:
    """The driver that reaches this machine's power (manual when it has none)."""
    kind = settings.driver
    if kind == "manual":
        return ManualDriver()
    address = settings.address.strip()
    if not address:
        raise BmcRefused(f"{kind} power needs an address: {NEEDS_ADDRESS[kind]}")
    if kind == "qmp":
        return QmpDriver(address)
    if not settings.username:
        raise BmcRefused(f"{kind} power needs the BMC's user name")
    if kind == "redfish":
        if "@" in urlsplit(address if "://" in address else f"https://{address}").netloc:
            raise BmcRefused("redfish power: give the user and password in their own fields, not in the URL")
        return RedfishDriver(address, settings.username, settings.password, settings.system_id, settings.verify_tls)
    if kind == "ipmi":
        return IpmiDriver(address, settings.username, settings.password)
    raise BmcRefused(f"unknown power driver {kind!r}")  # the settings' Literal keeps this unreachable
