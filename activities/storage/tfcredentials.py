"""Per-cluster basic-auth credentials of Terraform's state store (activities/storage/tfstate.py).

A cluster's states open with that cluster's credentials only: the Terraform runner gets them
with `cluster_credentials` (created and sealed on first use), an admin shows or rotates them.
They go with the cluster (`forget`, called when the cluster is forgotten): a new cluster of the
same name gets new ones. Nothing here puts a password in an exception or a log record.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import datetime, timezone

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, delete, select

from activities.storage import db
from activities.storage.models import Cluster, TfCredentials, TfStateLock, TfStateVersion
from activities.storage.secrets import seal, unseal
from activities.storage.settings import Settings
from activities.storage.tfbodies import Locked
from activities.storage.tfstate import serialise

USERNAME_PREFIX = "tfstate-"


def cluster_credentials(settings: Settings, cluster: str) -> tuple[str, str]:
    """The basic-auth (username, password) that open `cluster`'s states, created (and the
    password sealed) on first use. The Terraform runner gives them to Terraform through
    TF_HTTP_USERNAME / TF_HTTP_PASSWORD, never in a file."""
    with db.session(settings.database_url) as s:
        row = s.get(TfCredentials, cluster)
        if row is not None:
            return row.username, unseal(settings, row.sealed_password)
        password = secrets.token_urlsafe(32)
        s.add(TfCredentials(cluster=cluster, username=USERNAME_PREFIX + cluster, sealed_password=seal(settings, password)))
        try:
            s.commit()
            return USERNAME_PREFIX + cluster, password
        except IntegrityError:  # another process created them first: theirs stand
            s.rollback()
    return cluster_credentials(settings, cluster)


def rotate_credentials(settings: Settings, cluster: str) -> tuple[str, str]:
    """A new password for `cluster` (the old one stops working at once). Refused (Locked) while
    a run holds a lock on one of its states: its next write would be refused mid-apply. The
    check and the change are one transaction that excludes every LOCK of the cluster's states
    (`serialise`: a LOCK takes the cluster's key shared, this takes it exclusive), so no run can
    lock between them."""
    username, _ = cluster_credentials(settings, cluster)
    password = secrets.token_urlsafe(32)
    with db.session(settings.database_url) as s:
        serialise(s, cluster)
        if (held := s.exec(select(TfStateLock).where(TfStateLock.cluster == cluster)).first()) is not None:
            raise Locked(dict(held.info))
        row = s.get(TfCredentials, cluster, with_for_update=True)
        row.sealed_password = seal(settings, password)
        row.rotated_at = datetime.now(timezone.utc)
        s.add(row)
        s.commit()
    return username, password


def credentials_cluster(settings: Settings, username: str, password: str) -> str | None:
    """The cluster whose credentials these are, or None (compared in constant time)."""
    with db.session(settings.database_url) as s:
        row = s.exec(select(TfCredentials).where(TfCredentials.username == username)).first()
    if row is None:
        return None
    return row.cluster if hmac.compare_digest(password.encode(), unseal(settings, row.sealed_password).encode()) else None


def cluster_known(settings: Settings, cluster: str) -> bool:
    """A cluster that exists, or did and still has states (they outlive it: an operator may
    still list, show and roll them back)."""
    with db.session(settings.database_url) as s:
        return (s.get(Cluster, cluster) is not None or s.get(TfCredentials, cluster) is not None
                or s.exec(select(TfStateVersion.cluster).where(TfStateVersion.cluster == cluster).limit(1)).first() is not None)


def forget(s: Session, cluster: str) -> None:
    """Delete `cluster`'s credentials in the caller's transaction (the cluster is being forgotten):
    a later cluster of the same name must not open with the old password. Its states stay."""
    s.exec(delete(TfCredentials).where(TfCredentials.cluster == cluster))
