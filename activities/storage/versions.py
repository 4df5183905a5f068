"""Version counters bumped by the transactions that change what they cover, so a reader can
tell "unchanged" from one row instead of recomputing an answer (issue 18: an edge polls its
config every 10 s, and building it lists every MAC of the fleet).

`EDGES` covers an edge's config (api/edges.py `_config`): a machine's id, UUID, cluster and
retirement, its MACs, and the edges' policies. The session events below see every change
made through a Session, by the unit of work (add, merge, delete, attribute changes) or by an
ORM statement (`insert(Machine)`, `delete(MachineMac)`, ...), and bump the counter as the
transaction's last statement: it commits with the change, and its row lock is held only for
that commit (nothing waits for another row while holding it: no deadlock). A reader reads the
counter before the rows it covers, so a tag never names data older than itself.
Writes that bypass the ORM (raw SQL) are not seen: there are none on these tables.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import ORMExecuteState, Session

from activities.storage.models import BootEdge, Machine, MachineMac, Version

EDGES = "edges"
_CHANGED = "versions.changed"  # session.info key: the counters this transaction must bump
_WATCHED: dict[type, tuple[str, ...] | None] = {  # the columns that matter (None: any change)
    Machine: ("id", "uuid", "cluster", "decommissioned_at"),
    MachineMac: None,
    BootEdge: ("policy",),
}


def current(s: Session, name: str = EDGES) -> str:
    """The counter's tag: its epoch and value ("0" before its first bump)."""
    row = s.get(Version, name)
    return f"{row.epoch}-{row.version}" if row else "0"


def _matters(obj: Any, columns: tuple[str, ...] | None) -> bool:
    if columns is None:
        return True
    state = inspect(obj)
    return any(state.attrs[column].history.has_changes() for column in columns)


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _context: Any) -> None:
    """Note a change of a watched row (the session's new/dirty/deleted are still pre-flush)."""
    for obj in (*session.new, *session.deleted):
        if type(obj) in _WATCHED:
            session.info[_CHANGED] = True
            return
    for obj in session.dirty:
        if type(obj) in _WATCHED and _matters(obj, _WATCHED[type(obj)]):
            session.info[_CHANGED] = True
            return


@event.listens_for(Session, "do_orm_execute")
def _orm_statement(state: ORMExecuteState) -> None:
    """Note an ORM insert, update or delete statement on a watched table."""
    if (state.is_insert or state.is_update or state.is_delete) and state.bind_mapper is not None:
        if state.bind_mapper.class_ in _WATCHED:
            state.session.info[_CHANGED] = True


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    """Bump the counter as the transaction's last statement, if it changed a watched row."""
    session.flush()  # what is still pending is flushed (and seen by `_after_flush`) first
    if session.info.pop(_CHANGED, False):
        bump(session)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_CHANGED, None)


def bump(session: Session, name: str = EDGES) -> None:
    """Add one to the counter (made on first use), in the session's transaction."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    row = Version(name=name)
    statement = dialect.insert(Version).values(name=name, version=1, epoch=row.epoch)
    session.execute(statement.on_conflict_do_update(
        index_elements=["name"], set_={"version": Version.version + 1}
    ))
