"""Terraform's state store: versions of each state and its lock.

Terraform's `http` backend (api/terraform_state.py) reads and writes here; so do the operator
routes that list, show and roll back versions. Every write adds a version, sealed with the
control plane's key (activities/storage/secrets.py): a state holds the secrets of the resources
it tracks, so neither a copy of the database nor a log line may reveal it. Nothing here puts a
state body or a password in an exception or a log record.

A lock is one row per state whose primary key is (cluster, name): two LOCKs racing through
different API processes cannot both insert it. A cluster's states open with that cluster's
basic-auth credentials only (activities/storage/tfcredentials.py).

Every call that checks the lock and then writes (write, delete, rollback, lock, unlock) does
both in one transaction that holds the state's key (`serialise`): on PostgreSQL a
transaction-scoped advisory lock, so under read committed no force-unlock, LOCK or other write
of that state lands between the check and the write (a stale writer's check cannot pass and
then insert after a new holder's LOCK; a rollback cannot commit after Terraform LOCKed and read
the older state). The lock row is also read FOR UPDATE. On SQLite writers are serialised by the
database itself (one write transaction at a time; a transaction that read before another wrote
cannot then write: SQLITE_BUSY), so nothing more is needed there.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from activities.storage import db
from activities.storage.models import TfStateLock, TfStateVersion
from activities.storage.secrets import seal, unseal
from activities.storage.settings import Settings
from activities.storage.tfbodies import (  # noqa: F401 - the refusals and limits are part of this module's API
    MAX_LOCK_BYTES, MAX_STATE_BYTES, Busy, InvalidBody, Locked, LockLost, NotFound, StoreError, md5_hex, parse_lock,
    parse_state,
)
WRITE_ATTEMPTS = 30  # writers racing for one version number: each loser takes the next


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
        raise NotFound(f"no version {version} of Terraform state {cluster}/{name}" if version is not None else
                       f"no Terraform state {cluster}/{name}")
    return _meta(row), unseal(settings, row.sealed).encode()


# ---- writes ----------------------------------------------------------------------------------------


def serialise(s: Session, *key: str, shared: bool = False) -> None:
    """Hold `key` (a cluster, or a cluster and a state name) until `s`'s transaction ends, so
    that calls checking then writing under the same key run one after the other (see the module
    docstring). PostgreSQL: a transaction-scoped advisory lock (exclusive, or `shared`); SQLite
    serialises writers itself: nothing to do."""
    if s.get_bind().dialect.name != "postgresql":
        return
    digest = hashlib.blake2b("/".join(key).encode(), digest_size=8).digest()
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    s.connection().execute(text(f"SELECT {function}(:key)"), {"key": int.from_bytes(digest, "big", signed=True)})


def _hold(s: Session, cluster: str, name: str) -> TfStateLock | None:
    """Serialise on the state and read its lock row FOR UPDATE: what a check-then-write starts with."""
    serialise(s, cluster, name)
    return s.get(TfStateLock, (cluster, name), with_for_update=True)


def _check_lock(s: Session, cluster: str, name: str, lock_id: str | None) -> dict[str, Any] | None:
    """The lock info a write may proceed under: Locked if someone else holds the state,
    LockLost if the writer's lock is gone. None when the state is not locked."""
    row = _hold(s, cluster, name)
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


_T = TypeVar("_T")


def _retrying(work: Callable[[], _T]) -> _T:
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
            row = _hold(s, cluster, name)
            latest = _latest(s, cluster, name)
            if latest is not None and not latest.deleted and latest.md5 == ready.md5:
                return None
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
            if (row := _hold(s, cluster, name)) is not None:
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
        serialise(s, cluster, shared=True)  # no credentials rotation meanwhile (tfcredentials.rotate_credentials)
        serialise(s, cluster, name)
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
        row = _hold(s, cluster, name)
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
    of it. Refused while the state is locked: checked in the transaction that writes, holding the
    state's key (`_hold`), so a LOCK either comes before (refused) or waits until the rollback has
    committed (Terraform then reads the rolled-back state)."""
    old, body = version_body(settings, cluster, name, version)
    if old.deleted:
        raise InvalidBody(f"version {version} of {cluster}/{name} is a deletion: roll back to a version before it")
    state = parse_state(body)

    def work() -> VersionMeta:
        with db.session(settings.database_url) as s:
            if (row := _hold(s, cluster, name)) is not None:
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
