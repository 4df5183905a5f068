"""The copy of a machine's state that lists read (activities/storage/machinestate.py), on a
real SQLite database: an upsert per write, the first MAC kept, a cleared role cleared."""

from __future__ import annotations

from pathlib import Path

from activities.storage import db, machinestate
from activities.storage.models import Machine, MachineState, utcnow


def _row(url: str, machine_id: str) -> tuple | None:
    with db.session(url) as s:
        row = s.get(MachineState, machine_id)
        return (row.state, row.role, row.mac) if row else None


def test_writes_upsert_keep_the_first_mac_and_clear_what_is_unset(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with db.session(url) as s:
        s.add(Machine(id="m1"))
        s.commit()
    machinestate.save(url, "m1", "52:54:00:00:00:01", state="boot-1")
    assert _row(url, "m1") == ("boot-1", None, "52:54:00:00:00:01")
    machinestate.save(url, "m1", "52:54:00:00:00:02", state="discover")  # a second NIC booting: MAC kept
    machinestate.save(url, "m1", role="worker")  # the role alone: the state stays
    assert _row(url, "m1") == ("discover", "worker", "52:54:00:00:00:01")
    machinestate.save(url, "m1", state="new", role="")  # reprovisioned: the role is unset
    assert _row(url, "m1") == ("new", None, "52:54:00:00:00:01")


def test_a_state_stamped_before_the_kept_one_is_dropped(tmp_path: Path) -> None:
    """An Update's answer reaching the database after the next move's activity wrote (the join
    result's `join-cluster` after the DNS step's `ready`) does not put the machine back."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with db.session(url) as s:
        s.add(Machine(id="m1"))
        s.commit()
    joined_at = utcnow()
    machinestate.save(url, "m1", state="ready")  # the DNS activity, stamped now
    machinestate.save(url, "m1", None, joined_at, state="join-cluster", role="worker")
    assert _row(url, "m1") == ("ready", None, None)
    machinestate.save(url, "m1", role="master")  # a role alone is not ordered
    machinestate.save(url, "m1", None, utcnow(), state="boot-1")  # a later move is kept
    assert _row(url, "m1") == ("boot-1", "master", None)


def test_a_machine_without_a_row_is_skipped(tmp_path: Path) -> None:
    """The machine row comes first (written before its workflow starts): a state for a machine
    the database does not know (being forgotten) writes nothing rather than failing."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    machinestate.save(url, "gone", state="ready")
    assert _row(url, "gone") is None
