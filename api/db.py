"""One engine per process, and the schema created on first use.

SQLite (the embedded default) gets WAL mode and a busy timeout so the API and the worker can
write the same file concurrently; PostgreSQL needs nothing special.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import time

from sqlalchemy import event
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

from api import models  # noqa: F401  (registers the tables on SQLModel.metadata)


@lru_cache(maxsize=None)
def engine(url: str) -> Engine:
    """The engine for `url`, with the schema created idempotently."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        eng = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(eng, "connect", _sqlite_pragmas)
    else:
        eng = create_engine(url, pool_pre_ping=True)
    _create_schema(eng)
    return eng


def _create_schema(eng: Engine, attempts: int = 5) -> None:
    """Create missing tables. The API and the worker may both do this at once on a fresh
    database; the loser of that race sees "already exists" and simply checks again."""
    for attempt in range(attempts):
        try:
            SQLModel.metadata.create_all(eng)
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
