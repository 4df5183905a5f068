"""The copy of each machine's state, role and MAC that lists read (table `machinestate`).

A machine's workflow is the authority on its state; Temporal's visibility store gets its search
attributes. Lists page through the database (issue 18: 10,000 machines by page, p99 under
100 ms), so one indexed SQL query answers a page, filtered by state or role in SQL. Writing this
copy costs no Temporal action: it is written where the control plane already learns a move:

- the API, from the answer of every machine Update it sends (an edge's boot question, facts,
  phone home, a join result, the operator's assign/retry/reboot/reprovision/decommission) and
  from a registration;
- the activities the workflows already run: `record_roles` (the cluster's admission gives the
  role), `render_user_data` (its success moves the machine to `post-discover`),
  `publish_node_dns` (its success moves it to `ready`), `retire_machine` (`decommissioned`);
- `record_state`, run by the machine workflow only when a step fails (`failed:<step>`), so
  the machines waiting for an operator are found by a list (patch `failure-listed`).

What a list can show late (until the next of those writes; `GET /v1/machines/{id}` and
`tempered machine show` ask the workflow and are always current): a hold decided by the cluster's rules (`holding`), `join-cluster` after a
phone home, `ready` of a machine whose IP is unknown (no DNS publish), and the `discover`
that re-asks after a release. The API also reads a machine's row to know when the answer it kept
for the machine-facing reads (the agent's polls, the seed) may have changed (api/boot_views.py). Two writers racing (an Update's answer and an activity) keep
the later write, which is the later move except in that race.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from activities.storage import db
from activities.storage.models import Machine, MachineState, utcnow

ROWS_PER_QUERY = 500  # bound parameters per query: well under SQLite's and PostgreSQL's limits


def record(s: Session, machine_id: str, first_mac: str | None = None, moved_at: datetime | None = None,
           **values: str | None) -> None:
    """Upsert these of state/role/mac (a value of None or '' clears it) in the session `s`,
    and `first_mac` as its MAC unless one is kept (as the workflow keeps the first); the
    caller commits. A machine with no row yet is skipped: its row is written before its
    workflow is started, so only a machine being forgotten can be missing.

    A state is stamped `moved_at`, a time no later than the move it records (the workflow's
    own time of the move, or when the write's cause began: an Update sent, an activity
    ending before the workflow moves on), and is kept only if no later-stamped state is: an
    Update's answer that reaches the database after the next move's activity wrote is dropped.
    A role alone (the cluster's admission) is written as it comes."""
    if s.get(Machine, machine_id) is None:
        return
    fields: dict[str, Any] = {name: value or None for name, value in values.items()}
    if "state" in values:
        fields["moved_at"] = moved_at or utcnow()
    dialect = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(MachineState).values(machine_id=machine_id, **fields)
    updates: dict[str, Any] = dict(fields)
    if first_mac:
        statement = statement.values(mac=first_mac)
        updates["mac"] = func.coalesce(MachineState.mac, statement.excluded.mac)
    later = MachineState.moved_at <= statement.excluded.moved_at if "state" in values else None
    s.execute(statement.on_conflict_do_update(index_elements=["machine_id"], set_=updates, where=later))


def save(database_url: str, machine_id: str, first_mac: str | None = None, moved_at: datetime | None = None,
         **values: str | None) -> None:
    """`record` in a session of its own, committed (blocking: call it off the event loop)."""
    with db.session(database_url) as s:
        record(s, machine_id, first_mac, moved_at, **values)
        s.commit()


def save_status(database_url: str, status: Any, sent_at: datetime) -> None:
    """What a machine Update answered (a MachineStatus): its state, role and MAC, stamped with
    its last transition's time (the workflow's), else `sent_at` (when the Update was sent)."""
    moved_at = status.history[-1].at if status.history else sent_at
    save(database_url, status.machine_id, None, moved_at, state=status.state, role=status.role, mac=status.mac)


def recorded(database_url: str, machine_id: str) -> tuple[str | None, datetime] | None:
    """The copy's (state, moved_at) for this machine, or None without a row (blocking): what
    tells the API that an answer it kept may have changed (api/boot_views.py)."""
    with db.session(database_url) as s:
        return _row(s, machine_id)


def recorded_many(database_url: str, machine_ids: list[str]) -> dict[str, tuple[str | None, datetime]]:
    """`recorded` of many machines in one session, a query per ROWS_PER_QUERY (blocking): the
    machines whose instruction polls are held (api/held_polls.py). Machines without a row are
    left out."""
    found: dict[str, tuple[str | None, datetime]] = {}
    with db.session(database_url) as s:
        for start in range(0, len(machine_ids), ROWS_PER_QUERY):
            chunk = machine_ids[start:start + ROWS_PER_QUERY]
            query = select(MachineState.machine_id, MachineState.state, MachineState.moved_at)
            for machine_id, state, moved_at in s.exec(query.where(MachineState.machine_id.in_(chunk))):
                found[machine_id] = (state, moved_at)
    return found


def save_and_read(database_url: str, machine_id: str, first_mac: str | None, moved_at: datetime,
                  state: str) -> tuple[str | None, datetime] | None:
    """`save` of a state, then `recorded`, in one session: the row as it stands after the write
    (a later-stamped state kept by `record` is what comes back)."""
    with db.session(database_url) as s:
        record(s, machine_id, first_mac, moved_at, state=state)
        s.commit()
        return _row(s, machine_id)


def _row(s: Session, machine_id: str) -> tuple[str | None, datetime] | None:
    row = s.get(MachineState, machine_id, populate_existing=True)
    return None if row is None else (row.state, row.moved_at)
