"""Storing and finding DNS settings: a cluster's own, else the global default."""

from __future__ import annotations

import json

from pydantic import SecretStr

from activities.domain.dns import DnsSettings
from activities.storage import db, secrets
from activities.storage.models import DnsConfig, utcnow
from activities.storage.settings import Settings

GLOBAL = "*"


def _reveal(value):
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    raise TypeError(f"cannot store {type(value).__name__}")


def store(settings: Settings, scope: str, dns: DnsSettings) -> None:
    plaintext = json.dumps(dns.model_dump(mode="python"), default=_reveal)
    with db.session(settings.database_url) as s:
        row = s.get(DnsConfig, scope) or DnsConfig(scope=scope, sealed="")
        row.sealed, row.updated_at = secrets.seal(settings, plaintext), utcnow()
        s.add(row)
        s.commit()


def load(settings: Settings, scope: str) -> DnsSettings | None:
    with db.session(settings.database_url) as s:
        row = s.get(DnsConfig, scope)
    return DnsSettings.model_validate_json(secrets.unseal(settings, row.sealed)) if row else None


def for_cluster(settings: Settings, cluster: str | None) -> DnsSettings | None:
    """The settings a cluster's records are written with: its own, else the global default."""
    return (load(settings, cluster) if cluster else None) or load(settings, GLOBAL)


def delete(settings: Settings, scope: str) -> bool:
    return db.delete_row(settings.database_url, DnsConfig, scope)
