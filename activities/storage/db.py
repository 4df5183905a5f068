"""One engine per process, and the schema created on first use.

SQLite (the embedded default) gets WAL mode and a busy timeout so the API and the worker can
write the same file concurrently; PostgreSQL needs nothing special.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import time

from sqlalchemy import event
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

from activities.storage import models, versions  # noqa: F401  (the tables on SQLModel.metadata, the counters' events)


@lru_cache(maxsize=None)
def engine(url: str) -> Engine:
    """The engine for `url`, with the schema created idempotently. Its errors never quote a
    statement's parameters: they can be sealed secrets or Terraform state."""
    if url.startswith("sqlite:///"):
        _private_file(Path(url.removeprefix("sqlite:///")))
        eng = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True)
        event.listen(eng, "connect", _sqlite_pragmas)
    else:
        eng = create_engine(url, pool_pre_ping=True, hide_parameters=True)
    _create_schema(eng)
    return eng


def _private_file(path: Path) -> None:
    """Create the SQLite file 0600 before SQLite does: its WAL and shared-memory files take the
    database file's mode, and the database holds sealed secrets and token digests."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    path.chmod(0o600)


def _create_schema(eng: Engine, attempts: int = 5) -> None:
    """Create missing tables, and indexes added to tables an older release created (create_all
    only makes an index with its table). The API and the worker may both do this at once on a
    fresh database; the loser of that race sees "already exists" and simply checks again."""
    for attempt in range(attempts):
        try:
            SQLModel.metadata.create_all(eng)
            for table in SQLModel.metadata.sorted_tables:
                for index in table.indexes:
                    index.create(eng, checkfirst=True)
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@contextmanager
def session(url: str) -> Iterator[Session]:
    with Session(engine(url)) as s:
        yield s


def delete_row(url: str, table: type[SQLModel], key: object) -> bool:
    """Delete the row with this primary key; whether there was one."""
    with session(url) as s:
        row = s.get(table, key)
        if row is None:
            return False
        s.delete(row)
        s.commit()
        return True
