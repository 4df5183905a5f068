"""Power control: how a machine's power is reached (its BMC), and what a power command asks and answers.

A machine without power settings has the `manual` driver: nothing is sent anywhere, and whatever
waits for the power action (a reboot, a reprovision, a rolling upgrade) says "power-cycle this
machine now" until the machine PXE boots. The other drivers reach a BMC: Redfish (sushy), IPMI
(pyghmi), or a QEMU VM's QMP socket (the lab). The password is sealed at rest and never leaves
the database in an answer: `PowerView` is what the API shows.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from activities.domain.ids import DnsLabel

PowerDriverName = Literal["manual", "redfish", "ipmi", "qmp"]
PowerAction = Literal["on", "off", "cycle", "status", "pxe-once"]
PowerState = Literal["on", "off", "unknown"]
POWER_ACTIONS: tuple[str, ...] = ("on", "off", "cycle", "status", "pxe-once")
MANUAL_CYCLE = "power-cycle this machine now"  # the reason a machine shows while a person must act
MANUAL_ON = "power on this machine now"
MANUAL_OFF = "power off this machine now"
MANUAL_PXE_ONCE = "make this machine's next boot a network boot (its firmware's boot menu), then power-cycle it now"
MANUAL_STATUS = "unknown: nobody to ask, a person powers this machine"
_MANUAL = {"on": MANUAL_ON, "off": MANUAL_OFF, "cycle": MANUAL_CYCLE, "pxe-once": MANUAL_PXE_ONCE,
           "status": MANUAL_STATUS}


def manual_answer(action: str) -> str:
    """What a power command answers for a machine without a BMC: what a person must do for this
    action (status: nobody can tell). One wording for the manual driver and the workflows."""
    return f"manual power: {_MANUAL[action]}"


def no_site_worker(site: str | None) -> str:
    """What a power command or step says when no worker polls the queue it was scheduled on."""
    if site:
        return f"no worker serves site {site}: start `tempered worker --site {site}` next to its BMCs"
    return "no worker serves the main task queue: start `tempered worker`"


def site_queue(site: str) -> str:
    """The task queue of a site's worker (`tempered worker --site NAME`), where its power runs."""
    return f"tempered-site-{site}"


class PowerSettings(BaseModel):
    """How to reach a machine's power (PUT /v1/machines/{id}/power). The password is write-only."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"driver": "redfish", "address": "https://10.0.9.21", "username": "admin", "password": "secret",
         "system_id": "/redfish/v1/Systems/1", "site": "rack-a", "verify_tls": False},
        {"driver": "ipmi", "address": "10.0.9.22:623", "username": "ADMIN", "password": "secret"},
        {"driver": "qmp", "address": "/var/lib/tempered/lab/vms/lab-1/qmp.sock"},
        {"driver": "manual"},
    ]})

    driver: PowerDriverName = Field(default="manual", description="manual (a person), redfish, ipmi or qmp (QEMU)")
    address: str = Field(
        default="", max_length=512,
        description="redfish: the BMC's URL; ipmi: host[:port]; qmp: the VM's QMP unix socket; manual: empty",
    )
    username: str = Field(default="", max_length=128, description="the BMC user (redfish, ipmi)")
    password: SecretStr = Field(default=SecretStr(""), description="the BMC password: sealed at rest, never shown")
    system_id: str = Field(default="", max_length=512, description="redfish: the System's path (empty: the only one)")
    verify_tls: bool = Field(default=True, description="redfish: check the BMC's TLS certificate")
    site: DnsLabel | None = Field(
        default=None, description="the site whose worker reaches this BMC (tempered worker --site NAME); none: any worker",
    )


def problems(settings: PowerSettings) -> list[tuple[str, str]]:
    """What an operator's settings lack or must not have, as (field, why): refused when they are
    set, not at the first command. A stored address from discovery alone is not checked here."""
    found: list[tuple[str, str]] = []
    if settings.driver == "manual":
        if settings.address or settings.username or settings.password.get_secret_value():
            found.append(("driver", "manual power has no address or credentials: choose redfish, ipmi or qmp"))
        return found
    if not settings.address:
        found.append(("address", f"the {settings.driver} driver needs the BMC's address"))
    if "@" in settings.address.split("//", 1)[-1].split("/", 1)[0]:
        found.append(("address", "no user or password in the address: give them as username and password"))
    if settings.driver in ("redfish", "ipmi") and not settings.username:
        found.append(("username", f"the {settings.driver} driver needs the BMC's user"))
    return found


class PowerView(BaseModel):
    """A machine's power settings as the API shows them: everything but the password."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"machine_id": "4c4c4544-0042-3510-8052-b4c04f4e3132", "driver": "redfish", "address": "https://10.0.9.21",
         "username": "admin", "has_password": True, "system_id": "/redfish/v1/Systems/1", "verify_tls": False,
         "site": "rack-a", "source": "operator"},
    ]})

    machine_id: str = Field(description="the machine's id")
    driver: PowerDriverName = Field(default="manual", description="manual (a person), redfish, ipmi or qmp")
    address: str = Field(default="", description="the BMC's URL, host[:port], or the VM's QMP socket")
    username: str = Field(default="", description="the BMC user")
    has_password: bool = Field(default=False, description="a password is stored (it is never shown)")
    system_id: str = Field(default="", description="redfish: the System's path")
    verify_tls: bool = Field(default=True, description="redfish: the BMC's TLS certificate is checked")
    site: str | None = Field(default=None, description="the site whose worker reaches this BMC; none: the main queue")
    source: Literal["default", "operator", "discovery"] = Field(
        default="default", description="who set them: nobody (manual), an operator, or the discovery agent (address only)"
    )


