"""What a machine is called: its SMBIOS UUID when that can be trusted, else its MAC, else its
serial. The same rule names a machine whether it was pre-registered or first seen by PXE."""

from __future__ import annotations

import uuid as uuidlib

from activities.contracts import normalize_mac

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
    if (trusted := trusted_uuid(uuid)) is not None:
        return trusted
    if mac:
        return normalize_mac(mac)
    if serial and serial.strip():
        return f"serial-{serial.strip()}"
    raise ValueError("a machine needs a UUID, a MAC or a serial to be identified")
