"""What a machine is called: its SMBIOS UUID when that can be trusted, else its MAC, else its
serial. The same rule names a machine whether it was pre-registered or first seen by PXE."""

from __future__ import annotations

import uuid as uuidlib

from sqlmodel import Session, select

from activities.domain.facts import Facts
from activities.domain.ids import normalize_mac
from activities.storage.models import Machine, MachineMac

# Firmware placeholders that many machines share: never an identity.
BOGUS_UUIDS = {
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "03000200-0400-0500-0006-000700080009",
}


def normalize_uuid(value: str) -> str:
    return str(uuidlib.UUID(value.strip()))


def trusted_uuid(value: str | None) -> str | None:
    """The UUID if it may identify one machine, None for missing or known-bogus ones."""
    if not value:
        return None
    text = normalize_uuid(value)
    return None if text in BOGUS_UUIDS else text


def machine_id(uuid: str | None = None, mac: str | None = None, serial: str | None = None) -> str:
    """The id a new machine gets: a trusted UUID, else the MAC, else the serial."""
    if (trusted := trusted_uuid(uuid)) is not None:
        return trusted
    if mac:
        return normalize_mac(mac)
    if serial and serial.strip():
        return f"serial-{serial.strip()}"
    raise ValueError("a machine needs a UUID, a MAC or a serial to be identified")


# Serials that firmware vendors leave in place: as useless as a placeholder UUID.
BOGUS_SERIALS = {"", "0", "0123456789", "none", "n/a", "na", "default string", "to be filled by o.e.m.",
                 "system serial number", "not specified", "123456789", "chassis serial number"}


def trusted_serial(value: str | None) -> str | None:
    if value is None or value.strip().lower() in BOGUS_SERIALS:
        return None
    return value.strip()


def reconcile(session: Session, machine: Machine, facts: Facts) -> tuple[list[str], str | None]:
    """Fold what the facts say about identity into the machine: its SMBIOS UUID, serial and every
    MAC. Returns (notes, conflict). A conflict (another live machine claims a MAC, or the UUID
    changed) is reported, never merged silently."""
    notes: list[str] = []
    conflicts: list[str] = []
    uuid = trusted_uuid(facts.dmi.uuid) if facts.dmi.uuid else None
    if uuid is not None:
        sharer = session.exec(
            select(Machine.id).where(Machine.uuid == uuid, Machine.id != machine.id, Machine.decommissioned_at.is_(None))
        ).first()
        if sharer is not None:
            notes.append(f"SMBIOS UUID {uuid} is shared with machine {sharer}: identified by serial and MACs")
        elif machine.uuid is None:
            machine.uuid = uuid
        elif machine.uuid != uuid:
            conflicts.append(f"SMBIOS UUID changed from {machine.uuid} to {uuid}")
    serial = trusted_serial(facts.dmi.serial)
    if serial is not None and machine.serial is None:
        machine.serial = serial
    for nic in facts.nics:
        owner = session.get(MachineMac, nic.mac)
        if owner is None:
            session.add(MachineMac(mac=nic.mac, machine_id=machine.id))
        elif owner.machine_id != machine.id:
            other = session.get(Machine, owner.machine_id)
            if other is not None and other.decommissioned_at is None:
                conflicts.append(f"NIC {nic.mac} also belongs to machine {owner.machine_id}")
            else:  # the NIC moved from a retired machine: it is this one's now
                owner.machine_id = machine.id
                session.add(owner)
    session.add(machine)
    return notes, "; ".join(conflicts) or None