class PowerTarget(BaseModel):
    """What a workflow needs to know to schedule a power command: the driver, and the task queue."""

    machine_id: str
    driver: PowerDriverName = "manual"
    site: str | None = None
    # Why a BMC on record is not used (discovery found its address, nobody set its credentials):
    # the target is manual until then, and this says how to set them.
    reason: str = ""

    @property
    def manual(self) -> bool:
        return self.driver == "manual"


class PowerRequest(BaseModel):
    """One power command for one machine (activity `power_machine`)."""

    machine_id: str
    action: PowerAction


class PowerResult(BaseModel):
    """What the BMC answered: the power state after the command, and its own words."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"machine_id": "4c4c4544-0042-3510-8052-b4c04f4e3132", "action": "cycle", "driver": "redfish",
         "state": "on", "answer": "cycle: done, power on"},
        {"machine_id": "52:54:00:12:34:56", "action": "cycle", "driver": "manual", "state": "unknown",
         "answer": "manual power: power-cycle this machine now"},
    ]})

    machine_id: str = Field(description="the machine's id")
    action: PowerAction = Field(description="the command: on, off, cycle, status or pxe-once")
    driver: PowerDriverName = Field(description="the driver that ran it (manual: nothing was sent)")
    state: PowerState = Field(default="unknown", description="the power state after the command, as the BMC says")
    answer: str = Field(default="", description="what the BMC said, for the operator")


_BMC_ADDRESS = re.compile(r"[A-Za-z0-9._:\[\]/-]{1,255}")


class DiscoveredBmc(BaseModel):
    """A BMC address the discovery agent reported (`facts.bmc`, e.g. read with `ipmitool lan
    print`): stored with source "discovery", no credentials, never over an operator's settings."""

    driver: Literal["ipmi", "redfish"] = "ipmi"
    address: str


def discovered_bmc(reported: object) -> DiscoveredBmc | None:
    """`facts.bmc` if it is a usable address (an agent's extra key: anything else is ignored,
    the facts themselves stay accepted)."""
    if not isinstance(reported, dict):
        return None
    try:
        bmc = DiscoveredBmc.model_validate(reported)
    except ValueError:
        return None
    return bmc if _BMC_ADDRESS.fullmatch(bmc.address) else None
