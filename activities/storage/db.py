"""One engine per process, and the schema created on first use.

SQLite (the embedded default) gets WAL mode and a busy timeout so the API and the worker can
write the same file concurrently. On PostgreSQL each process keeps a pool of at most
TEMPERED_DB_POOL_SIZE connections, and names them (`application_name`) with that size, so that a
process starting can add up what every Tempered process on the database may open and compare it
with the server's max_connections (`check_capacity`).
"""

from __future__ import annotations

import logging
import os
import socket
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

POOL_SIZE = 20  # TEMPERED_DB_POOL_SIZE's default: 4 processes fit PostgreSQL's default 100 connections
APP_NAME = "tempered"  # each connection's application_name: "tempered <pool size> <host> <pid>"
log = logging.getLogger("tempered.db")


class PoolTooLarge(ValueError):
    """This process's pool alone could take more connections than PostgreSQL allows."""


def pool_size() -> int:
    """TEMPERED_DB_POOL_SIZE: the connections a process keeps open and never exceeds (a thread
    beyond them waits for one). A bad value is a settings error, said when the engine is made."""
    value = (os.environ.get("TEMPERED_DB_POOL_SIZE") or "").strip() or str(POOL_SIZE)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"TEMPERED_DB_POOL_SIZE: {value!r} is not a whole number of at least 1 (e.g. {POOL_SIZE})")
    return int(value)


@lru_cache(maxsize=None)
def engine(url: str) -> Engine:
    """The engine for `url`, with the schema created idempotently. Its errors never quote a
    statement's parameters: they can be sealed secrets or Terraform state."""
    if url.startswith("sqlite:///"):
        _private_file(Path(url.removeprefix("sqlite:///")))
        eng = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True)
        event.listen(eng, "connect", _sqlite_pragmas)
    else:
        size = pool_size()
        # pool_size connections kept, none opened beyond them (max_overflow=0): a process never
        # holds more than it declares in its application_name, and never pays for a new backend
        # on a busy request. The API's threads (40) and the worker's wait for a free one.
        eng = create_engine(url, pool_pre_ping=True, hide_parameters=True, pool_size=size, max_overflow=0,
                            connect_args={"application_name": _app_name(size)} if url.startswith("postgresql") else {})
    _create_schema(eng)
    return eng


def check_capacity(url: str) -> None:
    """Before a process serves: on PostgreSQL, compare this process's pool, and the pools of the
    Tempered processes connected now (their application_name says each size), with the
    connections the server gives to ordinary users. A pool that alone exceeds that stops the
    process (PoolTooLarge); together exceeding it is a warning, since the others already run."""
    if not url.startswith("postgresql"):
        return
    eng = engine(url)
    mine = pool_size()
    with eng.connect() as conn:
        limit = int(conn.exec_driver_sql("SHOW max_connections").scalar_one())
        reserved = int(conn.exec_driver_sql(
            "SELECT current_setting('superuser_reserved_connections')::int"
            " + coalesce(current_setting('reserved_connections', true), '0')::int").scalar_one())
        names = conn.exec_driver_sql(
            "SELECT DISTINCT application_name FROM pg_stat_activity WHERE application_name LIKE %(prefix)s",
            {"prefix": f"{APP_NAME} %"}).scalars().all()
    available = limit - reserved
    if mine > available:
        raise PoolTooLarge(
            f"TEMPERED_DB_POOL_SIZE is {mine} connections but PostgreSQL allows {available} "
            f"(max_connections {limit} less {reserved} reserved): lower TEMPERED_DB_POOL_SIZE or raise max_connections")
    own = _app_name(mine)
    others = [int(words[1]) for words in (name.split() for name in names if name != own)
              if len(words) > 1 and words[1].isdigit()]
    total = mine + sum(others)
    if total > available:
        log.warning(
            "%d Tempered processes on this database may open %d connections together (TEMPERED_DB_POOL_SIZE of "
            "each: %s) but PostgreSQL allows %d (max_connections %d less %d reserved): lower TEMPERED_DB_POOL_SIZE "
            "or raise max_connections, or requests will wait for connections and fail",
            len(others) + 1, total, ", ".join(map(str, [mine, *others])), available, limit, reserved)


def _app_name(size: int) -> str:
    """This process's connections' application_name (PostgreSQL keeps its first 63 bytes)."""
    return f"{APP_NAME} {size} {socket.gethostname()[:32]} {os.getpid()}"


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
