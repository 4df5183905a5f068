"""A machine's power settings at rest: one row per machine (models.PowerConfig), the password
sealed like every other stored secret (activities/storage/secrets.py).

No row means manual power: a person power-cycles the machine. The password leaves this module
only inside a `PowerSettings` (a SecretStr) for the power activity that builds a driver; what the
API shows is a `PowerView`, which has no password at all. An address the discovery agent
reported is stored with source "discovery" and never replaces what an operator set.
"""

from __future__ import annotations

from activities.domain.power import PowerSettings, PowerView
from activities.storage import db
from activities.storage.models import PowerConfig, utcnow
from activities.storage.secrets import seal, unseal
from activities.storage.settings import Settings


def load_power(settings: Settings, machine_id: str) -> PowerSettings:
    """The settings a power command uses, password unsealed; manual when none are stored."""
    with db.session(settings.database_url) as s:
        row = s.get(PowerConfig, machine_id)
    if row is None:
        return PowerSettings()
    return PowerSettings(
        driver=row.driver, address=row.address, username=row.username,
        password=unseal(settings, row.sealed_password) if row.sealed_password else "",
        system_id=row.system_id, verify_tls=row.verify_tls, site=row.site,
    )


def save_power(settings: Settings, machine_id: str, power: PowerSettings) -> PowerView:
    """Store an operator's settings (replacing whatever was there). Without a password, the
    stored one stays while the driver and address do (a new site or user needs no retyping). A
    driver of `manual` with nothing else is the same as no settings: the row goes."""
    if power == PowerSettings():
        forget_power(settings, machine_id)
        return power_view(settings, machine_id)
    password = power.password.get_secret_value()
    with db.session(settings.database_url) as s:
        row = s.get(PowerConfig, machine_id) or PowerConfig(machine_id=machine_id)
        same_bmc = (row.driver, row.address) == (power.driver, power.address)
        row.driver, row.address, row.username = power.driver, power.address, power.username
        if password or not same_bmc:
            row.sealed_password = seal(settings, password) if password else ""
        row.system_id, row.verify_tls, row.site = power.system_id, power.verify_tls, power.site
        row.source, row.updated_at = "operator", utcnow()
        s.add(row)
        s.commit()
    return power_view(settings, machine_id)


def record_discovered_address(settings: Settings, machine_id: str, driver: str, address: str) -> bool:
    """Store the BMC address the discovery agent read (no credentials: an operator adds them).
    Never over an operator's settings; returns whether it stored anything."""
    with db.session(settings.database_url) as s:
        row = s.get(PowerConfig, machine_id)
        if row is not None and row.source == "operator":
            return False
        row = row or PowerConfig(machine_id=machine_id, source="discovery")
        row.driver, row.address, row.updated_at = driver, address, utcnow()
        s.add(row)
        s.commit()
    return True


def power_view(settings: Settings, machine_id: str) -> PowerView:
    """The settings as the API shows them: no password, only whether one is stored."""
    with db.session(settings.database_url) as s:
        row = s.get(PowerConfig, machine_id)
    if row is None:
        return PowerView(machine_id=machine_id)
    return PowerView(
        machine_id=machine_id, driver=row.driver, address=row.address, username=row.username,
        has_password=bool(row.sealed_password), system_id=row.system_id, verify_tls=row.verify_tls,
        site=row.site, source=row.source,
    )


def forget_power(settings: Settings, machine_id: str) -> bool:
    """Back to manual power; whether there was anything to forget."""
    return db.delete_row(settings.database_url, PowerConfig, machine_id)
