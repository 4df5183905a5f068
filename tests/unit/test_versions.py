"""The version counter an edge's config ETag is made of (activities/storage/versions.py), on a
real SQLite database: every kind of write to what a config lists bumps it once per commit;
writes to anything else, and rolled-back ones, leave it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import delete, insert, update

from activities.storage import db, machinestate, versions
from activities.storage.models import BootEdge, Machine, MachineMac, utcnow


def _tag(url: str) -> str:
    with db.session(url) as s:
        return versions.current(s)


def test_each_write_to_what_a_config_lists_changes_the_tag(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    tags = [_tag(url)]

    def changed() -> bool:
        tags.append(_tag(url))
        return tags[-1] != tags[-2]

    with db.session(url) as s:  # the unit of work: new rows
        s.add(Machine(id="m1", cluster="a"))
        s.add(BootEdge(name="e1", policy={"segment": "x"}))
        s.commit()
    assert changed()
    with db.session(url) as s:  # a MAC added through the unit of work (the edge's boot route)
        s.add(MachineMac(mac="52:54:00:00:00:01", machine_id="m1"))
        s.commit()
    assert changed()
    with db.session(url) as s:  # a watched column changed
        s.get(Machine, "m1").cluster = "b"
        s.commit()
    assert changed()
    with db.session(url) as s:  # an edge's policy replaced
        s.get(BootEdge, "e1").policy = {"segment": "y"}
        s.commit()
    assert changed()
    with db.session(url) as s:  # ORM statements: a bulk insert, update and delete
        s.execute(insert(Machine), [{"id": "m2", "created_at": utcnow()}])
        s.commit()
    assert changed()
    with db.session(url) as s:
        s.exec(update(Machine).where(Machine.id == "m2").values(decommissioned_at=utcnow()))
        s.commit()
    assert changed()
    with db.session(url) as s:
        s.exec(delete(MachineMac).where(MachineMac.machine_id == "m1"))
        s.commit()
    assert changed()


def test_other_writes_and_rollbacks_leave_the_tag(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    with db.session(url) as s:
        s.add(Machine(id="m1", serial="S1"))
        s.add(BootEdge(name="e1", policy={"segment": "x"}))
        s.commit()
    before = _tag(url)
    with db.session(url) as s:
        s.get(BootEdge, "e1").last_seen_at = utcnow()  # every config poll writes this
        s.get(Machine, "m1").serial = "S2"  # not in a config
        s.commit()
    machinestate.save(url, "m1", state="ready", role="worker")  # the state lists read
    with db.session(url) as s:
        s.add(MachineMac(mac="52:54:00:00:00:02", machine_id="m1"))
        s.flush()
        s.rollback()
    with db.session(url) as s:  # a session that commits nothing
        s.get(Machine, "m1")
        s.commit()
    assert _tag(url) == before
