"""Terraform's state store: versions of each state, its lock, and per-cluster credentials.

Terraform's `http` backend (api/terraform_state.py) reads and writes here; so do the operator
routes that list, show and roll back versions. Every write adds a version, sealed with the
control plane's key (activities/storage/secrets.py): a state holds the secrets of the resources
it tracks, so neither a copy of the database nor a log line may reveal it. Nothing here puts a
state body or a password in an exception or a log record.

A lock is one row per state whose primary key is (cluster, name): two LOCKs racing through
different API processes cannot both insert it. A cluster's states open with that cluster's
basic-auth credentials only (`cluster_credentials`, created on first use).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from activities.storage import db
from activities.storage.models import Cluster, TfCredentials, TfStateLock, TfStateVersion
from activities.storage.secrets import seal, unseal
from activities.storage.settings import Settings

MAX_STATE_BYTES = 16 << 20  # a state body; Terraform states of thousands of resources stay far below
MAX_LOCK_BYTES = 64 << 10  # a lock info body (a few hundred bytes in practice)
USERNAME_PREFIX = "tfstate-"
WRITE_ATTEMPTS = 30  # writers racing for one version number: each loser takes the next


class StoreError(Exception):
    """A refusal the routes turn into an HTTP status; its message never holds a body."""

    status = 400


class InvalidBody(StoreError):
    status = 400


class NotFound(StoreError):
    status = 404


class Locked(StoreError):
    """The state is locked by someone else; `info` is the holder's lock info, as Terraform sent
    it (Terraform prints it to the user who is refused)."""

    status = 423

    def __init__(self, info: dict[str, Any], message: str = "") -> None:
        super().__init__(message or f"state locked by {info.get('Who') or 'someone'} (lock ID {info.get('ID')})")
        self.info = info


class LockLost(StoreError):
    """A write named a lock that is no longer held (it was force-unlocked)."""

    status = 409


class Busy(StoreError):
    """Writers kept taking the next version number first: try again (Terraform's client retries a 503)."""

    status = 503


@dataclass(frozen=True)
class VersionMeta:
    """A version as listed: everything but the body."""

    cluster: str
    name: str
    version: int
    md5: str
    size: int
    serial: int | None
    lineage: str | None
    deleted: bool
    written_by: str
    note: str
    created_at: datetime


@dataclass(frozen=True)
class StateSummary:
    """One state as the operator list shows it."""

    cluster: str
    name: str
    versions: int
    current: VersionMeta
    lock: dict[str, Any] | None


# ---- credentials ---------------------------------------------------------------------------------


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
    a run holds a lock on one of its states: its next write would be refused mid-apply."""
    username, _ = cluster_credentials(settings, cluster)
    password = secrets.token_urlsafe(32)
    with db.session(settings.database_url) as s:
        if (held := s.exec(select(TfStateLock).where(TfStateLock.cluster == cluster)).first()) is not None:
            raise Locked(dict(held.info))
        row = s.get(TfCredentials, cluster)
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
    """A cluster that exists, or did and still has credentials (its states outlive it)."""
    with db.session(settings.database_url) as s:
        return s.get(Cluster, cluster) is not None or s.get(TfCredentials, cluster) is not None


# ---- bodies ----------------------------------------------------------------------------------------


def parse_state(body: bytes) -> dict[str, Any]:
    """The state as JSON, or InvalidBody saying why without quoting it."""
    try:
        state = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        where = f" at line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise InvalidBody(f"the state is not JSON{where}") from None
    if not isinstance(state, dict):
        raise InvalidBody("the state is not a JSON object")
    return state


def parse_lock(body: bytes) -> dict[str, Any]:
    """Terraform's lock info (ID, Operation, Info, Who, Version, Created, Path); it must carry
    an ID, the one later writes and the UNLOCK name."""
    if len(body) > MAX_LOCK_BYTES:
        raise InvalidBody(f"the lock info is larger than {MAX_LOCK_BYTES} bytes")
    try:
        info = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidBody("the lock info is not JSON") from None
    if not isinstance(info, dict) or not isinstance(info.get("ID"), str) or not info["ID"].strip():
        raise InvalidBody("the lock info has no ID: send Terraform's lock info JSON, with its ID")
    return info


def md5_hex(body: bytes) -> str:
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


# ---- reads -----------------------------------------------------------------------------------------


def _latest(s: Session, cluster: str, name: str) -> TfStateVersion | None:
    query = select(TfStateVersion).where(TfStateVersion.cluster == cluster, TfStateVersion.name == name)
    return s.exec(query.order_by(col(TfStateVersion.version).desc()).limit(1)).first()


def _meta(row: TfStateVersion) -> VersionMeta:
    return VersionMeta(
        cluster=row.cluster, name=row.name, version=row.version, md5=row.md5, size=row.size, serial=row.serial,
        lineage=row.lineage, deleted=row.deleted, written_by=row.written_by, note=row.note,
        created_at=row.created_at.replace(tzinfo=timezone.utc),
    )


def current(settings: Settings, cluster: str, name: str) -> tuple[bytes, str] | None:
    """(body, hex MD5) of the current version; None when there is none or it was deleted."""
    with db.session(settings.database_url) as s:
        row = _latest(s, cluster, name)
    if row is None or row.deleted:
        return None
    return unseal(settings, row.sealed).encode(), row.md5


def lock_info(settings: Settings, cluster: str, name: str) -> dict[str, Any] | None:
    with db.session(settings.database_url) as s:
        row = s.get(TfStateLock, (cluster, name))
        return dict(row.info) if row is not None else None


def list_states(settings: Settings) -> list[StateSummary]:
    """Every state: its current version, how many it has, and who holds its lock."""
    with db.session(settings.database_url) as s:
        counts = s.exec(
            select(TfStateVersion.cluster, TfStateVersion.name, func.count(), func.max(TfStateVersion.version))
            .group_by(TfStateVersion.cluster, TfStateVersion.name)
            .order_by(TfStateVersion.cluster, TfStateVersion.name)
        ).all()
        locks = {(row.cluster, row.name): dict(row.info) for row in s.exec(select(TfStateLock))}
        states = []
        for cluster, name, count, newest in counts:
            row = s.exec(select(TfStateVersion).where(
                TfStateVersion.cluster == cluster, TfStateVersion.name == name, TfStateVersion.version == newest
            )).one()
            states.append(StateSummary(cluster, name, count, _meta(row), locks.pop((cluster, name), None)))
    return states


def versions(settings: Settings, cluster: str, name: str) -> list[VersionMeta]:
    """Every version of one state, oldest first; NotFound when it has none."""
    with db.session(settings.database_url) as s:
        rows = s.exec(select(TfStateVersion).where(TfStateVersion.cluster == cluster, TfStateVersion.name == name)
                      .order_by(TfStateVersion.version)).all()
        if not rows:
            raise NotFound(f"no Terraform state {cluster}/{name}")
        return [_meta(row) for row in rows]


def version_body(settings: Settings, cluster: str, name: str, version: int | None = None) -> tuple[VersionMeta, bytes]:
    """One version (the newest when `version` is None) and its body, unsealed."""
    with db.session(settings.database_url) as s:
        if version is None:
            row = _latest(s, cluster, name)
        else:
            row = s.exec(select(TfStateVersion).where(
                TfStateVersion.cluster == cluster, TfStateVersion.name == name, TfStateVersion.version == version
            )).first()
    if row is None:
        raise NotFound(f"no version {version} of Terraform state {cluster}/{name}" if version else
                       f"no Terraform state {cluster}/{name}")
    return _meta(row), unseal(settings, row.sealed).encode()


# ---- writes ----------------------------------------------------------------------------------------


def _check_lock(s: Session, cluster: str, name: str, lock_id: str | None) -> dict[str, Any] | None:
    """The lock info a write may proceed under: Locked if someone else holds the state,
    LockLost if the writer's lock is gone. None when the state is not locked."""
    row = s.get(TfStateLock, (cluster, name))
    if row is None:
        if lock_id:
            raise LockLost(f"lock {lock_id} is not held on {cluster}/{name} (was it force-unlocked?)")
        return None
    if lock_id != row.lock_id:
        raise Locked(dict(row.info))
    return dict(row.info)


@dataclass(frozen=True)
class _Body:
    """A body ready to store: parsed for its serial and lineage, and sealed once (sealing a
    large state is the costly part), outside any transaction or retry."""

    sealed: str
    md5: str
    size: int
    serial: int | None
    lineage: str | None
    deleted: bool

    @classmethod
    def of(cls, settings: Settings, body: bytes, deleted: bool = False) -> "_Body":
        state = {} if deleted else parse_state(body)
        serial, lineage = state.get("serial"), state.get("lineage")
        return cls(
            sealed=seal(settings, body.decode()), md5=md5_hex(body), size=len(body),
            serial=serial if isinstance(serial, int) else None, lineage=lineage if isinstance(lineage, str) else None,
            deleted=deleted,
        )


def _add_version(s: Session, cluster: str, name: str, body: _Body, who: str, note: str = "") -> VersionMeta:
    """Insert the next version (the caller commits; a racing writer makes the commit fail)."""
    latest = _latest(s, cluster, name)
    row = TfStateVersion(
        cluster=cluster, name=name, version=(latest.version + 1) if latest else 1, sealed=body.sealed,
        md5=body.md5, size=body.size, serial=body.serial, lineage=body.lineage, deleted=body.deleted,
        written_by=who, note=note,
    )
    s.add(row)
    s.flush()
    return _meta(row)


def _retrying(work):
    """Run `work()` (one transaction) again while racing writers take the version number it
    chose (the unique constraint refuses all but one), after a short random pause: no write is
    ever half-done or lost. The database's own error is not passed on: it quotes the row."""
    for attempt in range(WRITE_ATTEMPTS):
        try:
            return work()
        except IntegrityError:
            time.sleep(random.uniform(0, 0.01 * (attempt + 1)))
    raise Busy(f"{WRITE_ATTEMPTS} attempts lost the race for the next version number; nothing was stored")


def write(settings: Settings, cluster: str, name: str, body: bytes, lock_id: str | None, who: str) -> VersionMeta | None:
    """Store `body` as the next version, under the writer's lock if the state is locked.
    A body identical to the current version adds nothing (Terraform writes the same state more
    than once in a run); None then."""

    ready = _Body.of(settings, body)

    def work() -> VersionMeta | None:
        with db.session(settings.database_url) as s:
            holder = _check_lock(s, cluster, name, lock_id)
            latest = _latest(s, cluster, name)
            if latest is not None and not latest.deleted and latest.md5 == ready.md5:
                return None
            writer = f"{who} ({holder['Who']})" if holder and holder.get("Who") else who
            meta = _add_version(s, cluster, name, ready, writer)
            s.commit()
            return meta

    return _retrying(work)


def keep(settings: Settings, cluster: str, name: str, body: bytes, who: str) -> VersionMeta | None:
    """Store a state Terraform could not save (its `errored.tfstate`) as the next version, whoever
    holds the lock: it is the only record of what the run made, and a lock held by someone else
    (a force-unlock mid-apply) is often why the save failed. The note says so; the holder's next
    write comes on top, this version stays in the history. None: identical to the current one."""

    ready = _Body.of(settings, body)

    def work() -> VersionMeta | None:
        with db.session(settings.database_url) as s:
            latest = _latest(s, cluster, name)
            if latest is not None and not latest.deleted and latest.md5 == ready.md5:
                return None
            row = s.get(TfStateLock, (cluster, name))
            note = "errored.tfstate" + (f", stored while locked by {row.lock_id}" if row is not None else "")
            meta = _add_version(s, cluster, name, ready, who, note=note)
            s.commit()
            return meta

    return _retrying(work)


def delete(settings: Settings, cluster: str, name: str, who: str) -> VersionMeta | None:
    """Mark the state deleted (a tombstone version; earlier versions stay): refused while it is
    locked by anyone. None when there was nothing to delete."""

    tombstone = _Body.of(settings, b"", deleted=True)

    def work() -> VersionMeta | None:
        with db.session(settings.database_url) as s:
            if (row := s.get(TfStateLock, (cluster, name))) is not None:
                raise Locked(dict(row.info))
            latest = _latest(s, cluster, name)
            if latest is None or latest.deleted:
                return None
            meta = _add_version(s, cluster, name, tombstone, who, note="deleted")
            s.commit()
            return meta

    return _retrying(work)


def lock(settings: Settings, cluster: str, name: str, info: dict[str, Any]) -> None:
    """Take the lock for `info["ID"]`; Locked with the holder's info if another ID holds it.
    Taking it again with the same ID succeeds (a retried LOCK)."""
    with db.session(settings.database_url) as s:
        s.add(TfStateLock(cluster=cluster, name=name, lock_id=info["ID"], info=info))
        try:
            s.commit()
            return
        except IntegrityError:
            s.rollback()
        row = s.get(TfStateLock, (cluster, name))
    if row is None:  # released between our insert and our read: try once more
        return lock(settings, cluster, name, info)
    if row.lock_id != info["ID"]:
        raise Locked(dict(row.info))


def unlock(settings: Settings, cluster: str, name: str, lock_id: str | None) -> dict[str, Any] | None:
    """Release the lock held under `lock_id`, or whoever holds it when `lock_id` is None (a
    force-unlock). Returns the released holder's info (None: it was not locked); Locked if
    `lock_id` is not the holder's."""
    with db.session(settings.database_url) as s:
        row = s.get(TfStateLock, (cluster, name))
        if row is None:
            return None
        if lock_id is not None and lock_id != row.lock_id:
            raise Locked(dict(row.info), f"lock ID {lock_id} does not hold {cluster}/{name}")
        info = dict(row.info)
        s.delete(row)
        s.commit()
        return info


def rollback(settings: Settings, cluster: str, name: str, version: int, who: str) -> VersionMeta:
    """Make version `version`'s body the current state again, as a new version. Its `serial` is
    raised above every serial this state has had and its lineage stays: serials keep increasing,
    so Terraform's own checks (`terraform state push` refuses a state older than the stored one
    of the same lineage) see the rollback as the newest state, and the next apply writes on top
    of it. Refused while the state is locked."""
    old, body = version_body(settings, cluster, name, version)
    if old.deleted:
        raise InvalidBody(f"version {version} of {cluster}/{name} is a deletion: roll back to a version before it")
    state = parse_state(body)

    def work() -> VersionMeta:
        with db.session(settings.database_url) as s:
            if (row := s.get(TfStateLock, (cluster, name))) is not None:
                raise Locked(dict(row.info))
            highest = s.exec(select(func.max(TfStateVersion.serial)).where(
                TfStateVersion.cluster == cluster, TfStateVersion.name == name)).one()
            own = state.get("serial") if isinstance(state.get("serial"), int) else 0
            state["serial"] = max(highest or 0, own) + 1
            new_body = _Body.of(settings, (json.dumps(state, indent=2) + "\n").encode())
            meta = _add_version(s, cluster, name, new_body, who, note=f"rollback to version {version}")
            s.commit()
            return meta

    return _retrying(work)
